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

import logging
import socket
import ssl
import struct
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA
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
