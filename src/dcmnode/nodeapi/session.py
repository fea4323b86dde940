"""``/api/session``: the built-in viewer's sign-in with a local user's name and password (``http.auth = "on"``).

POST   /session  {"name", "password"} (JSON or a form) → 200 {"name", "kind", "scopes", "groups"} and the session cookie
                 (HttpOnly, SameSite=Strict, Path=/, Secure over HTTPS); 401 on a wrong name or password (never
                 saying which)
GET    /session  → 200 {"name", "kind", "scopes", "groups"} for the cookie's session; 401 when nobody is signed in
DELETE /session  → 200: the session is forgotten server-side and the cookie cleared

The session id is random (``secrets.token_urlsafe(32)``); the index keeps only its hash (``core.auth``), so every
HTTP process and a restart see it. The routes are public in ``dicomweb.access.ROUTE_SCOPES``; POST and DELETE need
the node's own ``Origin`` (checked there, against login CSRF). With ``http.auth = "none"`` GET answers the anonymous
principal and POST 400 (there is nothing to sign in to).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dcmnode.core import access
from dcmnode.dicomweb.access import SESSION_COOKIE, session_id
from dcmnode.dicomweb.context import principal, services
from dcmnode.errors import InvalidRequest, Unauthorized

WRONG = "wrong user name or password"
MAX_BODY = 16 * 1024


def _who(found: access.Principal) -> dict[str, Any]:
    return {"name": found.name, "kind": found.kind, "scopes": sorted(found.scopes), "groups": sorted(found.groups)}


async def _credentials(request: Request) -> tuple[str, str]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise InvalidRequest("a sign-in request is a name and a password")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        fields: Any = {k: v[0] for k, v in form.items()}
    else:
        try:
            fields = json.loads(body)
        except ValueError:
            raise InvalidRequest('a sign-in request is JSON {"name", "password"} or a form') from None
    if not isinstance(fields, dict):
        raise InvalidRequest('a sign-in request is JSON {"name", "password"} or a form')
    name, password = fields.get("name"), fields.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
        raise InvalidRequest("a sign-in request needs a name and a password")
    return name, password


async def sign_in(request: Request) -> JSONResponse:
    http = services(request)
    if http.settings.http.auth != "on":
        raise InvalidRequest('http.auth is "none": there is nothing to sign in to')
    name, password = await _credentials(request)
    address = request.client.host if request.client else ""
    found = await run_in_threadpool(http.auth.verify_password, name, password)
    session = None if found is None else await run_in_threadpool(http.auth.open_session, found)
    if found is None or session is None:
        await run_in_threadpool(http.audit.authentication, name, address, False, "viewer sign-in refused")
        raise Unauthorized(WRONG)
    await run_in_threadpool(http.audit.authentication, found, address, True, "viewer sign-in")
    answer = JSONResponse(_who(found), headers={"Cache-Control": "no-store"})
    answer.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=int(http.settings.http.session_hours * 3600),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return answer


async def current(request: Request) -> JSONResponse:
    http = services(request)
    if http.settings.http.auth != "on":
        return JSONResponse(_who(principal(request)))
    session = session_id(request.scope)
    found = None if session is None else await run_in_threadpool(http.auth.verify_session, session)
    if found is None:
        raise Unauthorized("nobody is signed in")
    return JSONResponse(_who(found), headers={"Cache-Control": "no-store"})


async def sign_out(request: Request) -> JSONResponse:
    http = services(request)
    session = session_id(request.scope)
    if session is not None:
        await run_in_threadpool(http.auth.close_session, session)
    answer = JSONResponse({"signed_out": session is not None}, headers={"Cache-Control": "no-store"})
    answer.delete_cookie(
        SESSION_COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict"
    )
    return answer


def routes() -> list[Route]:
    return [
        Route("/session", sign_in, methods=["POST"]),
        Route("/session", current, methods=["GET"]),
        Route("/session", sign_out, methods=["DELETE"]),
    ]
