"""C-MOVE and C-GET against the node: dcmtk movescu/getscu and pynetdicom SCUs, a real pynetdicom storage SCP
as the move destination, and the decompression fallback for a receiver that refuses compression."""

from __future__ import annotations

import io
import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dcmnode.app import Node
from dcmnode.config import Peer
from dcmnode.dimse import send
from dcmnode.dimse.send import Retry
from dcmnode.model import Source, SourceKind
from dcmnode.part10 import walk
from tests.conftest import HOST
from tests.factories import bundled, ct_series, part10


class StorageScp:
    """A pynetdicom storage SCP on a free port that records what it receives (decoded, and the data set bytes as
    they came, in ``raw`` by SOP Instance UID); it refuses the SOP Instance UIDs in ``refuse`` with 0xA700."""

    def __init__(self, ae_title: str = "DEST", transfer_syntaxes: list[str] | None = None, port: int = 0) -> None:
        self.received: list[tuple[Dataset, str]] = []
        self.raw: dict[str, bytes] = {}
        self.refuse: set[str] = set()
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(Verification)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, transfer_syntaxes or context.transfer_syntax)
        self.server = ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event: evt.Event) -> int:
        self.raw[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append((ds, str(event.context.transfer_syntax)))
        return 0xA700 if str(ds.SOPInstanceUID) in self.refuse else 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def destinations() -> Iterator[Callable[..., StorageScp]]:
    started: list[StorageScp] = []

    def start(ae_title: str = "DEST", transfer_syntaxes: list[str] | None = None) -> StorageScp:
        scp = StorageScp(ae_title, transfer_syntaxes)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def peers(*scps: tuple[str, StorageScp]) -> str:
    return "".join(f"[peers.{name}]\nhost = '{HOST}'\nport = {scp.port}\n" for name, scp in scps)


def fill(node: Node, datasets: list[Dataset]) -> None:
    for ds in datasets:
        node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))


def move(port: int, identifier: Dataset, destination: str, model: Any = StudyRootQueryRetrieveInformationModelMove):
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(model)
    assoc = ae.associate(HOST, port, ae_title="DCMNODE")
    assert assoc.is_established
    try:
        return [(status, ds) for status, ds in assoc.send_c_move(identifier, destination, model)]
    finally:
        assoc.release()


def study_identifier(study: str, level: str = "STUDY") -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = study
    return identifier


def test_movescu_moves_a_study_to_a_declared_peer(node_factory: Callable[..., Node], destinations: Any) -> None:
    dest = destinations()
    node = node_factory(peers_toml=peers(("DEST", dest)))
    series = ct_series(5, rows=16, cols=16) + ct_series(3, rows=16, cols=16)
    series[5:] = ct_series(3, rows=16, cols=16, study=series[0].StudyInstanceUID)
    fill(node, series)
    result = subprocess.run(
        ["movescu", "-S", "-aet", "MOVESCU", "-aec", "DCMNODE", "-aem", "DEST", HOST, str(node.dimse_port)]
        + ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    got = {ds.SOPInstanceUID: ds for ds, _ in dest.received}
    assert set(got) == {ds.SOPInstanceUID for ds in series}
    for ds in series:
        assert got[ds.SOPInstanceUID].PixelData == ds.PixelData


def test_pending_responses_count_sub_operations(node_factory: Callable[..., Node], destinations: Any) -> None:
    dest = destinations()
    node = node_factory(peers_toml=peers(("DEST", dest)))
    series = ct_series(4, rows=8, cols=8)
    fill(node, series)
    identifier = study_identifier(series[0].StudyInstanceUID, "SERIES")
    identifier.SeriesInstanceUID = series[0].SeriesInstanceUID
    responses = move(node.dimse_port, identifier, "DEST")
    statuses = [s.Status for s, _ in responses]
    assert statuses == [0xFF00] * 4 + [0x0000]
    remaining = [int(s.NumberOfRemainingSuboperations) for s, _ in responses[:-1]]
    assert remaining == [3, 2, 1, 0]
    final = responses[-1][0]
    assert final.NumberOfCompletedSuboperations == 4 and final.NumberOfFailedSuboperations == 0
    assert len(dest.received) == 4


def test_unknown_destination_is_a801_with_a_log_line(
    node_factory: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = node_factory()
    series = ct_series(1, rows=8, cols=8)
    fill(node, series)
    with caplog.at_level(logging.WARNING, logger="dcmnode"):
        responses = move(node.dimse_port, study_identifier(series[0].StudyInstanceUID), "NOWHERE")
    assert [s.Status for s, _ in responses] == [0xA801]
    assert any("NOWHERE" in r.getMessage() and "peers" in r.getMessage() for r in caplog.records)


def test_move_needs_the_unique_key(node_factory: Callable[..., Node], destinations: Any) -> None:
    dest = destinations()
    node = node_factory(peers_toml=peers(("DEST", dest)))
    fill(node, ct_series(2, rows=8, cols=8))
    identifier = study_identifier("")  # an empty StudyInstanceUID must not move the whole store
    responses = move(node.dimse_port, identifier, "DEST")
    assert responses[-1][0].Status == 0xA900
    assert "StudyInstanceUID" in responses[-1][0].ErrorComment
    assert dest.received == []


def test_patient_root_move(node_factory: Callable[..., Node], destinations: Any) -> None:
    dest = destinations()
    node = node_factory(peers_toml=peers(("DEST", dest)))
    fill(node, ct_series(2, rows=8, cols=8, patient_id="PR-1") + ct_series(2, rows=8, cols=8, patient_id="PR-2"))
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = "PR-2"
    responses = move(node.dimse_port, identifier, "DEST", PatientRootQueryRetrieveInformationModelMove)
    assert responses[-1][0].Status == 0x0000
    assert {str(ds.PatientID) for ds, _ in dest.received} == {"PR-2"} and len(dest.received) == 2


def test_move_decompresses_for_a_receiver_that_refuses_compression(
    node_factory: Callable[..., Node], destinations: Any, tmp_path: Path
) -> None:
    plain = destinations("PLAIN", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    anything = destinations("ANY", ALL_TRANSFER_SYNTAXES)
    node = node_factory(peers_toml=peers(("PLAIN", plain), ("ANY", anything)))
    original = pydicom.dcmread(bundled("JPEG2000.dcm"))
    node.services.ingest.store_path(bundled("JPEG2000.dcm"), Source(SourceKind.IMPORT))
    responses = move(node.dimse_port, study_identifier(original.StudyInstanceUID), "PLAIN")
    assert responses[-1][0].Status == 0x0000
    [(received, syntax)] = plain.received
    assert syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert np.array_equal(received.pixel_array, original.pixel_array)
    move(node.dimse_port, study_identifier(original.StudyInstanceUID), "ANY")
    [(as_stored, syntax)] = anything.received
    assert syntax == original.file_meta.TransferSyntaxUID  # sent as stored when accepted
    assert as_stored.PixelData == original.PixelData


def test_getscu_retrieves_a_series(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    node = node_factory()
    series = ct_series(3, rows=16, cols=16)
    fill(node, series)
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run(
        ["getscu", "-S", "-aet", "GETSCU", "-aec", "DCMNODE", "-od", str(out), HOST, str(node.dimse_port)]
        + ["-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}"]
        + ["-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    got = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in out.iterdir()}
    assert set(got) == {ds.SOPInstanceUID for ds in series}
    for ds in series:
        assert got[ds.SOPInstanceUID].PixelData == ds.PixelData


def test_cget_with_role_selection_and_decompression(node_factory: Callable[..., Node]) -> None:
    node = node_factory()
    node.services.ingest.store_path(bundled("JPEG2000.dcm"), Source(SourceKind.IMPORT))
    original = pydicom.dcmread(bundled("JPEG2000.dcm"))
    received: list[tuple[Dataset, str]] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append((ds, str(event.context.transfer_syntax)))
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(original.SOPClassUID, [ExplicitVRLittleEndian])  # no JPEG 2000 offered
    roles = [build_role(original.SOPClassUID, scp_role=True)]
    assoc = ae.associate(
        HOST, node.dimse_port, ae_title="DCMNODE", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(study_identifier(original.StudyInstanceUID), ae_get())]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    [(ds, syntax)] = received
    assert syntax == ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def ae_get() -> Any:
    return StudyRootQueryRetrieveInformationModelGet


def test_cget_without_storage_contexts_fails_the_sub_operations(node_factory: Callable[..., Node]) -> None:
    node = node_factory()
    series = ct_series(2, rows=8, cols=8)
    fill(node, series)
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE")
    try:
        responses = list(assoc.send_c_get(study_identifier(series[0].StudyInstanceUID), ae_get()))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status in (0xA702, 0xB000)  # failed sub-operations, reported with their SOP Instance UIDs
    assert final.NumberOfFailedSuboperations == 2
    failed = responses[-1][1].FailedSOPInstanceUIDList
    assert sorted(failed) == sorted(ds.SOPInstanceUID for ds in series)


def test_move_cancel(node_factory: Callable[..., Node], destinations: Any) -> None:
    dest = destinations()
    node = node_factory(peers_toml=peers(("DEST", dest)))
    series = ct_series(60, rows=64, cols=64)
    fill(node, series)
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE")
    statuses = []
    try:
        identifier = study_identifier(series[0].StudyInstanceUID)
        for status, _ in assoc.send_c_move(identifier, "DEST", StudyRootQueryRetrieveInformationModelMove, msg_id=9):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(9, query_model=StudyRootQueryRetrieveInformationModelMove)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(dest.received) < 60


def test_cget_with_new_uids_is_not_confused_by_duplicates(node_factory: Callable[..., Node]) -> None:
    """Two series of one study, C-GET of one series returns only that series."""
    node = node_factory()
    study = generate_uid()
    first, second = ct_series(2, rows=8, cols=8, study=study), ct_series(3, rows=8, cols=8, study=study)
    fill(node, first + second)
    received: list[str] = []
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        HOST,
        node.dimse_port,
        ae_title="DCMNODE",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda e: received.append(e.dataset.SOPInstanceUID) or 0)],
    )
    identifier = study_identifier(study, "SERIES")
    identifier.SeriesInstanceUID = second[0].SeriesInstanceUID
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(identifier, ae_get())]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert sorted(received) == sorted(ds.SOPInstanceUID for ds in second)


def odd_instance() -> tuple[Dataset, bytes]:
    """A CT instance as a scanner might send it, and its Part 10 bytes, with elements pydicom does not write back as
    they were once it reads their values: the SOP Instance UID padded with a space instead of a NUL (pydicom strips
    it and pads with a NUL: what the old send path did, since pynetdicom reads that UID), a private LO padded with
    a NUL, Study Description as UN in explicit VR."""
    while True:
        [ds] = ct_series(1, rows=8, cols=8)
        if len(ds.SOPInstanceUID) % 2:
            break
    ds.add_new(0x00090010, "LO", "DCMNODE TEST")
    ds.add_new(0x00091001, "LO", "ODD")
    ds.add_new(0x00081030, "UN", b"CT HEAD ")
    raw = part10(ds)
    uid = ds.SOPInstanceUID.encode() + b"\x00"
    assert raw.count(uid) == 2 and raw.count(b"ODD ") == 1  # File Meta and data set; the private value
    meta_end = raw.index(uid) + len(uid)
    raw = raw[:meta_end] + raw[meta_end:].replace(uid, uid[:-1] + b" ")
    return ds, raw.replace(b"ODD ", b"ODD\x00")


def decoded_and_encoded(raw: bytes) -> bytes:
    """What the send path did before patch 10: dcmread, pynetdicom reads the SOP Class and Instance UIDs, encodes."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    assert ds.SOPClassUID and ds.SOPInstanceUID
    data = encode(ds, False, True)
    assert data is not None
    return data


def stored_data_set(node: Node, sop: str) -> bytes:
    """The data set bytes of the stored file (after its File Meta), as on disk."""
    path = node.services.catalog.instance_path(sop)
    assert path is not None
    raw = path.read_bytes()
    _, offset = walk.file_meta(raw)
    return raw[offset:]


def test_move_sends_the_stored_file_undecoded(node_factory: Callable[..., Node], destinations: Any) -> None:
    """A C-MOVE sends the stored data set byte for byte: what pydicom would write for it is different."""
    dest = destinations()
    node = node_factory(peers_toml=peers(("DEST", dest)))
    ds, raw = odd_instance()
    node.services.ingest.store_bytes(raw, Source(SourceKind.IMPORT))
    stored = stored_data_set(node, ds.SOPInstanceUID)
    assert decoded_and_encoded(raw) != stored  # a decode and encode would show
    responses = move(node.dimse_port, study_identifier(ds.StudyInstanceUID), "DEST")
    assert responses[-1][0].Status == 0x0000
    [(_, syntax)] = dest.received
    assert syntax == ExplicitVRLittleEndian and dest.raw[ds.SOPInstanceUID] == stored


def test_cget_sends_the_stored_file_undecoded(node_factory: Callable[..., Node]) -> None:
    node = node_factory()
    ds, raw = odd_instance()
    node.services.ingest.store_bytes(raw, Source(SourceKind.IMPORT))
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event: evt.Event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = (
            str(event.context.transfer_syntax),
            event.request.DataSet.getvalue(),
        )
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    assoc = ae.associate(
        HOST,
        node.dimse_port,
        ae_title="DCMNODE",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(study_identifier(ds.StudyInstanceUID), ae_get())]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    # the node accepts explicit VR first, so the file goes as stored, byte for byte
    assert received[ds.SOPInstanceUID] == (ExplicitVRLittleEndian, stored_data_set(node, ds.SOPInstanceUID))


def test_send_sends_the_stored_file_undecoded(node_factory: Callable[..., Node], destinations: Any) -> None:
    dest = destinations()
    node = node_factory()
    ds, raw = odd_instance()
    node.services.ingest.store_bytes(raw, Source(SourceKind.IMPORT))
    peer = Peer(host=HOST, port=dest.port, ae_title="DEST")
    [outcome] = send.send(node.services.catalog.resource(ds.StudyInstanceUID), peer, "DCMNODE", Retry(attempts=1))
    assert outcome.status == "sent"
    assert dest.raw[ds.SOPInstanceUID] == stored_data_set(node, ds.SOPInstanceUID)


def test_a_receiver_that_accepts_only_another_uncompressed_syntax_gets_it_re_encoded(
    node_factory: Callable[..., Node], destinations: Any
) -> None:
    """Stored explicit VR, the receiver takes implicit VR only: the file is read and re-encoded (not sent as is)."""
    dest = destinations("IMPLICIT", [ImplicitVRLittleEndian])
    node = node_factory(peers_toml=peers(("IMPLICIT", dest)))
    series = ct_series(2, rows=8, cols=8)
    fill(node, series)
    assert move(node.dimse_port, study_identifier(series[0].StudyInstanceUID), "IMPLICIT")[-1][0].Status == 0x0000
    for got, syntax in dest.received:
        assert syntax == ImplicitVRLittleEndian
        original = next(ds for ds in series if ds.SOPInstanceUID == got.SOPInstanceUID)
        assert dest.raw[got.SOPInstanceUID] == encode(original, True, True)


def test_an_instance_the_destination_refuses_lands_in_the_failed_list(
    node_factory: Callable[..., Node], destinations: Any
) -> None:
    dest = destinations()
    node = node_factory(peers_toml=peers(("DEST", dest)))
    series = ct_series(3, rows=8, cols=8)
    fill(node, series)
    dest.refuse = {series[1].SOPInstanceUID}
    responses = move(node.dimse_port, study_identifier(series[0].StudyInstanceUID), "DEST")
    final, identifier = responses[-1]
    assert final.Status == 0xB000 and final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 2
    assert identifier.FailedSOPInstanceUIDList == series[1].SOPInstanceUID  # one UID: VM 1
