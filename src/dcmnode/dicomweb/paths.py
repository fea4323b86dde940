"""URL and request helpers shared by the DICOMweb endpoints."""

from __future__ import annotations

import json
import logging
import re

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dcmnode.dicomweb.context import services
from dcmnode.errors import InvalidInstance, InvalidRequest
from dcmnode.model import check_uid

log = logging.getLogger("dcmnode.http")


def path_uid(value: str, keyword: str) -> str:
    """A UID from the URL path, or 400 naming it. Stricter than a data set's UID: no NUL or space padding
    (PS3.5 §9.1 pads only an encoded value; a URL carries the UID itself)."""
    if value != value.rstrip("\x00 "):
        raise InvalidRequest(f"{keyword} in the URL is not a valid UID: {value[:80]!r} (trailing NUL or space)")
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


# In the raw (still percent-encoded) path: an encoded slash, backslash or NUL, which would put a separator or a NUL
# into one path segment once decoded.
_ENCODED = re.compile(rb"%(2f|5c|00)", re.IGNORECASE)


class RequestGuard:
    """In front of the whole HTTP app, before any route, file or index is looked at:

    - a request path with a ``.`` or ``..`` segment, a NUL, a backslash, or an encoded slash is answered 400. No
      endpoint builds a file path from the URL (UIDs are checked against PS3.5 §9.1 digits-and-dots, ``path_uid``;
      an upload's file path is only reported), so this is a second wall, and it gives such paths one clear answer
      (400, not a redirect or 404);
    - a request head (request line and header lines) larger than ``max_header_bytes`` (``http.max_header_kb``) is
      answered 431 Request Header Fields Too Large (RFC 6585 §5)."""

    def __init__(self, app: ASGIApp, max_header_bytes: int = 64 * 1024) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope["query_string"])
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_header_bytes:
                limit = f"the request head of {size} bytes exceeds {self.max_header_bytes} (http.max_header_kb)"
                await _refuse(scope, send, 431, limit)
                return
            reason = bad_path(scope["path"], scope.get("raw_path"))
            if reason is not None:
                await _refuse(scope, send, 400, reason)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, status: int, reason: str) -> None:
    log.warning("%s %r -> %d: %s", scope["method"], scope["path"][:200], status, reason)
    body = json.dumps({"error": reason, "status": status}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bad_path(path: str, raw_path: bytes | None) -> str | None:
    """Why a request path is refused (None: it is not)."""
    if "\x00" in path or (raw_path is not None and _ENCODED.search(raw_path)):
        return "the URL path holds an encoded slash, backslash or NUL"
    if "\\" in path:
        return "the URL path holds a backslash"
    if any(segment in (".", "..") for segment in path.split("/")):
        return "the URL path holds a '.' or '..' segment"
    return None
