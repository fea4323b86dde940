"""The pynetdicom patches of dcmnode.dimse.compat: the version they were written for, and each one in force."""

from __future__ import annotations

import inspect
import os
import socket
import threading
import time
import tracemalloc
from typing import Any

import pynetdicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from dcmnode.app import Node
from dcmnode.dimse import compat, pacer
from tests.conftest import HOST, associate
from tests.factories import CT_IMAGE_STORAGE, ct_series


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
    assert len(pdus) > 3 and all(type(p) is bytes for p in pdus)
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
