"""URL helpers shared by the DICOMweb endpoints. Imports: starlette, errors, model."""

from __future__ import annotations

from starlette.requests import Request

from dcmnode.errors import InvalidInstance, InvalidRequest
from dcmnode.model import check_uid


def path_uid(value: str, keyword: str) -> str:
    """A UID from the URL path, or 400 naming it."""
    try:
        return check_uid(value, f"{keyword} in the URL")
    except InvalidInstance as exc:
        raise InvalidRequest(exc.reason) from exc


def base_url(request: Request) -> str:
    """The DICOMweb root as the client addressed it (scheme, host and port of the request)."""
    return str(request.base_url).rstrip("/") + request.app.state.dicomweb_prefix
