"""Hostile DICOM content (issue 17, notes §3.6) against the running node: C-STORE from a real pynetdicom SCU,
STOW-RS over HTTP, ``dcmnode import``; and the readers of an instance stored before the limits existed.

Each case is refused with 0xC000 and a reason a person can read (``part10.limits``), the node stays up (it
stores a good instance afterwards), and nothing is half-written: no file, no index row, nothing in tmp."""

from __future__ import annotations

import re
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE, _config

from dcmnode.app import Node
from dcmnode.core.parse import parse_bytes
from dcmnode.errors import InvalidInstance
from dcmnode.model import Source, SourceKind
from tests import hostile_dicom
from tests.conftest import HOST, LiveServer, run_cli, stored_files, temp_files
from tests.factories import CT_IMAGE_STORAGE, ct_series, part10

BOUNDARY = "hostile-boundary"

# case -> words the reason must hold
REASONS = {
    "nested-300": "nested more than 64 deep",
    "length-0xFFFFFFF0": "truncated",
    "lo-200mb": "LO value of 209715200 bytes",
    "million-elements": "more than 250000 elements",
    "huge-native-image": "Pixel Data holds 10 of the 18446181119461425150 bytes promised",
    "huge-encapsulated-image": "Pixel Data holds 1 fragment(s) for 2147483647 frames",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, make in hostile_dicom.CASES.items():
        out[name] = folder / f"{name}.dcm"
        out[name].write_bytes(make())
    return out


@pytest.fixture
def send_files_raw() -> Iterator[None]:
    """pynetdicom sends a file's data set bytes without decoding them (a process-wide flag: restored)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def nothing_written(node: Node) -> bool:
    root = node.services.store.root
    return node.services.store.index.counts()["instances"] == 0 and not stored_files(root) and not temp_files(root)


def still_stores(node: Node) -> None:
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    assert assoc.send_c_store(ct_series(1)[0]).Status == 0x0000
    assoc.release()


@pytest.mark.parametrize("case", list(hostile_dicom.CASES))
def test_parse_refuses_without_allocating(files: dict[str, Path], case: str) -> None:
    raw = files[case].read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidInstance, match=re.escape(REASONS[case])) as refused:
        parse_bytes(raw)
    assert refused.value.status == 0xC000
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024  # never more than the data given (the 200 MB case is already in memory)


@pytest.mark.usefixtures("send_files_raw")
@pytest.mark.parametrize("case", list(hostile_dicom.CASES))
def test_c_store_answers_c000_with_the_reason(node: Node, files: dict[str, Path], case: str) -> None:
    syntax = hostile_dicom.base().file_meta.TransferSyntaxUID
    if case == "lo-200mb":
        syntax = "1.2.840.10008.1.2"
    elif case == "huge-encapsulated-image":
        syntax = "1.2.840.10008.1.2.4.50"
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CT_IMAGE_STORAGE, syntax)
    ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate(HOST, node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    status = assoc.send_c_store(files[case])
    assoc.release()
    assert status.Status == 0xC000, status
    assert REASONS[case] in status.ErrorComment
    assert nothing_written(node)
    still_stores(node)


def stow(live: LiveServer, part: bytes) -> httpx.Response:
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
    return httpx.post(f"{live.url}/dicom-web/studies", content=body, headers={"Content-Type": ctype}, timeout=120)


@pytest.mark.parametrize("case", list(hostile_dicom.CASES))
def test_stow_answers_c000_with_the_reason(live: LiveServer, files: dict[str, Path], case: str) -> None:
    response = stow(live, files[case].read_bytes())
    # PS3.18 Table 10.5.3-1: 400 when no instance was stored because of bad syntax (every part 0xC000)
    assert response.status_code == 400, response.text
    [failure] = response.json()["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [0xC000]
    assert REASONS[case] in failure["00000902"]["Value"][0]
    assert nothing_written(live.node)
    good = stow(live, part10(ct_series(1)[0]))
    assert good.status_code == 200


def test_stow_mixed_with_a_good_part_is_202(live: LiveServer, files: dict[str, Path]) -> None:
    good = part10(ct_series(1)[0])
    parts = [files["nested-300"].read_bytes(), good]
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    ctype = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
    response = httpx.post(
        f"{live.url}/dicom-web/studies",
        content=body + f"--{BOUNDARY}--\r\n".encode(),
        headers={"Content-Type": ctype},
        timeout=60,
    )
    assert response.status_code == 202
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert len(response.json()["00081199"]["Value"]) == 1


def test_import_lists_each_refusal(tmp_path: Path, files: dict[str, Path]) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    for path in files.values():
        shutil.copy(path, folder / path.name)
    data = tmp_path / "data"
    result = run_cli("import", str(folder), "--data", str(data), "--no-progress")
    assert result.returncode == 1, result.stderr  # nothing stored
    assert f"{len(files)} file(s): 0 stored" in result.stdout and f"{len(files)} failed" in result.stdout
    for case in files:
        assert f"{case}.dcm: " in result.stdout
    assert "nested more than 64 deep" in result.stdout and "Traceback" not in result.stderr
    assert not stored_files(data) and not temp_files(data)


def store_unchecked(node: Node, raw: bytes) -> str:
    """An instance as a node older than the limits stored it: a good instance indexed, its file then replaced by
    ``raw`` (the readers go by the index row's path)."""
    ds = ct_series(1)[0]
    good = part10(ds)
    stored = node.services.ingest.store_bytes(good, Source(SourceKind.IMPORT))
    path = node.services.store.files.absolute(node.services.store.index.instance(stored.key.sop)["path"])
    path.write_bytes(raw)
    return f"/dicom-web/studies/{stored.key.study}/series/{stored.key.series}/instances/{stored.key.sop}"


@pytest.mark.parametrize("case", ["huge-native-image", "huge-encapsulated-image"])
def test_rendered_and_frames_of_a_stored_promise_answer_4xx(live: LiveServer, case: str) -> None:
    url = store_unchecked(live.node, hostile_dicom.CASES[case]())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for suffix, accept in [
        ("/rendered", "image/png"),
        ("/frames/1/rendered", "image/png"),
        ("/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'),
        ("/frames/1", 'multipart/related; type="application/octet-stream"'),
        ("/frames/2147483647", 'multipart/related; type="application/octet-stream"'),
        ("/thumbnail", "image/jpeg"),
    ]:
        if case == "huge-encapsulated-image" and suffix == "/frames/1":
            continue  # its one fragment, sent as stored (the node's default for octet-stream): nothing decoded
        response = httpx.get(f"{live.url}{url}{suffix}", headers={"Accept": accept}, timeout=60)
        assert 400 <= response.status_code < 500, (suffix, response.status_code, response.text)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024
    assert httpx.get(f"{live.url}/api/status", timeout=10).status_code == 200


def test_metadata_of_a_stored_deep_nest_answers_4xx(live: LiveServer) -> None:
    url = store_unchecked(live.node, hostile_dicom.nested())
    response = httpx.get(f"{live.url}{url}/metadata", timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert "nested more than 64 deep" in response.text
