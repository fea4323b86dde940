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

Patches 10-13 (retrieve and query: C-MOVE, C-GET, C-FIND and ``dimse.send``), put in force by ``apply``:

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
12. **Log handlers only where they log** (``Association._bind_defaults``). With ``_config.LOG_HANDLER_LEVEL``
    "standard" (the default) every association binds four handlers that format every DIMSE message and every PDU
    sent and received into DEBUG and INFO lines, whether or not anything is logged (~6 % of a C-FIND's CPU). The
    node keeps pynetdicom's logger at WARNING unless ``node.log_level = "DEBUG"`` (``cli._logging``): an
    association now binds them only while that logger is enabled for INFO, so that DEBUG still shows them.
    *Upstream:* check ``LOGGER.isEnabledFor`` in the standard handlers before formatting.
13. **Command sets encoded directly** (``dimse_messages.encode``). A DIMSE message's command set is encoded with
    pydicom twice (``_set_command_group_length`` to measure it, ``encode_msg`` to send it): ~0.15 ms per message,
    paid per C-FIND match and twice per C-MOVE/C-GET sub-operation (the C-STORE-RQ and the pending response). The
    command set is group 0000 in implicit VR little endian with US, UL, UI, AE and LO values only, so
    ``encode_command_set`` writes it with ``struct`` (the bytes pydicom writes, tests/test_dimse_compat.py), and
    hands anything else (a multi-valued AT, a non-ASCII text) to pydicom. *Upstream:* a small command-set encoder
    in ``dimse_messages``, the group length computed from the encoded bytes instead of a second encode.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import dimse_messages, evt, service_class
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode as pydicom_encode
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
    """Put the patches in force (idempotent)."""
    AssociationSocket._shutdown_socket = close_even_if_shutdown_fails  # type: ignore[method-assign]
    for name in TLS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TlsReasonOnly) for f in logger.filters):
            logger.addFilter(TlsReasonOnly())
    Association.send_c_store = send_c_store  # type: ignore[method-assign]  # 10
    service_class.encode = encode_identifier  # type: ignore[attr-defined]  # 11
    Association._bind_defaults = bind_defaults_where_logged  # type: ignore[method-assign]  # 12
    dimse_messages.encode = encode_command_set  # type: ignore[attr-defined]  # 13


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


class EncodedIdentifier(Dataset):
    """A C-FIND match encoded already: ``data`` in implicit (``implicit``) or explicit VR little endian;
    ``dataset()`` builds the same match as a ``Dataset`` for any other transfer syntax."""

    def __init__(self, data: bytes, implicit: bool, dataset: Callable[[], Dataset]) -> None:
        super().__init__()
        object.__setattr__(self, "encoded", (data, implicit, dataset))

    @property
    def data(self) -> bytes:
        return self.encoded[0]  # type: ignore[no-any-return]

    @property
    def implicit(self) -> bool:
        return self.encoded[1]  # type: ignore[no-any-return]

    def dataset(self) -> Dataset:
        return self.encoded[2]()  # type: ignore[no-any-return]


def encode_identifier(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
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
PYNETDICOM_BIND_DEFAULTS = Association._bind_defaults


def bind_defaults_where_logged(self: Association) -> None:
    """``Association._bind_defaults``: the intervention handlers always, the standard logging handlers only while
    pynetdicom's logger is enabled for INFO (they log at INFO and DEBUG only)."""
    if PYNETDICOM_LOGGER.isEnabledFor(logging.INFO):
        PYNETDICOM_BIND_DEFAULTS(self)
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
