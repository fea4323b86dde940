"""Every HTTP door checked: one table of (method, route) → the scope it needs, and the ASGI middleware that
enforces it in front of everything else (``app.Node.asgi`` puts it outside the rendered fast path and the router).

With ``http.auth = "none"`` the middleware is not in the app at all (nothing is checked, nothing costs) and every
request is the anonymous principal (every scope, every study): ``principal(request)`` says so. With ``"on"``, the
credential sources (``SOURCES``: ``Authorization: Bearer``, an API token or an OIDC JWT, then the viewer's
session cookie, ``SESSION_COOKIE`` from ``POST /api/session``) give the principal; a request without one gets 401
with ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a credential was sent and refused), one whose
principal lacks the route's scope 403 (``error="insufficient_scope"``), both with a JSON body ``{"error",
"status"}``. An ``OPTIONS`` request (CORS preflight) never needs credentials. A path under ``/dicom-web`` or
``/api`` that the table does not know needs a valid credential and then gets the router's usual 404/405; any other
path is a static viewer file and needs nothing (the sign-in page must load). Handlers read the principal with
``principal(request)``.

A browser sends the cookie along with any request, a cross-site one too: an unsafe request (POST, PUT, DELETE,
PATCH) authenticated by the cookie, and the sign-in and sign-out themselves (``SAME_ORIGIN``, login CSRF), must
carry an ``Origin`` equal to the node's own (the request's scheme://host:port), else 403. Bearer requests are not
checked (a browser never adds that header by itself).

``tests/test_auth_http.py`` walks the app's routes and the fast path's patterns and fails on any (route, method)
missing from ``ROUTE_SCOPES``: a new route needs a row here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import cookie_parser
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from dcmnode.core.access import Principal
from dcmnode.core.access import Scope as Need
from dcmnode.core.audit import Audit
from dcmnode.core.auth import Authenticator
from dcmnode.dicomweb.context import DICOMWEB_PREFIX, NOBODY, PRINCIPAL

log = logging.getLogger("dcmnode.http.access")

PUBLIC = None  # a route anyone may call, signed in or not

W = DICOMWEB_PREFIX
_RS = f"{W}/studies/{{study}}/series/{{series}}"
_RI = f"{_RS}/instances/{{instance}}"

# (method, route as the app declares it, prefix included) -> the scope it needs. HEAD takes GET's row.
ROUTE_SCOPES: dict[tuple[str, str], Need | None] = {
    # DICOMweb (dicomweb/routes.py): QIDO-RS, WADO-RS, rendered, thumbnails, export, WADO-URI, STOW-RS
    ("GET", f"{W}/studies"): Need.READ,
    ("POST", f"{W}/studies"): Need.WRITE,
    ("GET", f"{W}/series"): Need.READ,
    ("GET", f"{W}/instances"): Need.READ,
    ("POST", f"{W}/studies/{{study}}"): Need.WRITE,
    ("GET", f"{W}/studies/{{study}}/series"): Need.READ,
    ("GET", f"{W}/studies/{{study}}/instances"): Need.READ,
    ("GET", f"{_RS}/instances"): Need.READ,
    ("GET", f"{W}/studies/{{study}}"): Need.READ,
    ("GET", f"{W}/studies/{{study}}/metadata"): Need.READ,
    ("GET", _RS): Need.READ,
    ("GET", f"{_RS}/metadata"): Need.READ,
    ("GET", _RI): Need.READ,
    ("GET", f"{_RI}/metadata"): Need.READ,
    ("GET", f"{_RI}/frames/{{frames}}"): Need.READ,
    ("GET", f"{_RI}/bulkdata/{{tag}}"): Need.READ,
    ("GET", f"{W}/studies/{{study}}/rendered"): Need.READ,
    ("GET", f"{W}/studies/{{study}}/thumbnail"): Need.READ,
    ("GET", f"{_RS}/rendered"): Need.READ,
    ("GET", f"{_RS}/thumbnail"): Need.READ,
    ("GET", f"{_RS}/export"): Need.READ,
    ("GET", f"{_RI}/rendered"): Need.READ,  # also answered by the fast path
    ("GET", f"{_RI}/thumbnail"): Need.READ,  # also answered by the fast path
    ("GET", f"{_RI}/frames/{{frames}}/rendered"): Need.READ,  # also answered by the fast path
    ("GET", f"{_RI}/frames/{{frames}}/thumbnail"): Need.READ,  # also answered by the fast path
    ("GET", f"{W}/wado"): Need.READ,
    ("DELETE", f"{W}/studies/{{study}}"): Need.DELETE,  # a vendor extension (dicomweb/delete.py)
    ("DELETE", _RS): Need.DELETE,
    ("DELETE", _RI): Need.DELETE,
    # the node API (nodeapi/)
    ("GET", "/api/status"): Need.READ,
    ("GET", "/api/health"): PUBLIC,  # load balancers and the CLI's wait for "ready"
    ("GET", "/api/enhance"): Need.READ,
    ("POST", "/api/sr/jobs"): Need.SR,
    ("GET", "/api/sr/jobs"): Need.READ,
    ("GET", "/api/sr/jobs/{job}"): Need.READ,
    ("DELETE", "/api/sr/jobs/{job}"): Need.SR,
    ("POST", "/api/imports"): Need.WRITE,
    ("GET", "/api/imports"): Need.WRITE,
    ("GET", "/api/imports/{job}"): Need.WRITE,
    ("DELETE", "/api/imports/{job}"): Need.WRITE,
    ("GET", "/api/audit"): Need.ADMIN,
    ("POST", "/api/session"): PUBLIC,  # sign in (the same-origin check applies: SAME_ORIGIN)
    ("GET", "/api/session"): PUBLIC,  # who is signed in: 401 when nobody (the handler reads the cookie)
    ("DELETE", "/api/session"): PUBLIC,  # sign out
    ("GET", "/api/studies/{study}/labels"): Need.READ,
    ("PUT", "/api/studies/{study}/labels/{label}"): Need.WRITE,
    ("DELETE", "/api/studies/{study}/labels/{label}"): Need.WRITE,
    ("POST", "/api/imports/{job}/finish"): Need.WRITE,
    ("GET", "/api/imports/{job}/events"): Need.WRITE,
    ("PUT", "/api/imports/{job}/files/{path:path}"): Need.WRITE,
    ("POST", "/api/deidentify"): Need.DEIDENTIFY,  # de-identified data may leave the node: its own scope
    ("GET", "/api/deidentify"): Need.DEIDENTIFY,
    ("GET", "/api/deidentify/{job}"): Need.DEIDENTIFY,
    ("DELETE", "/api/deidentify/{job}"): Need.DEIDENTIFY,
    ("GET", "/api/deidentify/{job}/archive"): Need.DEIDENTIFY,
    # the viewer's static files (Mount "/"): the sign-in page must load without credentials
    ("GET", "/{path:path}"): PUBLIC,
}
# Paths under these belong to routes: one the table does not know still needs a valid credential (then 404/405).
PROTECTED = (W, "/api")
STATIC = ("GET", "/{path:path}")
# Public routes that still need a same-origin request when a browser may be behind them (login CSRF).
SAME_ORIGIN = frozenset({("POST", "/api/session"), ("DELETE", "/api/session")})
UNSAFE = frozenset({"POST", "PUT", "DELETE", "PATCH"})
SESSION_COOKIE = "dcmnode_session"


class BadCredential(Exception):
    """A credential was sent and refused (the reason is for the log; it never holds the credential)."""


class CrossOrigin(Exception):
    """An unsafe request authenticated by the session cookie without the node's own ``Origin`` (403)."""


def _header(scope: Scope, name: bytes) -> str | None:
    value = next((v for k, v in scope["headers"] if k == name), None)
    return None if value is None else value.decode("latin-1")


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _authority(scheme: str, host: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``host[:port]`` (``[v6]:port`` too); None when it does not parse."""
    host = host.strip().lower()
    name, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
    if not name:
        return None
    try:
        number = int(port) if port else _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return None
    return scheme, name, number


def own_origin(scope: Scope) -> bool:
    """Whether the request carries an ``Origin`` equal to the node's own (scheme://host:port it was asked at)."""
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host or "://" not in origin:
        return False
    scheme = str(scope.get("scheme", "http")).replace("ws", "http")
    theirs_scheme, _, theirs_host = origin.partition("://")
    if "/" in theirs_host:
        return False
    theirs, ours = _authority(theirs_scheme.lower(), theirs_host), _authority(scheme, host)
    return theirs is not None and theirs == ours


def session_id(scope: Scope) -> str | None:
    """The session cookie's value, if the request carries one."""
    cookies = _header(scope, b"cookie")
    return (cookie_parser(cookies).get(SESSION_COOKIE) or None) if cookies else None


# A credential source: the principal its credential proves, None when the request carries none of its kind, or
# BadCredential (CrossOrigin: the credential is good, the request may not use it). Tried in order: bearer first.
Source = Callable[[Scope, Authenticator], Awaitable[Principal | None]]


async def bearer(scope: Scope, auth: Authenticator) -> Principal | None:
    """``Authorization: Bearer <API token or OIDC JWT>`` (RFC 6750 §2.1)."""
    value = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    if value is None:
        return None
    kind, _, token = value.decode("latin-1").strip().partition(" ")
    if kind.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        raise BadCredential("empty bearer token")
    decided, found = auth.decided(token)
    if not decided:  # a first sight may read the index, hash a password or fetch the issuer's keys
        found = await run_in_threadpool(auth.verify_bearer, token)
    if found is None:
        raise BadCredential("unknown, revoked or expired token" if token.startswith("dcm_") else "JWT refused")
    return found


async def session_cookie(scope: Scope, auth: Authenticator) -> Principal | None:
    """The viewer's session cookie (``POST /api/session``); unsafe methods need the node's own ``Origin``."""
    session = session_id(scope)
    if session is None:
        return None
    decided, found = auth.session_decided(session)
    if not decided:
        found = await run_in_threadpool(auth.verify_session, session)
    if found is None:
        raise BadCredential("unknown, signed-out or expired session")
    if scope.get("method", "GET") in UNSAFE and not own_origin(scope):
        raise CrossOrigin(f"{found.kind} {found.name}: no same-origin Origin header")
    return found


SOURCES: tuple[Source, ...] = (bearer, session_cookie)


CROSS_ORIGIN = "a request signed in by the session cookie must come from the node's own origin (Origin header)"


class RouteTable:
    """``ROUTE_SCOPES`` compiled: what a (method, path) needs."""

    def __init__(self, table: dict[tuple[str, str], Need | None]) -> None:
        self.table = table
        by_method: dict[str, list[tuple[re.Pattern[str], Need | None]]] = {}
        for (method, path), need in table.items():
            if (method, path) != STATIC:
                by_method.setdefault(method, []).append((compile_path(path)[0], need))
        self._by_method = by_method

    def decide(self, method: str, path: str) -> tuple[bool, Need | None]:
        """(whether the table knows this request, the scope it needs: None = public)."""
        for pattern, need in self._by_method.get("GET" if method == "HEAD" else method, ()):
            if pattern.match(path):
                return True, need
        if any(path == p or path.startswith(p + "/") for p in PROTECTED):
            return False, None  # a route's path, not in the table: a valid credential, then the router answers
        if method in ("GET", "HEAD"):
            return True, self.table[STATIC]
        return False, None


class AccessControl:
    """The ASGI middleware in front of the whole app, when ``http.auth = "on"``."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        dicomweb_middleware: Sequence[Middleware] = (),
        audit: Audit | None = None,
        sources: Sequence[Source] = SOURCES,
        table: dict[tuple[str, str], Need | None] = ROUTE_SCOPES,
    ) -> None:
        self.app = app
        self.auth = auth
        self.audit = audit  # refused credentials (110114) and refused scopes (110113) are recorded
        self.sources = tuple(sources)
        self.routes = RouteTable(table)
        denial: ASGIApp = _deny
        for m in reversed(dicomweb_middleware):  # a refusal of a DICOMweb request carries its CORS headers
            denial = m.cls(denial, *m.args, **m.kwargs)
        self.dicomweb_denial = denial

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        address = scope["client"][0] if scope.get("client") else ""
        method, path = scope.get("method", "GET"), scope["path"]
        if method == "OPTIONS":
            scope[PRINCIPAL] = NOBODY
            await self.app(scope, receive, send)
            return
        known, need = self.routes.decide(method, path)
        if (method, path) in SAME_ORIGIN and not own_origin(scope):
            await self._refuse(scope, receive, send, 403, CROSS_ORIGIN, "no same-origin Origin header")
            return
        if known and need is PUBLIC:
            scope[PRINCIPAL] = NOBODY
            await self.app(scope, receive, send)
            return
        try:
            found = await self._authenticate(scope)
        except BadCredential as exc:
            if self.audit is not None:
                await run_in_threadpool(self.audit.authentication, "unknown", address, False, str(exc))
            await self._refuse(scope, receive, send, 401, "invalid or expired credentials", str(exc), invalid=True)
            return
        except CrossOrigin as exc:
            await self._refuse(scope, receive, send, 403, CROSS_ORIGIN, str(exc))
            return
        if found is None:
            await self._refuse(scope, receive, send, 401, "authentication required", "no credentials")
            return
        if need is not None and not found.allows(need):
            if self.audit is not None:
                alert = f"{method} {path} refused: no {need} scope"
                await run_in_threadpool(self.audit.security_alert, alert, found, address)
            reason = f"this request needs the {need} scope"
            await self._refuse(scope, receive, send, 403, reason, f"{found.kind} {found.name} lacks {need}", need)
            return
        scope[PRINCIPAL] = dataclasses.replace(found, address=address) if address else found
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Principal | None:
        for source in self.sources:
            found = await source(scope, self.auth)
            if found is not None:
                return found
        return None

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        reason: str,
        detail: str,
        need: Need | None = None,
        invalid: bool = False,
    ) -> None:
        challenge = 'Bearer realm="dcmnode"'
        if invalid:
            challenge += ', error="invalid_token"'
        elif need is not None:
            challenge += f', error="insufficient_scope", scope="{need}"'
        log.info("%s %s -> %d: %s", scope.get("method"), scope["path"], status, detail)  # never a credential
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        scope["dcmnode.denial"] = (status, reason, challenge)
        path = scope["path"]
        app = self.dicomweb_denial if path == W or path.startswith(W + "/") else _deny
        await app(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send) -> None:
    status, reason, challenge = scope["dcmnode.denial"]
    body = json.dumps({"error": reason, "status": status}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"www-authenticate", challenge.encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
