"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances.

Query parameters are attribute keywords or 8-digit hex tags (matching values in DICOM string form), plus
``limit``, ``offset``, ``fuzzymatching`` and ``includefield`` (repeated, comma-separated, or ``all``). The
answer is ``application/dicom+json``; no match is ``200 []`` (PS3.18 §8.3.4.4.1 as amended by CP-2473:
a 204 may not carry the empty array). When the configured maximum cuts the answer, a ``Warning: 299`` header
says so (§8.3.4.4 / Table 8.3.4-x).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dcmnode.core import params as checked
from dcmnode.core import query as q
from dcmnode.dicomweb import dicom_json
from dcmnode.dicomweb.accept import require_json
from dcmnode.dicomweb.context import groups, services
from dcmnode.dicomweb.paths import base_url, path_uid
from dcmnode.errors import InvalidRequest

DICOM_JSON = "application/dicom+json"
_RESERVED = {"limit", "offset", "fuzzymatching", "includefield"}
_CS = "CS"


def _levels(*levels: q.Level) -> frozenset[q.Level]:
    return frozenset(levels)


# (query level, levels whose default attributes are returned) per resource, PS3.18 §10.6.3.3.
_ALL_STUDIES = (q.Level.STUDY, _levels(q.Level.STUDY))
_ALL_SERIES = (q.Level.SERIES, _levels(q.Level.STUDY, q.Level.SERIES))
_STUDY_SERIES = (q.Level.SERIES, _levels(q.Level.SERIES))
_ALL_INSTANCES = (q.Level.IMAGE, _levels(q.Level.STUDY, q.Level.SERIES, q.Level.IMAGE))
_STUDY_INSTANCES = (q.Level.IMAGE, _levels(q.Level.SERIES, q.Level.IMAGE))
_SERIES_INSTANCES = (q.Level.IMAGE, _levels(q.Level.IMAGE))


async def studies(request: Request) -> Response:
    return await _search(request, *_ALL_STUDIES)


async def series(request: Request) -> Response:
    scoped = "study" in request.path_params
    return await _search(request, *(_STUDY_SERIES if scoped else _ALL_SERIES))


async def instances(request: Request) -> Response:
    params = request.path_params
    if "series" in params:
        return await _search(request, *_SERIES_INSTANCES)
    return await _search(request, *(_STUDY_INSTANCES if "study" in params else _ALL_INSTANCES))


async def _search(request: Request, level: q.Level, defaults: frozenset[q.Level]) -> Response:
    require_json(request.headers.get("accept"))
    limits = services(request).qido
    query = parse(request.query_params.multi_items(), level, defaults, limits.max_results)
    for key, name in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID")):
        if key in request.path_params:
            query.matches[name] = path_uid(request.path_params[key], name)
    query.groups = groups(request)  # only the studies the principal sees; counts, limit and offset after that
    catalog = services(request).catalog
    result = await run_in_threadpool(catalog.search, query)
    base = base_url(request)
    body = dicom_json.dumps(dicom_json.row_to_json(row, _extra(level, row, base)) for row in result.rows)
    headers = {}
    if result.more and query.limit == limits.max_results:
        headers["Warning"] = (
            '299 dcmnode: "The number of results exceeded the maximum supported by the server. '
            'Additional results can be requested."'
        )
    return Response(body, media_type=DICOM_JSON, headers=headers)


def parse(items: list[tuple[str, str]], level: q.Level, defaults: frozenset[q.Level], max_results: int) -> q.Query:
    """The query parameters of a QIDO-RS request as a ``Query`` (InvalidRequest naming the bad one)."""
    query = q.Query(level=level, defaults=defaults, limit=max_results)
    for key, value in items:
        name = key.lower()
        if name == "limit":
            query.limit = min(_count(key, value, minimum=1), max_results)
        elif name == "offset":
            query.offset = _count(key, value, minimum=0)
        elif name == "fuzzymatching":
            query.fuzzy = _boolean(key, value)
        elif name == "includefield":
            for field in (f.strip() for f in value.split(",")):
                if field.lower() == "all":
                    query.include_all = True
                elif field:
                    query.include.add(q.attribute(field).keyword)
        elif "." in key:
            raise InvalidRequest(f"{key}: sequence matching is not supported")
        else:
            attr = q.attribute(key)
            if attr.keyword in query.matches:
                raise InvalidRequest(f"{key} is given twice")
            query.matches[attr.keyword] = value
    q.check(query)
    return query


def _count(key: str, value: str, minimum: int) -> int:
    return checked.integer(key, value, minimum)  # up to SQLite's 64-bit integers, which take any LIMIT/OFFSET


def _boolean(key: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRequest(f"{key}={value!r}: expected true or false")


def _extra(level: q.Level, row: dict[str, Any], base: str) -> dict[int, dict[str, Any]]:
    """RetrieveURL (0008,1190) and InstanceAvailability (0008,0056) for each result."""
    study = row.get("StudyInstanceUID")
    url = f"{base}/studies/{study}"
    if level in (q.Level.SERIES, q.Level.IMAGE):
        url += f"/series/{row.get('SeriesInstanceUID')}"
    if level is q.Level.IMAGE:
        url += f"/instances/{row.get('SOPInstanceUID')}"
    return {0x00081190: {"vr": "UR", "Value": [url]}, 0x00080056: {"vr": _CS, "Value": ["ONLINE"]}}
