"""URL and request helpers shared by the DICOMweb endpoints."""

from __future__ import annotations

from starlette.requests import Request

from dcmnode.dicomweb.context import services
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
    return str(request.base_url).rstrip("/") + services(request).prefix


def resource_uids(request: Request) -> tuple[str, str | None, str | None]:
    """(study, series, instance) named by a resource path, each checked; None for the levels not in it."""
    params = request.path_params
    study = path_uid(params["study"], "StudyInstanceUID")
    series = path_uid(params["series"], "SeriesInstanceUID") if "series" in params else None
    sop = path_uid(params["instance"], "SOPInstanceUID") if "instance" in params else None
    return study, series, sop


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (quoted) or is ``*``: the answer is then 304."""
    return bool(if_none_match) and (
        if_none_match.strip() == "*" or etag in [t.strip() for t in if_none_match.split(",")]  # type: ignore[union-attr]
    )
