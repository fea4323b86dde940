"""DIMSE SCP: C-ECHO and C-STORE over pynetdicom, a thin adapter over ``core.ingest``. Who may associate and
which services it may use is decided by ``dimse.access.Gate``, bound around every handler here.

The DICOM status of a failure
comes from the domain error (``status.failure``, which for C-STORE is ``err.status``, PS3.4 Annex B.2.3): 0xA700
out of resources, 0xA900 data set does not match SOP class, 0xC000 cannot understand, 0x0110 processing failure.
Success (0x0000) is answered only after ``Ingest`` has made the instance durable.
"""

from __future__ import annotations

import functools
import logging
import socket
import socketserver
import threading
import time
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dcmnode import status
from dcmnode.config import Settings
from dcmnode.core.access import Authenticator, Principal
from dcmnode.core.audit import Audit
from dcmnode.core.catalog import Catalog
from dcmnode.core.ingest import Ingest
from dcmnode.core.limits import Slots
from dcmnode.core.parse import Expected
from dcmnode.core.query import study_filter
from dcmnode.dimse import audit, compat, query_retrieve, tls
from dcmnode.dimse.access import Gate
from dcmnode.dimse.file_meta import head as part10_head
from dcmnode.errors import AuditUnavailable, DcmnodeError, InvalidInstance
from dcmnode.model import Source, SourceKind
from dcmnode.status import SUCCESS, Service

log = logging.getLogger(__name__)

QUERY_RETRIEVE = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

STORAGE_SYNTAXES = [ExplicitVRLittleEndian, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian)]
ACCEPT_YIELD = 0.002  # seconds a process sharing the listener waits per association it serves before accepting
INTERNAL_ERROR = "internal error while storing; see the node's log"


def build_ae(settings: Settings, gate: Gate) -> AE:
    dimse = settings.dimse
    ae = AE(ae_title=settings.node.ae_title)
    ae.maximum_associations = dimse.max_associations
    ae.maximum_pdu_size = dimse.max_pdu
    ae.acse_timeout = dimse.acse_timeout
    ae.dimse_timeout = dimse.dimse_timeout
    ae.network_timeout = dimse.network_timeout
    gate.configure(ae)  # calling / called AE title checks
    ae.add_supported_context(Verification)
    # Every storage SOP class, every transfer syntax pynetdicom knows: stored as received, never transcoded.
    # Both roles accepted in SCP/SCU role selection: a C-GET requestor acts as storage SCP (PS3.4 C.4.3).
    # The acceptor's order picks a context's syntax: explicit VR little endian first (the VRs kept; what C-GET
    # sends most files in as stored, query_retrieve), then pynetdicom's order.
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), STORAGE_SYNTAXES, scu_role=True, scp_role=True)
    for sop_class in QUERY_RETRIEVE:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    return ae


class SharedSocketServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a socket that is already listening, possibly shared by several
    processes (``dimse.processes``): the kernel hands each new association to one process that accepts."""

    listening: socket.socket
    shared: bool  # other processes accept on the same socket: yield to an idler one

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the unbound socket socketserver made for us
        self.socket = self.listening
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Least-loaded first: every process sharing the socket wakes for a new connection; one that already
        # serves associations yields for a moment so that an idler process accepts it (the loser of the race
        # gets BlockingIOError, which socketserver ignores).
        if self.shared:
            busy = len(self.active_associations)
            if busy:
                time.sleep(min(busy, 8) * ACCEPT_YIELD)
        return super().get_request()

    def shutdown(self) -> None:
        # pynetdicom's shutdown() also unregisters from ae._servers, which only start_server() fills
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """The DIMSE listening socket. Non-blocking, so that a process that loses the race for a new connection
    to another process gets BlockingIOError (ignored by socketserver) instead of hanging in accept(); the sockets
    it accepts are blocking all the same (accept4 does not pass O_NONBLOCK on, and Python gives them the default
    timeout, None). Nagle's algorithm is off on it, and so on every connection it accepts (Linux and the BSDs
    copy TCP_NODELAY to the accepted socket): no per-association setsockopt, and nothing sent before it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class Scp:
    """The running SCP: pynetdicom's threaded servers (one thread per association), one per listener (plain,
    TLS), with one gate."""

    def __init__(self, servers: list[tuple[ThreadedAssociationServer, threading.Thread, bool]], gate: Gate) -> None:
        self.servers = servers  # (server, its thread, whether it is the TLS listener)
        self.gate = gate  # access decisions; gate.principal_of(event) is who made a request

    @property
    def server(self) -> ThreadedAssociationServer:
        """The plain listener's server (the TLS one with ``dimse.tls_only``)."""
        return self.servers[0][0]

    @property
    def port(self) -> int:
        """The plain listener's port; 0 without one (``dimse.tls_only``)."""
        return next((int(s.server_address[1]) for s, _, secure in self.servers if not secure), 0)

    @property
    def tls_port(self) -> int:
        """The TLS listener's port; 0 without one."""
        return next((int(s.server_address[1]) for s, _, secure in self.servers if secure), 0)

    def shutdown(self) -> None:
        for server, thread, _ in self.servers:
            server.shutdown()
            thread.join(10)


def start(
    settings: Settings,
    ingest: Ingest,
    catalog: Catalog,
    sock: socket.socket | None,
    trail: Audit | None = None,
    authenticator: Authenticator | None = None,
    tls_sock: socket.socket | None = None,
    associations: Slots | None = None,
    shared: bool = False,
) -> Scp:
    """Serve C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET on ``sock`` (from ``listen``; None with ``tls_only``)
    and, when given, over TLS on ``tls_sock`` (``dimse/tls.py``, ``[dimse] tls_*``), in background threads,
    each audited in ``trail`` when given (``dimse/audit.py``; the gate's rejections, User Identity checks and
    0x0124 refusals too, ``dimse/access.py``). ``authenticator`` checks User Identity
    (``dimse.access``); without one, an identity sent is ignored, as pynetdicom does, and
    ``dimse.require_user_identity`` is a ConfigError. ``associations`` counts the associations of each calling
    AE title across the node's processes (``dimse.max_associations_per_ae``; none: no such limit). ``shared``:
    other processes accept on the same sockets (``dimse.processes`` > 1), so this one yields new connections to
    an idler one (``ACCEPT_YIELD``)."""
    gate = Gate(settings, authenticator, trail, associations)
    ae = build_ae(settings, gate)
    stores = audit.Associations(trail) if trail is not None else None
    handlers: list[Any] = [
        *gate.handlers(),
        (evt.EVT_C_ECHO, gate.echo(handle_echo)),
        (evt.EVT_C_STORE, gate.store(handle_store), [ingest, settings, stores]),
        (evt.EVT_C_FIND, gate.find(query_retrieve.handle_find), [catalog, settings, trail]),
        (evt.EVT_C_MOVE, gate.move(query_retrieve.handle_move), [catalog, settings, trail]),
        (evt.EVT_C_GET, gate.get(query_retrieve.handle_get), [catalog, settings, trail]),
        (evt.EVT_ESTABLISHED, handle_established),
        (evt.EVT_REJECTED, handle_rejected),
        *(stores.handlers() if stores is not None else []),
    ]
    servers = []
    for listening, secure in ((sock, False), (tls_sock, True)):
        if listening is None:
            continue
        bases: tuple[type, ...] = (SharedSocketServer,)
        attributes: dict[str, Any] = {"listening": listening, "shared": shared}
        if secure:
            bases = (tls.TlsHandshake, SharedSocketServer)
            attributes |= {
                "context": tls.listener_context(settings.dimse),
                "handshake_timeout": settings.dimse.acse_timeout,
                "refused": staticmethod(functools.partial(_tls_refused, trail)),
            }
        server_class = type("TlsServer" if secure else "Server", bases, attributes)
        server = ae.make_server(listening.getsockname(), evt_handlers=handlers, server_class=server_class)
        compat.share_supported_contexts(server)
        name = "dimse-tls-server" if secure else "dimse-server"
        thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        thread.start()
        servers.append((server, thread, secure))
    return Scp(servers, gate)


def _tls_refused(trail: Audit | None, address: str, reason: str) -> None:
    """A TLS connection refused at its handshake: a 110113 Security Alert (no AE title is known yet)."""
    if trail is not None:
        try:
            trail.security_alert(f"TLS connection refused: {reason}", "TLS client", address)
        except AuditUnavailable:
            pass  # logged and counted by the trail; the connection is refused anyway


def handle_established(event: evt.Event) -> None:
    """``evt.EVT_ESTABLISHED``: log who associated.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The association just accepted (``assoc.requestor``: AE title, address, port).
    """
    requestor = event.assoc.requestor
    over = tls.transport(event.assoc)
    over = f" over {over}" if over else ""
    log.info("association from %s (%s:%s)%s", requestor.ae_title, requestor.address, requestor.port, over)


def handle_rejected(event: evt.Event) -> None:
    """``evt.EVT_REJECTED``: log a refused association (e.g. a calling AE title not allowed).

    Parameters
    ----------
    event : pynetdicom.events.Event
        The association pynetdicom rejected.
    """
    requestor = event.assoc.requestor
    log.warning("association from %s (%s) rejected", requestor.ae_title, requestor.address)


def handle_echo(event: evt.Event) -> int:
    """``evt.EVT_C_ECHO``: answer a C-ECHO.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-ECHO request.

    Returns
    -------
    int
        0x0000, always.
    """
    return SUCCESS


def _refuse_file_meta(data_set: memoryview) -> None:
    """A C-STORE data set carries no File Meta Information: group 0002 belongs to the Part 10 file (PS3.10 §7.1,
    PS3.5 §7.1), and the SCP writes it from the presentation context. A data set that starts with group 0002 would
    follow that meta with a second one (another transfer syntax, say), which readers take as the real one."""
    if bytes(data_set[:2]) in (b"\x02\x00", b"\x00\x02"):  # group 0002, little or big endian
        raise InvalidInstance("the data set holds File Meta Information (group 0002): not allowed over DIMSE")


def handle_store(
    event: evt.Event,
    ingest: Ingest,
    settings: Settings | None = None,
    stores: audit.Associations | None = None,
    principal: Principal | None = None,
) -> int | Dataset:
    """``evt.EVT_C_STORE``: store the received instance, as received, through ``Ingest``.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-STORE request: its data set bytes (not decoded, not copied), the presentation context's
        SOP class and the request's Affected SOP Instance UID, which the data set must agree with.
    ingest : Ingest
        Where the instance goes; it returns only once the instance is durable.
    settings : Settings, optional
        The node's settings: a calling AE declared under ``[peers]`` with ``labels`` has its studies labelled.
    stores : dimse.audit.Associations, optional
        The audit trail's batches: the outcome is noted for the association's record (written when it closes);
        with ``audit.fail_closed`` the instance is refused (0xA700) while the trail cannot be written.
    principal : Principal, optional
        Who sends (``dimse.access.Gate``: a verified user, else the calling AE with its ``[peers.X] groups``). A
        sender limited to groups may not store into a study it does not see (0x0124, ``errors.HiddenStudy``), and
        a new study it sends without peer labels is labelled with its groups, so that it sees what it stored.

    Returns
    -------
    int or pydicom.dataset.Dataset
        0x0000 once stored; else a status data set with Status and Error Comment (``status.failure``): the
        domain error's ``err.status`` (0xA700, 0xA900, 0xC000, 0x0110, 0x0111), 0x0110 for an unexpected error.
    """
    requestor = event.assoc.requestor
    peer = settings.peers.get(requestor.ae_title) if settings is not None else None
    labels = peer.labels if peer is not None else ()
    groups = study_filter(principal.groups) if principal is not None else None
    source = Source(
        SourceKind.DIMSE, ae_title=requestor.ae_title, address=str(requestor.address), labels=labels, groups=groups
    )
    request = cast(C_STORE, event.request)
    sop_instance = str(request.AffectedSOPInstanceUID or "")
    expected = Expected(sop_class=str(event.context.abstract_syntax), sop_instance=sop_instance or None)
    try:
        if stores is not None:
            stores.audit.guard()
        # The File Meta written here and the data set as received, never joined into one copy (what
        # encoded_dataset() would make): the data set is scanned and written (writev) where pynetdicom put it.
        head = part10_head(str(request.AffectedSOPClassUID or ""), sop_instance, str(event.context.transfer_syntax))
        with cast(BytesIO, request.DataSet).getbuffer() as data_set:
            _refuse_file_meta(data_set)
            stored = ingest.store_data_set(head, data_set, source, expected)
    except AuditUnavailable as err:
        log.error("C-STORE from %s refused 0x%04X: %s", source, err.status, err.reason)
        return status.failure(err, Service.STORE)
    except DcmnodeError as err:
        log.warning("C-STORE from %s refused 0x%04X: %s", source, err.status, err.reason)
        if stores is not None:
            stores.failed(event)
        return status.failure(err, Service.STORE)
    except Exception:
        log.exception("C-STORE from %s failed", source)
        if stores is not None:
            stores.failed(event)
        return status.failure(DcmnodeError(INTERNAL_ERROR), Service.STORE)
    if stores is not None:
        stores.stored(event, stored)
    return SUCCESS
