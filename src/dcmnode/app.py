"""Composition root: builds the store and services, the DIMSE SCP and the ASGI app.

The domain-error → HTTP table lives here, once (Microsoft's ExceptionHandlingMiddleware idea).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from dcmnode import nodeapi
from dcmnode.config import Settings
from dcmnode.core import metadata
from dcmnode.core.services import Services
from dcmnode.dicomweb import routes as dicomweb_routes
from dcmnode.dicomweb.access import AccessControl
from dcmnode.dicomweb.audit import AuditTrail
from dcmnode.dicomweb.context import HttpServices
from dcmnode.dicomweb.fastpath import RenderedFastPath
from dcmnode.dicomweb.paths import RequestGuard
from dcmnode.dimse import scp
from dcmnode.errors import (
    AuditUnavailable,
    Conflict,
    DcmnodeError,
    DuplicateInstance,
    Forbidden,
    InvalidInstance,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    StorageFull,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

HTTP_STATUS: dict[type[DcmnodeError], int] = {
    InvalidInstance: 400,
    InvalidRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    NotAcceptable: 406,
    Conflict: 409,
    DuplicateInstance: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    StorageFull: 507,
    AuditUnavailable: 503,
}


def http_status(err: DcmnodeError) -> int:
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


class Node:
    """One process's node: its services, the DIMSE SCP when this process serves it, the HTTP app when it serves
    that."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = Services.open(settings)
        self.precomputer = metadata.Precomputer(self.services.catalog.metadata)
        self.scp: scp.Scp | None = None
        self.dimse_port = 0  # where DIMSE listens, in this process or in the DIMSE processes
        self.http: HttpServices | None = None  # the HTTP side's services, once the HTTP app exists

    def start_dimse(self, sock: socket.socket | None = None) -> scp.Scp:
        """Serve DIMSE in this process (threads), on ``sock`` or a new socket from the settings."""
        sock = sock or scp.listen(self.settings.dimse.host, self.settings.dimse.port)
        services = self.services
        self.scp = scp.start(
            self.settings, services.ingest, services.catalog, sock, services.audit, authenticator=services.auth
        )
        self.dimse_port = self.scp.port
        return self.scp

    def asgi(self) -> RequestGuard:
        """The HTTP app (single rendered frames answered in front of it: ``dicomweb/fastpath.py``). With
        ``http.auth = "on"`` every request is checked before either (``dicomweb/access.py``); with ``"none"``
        nothing is in front, as before, and every request is the anonymous principal. The process that serves it
        also keeps series metadata precomputed."""
        if not self.precomputer.started:
            self.services.catalog.metadata.start_workers()
            self.precomputer.start()
        self.http = http = HttpServices.build(self.services, self.dimse_port)
        dicomweb = dicomweb_routes.routes()
        dicomweb_middleware = dicomweb_routes.middleware(self.settings.http.cors_origins)
        app = Starlette(
            routes=[
                Mount(
                    http.prefix,
                    routes=dicomweb,
                    middleware=dicomweb_middleware,
                ),
                Mount("/api", routes=nodeapi.routes()),
                Mount("/", app=StaticFiles(directory=web_root(), html=True)),
            ],
            exception_handlers={DcmnodeError: handle_error, HTTPException: handle_http_exception},
            lifespan=functools.partial(_lifespan, http),
        )
        app.state.services = http
        trail = AuditTrail(app, self.services.audit)  # one record per DICOMweb read (dicomweb/audit.py)
        cors = bool(self.settings.http.cors_origins)
        fast = RenderedFastPath(trail, dicomweb, http, cross_origin_policy=cors, audit=trail)
        head = self.settings.http.max_header_kb * 1024  # and '..', NUL, encoded slashes: 400 (dicomweb/paths.py)
        if self.settings.http.auth != "on":
            return RequestGuard(fast, head)
        return RequestGuard(AccessControl(fast, self.services.auth, dicomweb_middleware, self.services.audit), head)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()  # open uploads stop between members; what was stored stays stored
            self.http = None
        self.precomputer.stop()
        if self.scp is not None:
            self.scp.shutdown()
            self.scp = None
        self.services.close()


@contextlib.asynccontextmanager
async def _lifespan(http: HttpServices, app: Starlette) -> AsyncIterator[None]:
    """The HTTP side's executors and caches stop with the server."""
    yield
    http.close()


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
