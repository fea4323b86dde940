"""``/api/studies/{uid}/labels``: the labels of a study (per-study access: principals with groups see the studies
carrying one of them; ``core.labels``).

GET    /studies/{uid}/labels            → 200 {"study": UID, "labels": [...]}
PUT    /studies/{uid}/labels/{label}    → 201 when new, 200 when the study carried it already
DELETE /studies/{uid}/labels/{label}    → 200 when removed, 404 when the study did not carry it

A label is 1-64 characters of ``[A-Za-z0-9_.-]`` (400 otherwise); an unknown study, or one outside the caller's
groups, is 404.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dcmnode.core import labels
from dcmnode.dicomweb.context import groups, services
from dcmnode.dicomweb.paths import path_uid
from dcmnode.errors import NotFound


def _study(request: Request) -> str:
    return path_uid(request.path_params["study"], "StudyInstanceUID")


async def _answer(request: Request, study: str, status_code: int = 200) -> JSONResponse:
    found = await run_in_threadpool(services(request).labels.of, study, groups(request))
    return JSONResponse({"study": study, "labels": found}, status_code=status_code)


async def list_labels(request: Request) -> JSONResponse:
    return await _answer(request, _study(request))


async def put_label(request: Request) -> JSONResponse:
    study, label = _study(request), labels.check(request.path_params["label"])
    added = await run_in_threadpool(services(request).labels.add, study, label, groups(request))
    return await _answer(request, study, 201 if added else 200)


async def delete_label(request: Request) -> JSONResponse:
    study, label = _study(request), labels.check(request.path_params["label"])
    removed = await run_in_threadpool(services(request).labels.remove, study, label, groups(request))
    if not removed:
        raise NotFound(f"study {study} does not carry the label {label}")
    return await _answer(request, study)


def routes() -> list[Route]:
    return [
        Route("/studies/{study}/labels", list_labels, methods=["GET"]),
        Route("/studies/{study}/labels/{label}", put_label, methods=["PUT"]),
        Route("/studies/{study}/labels/{label}", delete_label, methods=["DELETE"]),
    ]
