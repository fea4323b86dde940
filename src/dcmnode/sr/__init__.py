"""Super-resolution, the numerical library: arrays in, arrays out (``api``, ``model``, ``classical``,
``resample``). It knows nothing of DICOM files, the store or the network (it imports only ``dcmnode.errors``, for
``Cancelled``), and it is the only importer of torch. The jobs that run it on stored series are a core service
(``dcmnode.core.jobs``).

This package's ``__init__`` does not import torch, so ``import dcmnode.sr`` stays cheap: ``super_resolve``,
``Upscaler`` and ``SRResult`` are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dcmnode.sr.api import SRResult, Upscaler  # noqa: F401

__all__ = ["FACTORS", "METHODS", "SRResult", "Upscaler", "super_resolve", "super_resolve_report"]

FACTORS = (2, 4)
METHODS = ("learned", "classical", "bicubic", "lanczos3")


def super_resolve(images: Any, factor: int, **kwargs: Any) -> Any:
    """See ``dcmnode.sr.api.super_resolve``."""
    from dcmnode.sr import api

    return api.super_resolve(images, factor, **kwargs)


def super_resolve_report(images: Any, factor: int, **kwargs: Any) -> SRResult:
    """See ``dcmnode.sr.api.super_resolve_report``."""
    from dcmnode.sr import api

    return api.super_resolve_report(images, factor, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("SRResult", "Upscaler"):
        from dcmnode.sr import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
