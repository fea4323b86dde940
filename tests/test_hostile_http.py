"""Hostile and malformed input over HTTP, STOW-RS, import and C-STORE (issue 17), against a running node: every case
a clear 4xx (or DIMSE failure status) with a reason, the node still up, nothing half-written, no path outside the
store touched."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.conftest import HOST, LiveServer, associate, run_cli, stored_files, temp_files
from tests.factories import ct_series, part10, part10_as_is

BOUNDARY = "hostile-boundary"
CTYPE = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}
UNKNOWN_SYNTAX = "1.2.840.10008.1.2.4.999"  # in DICOM's root, looks compressed, is no transfer syntax
PRIVATE_SYNTAX = "1.2.3.4.5.6"


def body(*parts: bytes) -> bytes:
    out = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return out + f"--{BOUNDARY}--\r\n".encode()


def stow(live: LiveServer, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{live.url}/dicom-web/studies", content=data, headers=headers or CTYPE, timeout=120)


def failures(response: httpx.Response) -> list[tuple[int, str]]:
    items = response.json().get("00081198", {}).get("Value", [])
    return [(i["00081197"]["Value"][0], i["00000902"]["Value"][0]) for i in items]


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (the walk compared before and after)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def raw_get(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    """One HTTP/1.1 request with the target exactly as given (httpx would normalise ``..`` and encodings)."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[-1]


def meta_element(element: int, value: bytes, vr: bytes = b"UI") -> bytes:
    if len(value) % 2:
        value += b"\x00"
    if vr == b"OB":
        return struct.pack("<HH", 2, element) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value


def with_syntax(ds: Dataset, syntax: str) -> bytes:
    """Explicit VR little endian data set bytes behind a File Meta (built by hand: pydicom refuses to write it)
    that declares ``syntax``."""
    explicit = pydicom.dcmread(io.BytesIO(part10(ds)))
    _, data = dataset_bytes_of(part10(explicit))
    meta = (
        meta_element(0x0001, b"\x00\x01", b"OB")
        + meta_element(0x0002, ds.SOPClassUID.encode())
        + meta_element(0x0003, ds.SOPInstanceUID.encode())
        + meta_element(0x0010, syntax.encode())
    )
    return b"\x00" * 128 + b"DICM" + meta_element(0x0000, struct.pack("<I", len(meta)), b"UL") + meta + data


def dataset_bytes_of(raw: bytes) -> tuple[str, bytes]:
    meta = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta
    end = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return str(meta.TransferSyntaxUID), raw[end:]


# -- 1. numbers --------------------------------------------------------------------------------------------------
def test_every_numeric_parameter_is_range_checked(live: LiveServer) -> None:
    ds = ct_series(1)[0]
    assert stow(live, body(part10(ds))).status_code == 200
    inst = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    wado = (
        f"/dicom-web/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}&seriesUID={ds.SeriesInstanceUID}"
        f"&objectUID={ds.SOPInstanceUID}&contentType=image/jpeg"
    )
    huge, superscript, many = "99999999999999999999999999", "%C2%B2", "9" * 5000
    cases = [
        ("/dicom-web/studies?offset=" + huge, "offset"),
        ("/dicom-web/studies?offset=" + many, "offset"),
        ("/dicom-web/studies?limit=" + huge, "limit"),
        ("/dicom-web/studies?limit=" + superscript, "limit"),
        ("/dicom-web/series?offset=-1", "offset"),
        ("/dicom-web/instances?limit=1_0", "limit"),
        (inst + "/rendered?quality=" + huge, "quality"),
        (inst + "/rendered?quality=" + superscript, "quality"),
        (inst + "/rendered?viewport=1e400,10", "viewport"),
        (inst + "/rendered?viewport=nan,10", "viewport"),
        (inst + "/rendered?viewport=10,10,nan,0,inf,5", "viewport"),
        (inst + "/rendered?window=nan,inf", "window"),
        (inst + "/thumbnail?viewport=" + huge + ",1", "viewport"),
        (inst + "/frames/" + huge + "/rendered", "frame"),
        (inst + "/frames/" + superscript + "/rendered", "frame"),
        (inst + "/frames/1," + huge, "frame list"),
        (inst + "/frames/" + superscript, "frame list"),
        (inst + "/bulkdata/-7FE0010", "bulk data tag"),
        (wado + "&rows=1e400", "rows"),
        (wado + "&columns=nan", "columns"),
        (wado + "&frameNumber=" + huge, "frameNumber"),
        (wado + "&imageQuality=" + superscript, "imageQuality"),
        (wado + "&windowCenter=nan&windowWidth=inf", "window"),
        ("/api/sr/jobs?limit=" + superscript, "limit"),
        ("/api/sr/jobs/" + huge, "job id"),
        ("/api/sr/jobs/" + superscript, "job id"),
        ("/api/audit?limit=" + huge, "limit"),
    ]
    for url, name in cases:
        response = httpx.get(live.url + url, timeout=30)
        assert response.status_code == 400, (url, response.status_code, response.text[:200])
        assert response.json()["error"].startswith(name), (url, response.json())
    assert httpx.get(f"{live.url}/dicom-web/studies?offset=9223372036854775807").json() == []
    assert httpx.get(f"{live.url}/dicom-web/studies?limit=99999").status_code == 200  # cut to max_query_results
    assert httpx.get(live.url + inst + "/rendered?viewport=64.5,64&quality=50").status_code == 200


# -- 2. transfer syntax ------------------------------------------------------------------------------------------
def test_stow_refuses_a_transfer_syntax_no_reader_knows(live: LiveServer) -> None:
    good, unknown, private = ct_series(3)
    refused = stow(live, body(with_syntax(unknown, UNKNOWN_SYNTAX), with_syntax(private, PRIVATE_SYNTAX)))
    assert refused.status_code == 409
    assert [code for code, _ in failures(refused)] == [0xC122, 0xC122]
    assert all("transfer syntax" in reason for _, reason in failures(refused))
    items = refused.json()["00081198"]["Value"]
    assert {i["00081155"]["Value"][0] for i in items} == {unknown.SOPInstanceUID, private.SOPInstanceUID}
    mixed = stow(live, body(part10(good), with_syntax(ct_series(1)[0], UNKNOWN_SYNTAX)))
    assert mixed.status_code == 202 and [c for c, _ in failures(mixed)] == [0xC122]
    data = live.node.services.store.root
    assert len(stored_files(data)) == 1 and temp_files(data) == []
    index = live.node.services.store.index
    assert index.instance(unknown.SOPInstanceUID) is None and index.instance(good.SOPInstanceUID) is not None


def test_import_refuses_an_unknown_transfer_syntax(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    good, bad = ct_series(2)
    (folder / "good.dcm").write_bytes(part10(good))
    (folder / "bad.dcm").write_bytes(with_syntax(bad, UNKNOWN_SYNTAX))
    data = tmp_path / "data"
    result = run_cli("import", str(folder), "--data", str(data), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "1 stored" in result.stdout and "1 failed" in result.stdout
    assert f"bad.dcm: transfer syntax '{UNKNOWN_SYNTAX}' (file meta) is not supported" in result.stdout
    assert [pydicom.dcmread(p).SOPInstanceUID for p in stored_files(data)] == [good.SOPInstanceUID]


def test_upload_refuses_an_unknown_transfer_syntax(live: LiveServer) -> None:
    job = httpx.post(f"{live.url}/api/imports", json={"name": "ts"}).json()
    put = httpx.put(
        f"{live.url}/api/imports/{job['id']}/files/a/b.dcm", content=with_syntax(ct_series(1)[0], UNKNOWN_SYNTAX)
    )
    assert put.status_code == 200 and put.json()["status"] == "failed"
    assert "transfer syntax" in put.json()["reason"]
    assert stored_files(live.node.services.store.root) == []


def test_c_store_data_set_carrying_file_meta_is_refused(live: LiveServer) -> None:
    """A DIMSE data set holds no group 0002 (PS3.10 §7.1): one that does would put a second, contradicting File
    Meta after the one the SCP writes from the presentation context."""
    ds = ct_series(1)[0]
    ds.add_new(0x00020010, "UI", "1.2.840.10008.1.2.2")  # claims explicit big endian inside the data set
    assoc = associate(live.node.dimse_port)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xC000 and "group 0002" in status.ErrorComment
    assert stored_files(live.node.services.store.root) == []


# -- 3. group length ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("declared", [0xFFFFFF, 10])
def test_wrong_group_length_is_stored_corrected(live: LiveServer, tmp_path: Path, declared: int) -> None:
    ds = ct_series(1)[0]
    raw = bytearray(part10(ds))
    assert raw[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    right = struct.unpack("<I", raw[140:144])[0]
    raw[140:144] = struct.pack("<I", declared)
    assert stow(live, body(bytes(raw))).status_code == 200
    url = (
        f"{live.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    served = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert served.status_code == 200
    boundary = served.headers["content-type"].split("boundary=")[1].strip('"')
    part = served.content.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    assert struct.unpack("<I", part[140:144])[0] == right
    strict = pydicom.dcmread(io.BytesIO(part))
    assert strict.file_meta.FileMetaInformationGroupLength == right and strict.SOPInstanceUID == ds.SOPInstanceUID
    (tmp_path / "served.dcm").write_bytes(part)
    dump = subprocess.run(["dcmdump", str(tmp_path / "served.dcm")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "W:" not in dump.stderr and "E:" not in dump.stderr, dump.stderr
    assert ds.SOPInstanceUID in dump.stdout


# -- 4. oversized and unfinished requests ------------------------------------------------------------------------
def test_hostile_stow_bodies_and_heads_are_refused(live_factory: Callable[..., LiveServer]) -> None:
    live = live_factory(http={"max_stow_parts": 1000})  # the default is 10000; each part is a temp file
    data = live.node.services.store.root
    many = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nx\r\n".encode() * 100_000
    answer = stow(live, many + f"--{BOUNDARY}--\r\n".encode())
    assert answer.status_code == 413 and "max_stow_parts" in answer.json()["error"]
    big_part_head = f"--{BOUNDARY}\r\nX-Pad: ".encode() + b"a" * (1 << 20) + b"\r\n\r\nx\r\n--" + BOUNDARY.encode()
    answer = stow(live, big_part_head + b"--\r\n")
    assert answer.status_code == 400 and "header" in answer.json()["error"]
    unfinished = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10(ct_series(1)[0])
    answer = stow(live, unfinished)
    assert answer.status_code == 400 and "closing boundary" in answer.json()["error"]
    answer = stow(live, body(part10(ct_series(1)[0])), headers={**CTYPE, "X-Pad": "a" * (1 << 20)})
    assert answer.status_code == 431 and "max_header_kb" in answer.json()["error"]
    assert httpx.get(f"{live.url}/dicom-web/studies", headers={"X-Pad": "a" * 1000}).status_code == 200
    assert temp_files(data) == [] and stored_files(data) == []


# -- 5. hostile UIDs ---------------------------------------------------------------------------------------------
BAD_UIDS = ["1.2.3/../../x", "..", "1.2.3\\..\\x", "1." + "2" * 64]


def test_hostile_uids_in_url_paths_are_400(live: LiveServer) -> None:
    ds = ct_series(1)[0]
    assert stow(live, body(part10(ds))).status_code == 200
    data = live.node.services.store.root
    before = tree(data)
    st, se, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    job = httpx.post(f"{live.url}/api/imports", json={"name": "uids"}).json()["id"]
    hostile = [b"..%2f..%2fx", b"%2e%2e%2f", b"%2e%2e", b"..", st.encode() + b"%00", b"1" * 65, b"1.2.3%5c..%5cx"]
    targets = []
    for uid in hostile:
        targets += [
            b"/dicom-web/studies/" + uid,
            b"/dicom-web/studies/" + uid + b"/metadata",
            b"/dicom-web/studies/" + uid + b"/series",
            f"/dicom-web/studies/{st}/series/".encode() + uid + b"/rendered",
            f"/dicom-web/studies/{st}/series/{se}/instances/".encode() + uid,
            f"/dicom-web/studies/{st}/series/{se}/instances/".encode() + uid + b"/thumbnail",
            f"/dicom-web/studies/{st}/series/{se}/instances/{sop}/frames/".encode() + uid,
            b"/dicom-web/wado?requestType=WADO&studyUID=" + uid + f"&seriesUID={se}&objectUID={sop}".encode(),
        ]
    for target in targets:
        status, answer = raw_get(live.port, target)
        assert status == 400, (target, status, answer[:200])
    for uid in hostile:
        for target, method in [
            (b"/dicom-web/studies/" + uid, b"DELETE"),
            (f"/dicom-web/studies/{st}/series/".encode() + uid, b"DELETE"),
            (b"/dicom-web/studies/" + uid, b"POST"),
            (b"/api/imports/" + uid + b"/files/x.dcm", b"PUT"),
            (b"/api/imports/" + uid, b"GET"),
        ]:
            status, answer = raw_get(live.port, target, method)
            assert status in (400, 404, 415), (method, target, status, answer[:200])
            if b"%" in uid or uid.startswith(b".."):
                assert status == 400, (method, target, status)
    for uid in hostile:  # an upload's file path is only reported, but '..', NUL and encoded slashes are refused too
        if uid != b"1" * 65:  # a long folder name is a folder name
            status, answer = raw_get(live.port, f"/api/imports/{job}/files/a/".encode() + uid + b"/x.dcm", b"PUT")
            assert status == 400, (uid, status, answer[:200])
    assert tree(data) == before
    assert httpx.get(f"{live.url}/dicom-web/studies/{st}/metadata").status_code == 200


def test_hostile_uids_in_data_sets_are_refused(live: LiveServer) -> None:
    data = live.node.services.store.root
    outside = data.parent / "x"
    before = tree(data.parent)
    datasets = []
    for i, bad in enumerate(BAD_UIDS):
        ds = ct_series(1)[0]
        setattr(ds, ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID"][i], bad)
        datasets.append(ds)
    answer = stow(live, body(*(part10_as_is(ds) for ds in datasets)))
    assert answer.status_code == 400, answer.text
    assert [code for code, _ in failures(answer)] == [0xC000] * len(BAD_UIDS)
    assert all("not a valid UID" in reason for _, reason in failures(answer))
    assoc = associate(live.node.dimse_port)
    try:
        for ds in datasets[:2] + datasets[3:]:  # a backslash makes the UID two values, which pynetdicom won't send
            ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"  # pynetdicom would refuse to send an invalid one
            status = assoc.send_c_store(ds)
            assert status.Status == 0xC000 and "not a valid UID" in status.ErrorComment, status
    finally:
        assoc.release()
    # a single trailing NUL pads an odd-length UI value (PS3.5 §6.2): stored under the UID without it
    padded = ct_series(1)[0]
    sop = padded.SOPInstanceUID
    padded.SOPInstanceUID = sop + "\x00"
    assert stow(live, body(part10_as_is(padded))).status_code == 200
    assert [p.stem for p in stored_files(data)] == [sop]
    assert not outside.exists() and not any("\x00" in p for p in tree(data))
    assert all(p.startswith(data.name + os.sep) for p in tree(data.parent) - before)  # nothing outside data/
    assert temp_files(data) == []
    assert os.path.commonpath([str(p) for p in stored_files(data)] + [str(data)]) == str(data)
