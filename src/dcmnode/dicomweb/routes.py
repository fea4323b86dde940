"""The DICOMweb URL surface (PS3.18), in one list, and its CORS policy."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dcmnode.dicomweb import delete, qido, rendered, stow, wado

LOOPBACK_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
EXPOSED_HEADERS = ["Warning", "Content-Location", "ETag", "Content-Length", "Content-Type", "Last-Modified"]


def routes() -> list[Route]:
    return [
        Route("/studies", qido.studies, methods=["GET"]),
        Route("/studies", stow.store, methods=["POST"]),
        Route("/series", qido.series, methods=["GET"]),
        Route("/instances", qido.instances, methods=["GET"]),
        Route("/studies/{study}", stow.store, methods=["POST"]),
        Route("/studies/{study}/series", qido.series, methods=["GET"]),
        Route("/studies/{study}/instances", qido.instances, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances", qido.instances, methods=["GET"]),
        Route("/studies/{study}", wado.retrieve_study, methods=["GET"]),
        Route("/studies/{study}/metadata", wado.study_metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}", wado.retrieve_series, methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", wado.series_metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances/{instance}", wado.retrieve_instance, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances/{instance}/metadata", wado.instance_metadata),
        Route("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", wado.frames),
        Route("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}", wado.bulkdata),
        Route("/studies/{study}/rendered", rendered.collection),
        Route("/studies/{study}/thumbnail", rendered.thumbnail),
        Route("/studies/{study}/series/{series}/rendered", rendered.collection),
        Route("/studies/{study}/series/{series}/thumbnail", rendered.thumbnail),
        Route("/studies/{study}/series/{series}/export", rendered.export),
        Route("/studies/{study}/series/{series}/instances/{instance}/rendered", rendered.instance),
        Route("/studies/{study}/series/{series}/instances/{instance}/thumbnail", rendered.thumbnail),
        Route("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", rendered.frames),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", rendered.frame_thumbnail
        ),
        Route("/wado", wado.wado_uri, methods=["GET"]),
        Route("/studies/{study}", delete.delete, methods=["DELETE"]),
        Route("/studies/{study}/series/{series}", delete.delete, methods=["DELETE"]),
        Route("/studies/{study}/series/{series}/instances/{instance}", delete.delete, methods=["DELETE"]),
    ]


def middleware(cors_origins: Sequence[str]) -> list[Middleware]:
    """CORS for browser viewers served from another origin (OHIF), incl. preflight for Accept and Authorization.

    ``Cross-Origin-Resource-Policy: cross-origin`` lets a page running with COEP (OHIF does, for
    SharedArrayBuffer) embed our responses."""
    origins = [o for o in cors_origins if o != "loopback"]
    if not cors_origins:
        return [compression()]
    regex = LOOPBACK_ORIGINS if "loopback" in cors_origins else None
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_origin_regex=regex,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        ),
        Middleware(CrossOriginResourcePolicy),
        compression(),
    ]


def compression() -> Middleware:
    """gzip for JSON answers; DICOM, frames and images are sent as they are (compressing them costs CPU for
    little gain, and /metadata brings its own precompressed body)."""
    return Middleware(
        GZipMiddleware,
        minimum_size=1024,
        compresslevel=5,
        exclude_content_types=("multipart/related", "application/dicom", "application/octet-stream", "image/*"),
    )


class CrossOriginResourcePolicy:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"cross-origin-resource-policy", b"cross-origin")]
            await send(message)

        await self.app(scope, receive, send_with_header)
