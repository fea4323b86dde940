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
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
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
