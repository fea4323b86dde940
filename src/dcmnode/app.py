"""Composition root: builds the store and services, the DIMSE SCP and the ASGI app.

The domain-error → HTTP table lives here, once (Microsoft's ExceptionHandlingMiddleware idea).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from dcmnode import nodeapi
from dcmnode.config import Peer, Settings
from dcmnode.core import metadata
from dcmnode.core import tls as pki
from dcmnode.core.limits import retry_after
from dcmnode.core.retrieve import StoredFile
from dcmnode.core.services import Services
from dcmnode.dicomweb import routes as dicomweb_routes
from dcmnode.dicomweb.access import AccessControl
from dcmnode.dicomweb.audit import AuditTrail
from dcmnode.dicomweb.context import HttpServices
from dcmnode.dicomweb.fastpath import BytesFastPath, RenderedFastPath
from dcmnode.dicomweb.headers import SecurityHeaders
from dcmnode.dicomweb.paths import RequestGuard
from dcmnode.dimse import scp, tls
from dcmnode.dimse import send as dimse_send
from dcmnode.errors import (
    AuditUnavailable,
    Conflict,
    DcmnodeError,
    DeidentificationRefused,
    DuplicateInstance,
    Forbidden,
    InvalidInstance,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    StorageFull,
    TooManyRequests,
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
    DeidentificationRefused: 422,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
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
        self.dimse_port = 0  # where DIMSE listens, in this process or in the DIMSE processes (0: tls_only)
        self.dimse_tls_port = 0  # where DIMSE listens over TLS (0: no TLS listener)
        self.http: HttpServices | None = None  # the HTTP side's services, once the HTTP app exists

    def start_dimse(self, sock: socket.socket | None = None, tls_sock: socket.socket | None = None) -> scp.Scp:
        """Serve DIMSE in this process (threads), on ``sock`` and ``tls_sock`` (``dcmnode serve`` shares them
        with its DIMSE processes), else on new sockets from the settings (``listen_dimse``)."""
        # sockets handed in with dimse.processes > 1: this is one of the DIMSE processes sharing them
        shared = (sock is not None or tls_sock is not None) and self.settings.dimse.processes > 1
        if sock is None and tls_sock is None:
            sock, tls_sock = listen_dimse(self.settings)
        services = self.services
        self.scp = scp.start(
            self.settings,
            services.ingest,
            services.catalog,
            sock,
            services.audit,
            authenticator=services.auth,
            associations=services.associations,
            tls_sock=tls_sock,
            shared=shared,
        )
        self.dimse_port, self.dimse_tls_port = self.scp.port, self.scp.tls_port
        return self.scp

    def asgi(self) -> SecurityHeaders:
        """The HTTP app (single rendered frames and the WADO-RS byte routes answered in front of it:
        ``dicomweb/fastpath.py``). With
        ``http.auth = "on"`` every request is checked before either (``dicomweb/access.py``); with ``"none"``
        nothing is in front, as before, and every request is the anonymous principal. Outermost, every response
        gets the security headers (``dicomweb/headers.py``: the viewer's a Content-Security-Policy). The process
        that serves it also keeps series metadata precomputed."""
        if not self.precomputer.started:
            if self.settings.http.metadata_idle_seconds <= 0:  # else they start with the first large series
                self.services.catalog.metadata.start_workers()
            self.precomputer.start()
        send = functools.partial(send_files, self.settings)  # de-identification jobs' output "send"
        self.http = http = HttpServices.build(self.services, self.dimse_port, self.dimse_tls_port, send)
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
        wado_bytes = BytesFastPath(trail, dicomweb, http, cross_origin_policy=cors, audit=trail)  # WADO-RS bytes
        fast = RenderedFastPath(wado_bytes, dicomweb, http, cross_origin_policy=cors, audit=trail)
        served: ASGIApp = fast
        if self.settings.http.auth == "on":
            served = AccessControl(fast, self.services.auth, dicomweb_middleware, self.services.audit)
        head = self.settings.http.max_header_kb * 1024  # and '..', NUL, encoded slashes: 400 (dicomweb/paths.py)
        return SecurityHeaders(RequestGuard(served, head), api_prefixes=(http.prefix, "/api"))

    def close(self) -> None:
        if self.http is not None:
            self.http.close()  # open uploads stop between members; what was stored stays stored
            self.http = None
        self.precomputer.stop()
        if self.scp is not None:
            self.scp.shutdown()
            self.scp = None
        self.services.close()


def send_files(settings: Settings, files: Sequence[StoredFile], peer: Peer) -> list[dimse_send.Sent]:
    """C-STORE ``files`` to ``peer`` with the retries of ``[sr] send_*`` (as the SR worker sends: ``worker.py``)."""
    retry = dimse_send.Retry(settings.sr.send_attempts, settings.sr.send_backoff, settings.sr.send_backoff_max)
    return dimse_send.send(files, peer, settings.node.ae_title, retry)


def listen_dimse(settings: Settings) -> tuple[socket.socket | None, socket.socket | None]:
    """The DIMSE listening sockets: plain (None with ``dimse.tls_only``) and TLS (None without ``tls_cert``).
    The TLS context is built first, so that a certificate that cannot be loaded stops the start with its reason."""
    dimse = settings.dimse
    tls_sock = None
    if tls.listener_context(dimse) is not None:
        tls_sock = scp.listen(dimse.host, dimse.tls_port)
    sock = None if dimse.tls_only else scp.listen(dimse.host, dimse.port)
    return sock, tls_sock


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
    headers = {"Retry-After": str(retry_after(exc.retry_after))} if isinstance(exc, TooManyRequests) else None
    return JSONResponse({"error": exc.reason, "status": code}, status_code=code, headers=headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code, headers=exc.headers
    )


# -- HTTPS ------------------------------------------------------------------------------------------------------
def https_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP listener's TLS context (``core/tls.py``: TLS 1.2 at least, BCP 195 suites), None for plain HTTP."""
    http = settings.http
    if not http.tls_cert:
        return None
    return pki.server_context(
        Path(http.tls_cert), Path(http.tls_key), Path(http.tls_ca) if http.tls_ca else None, http.tls_client_cert
    )


HOST_HEADER = re.compile(r"^(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:\d{1,5})?$")


class HttpsRedirect:
    """The plain-HTTP redirect listener (``http.redirect_port``): GET and HEAD get 308 Permanent Redirect to the
    same path and query on the HTTPS port (RFC 9110 15.4.9; no Strict-Transport-Security, which RFC 6797 7.2
    forbids over plain HTTP); every other method gets 400 without its body being read, so that nothing a
    client sends in clear is acted on and no data is served in clear."""

    def __init__(self, https_port: int, bound_host: str) -> None:
        self.suffix = "" if https_port == 443 else f":{https_port}"
        self.fallback = "" if bound_host in ("", "0.0.0.0", "::") else bound_host  # noqa: S104
        if ":" in self.fallback:
            self.fallback = f"[{self.fallback}]"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        host = self.fallback
        for name, value in scope["headers"]:
            if name == b"host":
                match = HOST_HEADER.match(value.decode("latin-1"))
                host = match["host"] if match else ""
                break
        if not host:
            await _plain(send, 400, "a Host header naming this node is needed to redirect to HTTPS\n")
            return
        target = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        location = f"https://{host}{self.suffix}{target.decode('latin-1')}"
        if query:
            location += "?" + query.decode("latin-1")
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 400, f"this port serves nothing in clear; send {scope['method']} to {location}\n")
            return
        body = b"" if scope["method"] == "HEAD" else f"moved to {location}\n".encode()
        await _plain(send, 308, body, [(b"location", location.encode("latin-1"))])


async def _plain(send: Send, status: int, text: str | bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode() if isinstance(text, str) else text
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})
