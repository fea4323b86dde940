"""``/api/sr/jobs``: super-resolution jobs (the queue is ``core.jobs.queue``; the worker runs them).

POST   /sr/jobs          {"series": UID, "factor": 2, "method": "learned", "send_to": AET|"-"|null} → 202
GET    /sr/jobs          ?status=&series=&limit= → the newest jobs first
GET    /sr/jobs/{id}     one job
DELETE /sr/jobs/{id}     cancel: 200 when it ended at once, 202 while a running job stops

Per-study access: a series (or a job on a series) whose study is outside the caller's groups is 404, and the
list leaves such jobs out.

Limits (as Orthanc's jobs engine, ``ConcurrentJobs``, and dcm4chee's task queues do): at most ``sr.max_running``
jobs run at once node-wide, the others wait in the queue (the workers claim them in order); a client (principal,
else IP address) may have at most ``sr.max_jobs_per_client`` jobs queued or running that it submitted here, one
more is 429 with ``Retry-After`` (and a 110113 in the audit trail), so one client cannot fill the queue ahead of
everyone. That count is kept by the HTTP process (a restart forgets the jobs submitted before it).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dcmnode.core.jobs.queue import ENDED, Job, Jobs, check_options, check_send_to
from dcmnode.core.limits import client_key
from dcmnode.core.params import integer
from dcmnode.dicomweb.context import groups, principal, services
from dcmnode.errors import AuditUnavailable, InvalidRequest, NotFound, TooManyRequests, UnsupportedMediaType

log = logging.getLogger(__name__)


def _jobs(request: Request) -> Jobs:
    return services(request).jobs


def _job_id(request: Request) -> int:
    return integer("job id", request.path_params["job"], 1)


async def submit_job(request: Request) -> JSONResponse:
    """``POST /api/sr/jobs {"series": UID, "factor": 2, "method": "learned", "send_to": AET|null}``: 202 with the
    queued job and its Location."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise UnsupportedMediaType("send the job as application/json")
    try:
        body: Any = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("series"), str):
        raise InvalidRequest('the body is {"series": "<Series Instance UID>", "factor": 2, "method": "learned"}')
    unknown = set(body) - {"series", "factor", "method", "send_to"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    factor, method, send_to = body.get("factor", 2), body.get("method", "learned"), body.get("send_to")
    check_options(factor, method)
    if send_to is not None and not isinstance(send_to, str):
        raise InvalidRequest('send_to is an AE title, "-" (do not send) or null (back to the sender)')
    check_send_to(services(request).settings, send_to)
    if not services(request).catalog.series_visible(body["series"], groups(request)):
        raise NotFound(f"series {body['series']} is not stored here")
    jobs, who = _jobs(request), principal(request)
    try:
        with services(request).sr_jobs.admit(client_key(who), functools.partial(_pending, jobs)) as add:
            job = jobs.submit(body["series"], factor, method, send_to, origin="api")
            add(job.id)
    except TooManyRequests as err:
        address = who.address or (request.client.host if request.client else "")
        log.warning("SR job refused for %s %s (%s): %s", who.kind, who.name, address, err.reason)
        try:
            services(request).audit.security_alert(f"SR job refused: {err.reason}", who, address)
        except AuditUnavailable:
            pass  # counted and logged by the trail; the job is refused in any case
        raise
    return JSONResponse(job.to_json(), status_code=202, headers={"Location": f"/api/sr/jobs/{job.id}"})


def _pending(jobs: Jobs, job_id: int) -> bool:
    """Whether a job counts against its client: queued or running (a deleted one does not)."""
    try:
        return jobs.get(job_id).status not in ENDED
    except NotFound:
        return False


def list_jobs(request: Request) -> JSONResponse:
    params = request.query_params
    limit = integer("limit", params.get("limit", "100"), 1, 1000)
    jobs = _jobs(request).find(params.get("status"), params.get("series"), limit)
    catalog, seen_by = services(request).catalog, groups(request)
    return JSONResponse([j.to_json() for j in jobs if catalog.visible(j.study, seen_by)])


def _visible_job(request: Request) -> Job:
    job = _jobs(request).get(_job_id(request))
    if not services(request).catalog.visible(job.study, groups(request)):
        raise NotFound(f"no super-resolution job {job.id}")
    return job


def get_job(request: Request) -> JSONResponse:
    return JSONResponse(_visible_job(request).to_json())


def cancel_job(request: Request) -> Response:
    """``DELETE``: a queued job is cancelled at once, a running one within a second or so (202 until then)."""
    job = _jobs(request).cancel(_visible_job(request).id)
    return JSONResponse(job.to_json(), status_code=200 if job.status == "cancelled" else 202)


def routes() -> list[Route]:
    return [
        Route("/sr/jobs", submit_job, methods=["POST"]),
        Route("/sr/jobs", list_jobs, methods=["GET"]),
        Route("/sr/jobs/{job}", get_job, methods=["GET"]),
        Route("/sr/jobs/{job}", cancel_job, methods=["DELETE"]),
    ]
