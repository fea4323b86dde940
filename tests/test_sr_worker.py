"""Super-resolution jobs end to end: the derived series' attributes (checked by dciodvfy), the persistent queue,
the automatic rule, the HTTP API and CLI, a kill -9 in the middle of a job, and sending back to a real storage
SCP that is down and then comes back. The numerical core has its own tests (test_sr_model.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dcmnode.core.jobs import derive, report
from dcmnode.core.jobs import queue as jobs
from dcmnode.errors import Cancelled, Conflict, InvalidRequest, NotFound
from dcmnode.imaging import pipeline
from dcmnode.model import Source, SourceKind
from dcmnode.sr import super_resolve_report
from dcmnode.store import Store
from tests.conftest import HOST, CliServer, run_cli
from tests.factories import ct_small_series, part10, write_series
from tests.test_retrieve_dimse import StorageScp

Serve = Callable[..., CliServer]


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy missing: scripts/setup.sh --test installs dicom3tools")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


# -- the derived instances ----------------------------------------------------------------------------------------
def test_derived_instances_keep_the_source_geometry_and_scale_and_pass_dciodvfy(tmp_path: Path) -> None:
    sources = ct_small_series(2)
    hu = np.stack([pipeline.modality(ds, ds.pixel_array) for ds in sources])
    result = super_resolve_report(hu, 2, method="classical", modality="CT", value_range=derive.value_range(sources[0]))
    derivation = derive.Derivation(2, "classical", "test derivation", "dcmnode test")
    made = []
    for n, (src, up, unc) in enumerate(zip(sources, result.upscaled, result.uncertainty, strict=True)):
        sr_ds = derive.derived(src, up, derivation, "2.25.1", f"2.25.1{n}", 1007, "SR x2 of Axial")
        unc_ds = derive.derived(src, unc, derivation, "2.25.2", f"2.25.2{n}", 2007, "unc", kind=derive.UNCERTAINTY)
        for name, ds in (("sr", sr_ds), ("unc", unc_ds)):
            (tmp_path / f"{name}{n}.dcm").write_bytes(derive.part10(ds, "TEST"))
        made.extend([sr_ds, unc_ds])
    doc = report.document(sources, made, {**result.report, "factor": 2}, "2.25.3", "2.25.31", 3007, "test", "HU")
    doc.save_as(tmp_path / "report.dcm", enforce_file_format=True)

    for path in sorted(tmp_path.glob("*.dcm")):
        assert dciodvfy_errors(path) == [], path.name

    src, back = sources[0], pydicom.dcmread(tmp_path / "sr0.dcm")
    assert (back.Rows, back.Columns) == (2 * src.Rows, 2 * src.Columns)
    assert [float(v) for v in back.PixelSpacing] == pytest.approx([float(v) / 2 for v in src.PixelSpacing])
    # the centre of the first pixel moves back by a quarter of the old spacing along rows and columns
    expected = (
        np.array(src.ImagePositionPatient, float)
        - 0.25 * float(src.PixelSpacing[1]) * np.array(src.ImageOrientationPatient[:3], float)
        - 0.25 * float(src.PixelSpacing[0]) * np.array(src.ImageOrientationPatient[3:], float)
    )
    assert np.array(back.ImagePositionPatient, float) == pytest.approx(expected, abs=1e-4)
    assert (back.StudyInstanceUID, back.FrameOfReferenceUID) == (src.StudyInstanceUID, src.FrameOfReferenceUID)
    assert back.SeriesInstanceUID != src.SeriesInstanceUID and back.SOPInstanceUID != src.SOPInstanceUID
    assert back.SOPClassUID == src.SOPClassUID
    assert list(back.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert back.DerivationCodeSequence[0].CodeValue == "113085"
    assert back.DerivationCodeSequence[1].CodeValue == "113086"  # classical: edge enhancement
    ref = back.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert back.ContributingEquipmentSequence[-1].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert (back.RescaleSlope, back.RescaleIntercept) == (src.RescaleSlope, src.RescaleIntercept)
    assert not any(elem.tag.is_private for elem in back)
    # the stored values hold the super-resolved HU (to the stored grid's rounding)
    stored_hu = pipeline.modality(back, back.pixel_array)
    assert np.abs(stored_hu - result.upscaled[0]).max() <= float(src.RescaleSlope) / 2 + 1e-3
    unc_back = pydicom.dcmread(tmp_path / "unc0.dcm")
    assert list(unc_back.ImageType)[3] == "UNCERTAINTY" and unc_back.PixelRepresentation == 0
    assert np.abs(pipeline.modality(unc_back, unc_back.pixel_array) - result.uncertainty[0]).max() < 0.1 + 1e-3 * (
        result.uncertainty[0].max()
    )
    sr_doc = pydicom.dcmread(tmp_path / "report.dcm")
    assert sr_doc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    evidence = {i.ReferencedSOPInstanceUID for s in sr_doc.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}  # fmt: skip
    assert evidence == {ds.SOPInstanceUID for ds in [*sources, *made]}


def test_runner_streams_slices_like_the_whole_stack_api_and_a_cancel_takes_back_what_it_stored(tmp_path: Path) -> None:
    from dcmnode.core.catalog import Catalog
    from dcmnode.core.ingest import Ingest
    from dcmnode.core.jobs import runner
    from dcmnode.core.query import Level

    sources = ct_small_series(3)
    store = Store.open(tmp_path / "data")
    catalog, ingest = Catalog(store), Ingest(store)
    try:
        for ds in sources:
            ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
        queue = jobs.Jobs(store.index)
        series = sources[0].SeriesInstanceUID

        def derived() -> list[Any]:
            return [i for i in catalog.select({}, level=Level.IMAGE) if i.series != series]

        def files() -> set[Path]:
            return {p for p in store.files.dicom_dir.rglob("*") if p.is_file()}

        # cancelled while the third slice is being made: the two stored slices (x2 kinds) are removed again
        cancelled = queue.submit(series, method="classical")
        stages: list[str] = []

        def progress(fraction: float, stage: str) -> None:
            stages.append(stage)

        def stop_at_third_slice() -> bool:
            return stages.count("inference") >= 3

        before = files()
        with pytest.raises(Cancelled):
            runner.run(cancelled, catalog, ingest, progress, stop_at_third_slice)
        assert derived() == [] and files() == before
        assert len(catalog.select({"SeriesInstanceUID": series}, level=Level.IMAGE)) == 3  # the source is untouched

        # a whole job: each stored slice holds what the whole-stack API computes for it
        job = queue.submit(series, method="classical")
        outcome = runner.run(job, catalog, ingest, lambda f, s: None, lambda: False)
        assert outcome.instances == {"sr": 3, "unc": 3, "report": 1} and len(derived()) == 7
        hu = np.stack([pipeline.modality(ds, ds.pixel_array) for ds in sources])
        limits = derive.value_range(sources[0])
        whole = super_resolve_report(hu, 2, method="classical", modality="CT", value_range=limits)
        stored = {}
        for item in catalog.select({"SeriesInstanceUID": outcome.series["sr"]}, level=Level.IMAGE):
            ds = pydicom.dcmread(item.path)
            stored[ds.SourceImageSequence[0].ReferencedSOPInstanceUID] = pipeline.modality(ds, ds.pixel_array)
        for src, expected in zip(sources, whole.upscaled, strict=True):
            assert np.abs(stored[src.SOPInstanceUID] - expected).max() <= float(src.RescaleSlope) / 2 + 1e-3
        assert outcome.run["uncertainty_mean"] == pytest.approx(whole.report["uncertainty_mean"], rel=1e-5)
    finally:
        catalog.close()
        store.close()


# -- the queue ----------------------------------------------------------------------------------------------------
def test_queue_requeues_a_dead_workers_job_and_gives_up_after_three_attempts(tmp_path: Path) -> None:
    from dcmnode.core.ingest import Ingest

    store = Store.open(tmp_path / "data")
    try:
        ds = ct_small_series(1)[0]
        Ingest(store).store_bytes(part10(ds), Source(SourceKind.IMPORT))
        queue = jobs.Jobs(store.index)
        with pytest.raises(NotFound):
            queue.submit("1.2.3.4")
        with pytest.raises(InvalidRequest):
            queue.submit(ds.SeriesInstanceUID, factor=3)
        job = queue.submit(ds.SeriesInstanceUID)
        assert job.status == "queued" and job.attempts == 0
        dead = "no-such-host-for-sure:1"  # another machine: assumed alive; the check below decides per call
        for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
            claimed = queue.claim(dead)
            assert claimed is not None and claimed.id == job.id and claimed.attempts == attempt
            assert queue.claim("other:2") is None  # one running job is not claimed twice
            assert queue.recover(alive=lambda worker: True) == []
            assert queue.recover(alive=lambda worker: False) == [job.id]
        ended = queue.get(job.id)
        assert ended.status == "failed" and "3 attempts" in (ended.error or "")
        with pytest.raises(Conflict):
            queue.cancel(job.id)
        assert queue.submit_once(ds.SeriesInstanceUID, 2, "learned", None, "rule") is None  # it has a job already
        second = queue.submit(ds.SeriesInstanceUID, method="classical")
        assert queue.cancel(second.id).status == "cancelled"
        third = queue.submit(ds.SeriesInstanceUID)
        queue.claim("me:3")
        assert queue.cancel(third.id).cancel_requested and queue.progress(third.id, 0.5, "training")
        assert queue.get(third.id).progress == 0.5
        assert not jobs.worker_alive(f"{socket.gethostname()}:999999999")
        assert jobs.worker_alive(jobs.worker_id())
    finally:
        store.close()


# -- a running node ------------------------------------------------------------------------------------------------
def node_config(folder: Path, peers: dict[str, int], rules: str = "", **sr: Any) -> Path:
    settings = {"quiet_seconds": 1.0, "poll_seconds": 0.2, "send_backoff": 0.5, "send_backoff_max": 2.0, **sr}
    text = "[sr]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in settings.items())
    text += rules
    text += "".join(f"[peers.{ae}]\nhost = '{HOST}'\nport = {port}\n" for ae, port in peers.items())
    path = folder / "dcmnode.toml"
    path.write_text(text)
    return path


def storescu(port: int, calling: str, files: list[Path]) -> None:
    result = subprocess.run(
        ["storescu", "-aet", calling, "-aec", "DCMNODE", HOST, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def api(server: CliServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"http://{HOST}:{server.http_port}/api{path}", timeout=30, **kwargs)


def job_of(server: CliServer, series: str) -> dict[str, Any] | None:
    found = api(server, "GET", f"/sr/jobs?series={series}").json()
    return found[0] if found else None


def test_rule_fires_on_a_complete_series_and_the_derived_series_goes_back_to_the_sender(
    tmp_path: Path, cli_server_factory: Serve
) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk not installed")
    modality = StorageScp("MODALITY")
    try:
        rule = '[[sr.rules]]\nmodality = "CT"\ncalling_aet = "MODALITY"\nmethod = "classical"\n'
        cfg = node_config(tmp_path, {"MODALITY": modality.port}, rule)
        server = cli_server_factory(tmp_path / "data", "--config", str(cfg))
        sources = ct_small_series(3)
        storescu(server.dimse_port, "MODALITY", write_series(tmp_path / "in", sources))
        series = sources[0].SeriesInstanceUID
        job = wait_until(lambda: (j := job_of(server, series)) and j["send_status"] in ("sent", "failed") and j, 120,
                         "the rule's job to finish and send")  # fmt: skip
        assert job["status"] == "done" and job["origin"] == "rule" and job["send_status"] == "sent", job
        derived = job["result"]["series"]
        # everything arrived at the sender: 3 super-resolved, 3 uncertainty, 1 report
        got: dict[str, list[Dataset]] = {}
        for ds, _ in modality.received:
            got.setdefault(ds.SeriesInstanceUID, []).append(ds)
        assert {k: len(v) for k, v in got.items()} == {derived["sr"]: 3, derived["unc"]: 3, derived["report"]: 1}
        assert all(s["status"] == "sent" and s["to"] == "MODALITY" for s in job["sends"])
        first = got[derived["sr"]][0]
        assert (first.Rows, first.StudyInstanceUID) == (256, sources[0].StudyInstanceUID)
        assert {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in got[derived["sr"]]} == {
            ds.SOPInstanceUID for ds in sources
        }
        # visible through QIDO-RS at once, and no rule fires for the derived series themselves
        qido = httpx.get(f"http://{HOST}:{server.http_port}/dicom-web/studies/{sources[0].StudyInstanceUID}/series")
        assert {s["0020000E"]["Value"][0] for s in qido.json()} == {series, *derived.values()}
        time.sleep(2.5)
        assert len(api(server, "GET", "/sr/jobs").json()) == 1
        for path in sorted((tmp_path / "data" / "dicom").rglob("*.dcm")):
            assert dciodvfy_errors(path) == [], path
    finally:
        modality.stop()


@pytest.mark.learned_sr
def test_api_runs_a_learned_job_and_explains_bad_requests(tmp_path: Path, cli_server_factory: Serve) -> None:
    cfg = node_config(tmp_path, {}, train_steps=40)
    server = cli_server_factory(tmp_path / "data", "--config", str(cfg))
    sources = ct_small_series(2)
    run_cli("import", "--data", str(tmp_path / "data"), str(write_series(tmp_path / "in", sources)[0].parent))
    series = sources[0].SeriesInstanceUID

    assert (
        api(server, "POST", "/sr/jobs", content=b"series=1", headers={"content-type": "text/plain"}).status_code == 415
    )
    assert api(server, "POST", "/sr/jobs", json={"series": series, "factor": 3}).status_code == 400
    assert api(server, "POST", "/sr/jobs", json={"series": series, "send_to": "NOBODY"}).status_code == 400
    assert api(server, "POST", "/sr/jobs", json={"series": "1.2.3"}).status_code == 404
    assert api(server, "GET", "/sr/jobs/999").status_code == 404

    created = api(server, "POST", "/sr/jobs", json={"series": series, "factor": 2, "method": "learned"})
    assert created.status_code == 202 and created.headers["location"] == f"/api/sr/jobs/{created.json()['id']}"
    done = wait_until(
        lambda: (j := api(server, "GET", f"/sr/jobs/{created.json()['id']}").json())["status"] in jobs.ENDED and j,
        240,
        "the learned job",
    )
    assert done["status"] == "done", done
    run = done["result"]["run"]
    assert run["method"] == "learned" and run["uncertainty_mean"] > 0 and run["self_consistency_psnr_db"] > 30
    assert done["send_status"] == ""  # nobody to send to: the sender is not a declared peer
    sr_series = done["result"]["series"]["sr"]
    frames = httpx.get(f"http://{HOST}:{server.http_port}/dicom-web/series?SeriesInstanceUID={sr_series}"
                       "&includefield=00201209").json()  # fmt: skip
    assert frames[0]["00201209"]["Value"] == [2]
    assert api(server, "DELETE", f"/sr/jobs/{done['id']}").status_code == 409


@pytest.mark.learned_sr
def test_a_job_interrupted_by_kill_9_runs_again_after_restart(tmp_path: Path, cli_server_factory: Serve) -> None:
    cfg = node_config(tmp_path, {}, train_steps=100000, max_train_seconds=12.0)
    data = tmp_path / "data"
    sources = ct_small_series(2)
    run_cli("import", "--data", str(data), str(write_series(tmp_path / "in", sources)[0].parent))
    server = cli_server_factory(data, "--config", str(cfg))
    job = api(server, "POST", "/sr/jobs", json={"series": sources[0].SeriesInstanceUID}).json()
    url = f"/sr/jobs/{job['id']}"
    wait_until(lambda: api(server, "GET", url).json()["progress"] > 0.06, 60, "training to start")
    server.kill9()
    again = cli_server_factory(data, "--config", str(cfg))
    done = wait_until(lambda: (j := api(again, "GET", url).json())["status"] in jobs.ENDED and j, 180, "the retry")
    assert done["status"] == "done" and done["attempts"] == 2, done
    instances = httpx.get(
        f"http://{HOST}:{again.http_port}/dicom-web/series/{done['result']['series']['sr']}/instances"
    ).json()
    assert len(instances) == 2  # the retry rewrote the same instances, not a second copy


@pytest.mark.learned_sr
def test_cancel_stops_a_running_job(tmp_path: Path, cli_server_factory: Serve) -> None:
    cfg = node_config(tmp_path, {}, train_steps=100000, max_train_seconds=60.0)
    sources = ct_small_series(2)
    run_cli("import", "--data", str(tmp_path / "data"), str(write_series(tmp_path / "in", sources)[0].parent))
    server = cli_server_factory(tmp_path / "data", "--config", str(cfg))
    url = f"/sr/jobs/{api(server, 'POST', '/sr/jobs', json={'series': sources[0].SeriesInstanceUID}).json()['id']}"
    wait_until(lambda: api(server, "GET", url).json()["status"] == "running", 60, "the job to start")
    started = time.monotonic()
    assert api(server, "DELETE", url).status_code == 202
    ended = wait_until(lambda: (j := api(server, "GET", url).json())["status"] in jobs.ENDED and j, 30, "cancel")
    assert ended["status"] == "cancelled" and time.monotonic() - started < 30
    assert httpx.get(f"http://{HOST}:{server.http_port}/dicom-web/series").json().__len__() == 1


def test_send_waits_for_a_peer_that_is_down_and_dcmnode_send_resends(tmp_path: Path, cli_server_factory: Serve) -> None:
    port = free_port()
    cfg = node_config(tmp_path, {"LATE": port}, send_attempts=8, send_backoff=0.5, send_backoff_max=1.0)
    sources = ct_small_series(2)
    data = tmp_path / "data"
    run_cli("import", "--data", str(data), str(write_series(tmp_path / "in", sources)[0].parent))
    server = cli_server_factory(data, "--config", str(cfg))
    body = {"series": sources[0].SeriesInstanceUID, "method": "classical", "send_to": "LATE"}
    url = f"/sr/jobs/{api(server, 'POST', '/sr/jobs', json=body).json()['id']}"
    wait_until(lambda: api(server, "GET", url).json()["send_status"] == "sending", 120, "the send to start")
    time.sleep(1.5)  # a failed attempt or two against the closed port
    late = StorageScp("LATE", port=port)
    try:
        job = wait_until(lambda: (j := api(server, "GET", url).json())["send_status"] != "sending" and j, 60, "send")
        assert job["send_status"] == "sent", job
        assert len(late.received) == 5  # 2 super-resolved, 2 uncertainty, 1 report
        assert "retrying" in server.log.read_text()
        # the derived series stays in the store and goes again on demand
        derived = job["result"]["series"]["sr"]
        resent = run_cli("send", "--config", str(cfg), "--data", str(data), derived, "LATE")
        assert resent.returncode == 0 and "sent 2 of 2" in resent.stdout, resent.stdout + resent.stderr
        assert len(late.received) == 7
    finally:
        late.stop()
    down = run_cli("send", "--config", str(cfg), "--data", str(data), derived, "LATE",
                   env={"DCMNODE_SR_SEND_ATTEMPTS": "2"})  # fmt: skip
    assert down.returncode == 1 and "failed:" in down.stdout and "unreachable" in down.stdout
