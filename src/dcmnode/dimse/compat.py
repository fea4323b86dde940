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
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
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
    apply_receive()


def can_set_reactor_delay(dul: DULServiceProvider) -> bool:
    """Whether this pynetdicom's DUL has the delay knob (a version without it: nothing to tune)."""
    return hasattr(dul, "_run_loop_delay")


def set_reactor_delay(dul: DULServiceProvider, seconds: float) -> None:
    """How long the association's DUL reactor (``assoc.dul``) sleeps when a loop found nothing to do."""
    dul._run_loop_delay = seconds


# -- 20. PDUs read in one piece; 21. P-DATA-TF decoded without copies -----------------------------------------

ORIGINAL_RECEIVE: dict[str, Any] = {
    "AssociationSocket.recv": AssociationSocket.recv,
    "DULServiceProvider._decode_pdu": DULServiceProvider._decode_pdu,
}
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


def apply_receive() -> None:
    """Patches 20 and 21 (idempotent)."""
    AssociationSocket.recv = recv_whole  # type: ignore[method-assign]
    DULServiceProvider._decode_pdu = decode_pdu  # type: ignore[method-assign]
