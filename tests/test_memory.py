"""The node's memory as a whole (issue 19): what each process of ``dcmnode serve`` loads and which processes exist.

Read from outside, as an operator would: ``/proc/PID/maps`` lists every shared library a process has loaded (torch
is ``libtorch*.so``, scikit-image, scipy and cryptography are extension modules under their package folders),
``/proc/PID/comm`` names dcmnode's processes (``dcmnode-dimse``, ``dcmnode-sr``). The figures are in
bench/bench_memory.py and bench/results/2026-12-08-dimse/memory.md, not here.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

from dcmnode import config
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs import queue as jobs
from dcmnode.core.jobs.worker import has_work
from dcmnode.core.metadata import POOL_MIN_INSTANCES, MetadataCache
from dcmnode.model import Source, SourceKind
from dcmnode.store import Store
from tests.conftest import HOST, CliServer, run_cli
from tests.factories import ct_series, ct_small_series, part10, write_series

Serve = Callable[..., CliServer]
# What only the SR worker (torch), an enhancement request (scikit-image, scipy), a NIfTI export (nibabel's scipy)
# or OIDC / `dcmnode tls init` (cryptography) needs: never loaded by serving DIMSE or the usual HTTP requests.
NOT_LOADED = ("libtorch", "/torch/", "/skimage/", "/scipy/", "/cryptography/")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def loaded(pid: int) -> set[str]:
    """The libraries of ``NOT_LOADED`` that the process has mapped."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name in NOT_LOADED if name in maps}


def wait_until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)
    return value


def test_a_serving_node_loads_neither_torch_nor_the_imaging_stack_and_runs_no_idle_helper(
    tmp_path: Path, cli_server_factory: Serve
) -> None:
    server = cli_server_factory(tmp_path / "data")
    series = ct_series(3)
    ae = AE(ae_title="MEMTEST")
    ae.requested_contexts = [build_context(series[0].SOPClassUID), build_context("1.2.840.10008.5.1.4.1.2.2.1")]
    assoc = ae.associate(HOST, server.dimse_port, ae_title=server.ae_title)
    assert assoc.is_established
    assert all(assoc.send_c_store(ds).Status == 0 for ds in series)
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
    assert [status.Status for status, _ in assoc.send_c_find(query, "1.2.840.10008.5.1.4.1.2.2.1")][-1] == 0
    assoc.release()
    web = f"http://{HOST}:{server.http_port}/dicom-web"
    study, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    assert httpx.get(f"{web}/studies", timeout=30).status_code == 200
    assert httpx.get(f"{web}/studies/{study}/series/{uid}/metadata", timeout=30).status_code == 200
    instance = f"{web}/studies/{study}/series/{uid}/instances/{series[0].SOPInstanceUID}"
    assert httpx.get(instance, timeout=30).status_code == 200
    assert httpx.get(f"{instance}/rendered", headers={"accept": "image/jpeg"}, timeout=30).status_code == 200

    processes = children(server.proc.pid)
    assert [comm(pid) for pid in processes] == ["dcmnode-dimse", "dcmnode-dimse"]  # no SR worker, no /metadata pool
    for pid in [server.proc.pid, *processes]:
        assert loaded(pid) == set(), f"process {pid} ({comm(pid)}) loaded {loaded(pid)}"


def test_the_sr_worker_starts_for_a_queued_job_and_exits_when_idle(tmp_path: Path, cli_server_factory: Serve) -> None:
    cfg = tmp_path / "dcmnode.toml"
    cfg.write_text("[sr]\npoll_seconds = 0.2\nidle_exit_seconds = 2.0\n")
    data = tmp_path / "data"
    sources = ct_small_series(2)
    run_cli("import", "--data", str(data), str(write_series(tmp_path / "in", sources)[0].parent))
    server = cli_server_factory(data, "--config", str(cfg))
    api = f"http://{HOST}:{server.http_port}/api/sr/jobs"

    def workers() -> list[int]:
        return [pid for pid in children(server.proc.pid) if comm(pid) == "dcmnode-sr"]

    time.sleep(1.0)  # five polls with nothing to do
    assert workers() == []
    done_by = []
    for _ in range(2):  # the second job finds the worker gone and starts a new one
        job = httpx.post(api, json={"series": sources[0].SeriesInstanceUID, "method": "classical"}, timeout=30)
        assert job.status_code == 202, job.text
        started = wait_until(workers, 30, "the SR worker to start")
        url = f"{api}/{job.json()['id']}"
        done = wait_until(
            lambda url=url: (j := httpx.get(url, timeout=30).json())["status"] in jobs.ENDED and j, 120, "the job"
        )
        assert done["status"] == "done" and done["result"]["instances"]["sr"] == 2, done
        assert done["worker"].endswith(f":{started[0]}")  # it ran in that process
        wait_until(lambda: not workers(), 30, "the idle SR worker to exit")
        done_by.append(started[0])
        assert loaded(server.proc.pid) == set()  # the HTTP process never loaded torch: the worker did the work
    assert done_by[0] != done_by[1]
    assert "no job for 2 s, exiting" in server.log.read_text()


def test_has_work_tells_when_a_worker_would_find_something_to_do(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    try:
        ds = ct_small_series(1)[0]
        Ingest(store).store_bytes(part10(ds), Source(SourceKind.DIMSE, "CT_SCANNER"))
        base = config.load(None, {}, {"node": {"data_dir": str(tmp_path / "data")}})
        queue = jobs.Jobs(store.index, max_running=1)
        assert not has_work(base, queue)  # nothing queued, no rule
        job = queue.submit(ds.SeriesInstanceUID, method="classical")
        assert has_work(base, queue)
        queue.claim("another-host:1")  # running in a worker on another machine (alive as far as we know)
        assert not has_work(base, queue)
        queue.submit(ds.SeriesInstanceUID, method="classical")
        assert not has_work(base, queue)  # queued, but sr.max_running = 1 job runs already: it waits
        assert has_work(base, queue, alive=lambda worker: False)  # its worker died: a worker requeues it
        queue.cancel(job.id)
        queue.recover(alive=lambda worker: False)
        assert has_work(base, queue)  # the cap is free again
    finally:
        store.close()


@pytest.mark.parametrize(("modality", "fires"), [("CT", True), ("MR", False)])
def test_has_work_when_a_rule_would_fire(tmp_path: Path, modality: str, fires: bool) -> None:
    cfg = tmp_path / "rules.toml"
    cfg.write_text(f'[sr]\nquiet_seconds = 0.0\n[[sr.rules]]\nmodality = "{modality}"\nmethod = "classical"\n')
    settings = config.load(cfg, {}, {"node": {"data_dir": str(tmp_path / "data")}})
    store = Store.open(tmp_path / "data")
    try:
        Ingest(store).store_bytes(part10(ct_small_series(1)[0]), Source(SourceKind.DIMSE, "CT_SCANNER"))
        time.sleep(0.01)  # the series' last change is now in the past (quiet_seconds = 0)
        assert has_work(settings, jobs.Jobs(store.index)) is fires
    finally:
        store.close()


def test_metadata_workers_start_with_the_first_large_series_and_stop_when_idle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dcmnode.core.metadata")
    store = Store.open(tmp_path / "data")
    cache = MetadataCache(store, workers=2, idle_seconds=1.0)
    inline = MetadataCache(store, workers=0)
    try:
        ingest = Ingest(store)
        small, large, larger = ct_series(3), ct_series(POOL_MIN_INSTANCES, 8, 8), ct_series(POOL_MIN_INSTANCES, 8, 8)
        for ds in [*small, *large, *larger]:
            ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))

        def pool() -> list[multiprocessing.Process]:
            return [p for p in multiprocessing.active_children() if p.is_alive()]

        assert pool() == []
        cache.series_json(small[0].StudyInstanceUID, small[0].SeriesInstanceUID)
        assert pool() == []  # a small series is built here
        first = cache.series_json(large[0].StudyInstanceUID, large[0].SeriesInstanceUID)[0]  # here: they start
        assert " on 2 worker processes" not in caplog.text
        wait_until(lambda: cache.workers_ready, 60, "the workers to start")
        assert len(pool()) == 2
        second = cache.series_json(larger[0].StudyInstanceUID, larger[0].SeriesInstanceUID)[0]
        assert f"series {larger[0].SeriesInstanceUID}: {POOL_MIN_INSTANCES} instances" in caplog.text
        assert caplog.text.rstrip().endswith(" on 2 worker processes")  # built there
        for ds, built in ((large[0], first), (larger[0], second)):  # as one process alone builds them
            inline.forget(ds.SeriesInstanceUID)
            assert inline.series_json(ds.StudyInstanceUID, ds.SeriesInstanceUID)[0] == built
        wait_until(lambda: pool() == [], 30, "the idle workers to stop")
        assert not cache.workers_ready
        again = cache.series_json(larger[0].StudyInstanceUID, larger[0].SeriesInstanceUID)[0]
        assert again == second and pool() == []  # served from the cache: nothing to start
    finally:
        cache.close()
        store.close()
