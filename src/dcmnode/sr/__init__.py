"""Super-resolution of stored series (issue 5).

The numerical core (``api``, ``model``, ``classical``, ``resample``) imports torch; this package does not, so
``import dcmnode.sr.jobs`` stays cheap. ``super_resolve``, ``Upscaler`` and ``SRResult`` are loaded on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcmnode.sr.api import SRResult, Upscaler  # noqa: F401

__all__ = ["SRResult", "Upscaler", "super_resolve", "super_resolve_report"]


def super_resolve(images: Any, factor: int, **kwargs: Any) -> Any:
    """See ``dcmnode.sr.api.super_resolve``."""
    from dcmnode.sr import api

    return api.super_resolve(images, factor, **kwargs)


def super_resolve_report(images: Any, factor: int, **kwargs: Any) -> SRResult:
    """See ``dcmnode.sr.api.super_resolve_report``."""
    from dcmnode.sr import api

    return api.super_resolve_report(images, factor, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("SRResult", "Cancelled", "Upscaler"):
        from dcmnode.sr import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
