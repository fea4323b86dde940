"""STOW-RS over a real uvicorn server on loopback: dicomweb-client and raw HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.conftest import HOST, LiveServer, stored_files, temp_files
from tests.factories import bundled, ct_series, deid_files, part10

BOUNDARY = "dcmnode-test-boundary"


def body(*parts: bytes, content_type: str | None = "application/dicom", close: bool = True) -> bytes:
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + part + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def post(live: LiveServer, data: bytes, content_type: str | None = None, path: str = "/studies") -> httpx.Response:
    ctype = content_type or f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
    return httpx.post(f"{live.url}/dicom-web{path}", content=data, headers={"Content-Type": ctype}, timeout=60)


def referenced(response: httpx.Response) -> list[str]:
    return [item["00081155"]["Value"][0] for item in response.json().get("00081199", {}).get("Value", [])]


def failed(response: httpx.Response) -> list[dict]:
    return response.json().get("00081198", {}).get("Value", [])


def test_dicomweb_client_stores_real_and_generated_instances(live: LiveServer) -> None:
    client = DICOMwebClient(f"{live.url}/dicom-web")
    datasets = [pydicom.dcmread(p) for p in deid_files()] + ct_series(5)
    response = client.store_instances(datasets)
    sops = [str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence]
    expected = list(dict.fromkeys(str(ds.SOPInstanceUID) for ds in datasets))
    assert sorted(set(sops)) == sorted(expected)
    assert "FailedSOPSequence" not in response
    index = live.node.services.store.index
    for sop in expected:
        row = index.instance(sop)
        assert row is not None and row["source"] == "stow"
    assert all(u.ReferencedSOPClassUID and "/instances/" in u.RetrieveURL for u in response.ReferencedSOPSequence)
    # dicomweb-client sends File Meta without the preamble: the store keeps a proper Part 10 file all the same
    for path in stored_files(live.node.services.store.root):
        assert path.read_bytes()[128:132] == b"DICM"
        assert pydicom.dcmread(path).SOPInstanceUID in expected


@pytest.mark.parametrize(
    "content_type",
    [
        f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"',
        f"multipart/related; type=application/dicom; boundary={BOUNDARY}",  # OHIF's omitQuotation form
        f'Multipart/Related; boundary={BOUNDARY}; type="Application/DICOM"',
        f"multipart/related; boundary={BOUNDARY}",  # no type parameter: parts say what they are
    ],
)
def test_content_type_parameters_quoted_or_not(live: LiveServer, content_type: str) -> None:
    ds = ct_series(1)[0]
    response = post(live, body(part10(ds)), content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert referenced(response) == [ds.SOPInstanceUID]
    assert response.json()["00081190"]["Value"][0] == f"{live.url}/dicom-web/studies/{ds.StudyInstanceUID}"


@pytest.mark.parametrize(
    ("content_type", "code", "reason"),
    [
        ("application/json", 415, "multipart/related"),
        ("application/dicom", 415, "multipart/related"),
        (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', 415, "only application/dicom"),
        ('multipart/related; type="application/dicom"', 400, "boundary"),
    ],
)
def test_wrong_content_type_is_refused_with_a_reason(
    live: LiveServer, content_type: str, code: int, reason: str
) -> None:
    response = post(live, body(part10(ct_series(1)[0])), content_type)
    assert response.status_code == code
    assert reason in response.json()["error"]
    assert live.node.services.store.index.counts()["instances"] == 0


def test_some_parts_fail_202_with_reasons(live: LiveServer) -> None:
    good = ct_series(2)
    parts = [part10(good[0]), b"definitely not dicom" * 20, part10(good[1]), bundled("MR_truncated.dcm").read_bytes()]
    response = post(live, body(*parts))
    assert response.status_code == 202
    assert referenced(response) == [good[0].SOPInstanceUID, good[1].SOPInstanceUID]
    reasons = failed(response)
    assert [f["00081197"]["Value"][0] for f in reasons] == [0xC000, 0xC000]
    assert "not a DICOM Part 10" in reasons[0]["00000902"]["Value"][0]
    assert "truncated" in reasons[1]["00000902"]["Value"][0]
    assert "Value" not in reasons[0]["00081155"]  # unreadable: no SOP Instance UID to name
    assert live.node.services.store.index.counts()["instances"] == 2 and temp_files(live.node.services.store.root) == []


def test_part_with_another_content_type_fails(live: LiveServer) -> None:
    response = post(live, body(part10(ct_series(1)[0]), content_type="image/jpeg"))
    assert response.status_code == 400
    assert failed(response)[0]["00081197"]["Value"] == [0xC000]
    assert "image/jpeg" in failed(response)[0]["00000902"]["Value"][0]


def test_all_parts_unreadable_is_400(live: LiveServer) -> None:
    response = post(live, body(b"junk" * 100, b"more junk" * 100))
    assert response.status_code == 400 and len(failed(response)) == 2
    assert stored_files(live.node.services.store.root) == []


def test_study_in_path_must_match_409(live: LiveServer) -> None:
    ds = ct_series(1)[0]
    response = post(live, body(part10(ds)), path="/studies/1.2.3.4")
    assert response.status_code == 409
    item = failed(response)[0]
    assert item["00081155"]["Value"] == [ds.SOPInstanceUID] and item["00081197"]["Value"] == [0x0110]
    assert live.node.services.store.index.counts()["instances"] == 0
    ok = post(live, body(part10(ds)), path=f"/studies/{ds.StudyInstanceUID}")
    assert ok.status_code == 200 and referenced(ok) == [ds.SOPInstanceUID]
    bad_uid = post(live, body(part10(ds)), path="/studies/not-a-uid")
    assert bad_uid.status_code == 400 and "not a valid UID" in bad_uid.json()["error"]


def test_duplicates_follow_the_policy(live_factory: Callable[..., LiveServer]) -> None:
    keep = live_factory()
    reject = live_factory(store={"on_duplicate": "reject"})
    ds = ct_series(1)[0]
    for server in (keep, reject):
        assert post(server, body(part10(ds))).status_code == 200
    assert post(keep, body(part10(ds))).status_code == 200  # Orthanc's behaviour: the stored copy is kept
    again = post(reject, body(part10(ds)))
    assert again.status_code == 409 and failed(again)[0]["00081197"]["Value"] == [0x0111]


def test_truncated_body_stores_nothing(live: LiveServer) -> None:
    whole = part10(ct_series(1)[0])
    response = post(live, body(part10(ct_series(1)[0]), whole[: len(whole) // 2], close=False))
    assert response.status_code == 400 and "closing boundary" in response.json()["error"]
    assert live.node.services.store.index.counts()["instances"] == 0
    assert stored_files(live.node.services.store.root) == [] and temp_files(live.node.services.store.root) == []


def test_too_large_is_413(live_factory: Callable[..., LiveServer]) -> None:
    live = live_factory(http={"max_part_mb": 1, "max_request_mb": 3})
    big = part10(ct_series(1, rows=1024, cols=1024)[0])  # 2 MiB part
    response = post(live, body(big))
    assert response.status_code == 413 and "part" in response.json()["error"]
    too_long = post(live, body(*[part10(ct_series(1, rows=512, cols=512)[0]) for _ in range(8)]))  # ~4 MiB
    assert too_long.status_code == 413
    assert live.node.services.store.index.counts()["instances"] == 0 and temp_files(live.node.services.store.root) == []


def test_client_dropping_the_connection_mid_upload_stores_nothing(live: LiveServer) -> None:
    payload = body(*[part10(ds) for ds in ct_series(4, rows=256, cols=256)])
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: {HOST}:{live.port}\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}\r\n'
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, live.port)) as sock:
        sock.sendall(head + payload[: int(len(payload) * 0.8)])  # three whole parts and a half, then gone
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while temp_files(live.node.services.store.root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_files(live.node.services.store.root) == []
    assert (
        live.node.services.store.index.counts()["instances"] == 0 and stored_files(live.node.services.store.root) == []
    )
    after = post(live, body(part10(ct_series(1)[0])))  # and the server still works
    assert after.status_code == 200
