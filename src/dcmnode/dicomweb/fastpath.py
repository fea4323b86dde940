"""The hottest requests answered in front of Starlette: one rendered frame or thumbnail of an instance
(``RenderedFastPath``), and the byte-serving WADO-RS routes, instance / series / study retrieve and frames
(``BytesFastPath``, below).

A viewer asks for one ``.../instances/{i}/rendered`` or
``.../frames/{n}/rendered`` per image it shows, and as a window drag goes on. Starlette's router and the DICOMweb
middleware (CORS, CORP, gzip, error mapping: eight ASGI layers) cost ~0.7 ms of CPU per request, about a fifth of a
cold 512x512 JPEG render (``bench/bench_render.py``). This wrapper answers the plain form of those requests with
the same code as ``rendered.py`` (``job_from``, ``find_and_render``, ``keep_later``) and the same headers, and hands
everything else to the full app unchanged: other paths and methods, requests with an ``Origin`` header (CORS is the
middleware's job), frame numbers that are not a number, enhanced renderings while their rate limit is on
(``dicomweb/throttle.py``: charged once, there), and any request that fails here; the full app then gives the
error its usual status and log line (the failure is computed twice; failures are rare and cheap).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dcmnode.dicomweb import rendered, wado
from dcmnode.dicomweb.audit import AuditTrail
from dcmnode.dicomweb.context import HttpServices, principal_of
from dcmnode.dicomweb.paths import path_uid
from dcmnode.errors import DcmnodeError

log = logging.getLogger("dcmnode.http")


# The routes answered here: one rendered frame or thumbnail of one instance (True: a thumbnail).
FAST_ENDPOINTS: dict[Callable[..., Any], bool] = {
    rendered.instance: False,
    rendered.frames: False,
    rendered.thumbnail: True,
    rendered.frame_thumbnail: True,
}


RENDERED_ENDS = ("/rendered", "/thumbnail")  # how every path of FAST_ENDPOINTS ends (checked before the patterns)


def fast_patterns(routes: Sequence[BaseRoute], prefix: str) -> list[tuple[re.Pattern[str], Callable[..., Any]]]:
    """The URL patterns of the instance- and frame-level rendered routes, taken from the route table (one URL
    grammar), under ``prefix``, with the endpoint each stands for."""
    found = []
    for route in routes:
        if isinstance(route, Route) and route.endpoint in FAST_ENDPOINTS and "instance" in route.param_convertors:
            found.append((re.compile(re.escape(prefix) + route.path_regex.pattern.lstrip("^")), route.endpoint))
    return found


class RenderedFastPath:
    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        http: HttpServices,
        cross_origin_policy: bool,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        self.audit = audit  # the answers given here are audited like the full app's
        self.http = http
        self.patterns = fast_patterns(routes, http.prefix)
        self.extra_headers = [(b"cross-origin-resource-policy", b"cross-origin")] if cross_origin_policy else []

    def match(self, scope: Scope) -> tuple[dict[str, str], bool] | None:
        """(the path's parameters, whether it is a thumbnail) when this path may answer the request."""
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].endswith(RENDERED_ENDS):
            return None
        for pattern, endpoint in self.patterns:
            found = pattern.fullmatch(scope["path"])
            if found is not None:
                # as Starlette's router does: the audit trail reads which route answered from the scope
                scope["endpoint"], scope["path_params"] = endpoint, found.groupdict()
                return found.groupdict(), FAST_ENDPOINTS[endpoint]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self.match(scope)
        if match is not None:
            headers = dict(scope["headers"])
            if b"origin" not in headers:
                answer = await self._answer(scope, match, headers)
                if answer is not None:
                    status, response_headers, body, keep = answer
                    send = self.audit.sender(scope, send) if self.audit is not None else send
                    await send({"type": "http.response.start", "status": status, "headers": response_headers})
                    await send({"type": "http.response.body", "body": body})
                    if keep is not None:
                        keep()  # a new image goes to the cache once the answer is on its way
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self, scope: Scope, match: tuple[dict[str, str], bool], headers: dict[bytes, bytes]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, Callable[[], None] | None] | None:
        http, (params_in_path, thumbnail) = self.http, match
        try:
            params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            accept = headers.get(b"accept")
            job = rendered.job_from(
                params,
                accept.decode("latin-1") if accept is not None else None,
                frame=rendered.frame_number(params_in_path.get("frames") or "1"),
                thumbnail=thumbnail,
            )
            if job.enhance and http.expensive.enabled:
                return None  # rate-limited (dicomweb/throttle.py): charged once, in the full app
            uids = (
                path_uid(params_in_path["study"], "StudyInstanceUID"),
                path_uid(params_in_path["series"], "SeriesInstanceUID"),
                path_uid(params_in_path["instance"], "SOPInstanceUID"),
            )
            wanted = headers.get(b"if-none-match")
            work = functools.partial(
                rendered.find_and_render,
                http.catalog,
                http.renderer,
                uids,
                job,
                wanted.decode("latin-1") if wanted is not None else None,
                principal_of(scope, http.settings).groups,  # a study outside them is NotFound: the full app answers 404
            )
            data, etag, item, fresh = await run_in_threadpool(work)  # the same anyio pool as the full app
        except DcmnodeError:
            return None  # the full app answers with the mapped status and logs it
        except Exception:
            log.debug("rendered fast path: handing %s to the full app", scope["path"], exc_info=True)
            return None
        response_headers = [
            (b"etag", f'"{etag}"'.encode()),
            (b"cache-control", rendered.CACHE_CONTROL.encode()),
            *self.extra_headers,
        ]
        if data is None:
            return 304, response_headers, b"", None
        keep = functools.partial(rendered.keep_later, http, item, etag, job, data) if fresh else None
        response_headers += [(b"content-type", job.media_type.encode()), (b"content-length", b"%d" % len(data))]
        return 200, response_headers, data, keep


# -- WADO-RS bytes ------------------------------------------------------------------------------------------------
BYTES_ENDPOINTS: tuple[Callable[..., Any], ...] = (
    wado.retrieve_study,
    wado.retrieve_series,
    wado.retrieve_instance,
    wado.frames,
)


def bytes_patterns(routes: Sequence[BaseRoute], prefix: str) -> list[tuple[re.Pattern[str], Callable[..., Any]]]:
    """The URL patterns of the WADO-RS retrieve and frames routes (GET), from the route table, under ``prefix``."""
    found = []
    for route in routes:
        if isinstance(route, Route) and route.endpoint in BYTES_ENDPOINTS and "GET" in (route.methods or {"GET"}):
            found.append((re.compile(re.escape(prefix) + route.path_regex.pattern.lstrip("^")), route.endpoint))
    return found


def _first(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of a request header, as Starlette's ``request.headers.get`` gives it."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class BytesFastPath:
    """WADO-RS retrieve of a study, series or instance and ``/frames/{list}``, answered in front of Starlette with
    the same code as ``wado.py``: ``plan_retrieve`` / ``plan_frames`` look the files up, negotiate and plan the
    answer in one worker-thread hop (reading the first batch of the body in it), and the same
    ``multipart.PiecesResponse`` sends it, so both paths send the same bytes. The router, the DICOMweb middleware
    and their wrappers of every body message cost more than reading a 500 KB file.

    GET and HEAD only; everything else goes to the full app as it is: other paths and methods, requests with an
    ``Origin`` header (CORS), and any request that fails here (a bad UID or frame list, 404, 406...: the full app
    answers with its status and log line; the failure is computed twice). In front of it stand the same checks as
    for every route (``access.AccessControl`` with ``ROUTE_SCOPES``, ``paths.RequestGuard``, the security headers);
    its answers go through the audit trail (``AuditTrail.sender``) with the endpoint that would have answered in
    the scope, as Starlette's router puts it there."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        http: HttpServices,
        cross_origin_policy: bool,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        self.audit = audit
        self.http = http
        self.patterns = bytes_patterns(routes, http.prefix)
        self.extra_headers = [(b"cross-origin-resource-policy", b"cross-origin")] if cross_origin_policy else []

    def match(self, scope: Scope) -> tuple[Callable[..., Any], dict[str, str]] | None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return None
        path = scope["path"]
        if not path.startswith(self.http.prefix):
            return None
        for pattern, endpoint in self.patterns:
            found = pattern.fullmatch(path)
            if found is not None:
                return endpoint, found.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self.match(scope)
        if match is not None and _first(scope["headers"], b"origin") is None:
            endpoint, params = match
            answer = await self._answer(scope, endpoint, params)
            if answer is not None:
                response = answer.response()
                response.raw_headers += self.extra_headers
                scope["endpoint"], scope["path_params"] = endpoint, params  # as Starlette's router: the audit reads it
                send = self.audit.sender(scope, send) if self.audit is not None else send
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, endpoint: Callable[..., Any], params: dict[str, str]) -> wado.Answer | None:
        http, headers = self.http, scope["headers"]
        try:
            uids = (
                path_uid(params["study"], "StudyInstanceUID"),
                path_uid(params["series"], "SeriesInstanceUID") if "series" in params else None,
                path_uid(params["instance"], "SOPInstanceUID") if "instance" in params else None,
            )
            seen_by = principal_of(scope, http.settings).groups  # a study outside them: NotFound (the full app: 404)
            accept, wanted = _first(headers, b"accept"), _first(headers, b"if-none-match")
            preread = scope["method"] != "HEAD"
            work: Callable[[], wado.Answer]
            if endpoint is wado.frames:
                numbers = wado.frame_list(params["frames"])
                base = str(Request(scope).base_url).rstrip("/") + http.prefix  # as paths.base_url
                work = functools.partial(
                    wado.plan_frames, http.catalog, uids, numbers, accept, wanted, seen_by, base, preread
                )
            else:
                work = functools.partial(wado.plan_retrieve, http.catalog, uids, accept, wanted, seen_by, preread)
            return await run_in_threadpool(work)  # the same anyio pool as the full app
        except DcmnodeError:
            return None  # the full app answers with the mapped status and logs it
        except Exception:
            log.debug("WADO-RS fast path: handing %s to the full app", scope["path"], exc_info=True)
            return None
