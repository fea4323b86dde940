"""De-identification jobs over real HTTP (``/api/deidentify``) and the CLI (``dcmnode deidentify``, ``dcmnode
deid-key``): outputs store and zip, cancel, bad input, the ``deidentify`` scope, the project key's file and its
move to another node, an instance the profile refuses listed with its reason."""

from __future__ import annotations

import hashlib
import io
import stat
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from dcmnode.core.access import Scope
from dcmnode.model import Source, SourceKind
from tests.conftest import LiveServer, run_cli, temp_files
from tests.factories import ct_series, part10, write_series

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def ultrasound_with_text(study: str) -> Dataset:
    """An ultrasound instance that says it carries burned-in text: refused without clean-pixel-data."""
    ds = ct_series(1, study=study, seed=7)[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.Modality = "US"
    ds.BurnedInAnnotation = "YES"
    for keyword in ("RescaleIntercept", "RescaleSlope", "ImagePositionPatient", "ImageOrientationPatient"):
        delattr(ds, keyword)
    return ds


def study_with_refused(n: int = 3) -> tuple[str, list[Dataset], str]:
    cts = ct_series(n, seed=5, patient_name="Leak^Someone", patient_id="LEAK-4711")
    us = ultrasound_with_text(str(cts[0].StudyInstanceUID))
    return str(cts[0].StudyInstanceUID), [*cts, us], str(us.SOPInstanceUID)


def put(live: LiveServer, datasets: list[Dataset]) -> None:
    for ds in datasets:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))


def wait_ended(live: LiveServer, job_id: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        job: dict[str, Any] = httpx.get(f"{live.url}/api/deidentify/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job did not end: {job}"
        time.sleep(0.05)


def digests(live: LiveServer, study: str) -> dict[str, str]:
    files = live.node.services.catalog.select({"StudyInstanceUID": study})
    return {f.sop: hashlib.sha256(f.path.read_bytes()).hexdigest() for f in files}


def test_store_makes_a_new_study_and_lists_the_refused_instance(live: LiveServer) -> None:
    study, datasets, refused = study_with_refused()
    put(live, datasets)
    before = digests(live, study)
    answer = httpx.post(
        f"{live.url}/api/deidentify",
        json={"studies": [study], "options": ["retain-longitudinal-modified-dates"], "project": "trial-1",
              "patient_id": "SUBJ-001", "output": "store"},
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/api/deidentify/{answer.json()['id']}"
    job = wait_ended(live, answer.json()["id"])
    assert job["status"] == "done", job
    assert job["counts"] == {"total": 4, "done": 3, "failed": 1}
    assert [f["sop"] for f in job["failures"]] == [refused]
    assert job["failures"][0]["reason"]
    new = job["studies"][study]
    assert new != study and new.startswith("2.25.")
    assert digests(live, study) == before  # the source untouched
    files = live.node.services.catalog.select({"StudyInstanceUID": new})
    assert len(files) == 3
    sources = {str(ds.SOPInstanceUID) for ds in datasets}
    for f in files:
        ds = pydicom.dcmread(f.path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID == "SUBJ-001"
        assert str(ds.SOPInstanceUID) not in sources
        assert b"LEAK-4711" not in f.path.read_bytes()
    assert not temp_files(live.node.settings.data_dir)


def test_zip_output_downloads_an_archive_of_deidentified_files(live: LiveServer) -> None:
    datasets = ct_series(3, seed=11)
    put(live, datasets)
    series = str(datasets[0].SeriesInstanceUID)
    answer = httpx.post(f"{live.url}/api/deidentify", json={"series": [series], "project": "p", "output": "zip"})
    assert answer.status_code == 202, answer.text
    job = wait_ended(live, answer.json()["id"])
    assert job["status"] == "done" and job["archive"] == f"/api/deidentify/{job['id']}/archive", job
    archive = httpx.get(f"{live.url}{job['archive']}")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        members = z.namelist()
        assert len(members) == 3
        for name in members:
            ds = pydicom.dcmread(io.BytesIO(z.read(name)))
            assert ds.PatientIdentityRemoved == "YES"
            assert name == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert not live.node.services.catalog.select(
        {"StudyInstanceUID": job["studies"][str(datasets[0].StudyInstanceUID)]}
    )
    listed = httpx.get(f"{live.url}/api/deidentify").json()
    assert [j["id"] for j in listed] == [job["id"]]


def test_cancel_a_waiting_job_stores_nothing(live: LiveServer) -> None:
    datasets = ct_series(4, seed=12)
    put(live, datasets)
    registry = live.node.http.deidentify if live.node.http else None
    assert registry is not None
    registry._running.acquire()  # another job holds the one running place: this one waits, queued
    try:
        answer = httpx.post(
            f"{live.url}/api/deidentify", json={"studies": [str(datasets[0].StudyInstanceUID)], "project": "p"}
        )
        assert answer.status_code == 202 and answer.json()["status"] == "queued"
        cancelled = httpx.delete(f"{live.url}/api/deidentify/{answer.json()['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    finally:
        registry._running.release()
    job = wait_ended(live, answer.json()["id"])
    assert job["status"] == "cancelled" and job["counts"]["done"] == 0
    assert live.node.services.catalog.counts()["instances"] == 4


def test_a_client_with_too_many_open_jobs_gets_429(live: LiveServer) -> None:
    from dcmnode.core.deid.registry import MAX_OPEN_PER_CLIENT

    datasets = ct_series(1, seed=13)
    put(live, datasets)
    registry = live.node.http.deidentify if live.node.http else None
    assert registry is not None
    body = {"studies": [str(datasets[0].StudyInstanceUID)], "project": "p"}
    registry._running.acquire()  # nothing runs: every job stays queued
    try:
        ids = [httpx.post(f"{live.url}/api/deidentify", json=body).json()["id"] for _ in range(MAX_OPEN_PER_CLIENT)]
        refused = httpx.post(f"{live.url}/api/deidentify", json=body)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
        assert "queued or running" in refused.json()["error"]
        for job_id in ids:
            httpx.delete(f"{live.url}/api/deidentify/{job_id}")
        assert httpx.post(f"{live.url}/api/deidentify", json=body).status_code == 202  # cancelled ones free places
    finally:
        registry._running.release()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"studies": ["1.2.3"], "project": "p", "options": ["retain-everything"]}, "retain-everything"),
        ({"studies": ["1.2.3"]}, "project"),
        ({"studies": ["1.2.3"], "project": "../etc"}, "project"),
        ({"studies": ["1.2.3"], "series": ["1.2.4"], "project": "p"}, "one of studies or series"),
        ({"studies": ["not a uid"], "project": "p"}, "not a UID"),
        ({"studies": ["1.2.3"], "project": "p", "output": "cloud"}, "output"),
        ({"studies": ["1.2.3"], "project": "p", "output": "send", "send_to": "NOBODY"}, "send_to"),
        ({"studies": ["1.2.3"], "project": "p", "colour": "red"}, "colour"),
        (
            {"studies": ["1.2.3"], "project": "p",
             "options": ["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"]},
            "exclude each other",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_400_with_the_reason(live: LiveServer, body: dict[str, Any], reason: str) -> None:
    answer = httpx.post(f"{live.url}/api/deidentify", json=body)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]


def test_unknown_study_and_job_are_404(live: LiveServer) -> None:
    answer = httpx.post(f"{live.url}/api/deidentify", json={"studies": ["1.2.3.4"], "project": "p"})
    assert answer.status_code == 404 and "1.2.3.4" in answer.json()["error"]
    assert httpx.get(f"{live.url}/api/deidentify/99").status_code == 404
    assert httpx.get(f"{live.url}/api/deidentify/x").status_code == 400


def test_the_deidentify_scope_is_required(live_factory: Any) -> None:
    live = live_factory(http={"auth": "on"})
    datasets = ct_series(1, seed=13)
    put(live, datasets)
    auth = live.node.services.auth
    reader = auth.create_token("reader", frozenset({Scope.READ, Scope.WRITE}), frozenset({"*"}))
    deid = auth.create_token("deid", frozenset({Scope.READ, Scope.DEIDENTIFY}), frozenset({"*"}))
    body = {"studies": [str(datasets[0].StudyInstanceUID)], "project": "p"}
    refused = httpx.post(f"{live.url}/api/deidentify", json=body, headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    assert httpx.get(f"{live.url}/api/deidentify", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    headers = {"Authorization": f"Bearer {deid}"}
    answer = httpx.post(f"{live.url}/api/deidentify", json=body, headers=headers)
    assert answer.status_code == 202, answer.text
    assert wait_ended(live, answer.json()["id"], headers)["status"] == "done"
    # another principal does not see the job
    other = auth.create_token("other", frozenset({Scope.DEIDENTIFY}), frozenset({"*"}))
    seen = httpx.get(f"{live.url}/api/deidentify/{answer.json()['id']}", headers={"Authorization": f"Bearer {other}"})
    assert seen.status_code == 404


def mapping(stdout: str) -> dict[str, str]:
    pairs = [line.split()[1::2] for line in stdout.splitlines() if line.strip().startswith("study ")]
    return {source: new for source, new in pairs}


def test_cli_key_file_and_export_import_give_identical_uids(tmp_path: Path) -> None:
    study, datasets, refused = study_with_refused(2)
    files = write_series(tmp_path / "in", datasets)
    a, b = tmp_path / "a", tmp_path / "b"
    for data in (a, b):
        assert run_cli("import", "--data", str(data), "--no-progress", str(files[0].parent)).returncode == 0
    first = run_cli("deidentify", "--data", str(a), study, "--project", "trial", "--no-progress")
    assert first.returncode == 1, first.stderr  # the ultrasound is refused: some failed
    assert refused in first.stdout
    key = a / "secrets" / "deid" / "trial.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.read_bytes().hex() not in first.stdout + first.stderr
    exported = tmp_path / "trial.b64"
    assert run_cli("deid-key", "export", "--data", str(a), "trial", "--out", str(exported)).returncode == 0
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    assert run_cli("deid-key", "import", "--data", str(b), "trial", str(exported)).returncode == 0
    second = run_cli("deidentify", "--data", str(b), study, "--project", "trial", "--no-progress")
    assert second.returncode == 1
    assert mapping(first.stdout) == mapping(second.stdout) and study in mapping(first.stdout)
    # another project: other UIDs; a different key is not imported over an existing one without --force
    other = run_cli("deidentify", "--data", str(b), study, "--project", "other", "--no-progress")
    assert mapping(other.stdout)[study] != mapping(first.stdout)[study]
    other_key = run_cli("deid-key", "export", "--data", str(b), "other")
    (tmp_path / "other.b64").write_text(other_key.stdout)
    refused_import = run_cli("deid-key", "import", "--data", str(b), "trial", str(tmp_path / "other.b64"))
    assert refused_import.returncode == 2 and "--force" in refused_import.stderr
    assert key.read_bytes() == (b / "secrets" / "deid" / "trial.key").read_bytes()


def test_cli_zip_output_and_usage(tmp_path: Path) -> None:
    datasets = ct_series(2, seed=14)
    files = write_series(tmp_path / "in", datasets)
    data = tmp_path / "data"
    assert run_cli("import", "--data", str(data), "--no-progress", str(files[0].parent)).returncode == 0
    out = tmp_path / "out.zip"
    study = str(datasets[0].StudyInstanceUID)
    done = run_cli("deidentify", "--data", str(data), study, "--project", "p", "--zip", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(out) as z:
        assert len(z.namelist()) == 2
    bad = run_cli("deidentify", "--data", str(data), study, "--project", "p", "--option", "nope")
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_cli_fills_the_configured_pixel_masks_on_every_frame(tmp_path: Path) -> None:
    """``[[deid.pixel_masks]]`` reaches the job: with clean-pixel-data the rule's rectangle, which holds no text
    for OCR to find, is black on both frames of the stored result; the rest of the speckle is kept."""
    from tests.test_deid_pixels import _frame, _frames, _us

    frames = [_frame(seed, [], rgb=True) for seed in (1, 2)]
    ds = _us(frames, BurnedInAnnotation="YES", PatientName="Mask^Test", PatientID="MASK-1")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    data = tmp_path / "data"
    files = write_series(tmp_path / "in", [ds])
    assert run_cli("import", "--data", str(data), "--no-progress", str(files[0])).returncode == 0
    cfg = tmp_path / "dcmnode.toml"
    rule = 'manufacturer = "acme"\nrectangles = [[300, 200, 40, 30]]\n'
    cfg.write_text(f"[[deid.pixel_masks]]\n{rule}")
    out = tmp_path / "out.zip"
    done = run_cli(
        "deidentify", "--config", str(cfg), "--data", str(data), ds.StudyInstanceUID, "--project", "p",
        "--option", "clean-pixel-data", "--zip", str(out), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with zipfile.ZipFile(out) as z:
        [name] = z.namelist()
        result = pydicom.dcmread(io.BytesIO(z.read(name)))
    for before, after in zip(frames, _frames(result), strict=True):
        assert (after[200:230, 300:340] == 0).all()
        assert before[200:230, 300:340].any()  # there was speckle there to fill
        assert (after[:, :290] == before[:, :290]).all()
