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
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import dimse_messages, evt, service_class
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationServer, AssociationSocket

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
    """Put the patches in force (idempotent)."""
    AssociationSocket._shutdown_socket = close_even_if_shutdown_fails  # type: ignore[method-assign]
    for name in TLS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TlsReasonOnly) for f in logger.filters):
            logger.addFilter(TlsReasonOnly())
    Association.send_c_store = send_c_store  # type: ignore[method-assign]  # 10
    service_class.encode = encode_identifier  # type: ignore[attr-defined]  # 11
    Association._bind_defaults = bind_defaults_where_logged  # type: ignore[method-assign]  # 12
    AssociationServer._bind_defaults = bind_defaults_where_logged  # type: ignore[method-assign]
    dimse_messages.encode = encode_command_set  # type: ignore[attr-defined]  # 13
    global NEXT_SEND_MSG
    if DIMSEServiceProvider.send_msg is not send_msg:  # 14, over whatever send_msg is in force
        NEXT_SEND_MSG = DIMSEServiceProvider.send_msg
        DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]


def can_set_reactor_delay(dul: DULServiceProvider) -> bool:
    """Whether this pynetdicom's DUL has the delay knob (a version without it: nothing to tune)."""
    return hasattr(dul, "_run_loop_delay")


def set_reactor_delay(dul: DULServiceProvider, seconds: float) -> None:
    """How long the association's DUL reactor (``assoc.dul``) sleeps when a loop found nothing to do."""
    dul._run_loop_delay = seconds


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
