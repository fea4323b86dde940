"""The node's own JSON API (not DICOMweb): health and store statistics. Imports: starlette, core."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dcmnode.core.ingest import Ingest


def status(request: Request) -> JSONResponse:
    ingest: Ingest = request.app.state.ingest
    settings = request.app.state.settings
    return JSONResponse(
        {
            "ae_title": settings.node.ae_title,
            "dimse_port": request.app.state.dimse_port,
            "counts": ingest.store.index.counts(),
        }
    )


def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def routes() -> list[Route]:
    return [Route("/status", status), Route("/health", health)]
