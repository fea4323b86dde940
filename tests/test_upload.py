"""Bulk upload (import jobs under /api/imports) over a real uvicorn server on loopback, and `dcmnode import` of
archives: real DICOM files, real ZIP / TAR / TAR.GZ archives built at test time."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset

from dcmnode.model import Source, SourceKind
from tests.conftest import HOST, LiveServer, run_cli, temp_files
from tests.factories import bundled, ct_series, part10

ENDED = ("done", "cancelled", "failed")
NOT_DICOM = "not DICOM (no DICM prefix at byte 128)"
MIB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------------------------
def open_job(live: LiveServer, **params: Any) -> dict[str, Any]:
    response = httpx.post(f"{live.url}/api/imports", json=params or None, timeout=30)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/imports/{job['id']}" and job["state"] == "open"
    return job


def put(live: LiveServer, job_id: str, path: str, data: bytes | Path) -> httpx.Response:
    content: Any = data if isinstance(data, bytes) else _chunks(data)
    return httpx.put(
        f"{live.url}/api/imports/{job_id}/files/{path}",
        content=content,
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fp:
        while chunk := fp.read(256 * 1024):
            yield chunk


def finish(live: LiveServer, job_id: str) -> dict[str, Any]:
    response = httpx.post(f"{live.url}/api/imports/{job_id}/finish", timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def wait_ended(live: LiveServer, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{live.url}/api/imports/{job_id}", timeout=30).json()
        if job["state"] in ENDED:
            return job
        assert time.monotonic() < deadline, f"import still {job['state']}: {job}"
        time.sleep(0.1)


def upload_archive(live: LiveServer, name: str, archive: Path) -> dict[str, Any]:
    job = open_job(live, name=name, expected_files=1)
    response = put(live, job["id"], name, archive)
    assert response.status_code == 202 and response.json() == {"path": name, "status": "queued"}
    finish(live, job["id"])
    return wait_ended(live, job["id"])


def write_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def qido_instances(live: LiveServer, study: str) -> list[str]:
    response = httpx.get(f"{live.url}/dicom-web/studies/{study}/instances", timeout=30)
    assert response.status_code == 200, response.text
    return sorted(item["00080018"]["Value"][0] for item in response.json())


def sops(datasets: list[Dataset]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in datasets)


def no_temp_files_left(live: LiveServer, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while temp_files(live.node.services.store.root) and time.monotonic() < deadline:
        time.sleep(0.05)
    return temp_files(live.node.services.store.root) == []


class Zeros(io.RawIOBase):
    """``size`` bytes of zeros, optionally behind a DICOM preamble and prefix, without holding them."""

    def __init__(self, size: int, dicm: bool = False) -> None:
        self.size, self.pos = size, 0
        self.head = b"\0" * 128 + b"DICM" if dicm else b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.size - self.pos)
        buffer[:count] = bytes(count)
        if self.pos < len(self.head):
            take = min(len(self.head) - self.pos, count)
            buffer[:take] = self.head[self.pos : self.pos + take]
        self.pos += count
        return count


# -- archives -----------------------------------------------------------------------------------------------------
def test_zip_of_300_files_with_5_not_dicom(live: LiveServer, tmp_path: Path) -> None:
    first, second = ct_series(200, rows=16, cols=16), ct_series(100, rows=16, cols=16, patient_id="GEN-0002", seed=1)
    members = {f"exam/CT1/IM{i:04d}.dcm": part10(ds) for i, ds in enumerate(first)}
    members |= {f"exam/CT2/IM{i:04d}": part10(ds) for i, ds in enumerate(second)}  # no suffix: content decides
    junk = {"exam/README.txt": b"notes", "exam/CT1/.DS_Store": b"\0" * 600, "exam/report.pdf": b"%PDF-1.4 " * 100}
    junk |= {"exam/CT2/empty.dcm": b"", "exam/thumbs.db": b"x" * 131 + b"DICX"}
    archive = write_zip(tmp_path / "exam.zip", members | junk)

    job = upload_archive(live, "exam.zip", archive)

    assert job["state"] == "done" and job["name"] == "exam.zip"
    assert (job["files_total"], job["processed"], job["stored"], job["duplicate"]) == (305, 305, 300, 0)
    assert job["failed"] == [] and job["failed_count"] == 0
    assert sorted(s["path"] for s in job["skipped"]) == sorted(f"exam.zip/{name}" for name in junk)
    assert {s["reason"] for s in job["skipped"]} == {NOT_DICOM} and job["skipped_count"] == 5
    assert (job["studies_created"], job["series_created"]) == (2, 2)
    assert job["bytes_received"] == archive.stat().st_size and job["finished_at"] and job["eta_seconds"] == 0.0
    assert job["current_folder"].startswith("exam.zip/exam")
    assert qido_instances(live, first[0].StudyInstanceUID) == sops(first)
    assert qido_instances(live, second[0].StudyInstanceUID) == sops(second)
    assert live.node.services.store.index.counts()["instances"] == 300
    assert no_temp_files_left(live)  # the archive and every member spooled were removed


def test_tar_gz_nested_tree_with_progress_events(live: LiveServer, tmp_path: Path) -> None:
    series = [ct_series(100, rows=16, cols=16, patient_id=f"P{p}", seed=p) for p in range(3)]
    members = {
        f"P{p}/{ds.StudyInstanceUID[-6:]}/series-{p}/slices/IM{i:04d}.dcm": part10(ds)
        for p, datasets in enumerate(series)
        for i, ds in enumerate(datasets)
    }
    archive = write_tar(tmp_path / "tree.tgz.bin", members)  # the name says nothing: the content is a TAR.GZ
    job = open_job(live, name="tree", expected_files=1)
    events: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{live.url}/api/imports/{job['id']}/events", timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    subscribed.set()

    reader = threading.Thread(target=follow)
    reader.start()
    assert subscribed.wait(30), "the event stream sent no first event"  # the job as it is before the upload
    assert put(live, job["id"], "scans/tree.tgz.bin", archive).status_code == 202
    finish(live, job["id"])
    reader.join(60)
    assert not reader.is_alive(), "the event stream did not end with the job"

    final = events[-1]
    assert events[0]["state"] == "open" and final["state"] == "done"
    assert [e for e in events if e["state"] in ENDED] == [final]  # one final event, then the stream ends
    processed = [e["processed"] for e in events]
    assert processed == sorted(processed) and any(0 < n < 300 for n in processed)  # live progress on the way
    assert any(e["bytes_received"] > 0 and e["processed"] < 300 for e in events)
    assert (final["stored"], final["failed_count"], final["skipped_count"]) == (300, 0, 0)
    assert (final["studies_created"], final["series_created"]) == (3, 3)
    assert final["current_folder"].startswith("scans/tree.tgz.bin/P2/")
    for datasets in series:
        assert qido_instances(live, datasets[0].StudyInstanceUID) == sops(datasets)


def test_refusals_zip_slip_links_and_bombs_lose_nothing_else(live: LiveServer, tmp_path: Path) -> None:
    good = ct_series(12, rows=16, cols=16)
    evil = ct_series(2, rows=16, cols=16)
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for i, ds in enumerate(good[:6]):
            out.writestr(f"ok/IM{i}.dcm", part10(ds))
        out.writestr("../evil.dcm", part10(evil[0]))  # zip-slip
        out.writestr("/etc/evil.dcm", part10(evil[1]))
        with out.open("bomb.dcm", "w", force_zip64=True) as bomb:  # 300 MB of zeros, ~300 KB compressed
            for _ in range(300):
                bomb.write(bytes(MIB))
        out.writestr("inner/nested.zip", b"PK\x03\x04" + bytes(600))
    assert archive.stat().st_size < 2 * MIB

    tarball = tmp_path / "links.tar"
    with tarfile.open(tarball, "w") as out:
        for i, ds in enumerate(good[6:]):
            data = part10(ds)
            info = tarfile.TarInfo(f"ok/IM{i}.dcm")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("ok/passwd.dcm")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        out.addfile(link)
        hard = tarfile.TarInfo("ok/again.dcm")
        hard.type, hard.linkname = tarfile.LNKTYPE, "ok/IM0.dcm"
        out.addfile(hard)

    job = open_job(live, name="hostile")
    assert put(live, job["id"], "hostile.zip", archive).status_code == 202
    assert put(live, job["id"], "links.tar", tarball).status_code == 202
    finish(live, job["id"])
    job = wait_ended(live, job["id"])

    failed = {f["path"]: f["reason"] for f in job["failed"]}
    assert set(failed) == {"hostile.zip/../evil.dcm", "hostile.zip//etc/evil.dcm", "hostile.zip/bomb.dcm"}
    assert "leaves the archive" in failed["hostile.zip/../evil.dcm"]
    assert "absolute path" in failed["hostile.zip//etc/evil.dcm"]
    assert "decompression bomb" in failed["hostile.zip/bomb.dcm"]
    skipped = {s["path"]: s["reason"] for s in job["skipped"]}
    assert skipped["links.tar/ok/passwd.dcm"].startswith("symbolic link to '/etc/passwd'")
    assert skipped["links.tar/ok/again.dcm"].startswith("hard link")
    assert skipped["hostile.zip/inner/nested.zip"] == "nested ZIP archive: not expanded"
    assert job["stored"] == 12 and job["state"] == "done"
    index = live.node.services.store.index
    assert all(index.instance(str(ds.SOPInstanceUID)) is not None for ds in good)
    assert all(index.instance(str(ds.SOPInstanceUID)) is None for ds in evil)
    assert no_temp_files_left(live)


def test_tar_gz_bomb_is_stopped_while_reading(live: LiveServer, tmp_path: Path) -> None:
    good = ct_series(3, rows=16, cols=16)
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=9) as out:
        for i, ds in enumerate(good):
            data = part10(ds)
            info = tarfile.TarInfo(f"a/IM{i}.dcm")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
            if i == 1:  # DICOM-looking (preamble + DICM), then 300 MB of zeros: only reading it tells
                bomb = tarfile.TarInfo("a/bomb.dcm")
                bomb.size = 300 * MIB
                out.addfile(bomb, io.BufferedReader(Zeros(bomb.size, dicm=True)))
    job = upload_archive(live, "bomb.tar.gz", archive)
    assert [f["path"] for f in job["failed"]] == ["bomb.tar.gz/a/bomb.dcm"]
    reason = job["failed"][0]["reason"]
    assert "decompression bomb" in reason and "stopped at the cap" in reason
    assert job["stored"] == 3  # the members before and after it
    assert no_temp_files_left(live)


# -- folders, file by file -------------------------------------------------------------------------------------
def test_folder_upload_file_by_file(live: LiveServer) -> None:
    existing = ct_series(2, rows=16, cols=16)
    live.node.services.ingest.store_bytes(
        part10(existing[0]), Source(SourceKind.STOW)
    )  # a series stored before the job
    fresh = ct_series(3, rows=16, cols=16, patient_id="GEN-0009")
    job = open_job(live, name="My folder", expected_files=8)
    job_id = job["id"]

    answers = [put(live, job_id, f"My folder/a b/IM{i}.dcm", part10(ds)) for i, ds in enumerate(fresh)]
    assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "stored")] * 3
    assert answers[0].json() == {"path": "My folder/a b/IM0.dcm", "status": "stored", "reason": ""}
    middle = httpx.get(f"{live.url}/api/imports/{job_id}", timeout=30).json()
    assert middle["state"] == "open" and middle["eta_seconds"] is not None and middle["eta_seconds"] >= 0
    assert middle["current_folder"] == "My folder/a b"

    again = put(live, job_id, "My folder/copy/IM0.dcm", part10(fresh[0]))
    assert again.json()["status"] == "duplicate"
    into_existing = put(live, job_id, "My folder/old/IM1.dcm", part10(existing[1]))
    assert into_existing.json()["status"] == "stored"
    text = put(live, job_id, "My folder/notes.txt", b"hello")
    assert text.status_code == 200 and text.json() == {
        "path": "My folder/notes.txt",
        "status": "skipped",
        "reason": NOT_DICOM,
    }
    broken = put(live, job_id, "My folder/broken.dcm", bundled("MR_truncated.dcm").read_bytes())
    assert broken.json()["status"] == "failed" and "truncated" in broken.json()["reason"]
    real = put(live, job_id, "My folder/CT_small.dcm", bundled("CT_small.dcm").read_bytes())
    assert real.json()["status"] == "stored"

    done = finish(live, job_id)
    assert done["state"] == "done"  # nothing queued: done at once
    assert (done["files_total"], done["stored"], done["duplicate"], done["processed"]) == (8, 5, 1, 8)
    assert done["failed"] == [{"path": "My folder/broken.dcm", "reason": broken.json()["reason"]}]
    # the existing series gained an instance but was not created; fresh and CT_small were
    assert (done["studies_created"], done["series_created"]) == (2, 2)
    assert put(live, job_id, "My folder/late.dcm", part10(ct_series(1)[0])).status_code == 409
    listed = httpx.get(f"{live.url}/api/imports", timeout=30).json()
    assert [j["id"] for j in listed] == [job_id] and listed[0]["stored"] == 5


def test_cancel_stops_between_members_and_keeps_what_was_stored(live: LiveServer, tmp_path: Path) -> None:
    datasets = ct_series(400, rows=16, cols=16)
    archive = write_zip(tmp_path / "big.zip", {f"IM{i:04d}.dcm": part10(ds) for i, ds in enumerate(datasets)})
    job = open_job(live)
    assert put(live, job["id"], "big.zip", archive).status_code == 202
    deadline = time.monotonic() + 30
    while httpx.get(f"{live.url}/api/imports/{job['id']}", timeout=30).json()["stored"] == 0:
        assert time.monotonic() < deadline, "the job's thread never began"
        time.sleep(0.02)
    cancelled = httpx.delete(f"{live.url}/api/imports/{job['id']}", timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert no_temp_files_left(live)  # the job's thread stopped and dropped the archive
    time.sleep(0.5)
    settled = httpx.get(f"{live.url}/api/imports/{job['id']}", timeout=30).json()
    assert settled["state"] == "cancelled" and 0 < settled["stored"] < 400
    time.sleep(0.5)
    assert httpx.get(f"{live.url}/api/imports/{job['id']}", timeout=30).json()["stored"] == settled["stored"]
    assert live.node.services.store.index.counts()["instances"] == settled["stored"]  # what was stored stays stored
    assert put(live, job["id"], "more.dcm", part10(ct_series(1)[0])).status_code == 409
    assert finish(live, job["id"])["state"] == "cancelled"


def test_truncated_upload_leaves_no_temp_file(live: LiveServer) -> None:
    job = open_job(live)
    payload = part10(ct_series(1, rows=1024, cols=1024)[0])  # 2 MiB
    head = (
        f"PUT /api/imports/{job['id']}/files/x/IM1.dcm HTTP/1.1\r\nHost: {HOST}:{live.port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, live.port)) as sock:
        sock.sendall(head + payload[: len(payload) * 3 // 4])
        deadline = time.monotonic() + 10
        while not temp_files(live.node.services.store.root):  # the body is being spooled
            assert time.monotonic() < deadline, "the upload never reached a temp file"
            time.sleep(0.01)
    assert no_temp_files_left(live)
    state = httpx.get(f"{live.url}/api/imports/{job['id']}", timeout=30).json()
    assert (state["files_total"], state["stored"], state["failed_count"], state["state"]) == (0, 0, 0, "open")
    assert state["bytes_received"] > 0 and live.node.services.store.index.counts()["instances"] == 0
    assert put(live, job["id"], "x/IM1.dcm", payload).json()["status"] == "stored"  # the job goes on


def test_errors_404_409_413_and_bad_requests(live_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    live = live_factory(http={"max_request_mb": 1})
    assert httpx.get(f"{live.url}/api/imports/abc123", timeout=30).status_code == 404
    assert put(live, "abc123", "a.dcm", b"x").status_code == 404
    bad = httpx.post(f"{live.url}/api/imports", json={"expected_files": -1}, timeout=30)
    assert bad.status_code == 400 and "expected_files" in bad.json()["error"]
    assert httpx.post(f"{live.url}/api/imports", json={"nme": "x"}, timeout=30).status_code == 400
    job = open_job(live)
    big = part10(ct_series(1, rows=1024, cols=1024)[0])  # 2 MiB
    too_big = put(live, job["id"], "big.dcm", big)  # Content-Length says so: refused before reading
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    (tmp_path / "big.dcm").write_bytes(big)
    chunked = put(live, job["id"], "big.dcm", tmp_path / "big.dcm")  # no Content-Length: counted as it comes
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]
    assert no_temp_files_left(live) and live.node.services.store.index.counts()["instances"] == 0
    finish(live, job["id"])
    assert put(live, job["id"], "a.dcm", part10(ct_series(1)[0])).status_code == 409


# -- the command line ---------------------------------------------------------------------------------------------
def test_cli_imports_zip_and_tar_gz(tmp_path: Path) -> None:
    first, second = ct_series(5, rows=16, cols=16), ct_series(4, rows=16, cols=16, patient_id="GEN-0002")
    (tmp_path / "in" / "deep").mkdir(parents=True)
    zipped = write_zip(
        tmp_path / "in" / "one.zip",
        {f"a/IM{i}.dcm": part10(ds) for i, ds in enumerate(first)} | {"a/notes.txt": b"hi", "../x.dcm": b"x"},
    )
    write_tar(tmp_path / "in" / "deep" / "two.tar.gz", {f"b/c/IM{i}.dcm": part10(ds) for i, ds in enumerate(second)})
    data = tmp_path / "data"
    # the ZIP named on the command line, the TAR.GZ found in a folder
    result = run_cli("import", str(zipped), str(tmp_path / "in" / "deep"), "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert "imported 11 file(s): 9 stored" in result.stdout and "2 studies" in result.stdout
    assert "0 duplicate, 1 failed, 1 skipped" in result.stdout
    assert f"  skipped: {zipped}/a/notes.txt: {NOT_DICOM}" in result.stdout
    assert f"  failed: {zipped}/../x.dcm: path '../x.dcm' leaves the archive" in result.stdout
    status = json.loads(run_cli("status", "--data", str(data), "--json").stdout)
    assert status["instances"] == 9 and status["series"] == 2
    again = run_cli("import", str(tmp_path / "in"), "--data", str(data), "--no-progress")
    assert "0 stored" in again.stdout and "9 duplicate" in again.stdout


def test_an_open_job_whose_uploader_went_away_is_cancelled(live_factory: Any) -> None:
    live = live_factory(http={"import_abandoned_seconds": 0.2})  # the setting http.import_abandoned_seconds
    base = f"{live.url}/api/imports"
    first = httpx.post(base, json={"name": "left open"}).json()
    time.sleep(0.4)
    httpx.post(base, json={"name": "next"})  # creating a job tidies the registry
    job = httpx.get(f"{base}/{first['id']}").json()
    assert job["state"] == "cancelled" and job["finished_at"]
