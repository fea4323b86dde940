"""``GET /api/audit``: the audit trail's records, newest first (``core/audit.py`` describes a record).

Filters (all optional): ``since`` and ``until`` (ISO 8601 date or date-time, UTC unless a zone is given; a date
alone as ``until`` means the end of that day), ``user`` (an active participant that made the request: token, user,
calling AE or ``anonymous``), ``study`` (a Study Instance UID), ``event`` (a DCM code such as ``110112`` or its
meaning, any case), ``limit`` (default 1000, at most 10000). Needs the ``admin`` scope (``dicomweb/access.py``
``ROUTE_SCOPES``).
"""

from __future__ import annotations

from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dcmnode.core.audit import parse_time
from dcmnode.core.params import integer
from dcmnode.dicomweb.context import services
from dcmnode.errors import InvalidRequest

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000


def time_filter(name: str, text: str | None, end_of_day: bool = False) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text, end_of_day)
    except ValueError as exc:
        raise InvalidRequest(f"{name}={text!r}: expected an ISO 8601 date or date-time") from exc


async def records(request: Request) -> JSONResponse:
    params = request.query_params
    limit = integer("limit", params.get("limit", str(DEFAULT_LIMIT)), 1, MAX_LIMIT)
    found = await run_in_threadpool(
        services(request).audit.search,
        time_filter("since", params.get("since")),
        time_filter("until", params.get("until"), end_of_day=True),
        params.get("user") or None,
        params.get("study") or None,
        params.get("event") or None,
        limit,
    )
    return JSONResponse(found)


def routes() -> list[Route]:
    return [Route("/audit", records, methods=["GET"])]
