"""The viewer's hottest request, one rendered frame or thumbnail of an instance, answered in front of Starlette.

Imports: stdlib, starlette (types), errors, core, dicomweb. A viewer asks for one ``.../instances/{i}/rendered`` or
``.../frames/{n}/rendered`` per image it shows, and as a window drag goes on. Starlette's router and the DICOMweb
middleware (CORS, CORP, gzip, error mapping: eight ASGI layers) cost ~0.7 ms of CPU per request, about a fifth of a
cold 512x512 JPEG render (``bench/bench_render.py``). This wrapper answers the plain form of those requests with
the same code as ``rendered.py`` (``job_from``, ``find_and_render``, ``keep_later``) and the same headers, and hands
everything else to the full app unchanged: other paths and methods, requests with an ``Origin`` header (CORS is the
middleware's job), frame numbers that are not a number, and any request that fails here; the full app then gives
the error its usual status and log line (the failure is computed twice; failures are rare and cheap).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from dcmnode.dicomweb import rendered
from dcmnode.dicomweb.paths import path_uid
from dcmnode.errors import DcmnodeError

log = logging.getLogger("dcmnode.http")


class RenderedFastPath:
    def __init__(self, app: ASGIApp, prefix: str, cross_origin_policy: bool) -> None:
        self.app = app
        self.state = app.state  # type: ignore[attr-defined]  # the node's services, as the full app has them
        self.pattern = re.compile(
            re.escape(prefix)
            + r"/studies/([^/]+)/series/([^/]+)/instances/([^/]+)(?:/frames/([0-9]{1,9}))?/(rendered|thumbnail)"
        )
        self.extra_headers = [(b"cross-origin-resource-policy", b"cross-origin")] if cross_origin_policy else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self.pattern.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if match is not None:
            headers = dict(scope["headers"])
            if b"origin" not in headers:
                answer = await self._answer(scope, match, headers)
                if answer is not None:
                    status, response_headers, body, keep = answer
                    await send({"type": "http.response.start", "status": status, "headers": response_headers})
                    await send({"type": "http.response.body", "body": body})
                    if keep is not None:
                        keep()  # a new image goes to the cache once the answer is on its way
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self, scope: Scope, match: re.Match[str], headers: dict[bytes, bytes]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, Callable[[], None] | None] | None:
        state = self.state
        try:
            params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            accept = headers.get(b"accept")
            job = rendered.job_from(
                params,
                accept.decode("latin-1") if accept is not None else None,
                frame=int(match[4] or 1),
                thumbnail=match[5] == "thumbnail",
            )
            uids = (
                path_uid(match[1], "StudyInstanceUID"),
                path_uid(match[2], "SeriesInstanceUID"),
                path_uid(match[3], "SOPInstanceUID"),
            )
            wanted = headers.get(b"if-none-match")
            work = functools.partial(
                rendered.find_and_render,
                state.catalog,
                state.renderer,
                uids,
                job,
                wanted.decode("latin-1") if wanted is not None else None,
            )
            data, etag, item, fresh = await asyncio.get_running_loop().run_in_executor(None, work)
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
        keep = functools.partial(rendered.keep_later, state.renderer, item, etag, job, data) if fresh else None
        response_headers += [(b"content-type", job.media_type.encode()), (b"content-length", b"%d" % len(data))]
        return 200, response_headers, data, keep
