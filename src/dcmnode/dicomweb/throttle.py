"""The per-client rate limit of the expensive HTTP requests (``http.expensive_per_second``, ``expensive_burst``):
renderings with ``enhance=`` that are not in the render cache, a study's or series' ``/rendered`` (one image per
instance), series exports. Cheap requests (QIDO-RS, WADO-RS instances and metadata, plain renderings) are never
counted: the rendered fast path hands an enhanced request to the full app only while the limit is on, so a plain
one costs one attribute test more.

A client is the principal when authenticated, else its IP address (``core.limits.client_key``). Over the limit:
``TooManyRequests``, answered 429 with ``Retry-After`` (``app.handle_error``, which logs every refusal); the first
refusal since the client was last served is also a 110113 Security Alert in the audit trail (a burst of refusals
is one record, not one each).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import HTTPConnection

from dcmnode.core.limits import client_key, retry_after
from dcmnode.dicomweb.context import principal, services
from dcmnode.errors import AuditUnavailable, TooManyRequests

log = logging.getLogger(__name__)


def charge(connection: HTTPConnection, what: str) -> Callable[[], None]:
    """The charge of one expensive request (``what`` names it in the refusal): call it when the work is about to
    be done (it may be called from a worker thread); it raises ``TooManyRequests`` when the client is over."""
    http, who = services(connection), principal(connection)
    client = connection.client
    address = who.address or (client.host if client else "")

    def take() -> None:
        wait, first = http.expensive.take(client_key(who))
        if not wait:
            return
        limit = f"http.expensive_per_second = {http.expensive.rate:g}, expensive_burst = {http.expensive.burst}"
        reason = f"too many expensive requests ({what}) from this client ({limit}); retry in {retry_after(wait)} s"
        if first:
            log.warning("rate limit: %s %s (%s) refused from now on for %.1f s", who.kind, who.name, address, wait)
            try:
                http.audit.security_alert(f"rate limit: {what} refused ({limit})", who, address)
            except AuditUnavailable:
                pass  # counted and logged by the trail; the request is refused in any case
        raise TooManyRequests(reason, retry_after=wait)

    return take
