"""The HTTP side of the audit trail (``core/audit.py``): who is asking, and one record per DICOMweb read.

``actor(connection)`` is the request's principal (``scope["dcmnode.principal"]``, set by the authentication
middleware) as an audit ``Actor``, or the anonymous principal at the client's address when the request carries
none (``http.auth = "none"``).

``AuditTrail`` wraps the Starlette app, and the rendered fast path sends its own answers through it
(``sender``); it writes one record per QIDO-RS,
WADO-RS, WADO-URI, metadata, frames, bulkdata, rendered, thumbnail and export request, when the answer starts: the
route that answered is the ``endpoint`` Starlette's router (or the fast path) put in the scope, the event is
``EVENTS[endpoint]``, the outcome follows the status (below 400: 0; 4xx: 4; 5xx: 8; 401 and 403 are
recorded by ``dicomweb/access.py`` as 110114 / 110113, not again here). STOW-RS and uploads write their own
records (``stow.py``, ``nodeapi/imports.py``): only they know which studies came in. A record that cannot be
written with ``audit.fail_closed`` turns the answer into 503 (the app's own answer is dropped).

The cost per request is a dictionary lookup for the route, the Patient ID from a small cache (a query in a worker
thread the first time a study is seen) and one ``write`` to an open file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import FunctionType
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dcmnode.core import audit as au
from dcmnode.core import query as q
from dcmnode.core.access import Principal, anonymous
from dcmnode.dicomweb import qido, rendered, wado
from dcmnode.errors import AuditUnavailable

PRINCIPAL_KEY = "dcmnode.principal"
QUERY, ACCESSED, TRANSFERRED, EXPORTED, WADO_URI = "query", "accessed", "transferred", "export", "wado-uri"

# The DICOMweb routes that read, and the event each is (core/audit.py lists the mapping).
EVENTS: dict[Callable[..., Any], str] = {
    qido.studies: QUERY,
    qido.series: QUERY,
    qido.instances: QUERY,
    wado.retrieve_study: TRANSFERRED,
    wado.retrieve_series: TRANSFERRED,
    wado.retrieve_instance: TRANSFERRED,
    wado.study_metadata: ACCESSED,
    wado.series_metadata: ACCESSED,
    wado.instance_metadata: ACCESSED,
    wado.frames: ACCESSED,
    wado.bulkdata: ACCESSED,
    wado.wado_uri: WADO_URI,  # application/dicom: transferred; anything rendered: accessed
    rendered.collection: ACCESSED,
    rendered.thumbnail: ACCESSED,
    rendered.instance: ACCESSED,
    rendered.frames: ACCESSED,
    rendered.frame_thumbnail: ACCESSED,
    rendered.export: EXPORTED,
}
NOT_RECORDED = {401, 403}


def principal_of(scope: Scope) -> Principal:
    found = scope.get(PRINCIPAL_KEY)
    if isinstance(found, Principal):
        return found
    client = scope.get("client")
    return anonymous(client[0] if client else "")


def actor(connection: HTTPConnection) -> au.Actor:
    """The request's principal as the audit trail's actor (anonymous at the client's address when none)."""
    return actor_of(connection.scope)


def actor_of(scope: Scope) -> au.Actor:
    who = au.Actor.of(principal_of(scope))
    if not who.address and scope.get("client"):
        who = au.Actor(who.name, who.kind, scope["client"][0])
    return who


def is_person_name(key: str) -> bool:
    """Whether a QIDO-RS or C-FIND key names a PN attribute (its value stays out of the audit trail)."""
    try:
        return q.attribute(key).vr == "PN"
    except Exception:
        return False


def outcome_of(status: int) -> int:
    if status < 400:
        return au.SUCCESS
    return au.MINOR_FAILURE if status < 500 else au.SERIOUS_FAILURE


class AuditTrail:
    def __init__(self, app: ASGIApp, trail: au.Audit) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, self.sender(scope, send))

    def sender(self, scope: Scope, send: Send) -> Send:
        """``send`` for the answer to ``scope``, writing its record when the answer starts."""
        if scope["type"] != "http" or not self.trail.enabled or scope["method"] not in ("GET", "HEAD"):
            return send
        refused = False

        async def send_audited(message: Message) -> None:
            nonlocal refused
            if refused:
                return
            if message["type"] == "http.response.start":
                endpoint = scope.get("endpoint")  # a handler function, or a Router/Mount for a 404 in a mounted app
                kind = EVENTS.get(endpoint) if isinstance(endpoint, FunctionType) else None
                if kind is not None and message["status"] not in NOT_RECORDED:
                    try:
                        await self._record(scope, kind, message["status"])
                    except AuditUnavailable as err:
                        refused = True
                        body = json.dumps({"error": err.reason, "status": 503}).encode()
                        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
                        await send({"type": "http.response.start", "status": 503, "headers": headers})
                        await send({"type": "http.response.body", "body": body})
                        return
            await send(message)

        return send_audited

    async def _record(self, scope: Scope, kind: str, status: int) -> None:
        params = scope.get("path_params") or {}
        study = str(params.get("study") or "")
        if kind == WADO_URI:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            study = query.get("studyUID", "")
            dicom = query.get("contentType", "").strip().lower() == "application/dicom"
            kind = TRANSFERRED if dicom else ACCESSED
        if study and self.trail.patient_cached(study) is None:
            await anyio.to_thread.run_sync(self.trail.patient, study)  # a query: off the event loop
        who, outcome = actor_of(scope), outcome_of(status)
        detail = {"path": scope["path"], "status": status}
        if kind == QUERY:
            keys = au.query_string_keys(scope.get("query_string", b"").decode("latin-1"), is_person_name)
            self.trail.query(who, keys, outcome, study=study, detail=detail)
        elif kind == TRANSFERRED:
            self.trail.transferred_out(who, [study] if study else [], outcome, detail=detail)
        elif kind == EXPORTED:
            self.trail.export(who, [study] if study else [], outcome, detail=detail)
        else:
            self.trail.accessed(who, [study] if study else [], outcome, detail=detail)
