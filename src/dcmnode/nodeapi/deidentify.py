"""``/api/deidentify``: de-identification jobs (PS3.15 Basic Profile and its options; ``core/deid``).

    POST   /deidentify                {"studies"|"series": [UID], "options": [name], "project", "patient_id",
                                       "patient_name", "output": "store"|"zip"|"send", "send_to": AET} → 202 job
    GET    /deidentify                the caller's jobs (every job for ``admin``)
    GET    /deidentify/{id}           one job: status, progress, counts, failures, studies (source → new)
    GET    /deidentify/{id}/archive   the ZIP of a done ``zip`` job
    DELETE /deidentify/{id}           cancel (between instances) → 200 job

Every route needs the ``deidentify`` scope (``dicomweb/access.py``): whoever holds it can make data leave the node.
The source studies are those the caller sees (another's study is 404, as if not stored); a new study made by
``store`` carries the caller's groups, as STOW does. Jobs live in this process; ended ones are kept for an hour.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from dcmnode.core.access import Scope
from dcmnode.core.deid import DeidJob, DeidRegistry, DeidRequest
from dcmnode.core.limits import client_key
from dcmnode.core.params import integer
from dcmnode.dicomweb import audit
from dcmnode.dicomweb.context import groups, principal, services
from dcmnode.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, UnsupportedMediaType

MAX_BODY = 256 * 1024


def _registry(request: Request) -> DeidRegistry:
    return services(request).deidentify


def _owner(request: Request) -> str | None:
    who = principal(request)
    return None if who.allows(Scope.ADMIN) else client_key(who)


def _job(request: Request) -> DeidJob:
    job_id = integer("job id", request.path_params["job"], 1)
    return _registry(request).get(job_id, _owner(request))


async def submit(request: Request) -> JSONResponse:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("send the job as application/json")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"the job description is larger than {MAX_BODY} bytes")
    try:
        parsed: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from exc
    registry = _registry(request)
    asked = DeidRequest.parse(parsed, registry.peers)
    who = principal(request)
    job = await run_in_threadpool(registry.submit, asked, audit.actor(request), client_key(who), groups(request))
    return JSONResponse(job.to_json(), status_code=202, headers={"Location": f"/api/deidentify/{job.id}"})


async def get_job(request: Request) -> JSONResponse:
    return JSONResponse(_job(request).to_json())


async def list_jobs(request: Request) -> JSONResponse:
    return JSONResponse([job.to_json() for job in _registry(request).jobs(_owner(request))])


async def cancel(request: Request) -> JSONResponse:
    job = _job(request)
    job.cancel()
    return JSONResponse(job.to_json())


async def archive(request: Request) -> Response:
    job = _job(request)
    if job.request.output != "zip":
        raise NotFound(f"de-identification job {job.id} makes no archive (output {job.request.output})")
    path = job.archive
    if path is None:
        raise Conflict(f"de-identification job {job.id} is {job.state}: no archive yet")
    if not path.is_file():
        raise NotFound(f"the archive of de-identification job {job.id} is gone")
    return FileResponse(path, media_type="application/zip", filename=f"deidentified-{job.id}.zip")


def routes() -> list[Route]:
    return [
        Route("/deidentify", submit, methods=["POST"]),
        Route("/deidentify", list_jobs, methods=["GET"]),
        Route("/deidentify/{job}", get_job, methods=["GET"]),
        Route("/deidentify/{job}", cancel, methods=["DELETE"]),
        Route("/deidentify/{job}/archive", archive, methods=["GET"]),
    ]
