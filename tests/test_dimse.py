"""The DIMSE SCP against real peers: dcmtk echoscu/storescu and pynetdicom SCUs over loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt

from dcmnode.app import Node
from tests.conftest import HOST, associate, stored_files, temp_files
from tests.factories import (
    CT_IMAGE_STORAGE,
    TRANSFER_SYNTAX_FILES,
    bundled,
    ct_series,
    dataset_bytes,
    sop_class_mismatch,
)


@pytest.fixture
def dcmtk() -> None:
    assert shutil.which("storescu"), "dcmtk is required: apt-get install dcmtk (the README's test command does this)"


@pytest.fixture
def send_files_raw() -> Iterator[None]:
    """pynetdicom sends a file's data set bytes without decoding them (a process-wide flag: restored)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def instances(node: Node) -> int:
    return node.services.store.index.counts()["instances"]


@pytest.mark.usefixtures("dcmtk")
def test_echoscu(node: Node) -> None:
    result = subprocess.run(["echoscu", "-aec", "DCMNODE", HOST, str(node.dimse_port)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("dcmtk")
@pytest.mark.parametrize(("name", "option"), TRANSFER_SYNTAX_FILES)
def test_storescu_stores_every_transfer_syntax_as_received(node: Node, name: str, option: str) -> None:
    source = bundled(name)
    result = subprocess.run(
        ["storescu", "-v", "-R", option, "-aec", "DCMNODE", HOST, str(node.dimse_port), str(source)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Store Response (Success)" in result.stderr + result.stdout
    [stored] = stored_files(node.services.store.root)
    # storescu re-encodes the data set as it sends (padding, group lengths), so compare what must not change:
    # the transfer syntax and the (possibly compressed) pixel bytes: no transcoding happened.
    original, kept = pydicom.dcmread(source), pydicom.dcmread(stored)
    assert kept.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert kept.PixelData == original.PixelData
    row = node.services.store.index.instance(str(original.SOPInstanceUID))
    assert row is not None and row["source"] == "dimse" and row["source_ae"] == "STORESCU"
    assert row["TransferSyntaxUID"] == original.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(("name", "option"), TRANSFER_SYNTAX_FILES)
@pytest.mark.usefixtures("send_files_raw")
def test_received_bytes_are_stored_verbatim(node: Node, name: str, option: str) -> None:
    source = bundled(name)
    meta = pydicom.dcmread(source, stop_before_pixels=True).file_meta
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    status = assoc.send_c_store(source)  # a path: pynetdicom sends the file's data set bytes as they are
    assoc.release()
    assert status.Status == 0x0000
    [stored] = stored_files(node.services.store.root)
    assert dataset_bytes(stored) == dataset_bytes(source)


def test_pynetdicom_series_and_status_codes(node: Node) -> None:
    series = ct_series(10)
    assoc = associate(node.dimse_port)
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).Status for ds in series]
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert statuses == [0x0000] * 10
    assert node.services.store.index.counts()["instances"] == 10 and node.services.store.index.counts()["series"] == 1


@pytest.mark.usefixtures("send_files_raw")
def test_invalid_instances_get_failure_statuses_with_reasons(node: Node, tmp_path: Path) -> None:
    no_study = ct_series(1)[0]
    del no_study.StudyInstanceUID
    hostile = ct_series(1)[0]
    hostile.SeriesInstanceUID = "../../../../tmp/evil"
    mismatch = tmp_path / "mismatch.dcm"
    mismatch.write_bytes(sop_class_mismatch())
    assoc = associate(node.dimse_port)
    r1 = assoc.send_c_store(no_study)
    r2 = assoc.send_c_store(hostile)
    assoc.release()
    raw = associate(node.dimse_port, contexts=[build_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)])
    r3 = raw.send_c_store(mismatch)  # sent raw, under the file meta's SOP class (CT), data set says MR
    raw.release()
    assert (r1.Status, r2.Status, r3.Status) == (0xC000, 0xC000, 0xA900)
    assert "StudyInstanceUID is missing" in r1.ErrorComment
    assert "not a valid UID" in r2.ErrorComment
    assert "does not match" in r3.ErrorComment or "differs" in r3.ErrorComment
    assert (
        instances(node) == 0
        and stored_files(node.services.store.root) == []
        and temp_files(node.services.store.root) == []
    )
    assert not Path("/tmp/evil").exists()


def test_calling_ae_allow_list(node_factory: Callable[..., Node]) -> None:
    node = node_factory(dimse={"allowed_callers": ["GOODSCU"]})
    bad = associate(node.dimse_port, calling="BADSCU")
    assert bad.is_rejected
    good = associate(node.dimse_port, calling="GOODSCU")
    assert good.is_established
    assert good.send_c_store(ct_series(1)[0]).Status == 0x0000
    good.release()
    known = node_factory(
        dimse={"require_known_callers": True}, peers_toml='[peers.PACS1]\nhost = "127.0.0.1"\nport = 4242\n'
    )
    assert associate(known.dimse_port, calling="STRANGER").is_rejected
    pacs = associate(known.dimse_port, calling="PACS1")
    assert pacs.is_established
    pacs.release()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system, so that 'disk full' is the kernel's ENOSPC, not a mock."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_out_of_resources_and_leaves_nothing(
    node_factory: Callable[..., Node], tiny_disk: Path
) -> None:
    node = node_factory(data=tiny_disk / "data")
    big = ct_series(1, rows=1024, cols=1024)[0]  # 2 MiB of pixels: cannot fit
    small = ct_series(1)[0]
    assoc = associate(node.dimse_port)
    full = assoc.send_c_store(big)
    ok = assoc.send_c_store(small)
    assoc.release()
    assert full.Status == 0xA700 and "disk" in full.ErrorComment
    assert ok.Status == 0x0000  # the node keeps working once there is room
    assert node.services.store.index.instance(str(big.SOPInstanceUID)) is None
    assert [p.name for p in stored_files(node.services.store.root)] == [f"{small.SOPInstanceUID}.dcm"]
    assert temp_files(node.services.store.root) == []


def test_dropped_association_mid_transfer_stores_nothing(node_factory: Callable[..., Node]) -> None:
    node = node_factory(dimse={"max_pdu": 16384})  # the 2 MiB data set arrives in ~128 PDUs
    ds = ct_series(1, rows=1024, cols=1024)[0]
    ae = AE(ae_title="DROPPER")
    ae.maximum_pdu_size = 16384
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    sent = threading.Event()
    pdus = 0

    def on_sent(event: evt.Event) -> None:
        nonlocal pdus
        pdus += 1
        if pdus == 20:  # well inside the 2 MiB data set: cut the TCP connection under the SCU
            event.assoc.dul.socket.socket.shutdown(2)
            sent.set()

    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE", evt_handlers=[(evt.EVT_PDU_SENT, on_sent)])
    assert assoc.is_established
    threading.Thread(target=lambda: assoc.send_c_store(ds), daemon=True).start()
    assert sent.wait(30)
    assoc.abort()
    after = associate(node.dimse_port)  # the node is still up and answers
    assert after.send_c_echo().Status == 0x0000
    after.release()
    assert (
        instances(node) == 0
        and stored_files(node.services.store.root) == []
        and temp_files(node.services.store.root) == []
    )


@pytest.mark.slow
def test_sixteen_concurrent_associations(node: Node) -> None:
    per_association = 5
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(16)

    def sender(n: int) -> None:
        series = ct_series(per_association, seed=n, patient_id=f"CONC-{n:04d}")
        assoc = associate(
            node.dimse_port, calling=f"SCU{n:02d}", contexts=[build_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)]
        )
        assert assoc.is_established
        barrier.wait(30)  # all 16 associations are open at the same time
        results[n] = [assoc.send_c_store(ds).Status for ds in series]
        assoc.release()

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(16))
    assert all(statuses == [0] * per_association for statuses in results.values())
    counts = node.services.store.index.counts()
    assert counts["instances"] == 16 * per_association and counts["patients"] == 16


def test_an_association_socket_is_closed_even_when_its_peer_left_first() -> None:
    """pynetdicom 3.0.4 skips close() when shutdown() raises; under load a released association's socket then
    waited for garbage collection (a ResourceWarning that failed test_sixteen_concurrent_associations once)."""
    from pynetdicom.transport import AssociationSocket

    import dcmnode.dimse  # noqa: F401  (applies the fix to pynetdicom's AssociationSocket)

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    accepted.close()
    listener.close()
    client.shutdown(socket.SHUT_RDWR)  # a second shutdown now raises ENOTCONN
    holder = AssociationSocket.__new__(AssociationSocket)
    holder.socket = client
    holder._shutdown_socket()
    assert client.fileno() == -1
