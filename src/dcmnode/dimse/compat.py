"""Where dcmnode reaches into pynetdicom's internals: every patch, in one place, numbered.

Written for pynetdicom ``PYNETDICOM_VERSION``; tests/test_dimse_compat.py pins that version (and, for the methods
replaced by a patched copy, the source they were copied from), so that an upgrade makes someone re-check each
patch (and drop those upstream made unnecessary). ``apply`` puts them in force once, when ``dcmnode.dimse`` is
imported, for every association of the process, SCP and SCU alike (C-MOVE sub-associations, send jobs).
Patches 4-6 written natively, as they would go upstream: docs/upstream/pynetdicom-3.0.4-event-driven-reactors.patch.

1. **Socket close** (``apply``). pynetdicom 3.0.4 calls ``close()`` in the same ``try`` as ``shutdown()``
   (``AssociationSocket._shutdown_socket``): when the peer has gone first, ``shutdown`` raises ENOTCONN and the
   socket stays open until garbage collection (a ResourceWarning, and a descriptor held for nothing meanwhile).
   Upstream works on the same problem in pydicom/pynetdicom#999; the replacement is harmless where pynetdicom
   already closes the socket.
2. *(withdrawn: the reactor delay that ``dimse.pacer`` tuned; patch 5 made the DUL reactor event-driven, so
   there is no delay left to tune and the pacer went.)*
3. **TLS failure traces** (``apply``). When an association's TLS fails, pynetdicom 3.0.4 logs the
   ``ssl.SSLError`` with ``LOGGER.exception``: in ``AssociationSocket.connect`` (the handshake: an untrusted
   certificate, a wrong server name) and in the DUL's PDU reads (TLS 1.3 sends a refused client certificate's
   alert after the handshake): a stack trace in the node's log for an expected refusal. A filter on both loggers
   turns such a record into one line with the TLS reason, at the same level.
4. **One copy of the supported contexts per server** (``share_supported_contexts``, called by ``scp.start``).
   ``RequestHandler._create_association`` (transport.py, ``assoc.acceptor.supported_contexts =
   deepcopy(self.server.contexts)``) deep-copies every supported presentation context for each new association.
   dcmnode supports 177 abstract syntaxes with every transfer syntax (7,924 UIDs, each re-validated by pydicom's
   ``UID.__new__`` on copy): 43-75 ms of one core per association, most of the difference between dcmnode's
   association set-up and a bare pynetdicom SCP's. Negotiation only reads them
   (``presentation.negotiate_as_acceptor`` builds new result contexts), so the server copies them once, when it
   is made, and gives every association that copy: ``SharedContexts.__deepcopy__`` returns itself.
   *Upstream:* hand the acceptor a shallow ``list(self.server.contexts)`` in ``_create_association``.
5. **Event-driven DUL reactor** (``DULServiceProvider.run_reactor``, ``kill_dul``, ``stop_dul``; the queues of
   patch 6's ``Association.__init__``). pynetdicom's DUL thread polls: each loop that finds nothing to do sleeps
   ``_run_loop_delay`` (1 ms; dul.py ``time.sleep(self._run_loop_delay)``, "TODO: try and make this event
   based"), so every PDU received and every primitive queued waits up to 1 ms to be noticed (each C-ECHO pays that
   three times on the SCP: the request read, the response sent, plus patch 6's wait), and an idle association
   still wakes 1000 times a second (with patch 6's thread, ~3.5 % of a core per idle association here; the
   pacer's trade-off). The replacement is pynetdicom's
   loop with the sleep turned into a wait: ``poll`` on the association's socket and a wake-up descriptor
   (``_Wakeup``: an eventfd, or a socket pair) that ``to_provider_queue.put``, ``event_queue.put``,
   ``kill_dul`` and ``stop_dul`` write, with the ARTIM timer's remaining time as the timeout (at most
   ``WAIT_CAP``). It does not wait while a queue holds work or an SSL socket holds decrypted bytes (``pending``,
   invisible to ``poll``). ``stop_dul`` joins the thread instead of polling ``is_alive``.
   *Upstream:* the same, in ``DULServiceProvider``: the wake-up made in ``run_reactor``, written by the queues'
   ``put``, ``kill_dul`` and ``stop_dul``, and ``select`` on it and the socket instead of ``time.sleep``.
6. **Event-driven association reactor** (``Association.__init__``, ``_run_reactor``, ``kill``). The association
   thread polls too: ``_run_reactor`` sleeps 1 ms (``time.sleep(0.001)``) per loop before looking for a DIMSE
   message, an A-RELEASE or A-ABORT, and ``kill`` waits for the DUL in 10 ms sleeps (``time.sleep(0.01)``: the
   SCP's association thread lives ~10 ms past each release, counted as busy by ``scp``'s least-loaded accept).
   The replacement waits on a ``threading.Event`` that the DIMSE message queue and the DUL's to-user queue set
   on ``put`` and the DUL sets when it ends, with the network (idle) timer's remaining time as the timeout (at
   most ``WAIT_CAP``); ``kill`` waits on the DUL's state changes (``Wakes.dul_changed``). It also closes a race in
   pynetdicom's pause handshake (``send_*`` clears ``_reactor_checkpoint`` and waits for ``_is_paused``; the
   reactor set ``_is_paused = True``, passed ``_reactor_checkpoint.wait()`` and only then set it False, so a
   sender that cleared in between went ahead while the reactor took the sender's response off the DIMSE queue:
   the sender then waits ``dimse_timeout`` and aborts). Here the reactor marks itself running *before* it looks
   at the checkpoint, and waits paused. *Upstream:* the same in ``Association``: an Event set by
   ``DIMSEServiceProvider.receive_primitive`` and the DUL's ``to_user_queue``; ``kill`` joining the DUL.

Patches 10-14 (retrieve and query: C-MOVE, C-GET, C-FIND and ``dimse.send``), put in force by ``apply``:

10. **Stored files sent as stored** (``Association.send_c_store``, ``SendAsStored``). pynetdicom's C-GET and
    C-MOVE SCP loops (service_class.py ``_get_scp``/``_move_scp``) pass each yielded instance to ``send_c_store``
    and accept only a ``Dataset`` (anything else fails the sub-operation with SOP Instance UID ""); a ``Dataset``
    is encoded anew (``dsutils.encode``: ~13 % of a C-MOVE's CPU, after ``dcmread``'s ~4 %). ``send_c_store`` can
    send a file from its data set offset without decoding it, but only given a path, only with
    ``_config.STORE_SEND_CHUNKED_DATASET`` set (a process-wide switch), and then re-reads the File Meta with
    pydicom (``dsutils.split_dataset``). ``SendAsStored`` is a ``Dataset`` holding only SOP Class and SOP
    Instance UID (what the loops read: ``FailedSOPInstanceUIDList`` bookkeeping) plus the stored file's path, its
    data set offset and transfer syntax, which the caller already knows (``core.retrieve.stored_head``). The
    patched ``send_c_store`` sends such an instance the way pynetdicom's chunked-file branch does: a C-STORE-RQ
    whose data set is read from the file in PDU-sized pieces (``DIMSEMessage.encode_msg``), on an accepted context
    for its SOP class with exactly its transfer syntax (no conversion: ``allow_conversion=False``), then the same
    pause, send, wait and status check; anything else goes to pynetdicom's own ``send_c_store``.
    *Upstream:* let ``send_c_store`` take ``(path, offset, sop_class, sop_instance, transfer_syntax)`` (or a
    ``FileDataset`` opened with ``defer_size``) and let the C-GET/C-MOVE loops accept it, reading the failed
    instance's UID from it.
11. **Pre-encoded C-FIND identifiers** (``service_class.encode``, ``EncodedIdentifier``). The C-FIND SCP encodes
    each yielded match with pydicom (``_c_find_scp``: ``encode(dataset, ...)``, 40 % of a C-FIND's CPU with
    building the Dataset). ``EncodedIdentifier`` carries a match already encoded (``dimse.identifier``: the same
    bytes pydicom writes) for the context's transfer syntax; the module's ``encode`` is wrapped so that such an
    identifier is returned as is (deflated when the context is deflated, as ``dsutils.encode`` does) and anything
    else, or an identifier encoded for another syntax, goes to pydicom (``EncodedIdentifier.dataset``).
    *Upstream:* accept ``bytes`` as a yielded C-FIND identifier.
12. **Log handlers only where they log** (``Association._bind_defaults``, ``AssociationServer._bind_defaults``).
    With ``_config.LOG_HANDLER_LEVEL`` "standard" (the default) every association, and every server for the
    associations it accepts, binds four handlers that format every DIMSE message and every PDU sent and received
    into DEBUG and INFO lines, whether or not anything is logged (~8 % of a C-FIND's CPU). The node keeps
    pynetdicom's logger at WARNING unless ``node.log_level = "DEBUG"`` (``cli._logging``): an association (a
    server) made while that logger is not enabled for INFO binds only the intervention handlers, so that DEBUG
    still shows every line.
    *Upstream:* check ``LOGGER.isEnabledFor`` in the standard handlers before formatting.
13. **Command sets encoded directly** (``dimse_messages.encode``). A DIMSE message's command set is encoded with
    pydicom twice (``_set_command_group_length`` to measure it, ``encode_msg`` to send it): ~0.15 ms per message,
    paid per C-FIND match and twice per C-MOVE/C-GET sub-operation (the C-STORE-RQ and the pending response). The
    command set is group 0000 in implicit VR little endian with US, UL, UI, AE and LO values only, so
    ``encode_command_set`` writes it with ``struct`` (the bytes pydicom writes, tests/test_dimse_compat.py), and
    hands anything else (a multi-valued AT, a non-ASCII text) to pydicom. *Upstream:* a small command-set encoder
    in ``dimse_messages``, the group length computed from the encoded bytes instead of a second encode.
14. **Query/retrieve messages sent straight from the primitive** (``DIMSEServiceProvider.send_msg``). For every
    message pynetdicom builds a ``DIMSEMessage`` whose command set is a pydicom ``Dataset`` (each element created,
    each value set and validated: ~0.15 ms, paid per C-FIND match and twice per sub-operation), then sends the
    command and the data set as separate P-DATA PDUs. For the messages of this node's query/retrieve SCP (C-FIND,
    C-GET and C-MOVE responses, C-STORE requests), when no ``EVT_DIMSE_SENT`` handler is bound (patch 12: none is,
    at the node's usual log level), the replacement writes the command set from the primitive with patch 13's
    encoder (the elements pynetdicom's ``primitive_to_message`` sets, the same bytes) and sends it with the data
    set's first fragment in one P-DATA (PS3.8 Annex E.1: the PDVs of one P-DATA shall belong to one message; one
    PDU instead of two for the peer to read), fragmenting as pynetdicom does within the peer's maximum PDU length;
    a C-STORE from a file (patch 10) reads the file in those fragments. Anything else (another message, a bound
    handler, a value the encoder leaves to pydicom) goes to the ``send_msg`` in force before (pynetdicom's, or
    another patch's). *Upstream:* a fixed-layout command-set encoder in ``DIMSEMessage``, the message object
    built only for ``EVT_DIMSE_SENT`` handlers, command and first data fragment in one P-DATA.
20. **PDUs read in one piece** (``AssociationSocket.recv``). pynetdicom 3.0.4 reads a PDU in ``recv(4096)``
    calls appended to a ``bytearray`` (transport.py: "Python docs recommend reading a relatively small power of
    2"): a 128 KiB P-DATA-TF PDU (what storescu sends) takes 32 system calls and as many appends, a 530 KB data
    set in one PDU (what a pynetdicom SCU sends to an unlimited maximum PDU length) 130. The replacement reads
    into a ``bytearray`` of the PDU's length with ``recv_into``, as much as the socket has each time; it returns
    what it read when the peer closes early, as pynetdicom's does (a short PDU is then Evt17 as before).
    *Upstream:* the same loop in ``AssociationSocket.recv``.
21. **P-DATA-TF PDUs decoded without copies** (``DULServiceProvider._decode_pdu``). pynetdicom copies a received
    P-DATA-TF four times before the DIMSE layer appends its fragments to the message: ``bytes(bytestream)`` for
    ``EVT_DATA_RECV`` (made even when no handler is bound), the PDU's slice of its items, each item's value, and
    the value without its message control header (``DIMSEMessage.decode_msg``: ``data[1:]``). The replacement
    decodes a P-DATA-TF's items as ``memoryview`` slices of the received bytes (the same checks as
    ``P_DATA_TF._generate_items``: each item's length within the PDU), makes the ``bytes`` for ``EVT_DATA_RECV``
    only when a handler is bound, and triggers ``EVT_PDU_RECV`` as pynetdicom does; ``decode_msg`` then slices
    and writes the views, so a fragment is copied once, into the message's data set. Other PDUs go through
    pynetdicom's own decoder. *Upstream:* ``_decode_pdu`` skips the copy without ``EVT_DATA_RECV`` handlers, and
    ``P_DATA_TF._generate_items`` yields ``memoryview`` slices.
22. **C-STORE-RSP encoded directly** (``DIMSEServiceProvider.send_msg``). Every C-STORE answer goes through
    pydicom: a ``DIMSEMessage`` with a ``Dataset`` of all nine C-STORE-RSP command elements, each value set and
    validated (``primitive_to_message``), encoded twice (once for the Command Group Length, once to send), then
    split into P-DATA fragments: ~0.5 ms of CPU per instance, the largest piece of pynetdicom's own C-STORE
    time after the data set's receipt. The replacement writes the same command set (PS3.7 9.3.1.2, Implicit VR
    Little Endian, PS3.7 6.3.1: Affected SOP Class UID, Command Field 8001H, Message ID Being Responded To,
    Command Data Set Type 0101H, Status, Affected SOP Instance UID, each only when set, after the group length)
    in one P-DATA fragment, byte for byte what pynetdicom sends (tests/test_dimse_compat.py compares them). It
    applies only where nothing could tell the difference: a C-STORE response without Offending Element or Error
    Comment (a failure's status data set goes through pynetdicom), ASCII UIDs, a command set within the peer's
    maximum PDU length, and no ``EVT_DIMSE_SENT`` handler but pynetdicom's standard logging one (which logs
    nothing for a C-STORE-RSP); anything else goes to the ``send_msg`` in force before (pynetdicom's, or another
    patch's: ``apply_receive`` chains over it). *Upstream:* a cached encoder for the fixed-layout command sets in
    ``DIMSEMessage``, skipping the message object when no handler needs it.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import dimse_messages, evt, service_class
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationServer, AssociationSocket

PYNETDICOM_VERSION = "3.0.4"
WAIT_CAP = 0.5  # seconds: the longest either reactor waits without a wake-up (a safety net; timers are exact)

DUL_LOG = logging.getLogger("pynetdicom.dul")  # the copied reactors log where pynetdicom's did
ASSOC_LOG = logging.getLogger("pynetdicom.association")


# -- 1. socket close ------------------------------------------------------------------------------------------


def close_even_if_shutdown_fails(self: AssociationSocket) -> None:
    """``AssociationSocket._shutdown_socket`` that closes the socket even when ``shutdown()`` fails."""
    sock = self.socket
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected
    sock.close()


# -- 3. TLS failure traces ------------------------------------------------------------------------------------


class TlsReasonOnly(logging.Filter):
    """A pynetdicom record carrying an ``ssl.SSLError`` traceback becomes one line: the TLS reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ssl.SSLError):
            record.msg, record.args = "TLS failure: %s", (exc.reason or exc.strerror or exc,)
            record.exc_info, record.exc_text = None, None
        return True


TLS_LOGGERS = ("pynetdicom.transport", "pynetdicom.dul")


# -- 4. one copy of the supported contexts per server ---------------------------------------------------------


class SharedContexts(list[PresentationContext]):
    """A server's supported presentation contexts, copied once when the server is made: ``copy.deepcopy`` of it
    is itself, so that pynetdicom's per-association copy (``RequestHandler._create_association``) costs nothing."""

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContexts:
        return self


def share_supported_contexts(server: AssociationServer) -> None:
    """Patch 4: the associations ``server`` accepts share one copy of its supported contexts (read only)."""
    server.contexts = SharedContexts(copy.deepcopy(list(server.contexts)))


# -- 5. and 6. event-driven reactors --------------------------------------------------------------------------


class _Wakeup:
    """What a DUL reactor polls beside its socket: written to wake it. An eventfd where there is one (Linux), else
    a socket pair. Writes after ``close`` do nothing (the lock keeps them off a descriptor number reused since)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if hasattr(os, "eventfd"):
            self._read = self._write = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover (not Linux)
            self._pair = socket.socketpair()
            for end in self._pair:
                end.setblocking(False)
            self._read, self._write = self._pair[0].fileno(), self._pair[1].fileno()
        self.fileno = self._read

    def set(self) -> None:
        with self._lock:
            if self._write < 0:
                return
            try:
                if self._pair is None:
                    os.eventfd_write(self._write, 1)
                else:  # pragma: no cover (not Linux)
                    os.write(self._write, b"\0")
            except BlockingIOError:  # pragma: no cover (a full counter or pair: woken already)
                pass

    def clear(self) -> None:
        try:
            if self._pair is None:
                os.eventfd_read(self._read)
            else:  # pragma: no cover (not Linux)
                while os.read(self._read, 4096):
                    pass
        except BlockingIOError:
            pass  # nothing written since the last clear

    def close(self) -> None:
        with self._lock:
            if self._pair is not None:  # pragma: no cover (not Linux)
                for end in self._pair:
                    end.close()
            elif self._read >= 0:
                os.close(self._read)
            self._read = self._write = -1


class Wakes:
    """The wake-ups of one association: its reactor's Event (patch 6), its DUL's ``_Wakeup`` while the DUL thread
    runs (patch 5), and the DUL's state changes (for ``kill``)."""

    def __init__(self) -> None:
        self.assoc = threading.Event()  # a DIMSE message, an ACSE primitive for the user, the DUL changed or ended
        self.dul_changed = threading.Event()
        self.dul_done = False
        self.dul: _Wakeup | None = None  # made and closed by the DUL thread
        self.dul_thread = 0  # its ident while it runs: what it queues itself needs no wake-up
        self.wakeups = 0  # times the DUL was woken through ``dul`` (tests observe it)

    def wake_dul(self) -> None:
        wakeup = self.dul
        if wakeup is not None and threading.get_ident() != self.dul_thread:
            self.wakeups += 1
            wakeup.set()


def wakes_of(obj: Association | DULServiceProvider) -> Wakes | None:
    """The ``Wakes`` of an association (or of its DUL), set by the patched ``Association.__init__``; None for one
    made before ``apply`` (which then runs pynetdicom's own methods)."""
    assoc = obj.assoc if isinstance(obj, DULServiceProvider) else obj
    return cast("Wakes | None", getattr(assoc, "_dcmnode_wakes", None))


class SignallingQueue(queue.Queue[Any]):
    """A ``queue.Queue`` that calls ``signal`` after each ``put`` (under the queue's lock, so never missed)."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._signal()


def association_init(self: Association, *args: Any, **kwargs: Any) -> None:
    """``Association.__init__``, then the queues the reactors wait on replaced by signalling ones (still empty:
    the socket, which queues the DUL's first event, is set afterwards)."""
    ORIGINAL["Association.__init__"](self, *args, **kwargs)
    wakes = Wakes()
    self._dcmnode_wakes = wakes  # type: ignore[attr-defined]
    self.dul.to_provider_queue = SignallingQueue(wakes.wake_dul)
    self.dul.event_queue = SignallingQueue(wakes.wake_dul)
    self.dul.to_user_queue = SignallingQueue(wakes.assoc.set)
    self.dimse.msg_queue = SignallingQueue(wakes.assoc.set)


def _dul_wait(dul: DULServiceProvider, wakeup: _Wakeup) -> None:
    """Where pynetdicom's DUL reactor slept ``_run_loop_delay``: until the socket is readable, a queue is fed, the
    reactor is told to stop, or the ARTIM timer expires."""
    wakeup.clear()  # before the checks: a put after them writes the wake-up again
    if dul._kill_thread or dul.event_queue.qsize() or dul.to_provider_queue.qsize():
        return
    assoc_sock = dul.socket
    raw = assoc_sock.socket if assoc_sock is not None and assoc_sock._is_connected else None
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return  # decrypted bytes already read from the socket: poll would not see them
    fds = [wakeup.fileno]
    if raw is not None and raw.fileno() >= 0:
        fds.append(raw.fileno())
    timeout = min(WAIT_CAP, max(0.0, dul.artim_timer.remaining))
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN | select.POLLPRI)
        poller.poll(timeout * 1000)
    else:  # pragma: no cover (Windows)
        select.select(fds, [], [], timeout)


def dul_run_reactor(self: DULServiceProvider) -> None:
    """``DULServiceProvider.run_reactor`` of pynetdicom 3.0.4, waiting (``_dul_wait``) where it slept."""
    wakes = wakes_of(self)
    if wakes is None:
        ORIGINAL["DULServiceProvider.run_reactor"](self)
        return
    wakeup = _Wakeup()
    wakes.dul, wakes.dul_thread = wakeup, threading.get_ident()
    try:
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        sleep = False

        while True:
            # Let the assoc reactor off the leash (pynetdicom then sleeps once, for its single-stepping tests)
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()

            if sleep:
                _dul_wait(self, wakeup)

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            # Check the connection for incoming data
            try:
                # We can either encode and send a primitive **OR** receive and decode a PDU per loop
                if self._process_recv_primitive():  # encode (sent by state machine)
                    pass
                elif self._is_transport_event():  # receive and decode PDU
                    self._idle_timer.restart()
            except Exception as exc:
                DUL_LOG.error("Exception in DUL.run(), aborting association")
                DUL_LOG.exception(exc)
                # Bypass the state machine and send an A-ABORT
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                # Hard shutdown of the Association and DUL reactors
                self.assoc._kill = True
                self._kill_thread = True
                return

            # Check the event queue to see if there is anything to do
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            wakes.dul_changed.set()  # for kill(), which waits for Sta1
            sleep = False
    finally:
        wakes.dul = None
        wakeup.close()
        wakes.dul_done = True
        wakes.dul_changed.set()
        wakes.assoc.set()


def dul_kill(self: DULServiceProvider) -> None:
    """``DULServiceProvider.kill_dul``: stop the reactor, and wake it to see that."""
    self._kill_thread = True
    wakes = wakes_of(self)
    if wakes is not None:
        wakes.wake_dul()


def dul_stop(self: DULServiceProvider) -> bool:
    """``DULServiceProvider.stop_dul``: in Sta1 stop the reactor and wait for its thread to end (joined, where
    pynetdicom polled ``is_alive`` every ``_run_loop_delay``); else False."""
    wakes = wakes_of(self)
    if wakes is None:
        return bool(ORIGINAL["DULServiceProvider.stop_dul"](self))
    if self.state_machine.current_state != "Sta1":
        return False
    self._kill_thread = True
    wakes.wake_dul()
    if self.is_alive() and threading.current_thread() is not self:
        self.join()
    return True


def association_run_reactor(self: Association) -> None:
    """``Association._run_reactor`` of pynetdicom 3.0.4 (the main acceptor and requestor loop), waiting on the
    association's Event where it slept 1 ms, its pause handshake without the race (module docstring, 6)."""
    wakes = wakes_of(self)
    if wakes is None:
        ORIGINAL["Association._run_reactor"](self)
        return
    idle = False
    while not self._kill:
        if idle:
            # Nothing to do: wait paused (a sender may go ahead) for a message, a primitive, the DUL, a timer
            self._is_paused = True
            wakes.assoc.wait(min(WAIT_CAP, max(0.0, self.dul._idle_timer.remaining)))
        wakes.assoc.clear()  # before the checks: a put after them sets it again
        # Running, *then* the checkpoint: a sender that clears it after this check sees us running and waits
        self._is_paused = False
        if not self._reactor_checkpoint.is_set():
            self._is_paused = True
            self._reactor_checkpoint.wait()
            idle = False
            continue
        idle = True

        # Check with the DIMSE provider to see if a completely decoded message is available
        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, cast(int, context_id))
            idle = False

        # Check for release request from the peer
        if self.is_established and self.acse.is_release_requested():
            # Send A-RELEASE response
            self.acse.send_release(is_response=True)
            ASSOC_LOG.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        # Check for abort from either locally or the peer
        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            ASSOC_LOG.info(log_msg)
            # Ensure that EVT_ASCE_RECV fires for subscribers
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        # Check if the DULServiceProvider thread is still running
        if not self.dul.is_alive() or wakes.dul_done:
            self.kill()
            return

        # Check if network_timeout has expired
        if self.dul.idle_timer_expired():
            ASSOC_LOG.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()

            self.kill()
            return


def association_kill(self: Association) -> None:
    """``Association.kill``: stop the reactor, and wait for the DUL to stop on its state changes (pynetdicom
    polls every 10 ms)."""
    wakes = wakes_of(self)
    if wakes is None:
        ORIGINAL["Association.kill"](self)
        return
    # Ensure the reactor is running so it can be exited
    self._reactor_checkpoint.set()
    self._kill = True
    self.is_established = False
    self._is_paused = True
    wakes.assoc.set()
    while True:
        wakes.dul_changed.clear()
        if not self.dul.is_alive() or self.dul.stop_dul():
            break
        if wakes.dul_done:  # the DUL thread is ending (an exception, a kill): wait for it
            if threading.current_thread() is not self.dul:
                self.dul.join()
            break
        wakes.dul_changed.wait(0.01)


ORIGINAL: dict[str, Callable[..., Any]] = {  # what patches 5 and 6 replace (tests pin their source)
    "DULServiceProvider.run_reactor": DULServiceProvider.run_reactor,
    "DULServiceProvider.kill_dul": DULServiceProvider.kill_dul,
    "DULServiceProvider.stop_dul": DULServiceProvider.stop_dul,
    "Association.__init__": Association.__init__,
    "Association._run_reactor": Association._run_reactor,
    "Association.kill": Association.kill,
}


def apply() -> None:
    """Put every patch of this module in force (idempotent); patch 4 is per server (``share_supported_contexts``)."""
    AssociationSocket._shutdown_socket = close_even_if_shutdown_fails  # type: ignore[method-assign]
    for name in TLS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TlsReasonOnly) for f in logger.filters):
            logger.addFilter(TlsReasonOnly())
    Association.__init__ = association_init  # type: ignore[method-assign]
    Association._run_reactor = association_run_reactor  # type: ignore[method-assign]
    Association.kill = association_kill  # type: ignore[method-assign]
    DULServiceProvider.run_reactor = dul_run_reactor  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = dul_kill  # type: ignore[method-assign]
    DULServiceProvider.stop_dul = dul_stop  # type: ignore[method-assign]
    Association.send_c_store = send_c_store  # type: ignore[method-assign]  # 10
    service_class.encode = encode_identifier  # type: ignore[attr-defined]  # 11
    Association._bind_defaults = bind_defaults_where_logged  # type: ignore[method-assign]  # 12
    AssociationServer._bind_defaults = bind_defaults_where_logged  # type: ignore[method-assign]
    dimse_messages.encode = encode_command_set  # type: ignore[attr-defined]  # 13
    global NEXT_SEND_MSG
    if DIMSEServiceProvider.send_msg is not send_msg:  # 14, over whatever send_msg is in force
        NEXT_SEND_MSG = DIMSEServiceProvider.send_msg
        DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
    apply_receive()  # 20-22


# -- 10. stored files sent as stored --------------------------------------------------------------------------

PYNETDICOM_SEND_C_STORE = Association.send_c_store


class SendAsStored(Dataset):
    """An instance to send as its stored Part 10 file: the bytes from ``offset`` to the end are its data set in
    ``transfer_syntax``, sent as they are. As a ``Dataset`` it holds SOP Class and SOP Instance UID only (what
    pynetdicom's C-GET/C-MOVE loops read of a yielded instance)."""

    def __init__(self, path: Path, offset: int, sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
        super().__init__()
        self.SOPClassUID = sop_class
        self.SOPInstanceUID = sop_instance
        object.__setattr__(self, "stored", (path, offset, UID(transfer_syntax)))

    @property
    def path(self) -> Path:
        return self.stored[0]  # type: ignore[no-any-return]

    @property
    def offset(self) -> int:
        return self.stored[1]  # type: ignore[no-any-return]

    @property
    def stored_syntax(self) -> UID:
        return self.stored[2]  # type: ignore[no-any-return]


def send_c_store(
    self: Association,
    dataset: Any,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """``Association.send_c_store`` that sends a ``SendAsStored`` from its file, undecoded; anything else as
    pynetdicom does. pynetdicom's chunked-file branch of ``send_c_store`` (association.py), with the File Meta
    the caller read instead of ``split_dataset``."""
    if not isinstance(dataset, SendAsStored):
        return PYNETDICOM_SEND_C_STORE(self, dataset, msg_id, priority, originator_aet, originator_id)
    if not self.is_established:
        raise RuntimeError("The association with a peer SCP must be established before sending a C-STORE request")
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    sop_class = UID(dataset.SOPClassUID)
    context = self._get_valid_context(sop_class, dataset.stored_syntax, "scu", allow_conversion=False)
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    req._dataset_path = (dataset.path, dataset.offset)
    self._reactor_checkpoint.clear()  # pause the reactor, as send_c_store does, so that it leaves the response
    while not self._is_paused:
        time.sleep(0.0001)
    self.dimse.send_msg(req, context.context_id)  # type: ignore[arg-type]
    _, rsp = self.dimse.get_msg(block=True)
    self._reactor_checkpoint.set()
    if rsp is None:
        self._handle_no_response()
        return Dataset()
    return self._check_received_status(rsp)


# -- 11. pre-encoded C-FIND identifiers -----------------------------------------------------------------------


class EncodedIdentifier:
    """A C-FIND match encoded already: ``data`` in implicit (``implicit``) or explicit VR little endian;
    ``dataset()`` builds the same match as a ``Dataset`` for any other transfer syntax. Not a Dataset (building
    one costs more than encoding the match): pynetdicom's C-FIND loop only hands it to ``encode`` and, with
    ``_config.LOG_RESPONSE_IDENTIFIERS``, iterates it for DEBUG lines (no elements: no patient name logged)."""

    __slots__ = ("data", "implicit", "_dataset")

    def __init__(self, data: bytes, implicit: bool, dataset: Callable[[], Dataset]) -> None:
        self.data, self.implicit, self._dataset = data, implicit, dataset

    def dataset(self) -> Dataset:
        return self._dataset()

    def __iter__(self) -> Iterator[Any]:
        return iter(())


def encode_identifier(
    ds: Dataset | EncodedIdentifier, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """``dsutils.encode`` as service_class.py calls it, passing an ``EncodedIdentifier``'s bytes through."""
    if not isinstance(ds, EncodedIdentifier):
        return pydicom_encode(ds, is_implicit_vr, is_little_endian, deflated)
    if not is_little_endian or ds.implicit != (is_implicit_vr and not deflated):
        return pydicom_encode(ds.dataset(), is_implicit_vr, is_little_endian, deflated)
    if not deflated:
        return ds.data
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)  # as dsutils.encode
    out = compressor.compress(ds.data) + compressor.flush()
    return out + b"\x00" if len(out) % 2 else out


# -- 12. log handlers only where they log ---------------------------------------------------------------------

PYNETDICOM_LOGGER = logging.getLogger("pynetdicom")
PYNETDICOM_BIND_DEFAULTS: dict[type, Callable[[Any], None]] = {
    Association: Association._bind_defaults,
    AssociationServer: AssociationServer._bind_defaults,
}


def bind_defaults_where_logged(self: Association | AssociationServer) -> None:
    """``_bind_defaults`` of an association or a server: the intervention handlers always, the standard logging
    handlers only while pynetdicom's logger is enabled for INFO (they log at INFO and DEBUG only)."""
    if PYNETDICOM_LOGGER.isEnabledFor(logging.INFO):
        PYNETDICOM_BIND_DEFAULTS[Association if isinstance(self, Association) else AssociationServer](self)
        return
    for event in evt._INTERVENTION_EVENTS:
        self.bind(event, evt.get_default_handler(event))


# -- 13. command sets encoded directly ------------------------------------------------------------------------

_TAG = struct.Struct("<HHI")  # implicit VR little endian: group, element, value length
_US, _UL = struct.Struct("<H"), struct.Struct("<I")


def encode_command_set(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """``dsutils.encode`` as dimse_messages.py calls it (command sets only, implicit VR little endian), written
    with ``struct``: the bytes pydicom writes. Anything else (another encoding, another group, a VR or value this
    does not know) goes to pydicom."""
    if not (is_implicit_vr and is_little_endian and not deflated):
        return pydicom_encode(ds, is_implicit_vr, is_little_endian, deflated)
    out = []
    for elem in ds.elements():
        tag = elem.tag
        vr, value = elem.VR, elem.value
        if tag >> 16 or getattr(elem, "is_raw", True):  # not group 0000, or a RawDataElement: pydicom's business
            return pydicom_encode(ds, is_implicit_vr, is_little_endian, deflated)
        if value is None or value == "":
            data = b""
        elif vr == "US" and type(value) is int and 0 <= value <= 0xFFFF:
            data = _US.pack(value)
        elif vr == "UL" and type(value) is int and 0 <= value <= 0xFFFFFFFF:
            data = _UL.pack(value)
        elif vr in ("UI", "AE", "LO", "SH", "CS") and isinstance(value, str) and value.isascii():
            data = value.encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
        else:
            return pydicom_encode(ds, is_implicit_vr, is_little_endian, deflated)
        out.append(_TAG.pack(tag >> 16, tag & 0xFFFF, len(data)))
        out.append(data)
    return b"".join(out)


# -- 14. query/retrieve messages sent straight from the primitive ---------------------------------------------

NEXT_SEND_MSG = DIMSEServiceProvider.send_msg


def _layout(name: str) -> tuple[tuple[str, int, str], ...]:
    """The command elements of a message type after the group length, in tag order: (keyword, tag, VR)."""
    out = []
    for keyword in dimse_messages._COMMAND_SET_KEYWORDS[name]:
        tag = tag_for_keyword(keyword)
        assert tag is not None
        if keyword != "CommandGroupLength":
            out.append((keyword, tag, dictionary_VR(tag)))
    return tuple(sorted(out, key=lambda x: x[1]))


# primitive class, is a response -> (command field, the message's layout, the primitive's data set attribute)
DIRECT: dict[tuple[type, bool], tuple[int, tuple[tuple[str, int, str], ...], str]] = {
    (C_FIND, True): (0x8020, _layout("C-FIND-RSP"), "Identifier"),
    (C_GET, True): (0x8010, _layout("C-GET-RSP"), "Identifier"),
    (C_MOVE, True): (0x8021, _layout("C-MOVE-RSP"), "Identifier"),
    (C_STORE, False): (0x0001, _layout("C-STORE-RQ"), "DataSet"),
}
_GROUP_LENGTH = struct.Struct("<HHII")


def direct_command_set(primitive: Any) -> tuple[bytes, Any, Any] | None:
    """The primitive's command set as pynetdicom would encode it, its data set (a BytesIO or None) and file
    (``(path, offset)`` or None); None where pynetdicom's own path must send it."""
    found = DIRECT.get((type(primitive), primitive.MessageIDBeingRespondedTo is not None))
    if found is None:
        return None
    field, layout, data_keyword = found
    data = getattr(primitive, data_keyword)
    path = getattr(primitive, "_dataset_path", None)
    if data is not None and not data.getvalue():
        return None  # an empty data set: pynetdicom announces one and sends none; leave that to it
    present = data is not None or path is not None
    parts = []
    for keyword, tag, vr in layout:
        if keyword == "CommandField":
            value: Any = field
        elif keyword == "CommandDataSetType":
            value = 0x0001 if present else 0x0101
        else:
            value = getattr(primitive, keyword)
            if value is None:
                continue
        encoded = _command_value(vr, value)
        if encoded is None:
            return None
        parts.append(_TAG.pack(0, tag & 0xFFFF, len(encoded)))
        parts.append(encoded)
    body = b"".join(parts)
    return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body, data, path


def _command_value(vr: str, value: Any) -> bytes | None:
    """A command element's value as pydicom writes it (implicit VR little endian); None for anything else."""
    if vr == "US" and type(value) is int and 0 <= value <= 0xFFFF:
        return _US.pack(value)
    if vr == "UL" and type(value) is int and 0 <= value <= 0xFFFFFFFF:
        return _UL.pack(value)
    if vr in ("UI", "AE", "LO") and isinstance(value, str) and value.isascii() and "\\" not in value:
        data = value.encode("ascii")
        return data + (b"\x00" if vr == "UI" else b" ") if len(data) % 2 else data
    return None


def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg`` for the query/retrieve messages, from the primitive (patch 14)."""
    direct = direct_command_set(primitive) if not self.assoc.get_handlers(evt.EVT_DIMSE_SENT) else None
    limit = self.maximum_pdu_size  # the peer's maximum length of a P-DATA-TF's variable field; 0: none
    if direct is None or (limit and len(direct[0]) + 6 > limit):
        NEXT_SEND_MSG(self, primitive, context_id)
        return
    command, data, path = direct
    head = (context_id, b"\x03" + command)  # a PDV item: 4 bytes of length, the context ID, the value
    fragments = _fragments(data, path, limit)
    first = next(fragments, None)
    if first is None:
        self.dul.send_pdu(_p_data(head))
    elif not limit or len(command) + 6 + len(first) + 5 <= limit:
        self.dul.send_pdu(_p_data(head, (context_id, first)))
    else:
        self.dul.send_pdu(_p_data(head))
        self.dul.send_pdu(_p_data((context_id, first)))
    for fragment in fragments:
        self.dul.send_pdu(_p_data((context_id, fragment)))


def _p_data(*pdvs: tuple[int, bytes]) -> P_DATA:
    pdata = P_DATA()
    pdata.presentation_data_value_list.extend(pdvs)
    return pdata


def _fragments(data: Any, path: Any, limit: int) -> Iterator[bytes]:
    """The data set's PDV values (message control header + fragment), each within ``limit`` (0: one), read from
    the BytesIO or from the file at its offset as pynetdicom's ``encode_msg`` does."""
    size = limit - 6 if limit else 0
    if data is not None:
        raw = data.getvalue()
        chunks = [raw] if not size else [raw[i : i + size] for i in range(0, len(raw), size)]
        for n, chunk in enumerate(chunks):
            yield (b"\x02" if n == len(chunks) - 1 else b"\x00") + chunk
        return
    if path is None:
        return
    with open(path[0], "rb") as fp:
        length = fp.seek(0, 2) - fp.seek(path[1])
        size = size or length
        left = length
        while True:
            chunk = fp.read(size)
            left -= len(chunk)
            if left <= 0 or not chunk:
                yield b"\x02" + chunk
                return
            yield b"\x00" + chunk


# -- 20. PDUs read in one piece; 21. P-DATA-TF decoded without copies -----------------------------------------

ORIGINAL_RECEIVE: dict[str, Any] = {
    "AssociationSocket.recv": AssociationSocket.recv,
    "DULServiceProvider._decode_pdu": DULServiceProvider._decode_pdu,
}
NEXT_SEND_MSG_22 = DIMSEServiceProvider.send_msg  # what patch 22 hands other messages to (set by apply_receive)
_ITEM_HEAD = struct.Struct(">LB").unpack_from  # PDV item: Item Length, Presentation Context ID (PS3.8 9.3.5.1)


RECV_FIRST = 1 << 20  # bytes of a PDU's buffer made before any arrive; it doubles as they come (to the PDU length)


def recv_whole(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` (fewer only when the peer closed), read with ``recv_into``. The
    buffer grows with what arrives (doubling from ``RECV_FIRST``), so a PDU length announced but never sent
    reserves no more memory than pynetdicom's appends would."""
    sock = self.socket
    assert sock is not None  # pynetdicom's recv: cast(socket.socket, self.socket)
    buffer = bytearray(min(nr_bytes, RECV_FIRST))
    read = 0
    while read < nr_bytes:
        if read == len(buffer):
            buffer.extend(bytes(min(nr_bytes - read, len(buffer))))
        with memoryview(buffer) as view:
            got = sock.recv_into(view[read:], len(buffer) - read)
        if not got:  # the connection is broken: what we have so far, as pynetdicom returns it
            del buffer[read:]
            return buffer
        read += got
    return buffer


def pdv_items(pdu: memoryview) -> list[PresentationDataValueItem]:
    """The Presentation Data Value Items of a P-DATA-TF PDU (its 6-byte header included in ``pdu``), their values
    ``memoryview`` slices of it. ValueError where pynetdicom's ``_generate_items`` would fail its length check."""
    items, offset, end = [], 6, len(pdu)
    while offset < end:
        if offset + 5 > end:
            raise ValueError("a PDV item header runs past the P-DATA-TF PDU")
        length, context_id = _ITEM_HEAD(pdu, offset)
        if length < 1 or offset + 4 + length > end:
            raise ValueError("a PDV item runs past the P-DATA-TF PDU")
        item = PresentationDataValueItem()
        item.presentation_context_id = context_id
        item.presentation_data_value = pdu[offset + 5 : offset + 4 + length]  # type: ignore[assignment]
        items.append(item)
        offset += 4 + length
    return items


def decode_pdu(self: DULServiceProvider, bytestream: bytearray) -> tuple[Any, str]:
    """``DULServiceProvider._decode_pdu``, with a P-DATA-TF's items decoded as views of ``bytestream``."""
    if bytestream[:1] != b"\x04":
        return ORIGINAL_RECEIVE["DULServiceProvider._decode_pdu"](self, bytestream)  # type: ignore[no-any-return]
    assoc = self.assoc
    if assoc.get_handlers(evt.EVT_DATA_RECV):  # trigger before decoding, as pynetdicom does
        evt.trigger(assoc, evt.EVT_DATA_RECV, {"data": bytes(bytestream)})
    pdu = P_DATA_TF()
    pdu.presentation_data_value_items = pdv_items(memoryview(bytestream))
    evt.trigger(assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
    return pdu, "Evt10"


# -- 22. C-STORE-RSP encoded directly ------------------------------------------------------------------------

_RSP_ELEMENT = struct.Struct("<HHL")  # Implicit VR Little Endian element header: group, element, value length
_RSP_US = struct.Struct("<HHLH")  # an element of one US value


def _rsp_ui(elem: int, uid: object) -> bytes:
    raw = str(uid).encode("ascii")  # UnicodeEncodeError: not for this path
    if len(raw) % 2:
        raw += b"\0"
    return _RSP_ELEMENT.pack(0x0000, elem, len(raw)) + raw


def store_rsp_command_set(rsp: C_STORE) -> bytes | None:
    """The encoded command set of a C-STORE response primitive, as pynetdicom encodes it; None when this path
    does not apply (an Offending Element or Error Comment, a non-ASCII UID, a Status that is not an int)."""
    if rsp.OffendingElement is not None or rsp.ErrorComment is not None or not isinstance(rsp.Status, int):
        return None
    try:
        parts = [
            _rsp_ui(0x0002, rsp.AffectedSOPClassUID) if rsp.AffectedSOPClassUID is not None else b"",
            _RSP_US.pack(0x0000, 0x0100, 2, 0x8001),  # Command Field: C-STORE-RSP
            _RSP_US.pack(0x0000, 0x0120, 2, rsp.MessageIDBeingRespondedTo),
            _RSP_US.pack(0x0000, 0x0800, 2, 0x0101),  # Command Data Set Type: no data set
            _RSP_US.pack(0x0000, 0x0900, 2, rsp.Status),
            _rsp_ui(0x1000, rsp.AffectedSOPInstanceUID) if rsp.AffectedSOPInstanceUID is not None else b"",
        ]
    except (UnicodeEncodeError, struct.error):
        return None
    body = b"".join(parts)
    return _RSP_ELEMENT.pack(0x0000, 0x0000, 4) + len(body).to_bytes(4, "little") + body


def send_store_rsp(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg``: a plain C-STORE response written directly (patch 22), anything else by
    the ``send_msg`` in force before (pynetdicom's, or another patch's)."""
    if type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None:
        sent = cast("list[tuple[Any, Any]]", self.assoc.get_handlers(evt.EVT_DIMSE_SENT))  # a notification event
        if all(handler is standard_dimse_sent_handler for handler, _ in sent):
            encoded = store_rsp_command_set(primitive)
            limit = self.maximum_pdu_size
            if encoded is not None and (not limit or len(encoded) <= limit - 6):  # one fragment, as pynetdicom
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))  # last command fragment
                self.dul.send_pdu(pdata)
                return
    NEXT_SEND_MSG_22(self, primitive, context_id)


def apply_receive() -> None:
    """Patches 20 to 22 (idempotent)."""
    global NEXT_SEND_MSG_22
    AssociationSocket.recv = recv_whole  # type: ignore[method-assign]
    DULServiceProvider._decode_pdu = decode_pdu  # type: ignore[method-assign]
    if DIMSEServiceProvider.send_msg is not send_store_rsp:  # over whatever send_msg is in force
        NEXT_SEND_MSG_22 = DIMSEServiceProvider.send_msg
        DIMSEServiceProvider.send_msg = send_store_rsp  # type: ignore[method-assign]
