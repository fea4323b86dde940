"""``/api/imports``: bulk upload over HTTP, import jobs fed file by file or with archives.

    POST   /imports                       {"name", "expected_files", "labels"} → 201 job, Location
    PUT    /imports/{id}/files/{path}     raw bytes → 200 {"path", "status", "reason"} (202 "queued": an archive)
    POST   /imports/{id}/finish           no more files → 202 job (done once the queued archives are)
    GET    /imports, /imports/{id}        job(s)
    GET    /imports/{id}/events           text/event-stream of the job until it ends
    DELETE /imports/{id}                  cancel → 200 job

A body is streamed into a store temp file as it arrives (never held in memory); file writes, ingest and archive
reading run on worker threads, never on the event loop. ``path`` is the file's place in the user's folder: it is
reported, never used to build a file system path. Jobs live in this process; ended ones are kept for an hour.
``labels`` (a list of label names) labels every study the job stores (per-study access, ``core.labels``). For a
principal limited to groups, a file of a stored study it does not see fails ("not authorized: ..."), and a new
study it stores without ``labels`` carries its groups. A client (principal, else IP address) may have at most
``http.max_imports_per_client`` jobs open (not ended) at once: one more is 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dcmnode.core import labels
from dcmnode.core.importing import ENDED, ImportJob, Spool
from dcmnode.core.importing.registry import Registry
from dcmnode.core.limits import client_key
from dcmnode.core.params import content_length
from dcmnode.core.query import study_filter
from dcmnode.dicomweb import audit
from dcmnode.dicomweb.context import groups, principal, services
from dcmnode.errors import Conflict, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from dcmnode.model import Source, SourceKind

log = logging.getLogger(__name__)

MIB = 1024 * 1024
FLUSH_BYTES = MIB  # body chunks are gathered to this size before each write (one thread hop per MiB)
EVENT_POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0
MAX_NAME = 200
MAX_PATH = 4096


def _registry(request: Request) -> Registry:
    return services(request).imports


def _job(request: Request) -> ImportJob:
    return _registry(request).get(request.path_params["job"])


def _job_response(job: ImportJob, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(job.to_json(), status_code=status_code, headers=headers)


# -- routes -------------------------------------------------------------------------------------------------------
async def create(request: Request) -> JSONResponse:
    """``POST /imports`` with an optional JSON body ``{"name": str, "expected_files": int, "labels": [str]}``."""
    name, expected, study_labels = _create_params(await _small_body(request), request.headers.get("content-type", ""))
    labels.allowed_for(study_labels, groups(request))
    host = request.client.host if request.client else ""
    writer = study_filter(groups(request))  # limited to groups: no hidden study, its groups on a new one
    source = Source(SourceKind.IMPORT, address=host, labels=study_labels, groups=writer)
    job = _registry(request).create(name, expected, source, audit.actor(request), client_key(principal(request)))
    return _job_response(job, 201, {"Location": f"/api/imports/{job.id}"})


async def _small_body(request: Request, limit: int = 64 * 1024) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the job description is larger than {limit} bytes")
    return bytes(body)


def _create_params(body: bytes, content_type: str) -> tuple[str, int, tuple[str, ...]]:
    if not body.strip():
        return "", 0, ()
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMediaType("send the job description as application/json")
    try:
        params: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise InvalidRequest('the body is {"name": "<text>", "expected_files": <count>, "labels": ["<label>"]}')
    unknown = set(params) - {"name", "expected_files", "labels"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    name, expected = params.get("name", ""), params.get("expected_files", 0)
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise InvalidRequest(f"name: text of at most {MAX_NAME} characters")
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise InvalidRequest(f"expected_files {expected!r}: a count (0 or more)")
    asked = params.get("labels", [])
    if not isinstance(asked, list):
        raise InvalidRequest("labels: a list of label names")
    return name, expected, labels.checked(asked)


async def put_file(request: Request) -> Response:
    """``PUT /imports/{id}/files/{path}``: one file (DICOM, or a ZIP/TAR/TAR.GZ archive) as the raw body."""
    registry, job = _registry(request), _job(request)
    path = _display_path(request.path_params["path"])
    declared = content_length(request.headers.get("content-length"))
    if declared is not None and declared > registry.max_request_bytes:
        raise PayloadTooLarge(f"{declared} bytes exceed the limit of {registry.max_request_bytes}")
    with job.receiving():
        spool = await run_in_threadpool(registry.spool)
        if not await _receive(request, job, spool, registry.max_request_bytes, path):
            return Response(status_code=400)  # the client went away; nobody reads this
        temp = await run_in_threadpool(spool.close)
        result = await run_in_threadpool(job.add_temp, temp, path)
    return JSONResponse(result.to_json(), status_code=202 if result.status == "queued" else 200)


def _display_path(raw: str) -> str:
    path = raw.strip("/")
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise InvalidRequest(f"file path: 1 to {MAX_PATH} characters, relative to the folder uploaded")
    return path


async def _receive(request: Request, job: ImportJob, spool: Spool, limit: int, path: str) -> bool:
    """Stream the body into ``spool``; False (and nothing left behind) when the client disconnects."""
    pending = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            job.add_received(len(chunk))
            pending += chunk
            if len(pending) >= FLUSH_BYTES:
                if job.ended:
                    raise Conflict(f"import {job.id} is {job.state}: upload of {path} stopped")
                data, pending = pending, bytearray()
                await run_in_threadpool(spool.write, data)
        if pending:
            await run_in_threadpool(spool.write, pending)
        return True
    except ClientDisconnect:
        spool.discard()
        log.warning("import %s: client went away after %d bytes of %s: nothing kept", job.id, received, path)
        return False
    except BaseException:
        spool.discard()
        raise


def finish(request: Request) -> JSONResponse:
    """No more files (repeating it changes nothing); the job is done once the files in flight and the queued
    archives are."""
    job = _job(request)
    job.finish()
    return _job_response(job, 202)


def get_job(request: Request) -> JSONResponse:
    return _job_response(_job(request))


def list_jobs(request: Request) -> JSONResponse:
    return JSONResponse([job.to_json() for job in _registry(request).jobs()])


def cancel(request: Request) -> JSONResponse:
    job = _job(request)
    job.cancel()
    return _job_response(job)


async def events(request: Request) -> StreamingResponse:
    """Server-sent events: the job whenever it changes (checked every 0.25 s), a keep-alive copy every 15 s,
    and a last event once it has ended; then the stream closes."""
    job = _job(request)
    return StreamingResponse(
        _event_stream(job),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(job: ImportJob) -> AsyncIterator[str]:
    sent_version, sent_at = -1, 0.0
    while True:
        version = job.version
        if version != sent_version or time.monotonic() - sent_at > KEEPALIVE_SECONDS:
            payload = job.to_json()
            sent_version, sent_at = version, time.monotonic()
            yield f"data: {json.dumps(payload)}\n\n"
            if payload["state"] in ENDED:
                return
        await anyio.sleep(EVENT_POLL_SECONDS)


def routes() -> list[Route]:
    return [
        Route("/imports", create, methods=["POST"]),
        Route("/imports", list_jobs, methods=["GET"]),
        Route("/imports/{job}", get_job, methods=["GET"]),
        Route("/imports/{job}", cancel, methods=["DELETE"]),
        Route("/imports/{job}/finish", finish, methods=["POST"]),
        Route("/imports/{job}/events", events, methods=["GET"]),
        Route("/imports/{job}/files/{path:path}", put_file, methods=["PUT"]),
    ]
