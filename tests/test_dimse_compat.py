"""The pynetdicom patches of dcmnode.dimse.compat: the version they were written for, and each one in force."""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import os
import socket
import threading
import time
import tracemalloc
from collections import Counter
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
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

from dcmnode.app import Node
from dcmnode.core import retrieve
from dcmnode.dimse import compat
from tests.conftest import HOST, associate
from tests.factories import CT_IMAGE_STORAGE, ct_series, part10

# sha256 (first 16 hex digits) of the pynetdicom 3.0.4 source each patch of compat.ORIGINAL replaces with a copy
COPIED_FROM = {
    "DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "DULServiceProvider.kill_dul": "5ceccf8dd01c2072",
    "DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    "Association.__init__": "eb07516b8009ad8f",
    "Association._run_reactor": "f28838c5559e462a",
    "Association.kill": "8f9713666a7f4cff",
}


def test_pynetdicom_is_the_version_the_patches_were_written_for() -> None:
    """On an upgrade: re-read every patch in dimse/compat.py against the new pynetdicom (is the socket still left
    open when shutdown() fails? are the supported contexts still deep-copied per association? do the reactors
    still poll?), then move the pin."""
    assert pynetdicom.__version__ == compat.PYNETDICOM_VERSION


def test_the_replaced_methods_are_the_ones_the_patches_were_copied_from() -> None:
    """Patches 5 and 6 replace pynetdicom methods with edited copies: a changed original means the copy is stale."""
    found = {
        name: hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
        for name, method in compat.ORIGINAL.items()
    }
    assert found == COPIED_FROM
    # what patch 4 works around, and the sleeps patches 5 and 6 replace
    assert "deepcopy(self.server.contexts)" in inspect.getsource(RequestHandler._create_association)
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(compat.ORIGINAL["DULServiceProvider.run_reactor"])
    assert "time.sleep(0.001)" in inspect.getsource(compat.ORIGINAL["Association._run_reactor"])
    assert "time.sleep(0.01)" in inspect.getsource(compat.ORIGINAL["Association.kill"])


def test_every_patch_is_in_force() -> None:
    import dcmnode.dimse  # noqa: F401  (importing the adapter applies them)

    assert AssociationSocket._shutdown_socket is compat.close_even_if_shutdown_fails
    assert DULServiceProvider.run_reactor is compat.dul_run_reactor
    assert DULServiceProvider.kill_dul is compat.dul_kill
    assert DULServiceProvider.stop_dul is compat.dul_stop
    assert Association.__init__ is compat.association_init
    assert Association._run_reactor is compat.association_run_reactor
    assert Association.kill is compat.association_kill


def served_association(node: Node, count: int = 1) -> list[Association]:
    """The SCP's side of the client associations just made (its acceptor threads)."""
    assert node.scp is not None
    deadline = time.monotonic() + 10
    while len(served := node.scp.server.active_associations) < count:
        assert time.monotonic() < deadline, "the SCP never served the association"
        time.sleep(0.01)
    return served


def test_associations_share_one_copy_of_the_supported_contexts(node: Node) -> None:
    """Patch 4: no deep copy of the 177 supported contexts per association; negotiation still uses them."""
    assert node.scp is not None
    server = node.scp.server
    assert isinstance(server.contexts, compat.SharedContexts) and len(server.contexts) > 100
    assert copy.deepcopy(server.contexts) is server.contexts
    clients = [associate(node.dimse_port), associate(node.dimse_port)]
    try:
        served = served_association(node, 2)
        assert all(s.acceptor.supported_contexts is server.contexts for s in served)
        assert [c.send_c_store(ds).Status for c, ds in zip(clients, ct_series(2, rows=8, cols=8), strict=True)] == [
            0,
            0,
        ]
        # a context the SCP does not support is still refused (abstract syntax not supported, PS3.8 9.3.3.2)
        unsupported = associate(node.dimse_port, contexts=[pynetdicom.build_context("1.2.3.4.5.6")])
        assert not unsupported.is_established
    finally:
        for client in clients:
            client.release()


def test_idle_reactors_wait_instead_of_polling(node: Node, monkeypatch: Any) -> None:
    """Patches 5 and 6: an idle association's DUL and association threads block (pynetdicom's poll 1000 times a
    second each); the SCP's reply to a C-ECHO wakes its DUL through the wake-up, not at its next poll."""
    dul_waits: Counter[int] = Counter()
    real_wait = compat._dul_wait

    def counting_dul_wait(dul: DULServiceProvider, wakeup: Any) -> None:
        dul_waits[threading.get_ident()] += 1
        real_wait(dul, wakeup)

    monkeypatch.setattr(compat, "_dul_wait", counting_dul_wait)
    client = associate(node.dimse_port)
    try:
        assert client.send_c_echo().Status == 0x0000
        [served] = served_association(node)
        wakes = compat.wakes_of(served)
        assert wakes is not None and wakes.dul is not None  # the DUL thread runs, with its wake-up descriptor
        before = wakes.wakeups
        assert client.send_c_echo().Status == 0x0000
        assert wakes.wakeups > before  # the response queued by the association thread woke the DUL

        assoc_waits: Counter[int] = Counter()
        for assoc in (served, client):
            event = compat.wakes_of(assoc).assoc  # type: ignore[union-attr]
            real = event.wait

            def counting(timeout: float | None = None, real: Any = real, ident: int = assoc.ident or 0) -> bool:
                assoc_waits[ident] += 1
                return bool(real(timeout))

            event.wait = counting  # type: ignore[method-assign]
        dul_waits.clear()
        time.sleep(1.0)  # idle: each thread wakes at most every WAIT_CAP (0.5 s) to look at its timers
        for assoc in (served, client):
            assert dul_waits[assoc.dul.ident or 0] <= 4, dul_waits
            assert assoc_waits[assoc.ident or 0] <= 4, assoc_waits
    finally:
        client.release()
    served.join(10)
    assert not served.is_alive() and not served.dul.is_alive()
    assert compat.wakes_of(served).dul is None  # type: ignore[union-attr]  (its wake-up closed with the DUL)


class CheckpointProbe(threading.Event):
    """An association's ``_reactor_checkpoint`` that notes, the first time the reactor passes it while it is set,
    what a sender clearing it at that instant would read in ``_is_paused`` (True: "paused, go ahead")."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self.set()
        self.assoc = assoc
        self.seen: bool | None = None
        self.passed = threading.Event()

    def _note(self) -> None:
        if threading.current_thread() is self.assoc and not self.passed.is_set():
            self.seen = self.assoc._is_paused
            self.passed.set()

    def is_set(self) -> bool:
        result = super().is_set()
        if result:
            self._note()
        return result

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        if result:
            self._note()
        return result


def test_the_reactor_is_marked_running_before_it_passes_the_checkpoint(node: Node) -> None:
    """Patch 6's race fix: pynetdicom's reactor passed ``_reactor_checkpoint`` while still marked paused, so a
    ``send_*`` clearing it then went ahead and the reactor took its response (the sender then waited
    ``dimse_timeout`` and aborted: 1 C-ECHO in ~1,200 against a fast peer here)."""
    client = associate(node.dimse_port)
    try:
        probe = CheckpointProbe(client)
        client._reactor_checkpoint = probe
        wakes = compat.wakes_of(client)
        if wakes is not None:  # (pynetdicom's own reactor passes it every millisecond)
            wakes.assoc.set()  # the idle reactor looks again, and passes the checkpoint
        assert probe.passed.wait(10)
        assert probe.seen is False
        assert client.send_c_echo().Status == 0x0000  # the handshake still works with the probe in place
    finally:
        client.release()


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
    # 14 is chained under 22 (each wraps the send_msg in force when applied): 22 -> 14 -> pynetdicom's
    assert DIMSEServiceProvider.send_msg is compat.send_store_rsp
    assert compat.NEXT_SEND_MSG_22 is compat.send_msg


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


# -- patches 20-22: the C-STORE receive and answer paths -----------------------------------------------------


class _Sock:
    """What ``recv_whole`` reads through: the ``socket`` attribute of an ``AssociationSocket``."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def test_the_c_store_patches_are_in_force() -> None:
    import dcmnode.dimse  # noqa: F401  (importing the adapter applies them)

    assert AssociationSocket.recv is compat.recv_whole
    assert DULServiceProvider._decode_pdu is compat.decode_pdu
    assert DIMSEServiceProvider.send_msg is compat.send_store_rsp


def test_a_pdu_arriving_in_pieces_is_read_whole() -> None:
    payload = os.urandom(3 * compat.RECV_FIRST + 12345)  # past the first buffer: it grows
    ours, theirs = socket.socketpair()
    sender = threading.Thread(
        target=lambda: [theirs.sendall(payload[i : i + 70000]) for i in range(0, len(payload), 70000)]
    )
    sender.start()
    try:
        assert compat.recv_whole(_Sock(ours), len(payload)) == payload  # type: ignore[arg-type]
    finally:
        sender.join(10)
        ours.close()
        theirs.close()


def test_a_peer_that_closes_early_gives_what_it_sent_and_no_big_buffer() -> None:
    ours, theirs = socket.socketpair()
    theirs.sendall(b"x" * 1000)
    theirs.close()
    tracemalloc.start()
    try:
        got = compat.recv_whole(_Sock(ours), 2**31)  # type: ignore[arg-type]  # announced, never sent
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        ours.close()
    assert got == b"x" * 1000  # as pynetdicom's recv: what was read (the DUL then sees a short PDU: Evt17)
    assert peak < 4 * compat.RECV_FIRST


def p_data_tf(*values: tuple[int, bytes]) -> bytearray:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [list(v) for v in values]  # type: ignore[misc]
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytearray(pdu.encode())


def test_p_data_tf_items_are_views_of_the_pdu_with_pynetdicoms_values() -> None:
    raw = p_data_tf((1, b"\x03" + b"command"), (3, b"\x00" + os.urandom(5000)))
    reference = P_DATA_TF()
    reference.decode(bytes(raw))
    items = compat.pdv_items(memoryview(raw))
    assert [(i.presentation_context_id, bytes(i.presentation_data_value)) for i in items] == [
        (i.presentation_context_id, i.presentation_data_value) for i in reference.presentation_data_value_items
    ]
    assert all(isinstance(i.presentation_data_value, memoryview) for i in items)  # no copy of a fragment


@pytest.mark.parametrize("cut", [3, 9])
def test_a_p_data_tf_item_running_past_its_pdu_is_refused(cut: int) -> None:
    raw = p_data_tf((1, b"\x03" + b"0123456789"))
    with pytest.raises(ValueError, match="past the P-DATA-TF"):
        compat.pdv_items(memoryview(raw[: len(raw) - cut]))


def bare_scp(handlers: list[Any]) -> Any:
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 16382  # several P-DATA-TF PDUs per data set
    ae.add_supported_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    return ae.start_server((HOST, 0), block=False, evt_handlers=handlers)


def test_an_association_with_data_recv_and_dimse_sent_handlers_sees_what_pynetdicom_gives() -> None:
    """Where a handler could tell the patches apart, pynetdicom's objects are given: the bytes of each PDU
    (EVT_DATA_RECV, patch 21), the C-STORE-RSP message (EVT_DIMSE_SENT, patch 22); the instance arrives whole."""
    pdus: list[Any] = []
    sent: list[Any] = []
    received: list[bytes] = []

    def on_store(event: Any) -> int:
        received.append(event.encoded_dataset(include_meta=False))
        return 0x0000

    server = bare_scp(
        [
            (evt.EVT_DATA_RECV, lambda event: pdus.append(event.data)),
            (evt.EVT_DIMSE_SENT, lambda event: sent.append(event.message)),
            (evt.EVT_C_STORE, on_store),
        ]
    )
    try:
        ds = ct_series(1, rows=64, cols=64)[0]
        ae = AE(ae_title="PLAIN")
        ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
        assoc = ae.associate(HOST, server.server_address[1], ae_title="BARE")
        status = assoc.send_c_store(ds)
        assoc.release()
    finally:
        server.shutdown()
    assert status.Status == 0x0000
    assert len(pdus) >= 3 and all(type(p) is bytes for p in pdus)
    assert any(p[0] == 0x04 for p in pdus)  # a P-DATA-TF (command and data set in one with patch 14)
    [rsp] = [m for m in sent if isinstance(m, C_STORE_RSP)]
    assert rsp.command_set.Status == 0x0000 and rsp.command_set.AffectedSOPInstanceUID == ds.SOPInstanceUID
    [data_set] = received
    assert data_set == encode(ds, False, True)  # the data set as the SCU encoded it


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700])
@pytest.mark.parametrize("sop", ["1.2.3", "1.2.34"])
def test_a_c_store_response_is_encoded_as_pynetdicom_encodes_it(status: int, sop: str) -> None:
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID, rsp.Status = CT_IMAGE_STORAGE, sop, status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert compat.store_rsp_command_set(rsp) == encode(message.command_set, True, True)


def test_a_c_store_response_with_an_error_comment_goes_through_pynetdicom() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID, rsp.Status = CT_IMAGE_STORAGE, "1.2.3", 0xA700
    rsp.ErrorComment = "out of disk space"
    assert compat.store_rsp_command_set(rsp) is None


def test_the_node_answers_c_stores_through_the_direct_encoder(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's C-STORE-RSPs are patch 22's bytes (none reaches the send_msg it chains over), and the SCU
    decodes them, answer after answer."""
    passed_on: list[Any] = []
    chained = compat.NEXT_SEND_MSG_22
    monkeypatch.setattr(
        compat,
        "NEXT_SEND_MSG_22",
        lambda dimse, primitive, cx: passed_on.append(primitive) or chained(dimse, primitive, cx),
    )
    assoc = associate(node.dimse_port)
    try:
        for ds in ct_series(3, rows=16, cols=16):
            assert assoc.send_c_store(ds).Status == 0x0000  # pynetdicom checks Message ID Being Responded To
    finally:
        assoc.release()
    responses = [p for p in passed_on if isinstance(p, C_STORE) and p.MessageIDBeingRespondedTo is not None]
    assert responses == []  # (what reached it: the in-process SCU's C-STORE requests)
