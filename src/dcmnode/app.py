"""Composition root: builds the store and services, the DIMSE SCP and the ASGI app. Imports: everything.

The domain-error → HTTP table lives here, once (Microsoft's ExceptionHandlingMiddleware idea).
"""

from __future__ import annotations

import logging
import socket
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from dcmnode import api, upload
from dcmnode.config import Settings
from dcmnode.core import metadata
from dcmnode.core.services import Services
from dcmnode.dicomweb import routes as dicomweb_routes
from dcmnode.dicomweb.fastpath import RenderedFastPath
from dcmnode.dicomweb.qido import QidoLimits
from dcmnode.dicomweb.stow import StowLimits
from dcmnode.dimse import scp
from dcmnode.errors import (
    Conflict,
    DcmnodeError,
    DuplicateInstance,
    InvalidInstance,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    StorageFull,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

DICOMWEB_PREFIX = "/dicom-web"
MIB = 1024 * 1024

HTTP_STATUS: dict[type[DcmnodeError], int] = {
    InvalidInstance: 400,
    InvalidRequest: 400,
    NotFound: 404,
    NotAcceptable: 406,
    Conflict: 409,
    DuplicateInstance: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    StorageFull: 507,
}


def http_status(err: DcmnodeError) -> int:
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = Services.open(settings)
        self.store, self.ingest, self.catalog = self.services.store, self.services.ingest, self.services.catalog
        self.precomputer = metadata.Precomputer(self.catalog.metadata)
        self.scp: scp.Scp | None = None
        self.dimse_port = 0  # where DIMSE listens, in this process or in the DIMSE processes
        self.imports: upload.Registry | None = None  # bulk upload jobs, once the HTTP app exists

    def start_dimse(self, sock: socket.socket | None = None) -> scp.Scp:
        """Serve DIMSE in this process (threads), on ``sock`` or a new socket from the settings."""
        sock = sock or scp.listen(self.settings.dimse.host, self.settings.dimse.port)
        self.scp = scp.start(self.settings, self.ingest, self.catalog, sock)
        self.dimse_port = self.scp.port
        return self.scp

    def asgi(self) -> RenderedFastPath:
        """The HTTP app (single rendered frames answered in front of it: ``dicomweb/fastpath.py``). The process
        that serves it also keeps series metadata precomputed."""
        if not self.precomputer.started:
            self.catalog.metadata.start_workers()
            self.precomputer.start()
        app = Starlette(
            routes=[
                Mount(
                    DICOMWEB_PREFIX,
                    routes=dicomweb_routes.routes(),
                    middleware=dicomweb_routes.middleware(self.settings.http.cors_origins),
                ),
                Mount("/api", routes=api.routes() + upload.routes()),
                Mount("/", app=StaticFiles(directory=web_root(), html=True)),
            ],
            exception_handlers={DcmnodeError: handle_error, HTTPException: handle_http_exception},
        )
        app.state.settings = self.settings
        app.state.ingest = self.ingest
        app.state.catalog = self.catalog
        app.state.renderer = self.services.renderer
        app.state.sr_jobs = self.services.jobs
        self.imports = app.state.imports = upload.Registry(self.ingest, self.settings)
        app.state.qido_limits = QidoLimits(self.settings.http.max_query_results)
        app.state.dicomweb_prefix = DICOMWEB_PREFIX
        app.state.dimse_port = self.dimse_port
        http = self.settings.http
        app.state.stow_limits = StowLimits(http.max_request_mb * MIB, http.max_part_mb * MIB, self.settings.store.fsync)
        return RenderedFastPath(app, DICOMWEB_PREFIX, cross_origin_policy=bool(http.cors_origins))

    def close(self) -> None:
        if self.imports is not None:
            self.imports.cancel_all()  # stop between members; what was stored stays stored
        self.precomputer.stop()
        if self.scp is not None:
            self.scp.shutdown()
            self.scp = None
        self.services.close()


def web_root() -> Path:
    """The viewer: packaged as dcmnode/_web in a wheel, or the repository's web/ in an editable install."""
    packaged = Path(str(resources.files("dcmnode"))) / "_web"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "web"


async def handle_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DcmnodeError)
    code = http_status(exc)
    log.warning("%s %s -> %d: %s", request.method, request.url.path, code, exc.reason)
    return JSONResponse({"error": exc.reason, "status": code}, status_code=code)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code, headers=exc.headers
    )
