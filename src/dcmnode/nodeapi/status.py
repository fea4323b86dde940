"""``/api/status``, ``/api/health`` and ``/api/enhance``: what the node is, whether it answers, and the
enhancement operators its ``/rendered`` resources take."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dcmnode.core import access, render
from dcmnode.dicomweb.context import principal, services


def status(request: Request) -> JSONResponse:
    http = services(request)
    return JSONResponse(
        {
            "ae_title": http.settings.node.ae_title,
            "dimse_port": http.dimse_port,
            "dimse_tls_port": http.dimse_tls_port,  # 0: no TLS listener
            "counts": http.catalog.counts(),
            "sr_worker": http.settings.sr.worker,
            "can": can(principal(request)),
            "audit_failures": http.audit.failures,  # audit records this process could not write
        }
    )


def can(who: access.Principal) -> dict[str, bool]:
    """What the viewer may offer this principal: one flag per scope (the viewer hides what it may not do)."""
    return {scope.value: who.allows(scope) for scope in access.Scope}


def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def enhance_operators(request: Request) -> JSONResponse:
    """``GET /api/enhance``: the ``enhance=`` operators of ``/rendered`` (``imaging/enhance.py``'s table), each
    with its stage and parameters (name, default, min/max/step or choices), from which the viewer builds its
    controls."""
    return JSONResponse(render.describe_enhance())


def routes() -> list[Route]:
    return [
        Route("/status", status, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/enhance", enhance_operators, methods=["GET"]),
    ]
