"""Where dcmnode reaches into pynetdicom's internals: both patches, in one place.

Written for pynetdicom ``PYNETDICOM_VERSION``; tests/test_dimse_compat.py pins that version, so that an upgrade
makes someone re-check both patches (and drop those upstream made unnecessary).

1. **Socket close** (``apply``, done once when ``dcmnode.dimse`` is imported, for the SCP and the SCU alike).
   pynetdicom 3.0.4 calls ``close()`` in the same ``try`` as ``shutdown()`` (``AssociationSocket._shutdown_socket``):
   when the peer has gone first, ``shutdown`` raises ENOTCONN and the socket stays open until garbage collection
   (a ResourceWarning, and a descriptor held for nothing meanwhile). Upstream works on the same problem in
   pydicom/pynetdicom#999; the replacement is harmless where pynetdicom already closes the socket.
2. **Reactor delay** (``set_reactor_delay``, used by ``dimse.pacer``). pynetdicom's DUL reactor sleeps
   ``DULServiceProvider._run_loop_delay`` (``REACTOR_DELAY``, 1 ms) whenever a loop finds nothing to do, and has
   no public way to change it; the pacer shortens it while an association is busy and restores it once idle.
3. **TLS failure traces** (``apply``). When an association's TLS fails, pynetdicom 3.0.4 logs the
   ``ssl.SSLError`` with ``LOGGER.exception``: in ``AssociationSocket.connect`` (the handshake: an untrusted
   certificate, a wrong server name) and in the DUL's PDU reads (TLS 1.3 sends a refused client certificate's
   alert after the handshake): a stack trace in the node's log for an expected refusal. A filter on both loggers
   turns such a record into one line with the TLS reason, at the same level.
"""

from __future__ import annotations

import logging
import socket
import ssl

from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

PYNETDICOM_VERSION = "3.0.4"
REACTOR_DELAY = 0.001  # seconds: pynetdicom's own DULServiceProvider._run_loop_delay


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


class TlsReasonOnly(logging.Filter):
    """A pynetdicom record carrying an ``ssl.SSLError`` traceback becomes one line: the TLS reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ssl.SSLError):
            record.msg, record.args = "TLS failure: %s", (exc.reason or exc.strerror or exc,)
            record.exc_info, record.exc_text = None, None
        return True


TLS_LOGGERS = ("pynetdicom.transport", "pynetdicom.dul")


def apply() -> None:
    """Put the socket-close patch and the TLS trace filter in force (idempotent)."""
    AssociationSocket._shutdown_socket = close_even_if_shutdown_fails  # type: ignore[method-assign]
    for name in TLS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TlsReasonOnly) for f in logger.filters):
            logger.addFilter(TlsReasonOnly())


def can_set_reactor_delay(dul: DULServiceProvider) -> bool:
    """Whether this pynetdicom's DUL has the delay knob (a version without it: nothing to tune)."""
    return hasattr(dul, "_run_loop_delay")


def set_reactor_delay(dul: DULServiceProvider, seconds: float) -> None:
    """How long the association's DUL reactor (``assoc.dul``) sleeps when a loop found nothing to do."""
    dul._run_loop_delay = seconds
