"""Security headers on every HTTP response of the node, the outermost layer of ``app.Node.asgi`` (issue 17).

Every response: ``X-Content-Type-Options: nosniff`` (a browser never guesses HTML or script out of a DICOM JSON
body, a rendered image or an error) and ``Referrer-Policy: no-referrer`` (a viewer URL names study UIDs; they do
not leave in a ``Referer``).

The built-in viewer's pages and static files (every path outside the DICOMweb prefix and ``/api``) also get a
``Content-Security-Policy``: scripts, styles, fetches and ``EventSource`` from the node itself only, no inline
script or style, no ``eval``, no plugins, no ``<base>``, forms posting only to the node, and no framing
(``frame-ancestors 'none'``, with ``X-Frame-Options: DENY`` for browsers without CSP level 2). ``img-src`` also
allows ``data:`` for the page's empty favicon. The viewer needs nothing more: its scripts are ES modules from
``web/`` and it writes DICOM text with ``textContent`` (``tests/test_web_lint.py``); a browser test loads a study
and fails on any CSP violation (``tests/test_viewer_security.py``). OHIF, served from its own origin, is not
affected: a policy governs the document it is served with, not the responses that document fetches.

A header the wrapped app already set is left as it is.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
EVERY_RESPONSE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
VIEWER_RESPONSE = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}
_EVERY_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in EVERY_RESPONSE.items()]
_VIEWER_RAW = _EVERY_RAW + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in VIEWER_RESPONSE.items()]


class SecurityHeaders:
    """Adds the headers above to each HTTP response; ``api_prefixes`` are the paths that are not the viewer's."""

    def __init__(self, app: ASGIApp, api_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.api_prefixes = tuple(p.rstrip("/") for p in api_prefixes)

    def viewer(self, path: str) -> bool:
        return not any(path == p or path.startswith(p + "/") for p in self.api_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = _VIEWER_RAW if self.viewer(scope["path"]) else _EVERY_RAW

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = message.get("headers") or []
                present = {name.lower() for name, _ in raw}
                message["headers"] = [*raw, *(item for item in wanted if item[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
