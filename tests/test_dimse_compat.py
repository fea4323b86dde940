"""The pynetdicom patches of dcmnode.dimse.compat: the version they were written for, and each one in force."""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, dimse_messages, evt, service_class
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationServer, AssociationSocket

from dcmnode.app import Node
from dcmnode.core import retrieve
from dcmnode.dimse import compat, pacer
from tests.conftest import HOST, associate
from tests.factories import ct_series, part10


def test_pynetdicom_is_the_version_the_patches_were_written_for() -> None:
    """On an upgrade: re-read both patches in dimse/compat.py against the new pynetdicom (is the socket still left
    open when shutdown() fails? is ``_run_loop_delay`` still the reactor's sleep?), then move the pin."""
    assert pynetdicom.__version__ == compat.PYNETDICOM_VERSION


def test_the_socket_close_patch_is_in_force() -> None:
    import dcmnode.dimse  # noqa: F401  (importing the adapter applies it)

    assert AssociationSocket._shutdown_socket is compat.close_even_if_shutdown_fails


def test_the_reactor_still_sleeps_the_delay_the_pacer_sets() -> None:
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor)
    assert compat.REACTOR_DELAY == 0.001 and "self._run_loop_delay = 0.001" in inspect.getsource(DULServiceProvider)


def test_a_busy_association_polls_fast_then_falls_back_when_idle(node: Node) -> None:
    assoc = associate(node.dimse_port)
    try:
        assert node.scp is not None
        seen = []
        for ds in ct_series(3, rows=8, cols=8):  # each C-STORE touches the pacer; one stall > 0.25 s is forgiven
            assert assoc.send_c_store(ds).Status == 0x0000
            [served] = node.scp.server.active_associations
            seen.append(served.dul._run_loop_delay)
        assert pacer.FAST in seen
        deadline = time.monotonic() + 10
        while served.dul._run_loop_delay != compat.REACTOR_DELAY:  # idle_after is 0.25 s
            assert time.monotonic() < deadline, "the pacer never restored pynetdicom's delay"
            time.sleep(0.05)
    finally:
        assoc.release()


# -- 10-13: retrieve and query (dimse/compat.py patches 10-13) ------------------------------------------------


def source_hash(obj: object) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def test_the_retrieve_patches_are_in_force() -> None:
    import dcmnode.dimse  # noqa: F401  (importing the adapter applies them)

    assert Association.send_c_store is compat.send_c_store
    assert service_class.encode is compat.encode_identifier  # type: ignore[attr-defined]
    assert Association._bind_defaults is compat.bind_defaults_where_logged
    assert AssociationServer._bind_defaults is compat.bind_defaults_where_logged
    assert dimse_messages.encode is compat.encode_command_set  # type: ignore[attr-defined]
    assert DIMSEServiceProvider.send_msg is compat.send_msg


def test_the_pynetdicom_code_the_retrieve_patches_mirror_is_unchanged() -> None:
    """On an upgrade: re-read each against patches 10-13 (a copy of part of it, or what they rely on), then move
    the pins."""
    assert source_hash(compat.PYNETDICOM_SEND_C_STORE) == "fa5a8127f349f8e7"  # 10: the chunked-file branch copied
    binds = compat.PYNETDICOM_BIND_DEFAULTS
    assert source_hash(binds[Association]) == "4cada43c3a193724"  # 12: their first loop copied
    assert source_hash(binds[AssociationServer]) == "4cada43c3a193724"
    get_move = inspect.getsource(service_class.QueryRetrieveServiceClass._get_scp) + inspect.getsource(
        service_class.QueryRetrieveServiceClass._move_scp
    )
    assert get_move.count("if not isinstance(dataset, Dataset):") == 2  # 10: a stand-in must be a Dataset
    assert get_move.count("_add_failed_instance(dataset)") == 2  # which gives its SOPInstanceUID when it fails
    assert "send_c_store(dataset, msg_id=msg_id)" in get_move and "store_assoc.send_c_store(" in get_move
    find = inspect.getsource(service_class.ServiceClass._c_find_scp)
    assert "enc = encode(\n                    dataset," in find  # 11: the yielded match goes to encode
    assert inspect.getsource(dimse_messages).count("encode(self.command_set, True, True)") == 2  # 13
    message = dimse_messages.DIMSEMessage  # 14: what send_msg writes in their stead
    assert source_hash(message.primitive_to_message) == "71fd61d5997f0f0c"
    assert source_hash(message.encode_msg) == "73000c902c52832d"


def test_a_stored_file_goes_as_its_bytes_from_the_data_set_offset(tmp_path: Path) -> None:
    """Patch 10 over a real association: the receiver gets the file's bytes after its File Meta, unchanged."""
    [ds] = ct_series(1, rows=8, cols=8)
    path = tmp_path / "one.dcm"
    path.write_bytes(part10(ds))
    head = retrieve.stored_head(path)
    assert head is not None and head.transfer_syntax == ExplicitVRLittleEndian
    got: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        got.append(event.request.DataSet.getvalue())
        return 0x0000

    scp = AE(ae_title="SINK")
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian])
    server = scp.start_server((HOST, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate(HOST, server.server_address[1], ae_title="SINK")
        try:
            stored = compat.SendAsStored(path, head.offset, ds.SOPClassUID, ds.SOPInstanceUID, head.transfer_syntax)
            assert assoc.send_c_store(stored).Status == 0x0000
            with pytest.raises(ValueError):  # no context accepts its syntax: no conversion
                assoc.send_c_store(compat.SendAsStored(path, head.offset, ds.SOPClassUID, "1.2.3", JPEGBaseline8Bit))
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert got == [path.read_bytes()[head.offset :]]


def test_an_encoded_identifier_goes_through_as_is_deflated_or_through_pydicom() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Doe^John"
    implicit, explicit = pydicom_encode(ds, True, True), pydicom_encode(ds, False, True)
    assert implicit is not None and explicit is not None
    identifier = compat.EncodedIdentifier(b"as encoded", True, lambda: ds)
    assert compat.encode_identifier(identifier, True, True) == b"as encoded"
    assert compat.encode_identifier(identifier, False, True) == explicit  # another syntax: pydicom, from the Dataset
    assert compat.encode_identifier(identifier, False, False) == pydicom_encode(ds, False, False)
    deflatable = compat.EncodedIdentifier(explicit, False, lambda: ds)
    assert compat.encode_identifier(deflatable, False, True, True) == pydicom_encode(ds, False, True, True)
    assert compat.encode_identifier(ds, True, True) == implicit  # a plain Dataset: pydicom


def test_the_standard_log_handlers_are_bound_only_while_pynetdicom_logs_info() -> None:
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    try:
        logger.setLevel(logging.WARNING)
        quiet = Association(AE(), "requestor")
        assert not quiet.get_handlers(evt.EVT_DIMSE_SENT) and not quiet.get_handlers(evt.EVT_PDU_RECV)
        assert quiet.get_handlers(evt.EVT_C_STORE)  # the intervention handlers still are
        scp = AE()
        scp.add_supported_context(CTImageStorage)
        server = scp.make_server((HOST, 0))  # a server passes its handlers on to the associations it accepts
        try:
            assert not server.get_handlers(evt.EVT_DIMSE_SENT) and server.get_handlers(evt.EVT_C_STORE)
        finally:
            server.server_close()  # never served: nothing to shut down but its socket
        logger.setLevel(logging.DEBUG)
        verbose = Association(AE(), "requestor")
        assert (standard_dimse_sent_handler, None) in verbose.get_handlers(evt.EVT_DIMSE_SENT)
    finally:
        logger.setLevel(level)


def command_sets() -> list[Dataset]:
    """The command set of each DIMSE message dcmnode sends or could, with the values pynetdicom puts there."""
    uid, sop = "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1179865808968550219530976125747497719"
    find = "1.2.840.10008.5.1.4.1.2.2.1"
    echo, move, get = "1.2.840.10008.1.1", find[:-1] + "2", find[:-1] + "3"
    counts = {f"Number{of}Suboperations": n for of, n in [("OfRemaining", 39), ("OfCompleted", 1), ("OfFailed", 0)]}
    primitives: list[tuple[type, Any, dict[str, Any]]] = [
        (dimse_messages.C_ECHO_RQ, C_ECHO(), {"MessageID": 7, "AffectedSOPClassUID": echo}),
        (dimse_messages.C_ECHO_RSP, C_ECHO(), {
            "MessageIDBeingRespondedTo": 7, "Status": 0, "AffectedSOPClassUID": echo,
        }),
        (dimse_messages.C_STORE_RQ, C_STORE(), {
            "MessageID": 65535, "AffectedSOPClassUID": uid, "AffectedSOPInstanceUID": sop + "3", "Priority": 2,
            "MoveOriginatorApplicationEntityTitle": "DCMNODE", "MoveOriginatorMessageID": 3, "DataSet": BytesIO(b"x"),
        }),
        (dimse_messages.C_STORE_RSP, C_STORE(), {
            "MessageIDBeingRespondedTo": 1, "AffectedSOPClassUID": uid, "AffectedSOPInstanceUID": sop,
            "Status": 0xB000, "ErrorComment": "coerced: odd",
        }),
        (dimse_messages.C_FIND_RSP, C_FIND(), {
            "MessageIDBeingRespondedTo": 2, "AffectedSOPClassUID": find, "Status": 0xFF00, "Identifier": BytesIO(b"x"),
        }),
        (dimse_messages.C_FIND_RQ, C_FIND(), {
            "MessageID": 2, "AffectedSOPClassUID": find, "Priority": 0, "Identifier": BytesIO(b"x"),
        }),
        (dimse_messages.C_MOVE_RQ, C_MOVE(), {
            "MessageID": 4, "AffectedSOPClassUID": move, "Priority": 1, "MoveDestination": "DEST",
            "Identifier": BytesIO(b"x"),
        }),
        (dimse_messages.C_MOVE_RSP, C_MOVE(), {
            "MessageIDBeingRespondedTo": 4, "AffectedSOPClassUID": move, "Status": 0xFF00, **counts,
            "NumberOfWarningSuboperations": 0,
        }),
        (dimse_messages.C_GET_RSP, C_GET(), {
            "MessageIDBeingRespondedTo": 5, "AffectedSOPClassUID": get, "Status": 0xA702,
            "NumberOfFailedSuboperations": 40, "ErrorComment": "even",
        }),
        (dimse_messages.C_CANCEL_RQ, C_CANCEL(), {"MessageIDBeingRespondedTo": 4}),
        (dimse_messages.C_STORE_RSP, C_STORE(), {
            "MessageIDBeingRespondedTo": 1, "AffectedSOPClassUID": uid, "AffectedSOPInstanceUID": sop,
            "Status": 0xA900, "OffendingElement": [0x00100010, 0x00100020],
        }),
    ]  # fmt: skip
    out = []
    for message_class, primitive, values in primitives:
        for name, value in values.items():
            setattr(primitive, name, value)
        message = message_class()
        message.primitive_to_message(primitive)
        out.append(message.command_set)
    return out


def test_command_sets_are_the_bytes_pydicom_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    sets = command_sets()
    for command_set in sets:
        assert compat.encode_command_set(command_set, True, True) == pydicom_encode(command_set, True, True)
    handed_on: list[Dataset] = []
    monkeypatch.setattr(compat, "pydicom_encode", lambda ds, *args: handed_on.append(ds) or pydicom_encode(ds, *args))
    for command_set in sets:
        compat.encode_command_set(command_set, True, True)
    assert [ds.CommandField for ds in handed_on] == [0x8001]  # only the C-STORE-RSP with its AT list
    data_set = Dataset()
    data_set.PatientName = "Doe^John"  # not a command set: pydicom's business
    assert compat.encode_command_set(data_set, True, True) == pydicom_encode(data_set, True, True)


class Recorder:
    """What a DIMSE provider hands its DUL: the P-DATA primitives, as lists of PDVs; ``limit`` is the peer's
    maximum PDU length."""

    def __init__(self, limit: int, handlers: list[Any] | None = None) -> None:
        self.sent: list[list[tuple[int, bytes]]] = []
        self.is_requestor = True
        self.acceptor = type("Acceptor", (), {"maximum_length": limit})()
        self.dul = self
        self.handlers = handlers or []

    def send_pdu(self, primitive: Any) -> None:
        self.sent.append(list(primitive.presentation_data_value_list))

    def get_handlers(self, event: Any) -> list[Any]:
        return self.handlers if event is evt.EVT_DIMSE_SENT else []

    def _abort_nonblocking(self) -> None:  # evt.trigger swaps these in and out around notification handlers
        raise AssertionError("aborted")

    _abort_blocking = _abort_nonblocking


def pynetdicom_pdvs(primitive: Any, context_id: int, limit: int) -> list[tuple[int, bytes]]:
    """The PDVs pynetdicom's own message encoding gives (``DIMSEMessage.encode_msg``), in order."""
    message = {
        C_FIND: dimse_messages.C_FIND_RSP,
        C_GET: dimse_messages.C_GET_RSP,
        C_MOVE: dimse_messages.C_MOVE_RSP,
        C_STORE: dimse_messages.C_STORE_RQ,
    }[type(primitive)]()
    message.primitive_to_message(primitive)
    return [pdv for p_data in message.encode_msg(context_id, limit) for pdv in p_data.presentation_data_value_list]


def retrieve_primitives(tmp_path: Path) -> list[Any]:
    sop, find = "1.2.826.0.1.3680043.8.498.1179865808968550219530976125747497719", "1.2.840.10008.5.1.4.1.2.2.1"
    identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY " * 40)
    path = tmp_path / "data.dcm"
    path.write_bytes(b"\0" * 100 + bytes(range(256)) * 200)
    out: list[Any] = []
    for status, data in ((0xFF00, identifier), (0x0000, None), (0xB000, BytesIO(b"\x08\x00\x58\x00\x00\x00\x00\x00"))):
        for cls in (C_FIND, C_GET, C_MOVE):
            rsp = cls()
            rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = 3, find, status
            rsp.Identifier = data
            if cls is not C_FIND and status != 0xFF00:
                rsp.NumberOfCompletedSuboperations, rsp.NumberOfFailedSuboperations = 39, 1
                rsp.NumberOfWarningSuboperations = 0
            out.append(rsp)
    for data, file in ((BytesIO(b"\x10\x00\x10\x00\x04\x00\x00\x00DOE^" * 1000), None), (None, (path, 100))):
        req = C_STORE()
        req.MessageID, req.Priority, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = 9, 2, find, sop
        req.MoveOriginatorApplicationEntityTitle, req.MoveOriginatorMessageID = "DCMNODE", 3
        req.DataSet = data
        req._dataset_path = file
        out.append(req)
    return out


@pytest.mark.parametrize("limit", [0, 16382, 200, 128])
def test_query_retrieve_messages_go_as_pynetdicom_sends_them_in_fewer_pdus(limit: int, tmp_path: Path) -> None:
    """Patch 14: the same PDVs in the same order as pynetdicom's encoding, each P-DATA within the peer's limit,
    and the command with the data set's first fragment in one P-DATA where they fit."""
    for primitive in retrieve_primitives(tmp_path):
        recorder = Recorder(limit)
        provider = DIMSEServiceProvider(recorder)  # type: ignore[arg-type]
        compat.send_msg(provider, primitive, 5)
        sent = [pdv for p_data in recorder.sent for pdv in p_data]
        assert sent == pynetdicom_pdvs(primitive, 5, limit), primitive
        for p_data in recorder.sent:
            assert not limit or sum(4 + 1 + len(value) for _, value in p_data) <= limit
        fits = not limit or sum(4 + 1 + len(value) for _, value in sent[:2]) <= limit
        assert len(recorder.sent[0]) == (2 if len(sent) > 1 and fits else 1)


def test_a_bound_dimse_sent_handler_gets_pynetdicom_s_message(tmp_path: Path) -> None:
    seen: list[Any] = []
    recorder = Recorder(0, handlers=[(lambda event: seen.append(event.message), None)])
    primitive = retrieve_primitives(tmp_path)[0]
    provider = DIMSEServiceProvider(recorder)  # type: ignore[arg-type]
    compat.send_msg(provider, primitive, 5)
    assert [type(m) for m in seen] == [dimse_messages.C_FIND_RSP]  # pynetdicom's send_msg made and announced it
    assert [len(p) for p in recorder.sent] == [1, 1]  # and sent command and identifier apart, as it does
