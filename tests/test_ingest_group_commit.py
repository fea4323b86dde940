"""Group commit (core/group_commit.py, Ingest._commit_batch): instances that wait for the index at the same moment
share one transaction, one fsync per folder and one COMMIT; each keeps its own outcome; what a failed batch
placed is taken back; and what a node acknowledged survives kill -9 of the whole node, parallel associations and
both DIMSE processes included."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import build_context

from dcmnode.core.group_commit import GroupCommit, Take
from dcmnode.core.ingest import Ingest
from dcmnode.errors import Conflict
from dcmnode.model import InstanceKey, Outcome, Source, SourceKind, StoredInstance
from dcmnode.store import Store
from dcmnode.store.files import Files
from tests.conftest import CliServer, associate, stored_files, temp_files
from tests.factories import CT_IMAGE_STORAGE, ct_series, part10

SRC = Source(SourceKind.DIMSE, ae_title="BATCH")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class HeldIndex:
    """The index writer lock held from outside (as another process holds it: an flock on index.sqlite.lock), so
    that the writers of the test queue up behind it and commit together once it is let go."""

    def __init__(self, store: Store) -> None:
        self.fd = os.open(f"{store.index.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def store_together(ingest: Ingest, store: Store, blobs: list[bytes]) -> list[StoredInstance | BaseException]:
    """Store ``blobs`` from one thread each while the index is held, then let them all in at once."""
    results: list[StoredInstance | BaseException | None] = [None] * len(blobs)

    def one(i: int) -> None:
        try:
            results[i] = ingest.store_bytes(blobs[i], SRC)
        except Exception as err:
            results[i] = err

    held = HeldIndex(store)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(blobs))]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: ingest._group.queued == len(blobs), "every writer to queue")  # the leader's too
    finally:
        held.release()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_instances_waiting_together_share_one_commit_and_a_bad_one_fails_alone(store: Store) -> None:
    ingest = Ingest(store)
    first = ct_series(1, rows=16, cols=16, seed=1)[0]
    ingest.store_bytes(part10(first), SRC)
    good = ct_series(5, rows=16, cols=16, seed=2)
    bad = ct_series(1, rows=16, cols=16, seed=3)[0]
    bad.SeriesInstanceUID = first.SeriesInstanceUID  # the series of another study: refused in the transaction
    blobs = [part10(ds) for ds in good[:3]] + [part10(bad)] + [part10(ds) for ds in good[3:]]
    batches = ingest._group.batches

    results = store_together(ingest, store, blobs)

    assert ingest._group.batches == batches + 1 and ingest._group.largest == 6  # one batch, all six in it
    assert isinstance(results[3], Conflict) and results[3].sop_instance == bad.SOPInstanceUID
    stored = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, StoredInstance) and r.outcome == Outcome.STORED for r in stored)
    for ds in good:
        row = store.index.instance(str(ds.SOPInstanceUID))
        assert row is not None
        assert pydicom.dcmread(store.files.absolute(row["path"])).PixelData == ds.PixelData
    assert store.index.instance(str(bad.SOPInstanceUID)) is None
    assert not store.files.path_for(
        InstanceKey.checked(bad.StudyInstanceUID, bad.SeriesInstanceUID, bad.SOPInstanceUID)
    ).exists()
    assert len(stored_files(store.root)) == 6 and temp_files(store.root) == []


def test_the_same_instance_twice_in_one_batch_is_stored_once(store: Store) -> None:
    ingest = Ingest(store)
    ds = ct_series(1, rows=16, cols=16, seed=4)[0]
    results = store_together(ingest, store, [part10(ds), part10(ds)])
    assert sorted(r.outcome for r in results if isinstance(r, StoredInstance)) == [Outcome.DUPLICATE, Outcome.STORED]
    assert len(stored_files(store.root)) == 1 and temp_files(store.root) == []


def test_a_batch_whose_folders_cannot_be_synced_fails_whole_and_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = Ingest(store)
    series = ct_series(4, rows=16, cols=16, seed=5)
    calls: list[int] = []

    def broken(self: Files, folders: list[Path]) -> None:
        calls.append(len(folders))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Files, "sync_dirs", broken)
    results = store_together(ingest, store, [part10(ds) for ds in series])
    assert calls == [3]  # once for the batch: the series folder and the two made for it (study, dicom/)
    assert all(isinstance(r, OSError) for r in results)
    assert store.index.counts()["instances"] == 0  # rolled back: no row...
    assert stored_files(store.root) == [] and temp_files(store.root) == []  # ...and no file


def test_leadership_passes_on_and_every_writer_is_settled() -> None:
    """Many writers, a commit that fails every third batch: each writer returns, with the outcome of its batch."""
    seen: list[list[int]] = []

    def commit(take: Take[int]) -> None:
        time.sleep(0.002)  # writers queue meanwhile
        batch = take()
        seen.append([t.item for t in batch])
        if len(seen) % 3 == 0:
            raise RuntimeError("this batch failed")

    group: GroupCommit[int] = GroupCommit(commit)
    outcomes: dict[int, Any] = {}

    def writer(i: int) -> None:
        outcomes[i] = group.submit(i).error

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(outcomes) == list(range(40)) and sorted(i for b in seen for i in b) == list(range(40))
    failed = {i for n, b in enumerate(seen, 1) if n % 3 == 0 for i in b}
    assert {i for i, e in outcomes.items() if e is not None} == failed
    assert group.batches == len(seen) < 40 and group.queued == 0  # some batches held several writers


def test_a_commit_that_fails_before_taking_fails_its_writers_without_hanging() -> None:
    def commit(take: Take[int]) -> None:
        raise OSError(errno.ENOLCK, "no lock")

    group: GroupCommit[int] = GroupCommit(commit)
    assert isinstance(group.submit(1).error, OSError)
    assert isinstance(group.submit(2).error, OSError) and group.queued == 0


# -- kill -9 of a node storing over parallel associations ------------------------------------------------------


def send_until_killed(
    server: CliServer, series: list[Any], acknowledged: list[str], stop: threading.Event, problems: list[str]
) -> None:
    assoc = associate(server.dimse_port, contexts=[build_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)])
    if not assoc.is_established:
        problems.append("an association was not accepted")
        return
    raw_socket = assoc.dul.socket.socket  # pynetdicom does not close it when the peer vanishes mid-DIMSE
    try:
        for ds in series:
            if stop.is_set():
                break
            try:
                status = assoc.send_c_store(ds)
            except Exception:
                break
            if not status or "Status" not in status:
                break  # the association died under us
            if status.Status == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
            elif not stop.is_set():
                problems.append(f"status 0x{status.Status:04X}: {status.get('ErrorComment', '')}")
                break
    finally:
        assoc.abort()
        assoc.join(10)
        if raw_socket is not None:
            raw_socket.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parallel_acknowledged_instances_survive_kill_9(
    tmp_path: Path, cli_server_factory: Callable[..., CliServer], seed: int
) -> None:
    """Six associations store at once into a node with two DIMSE processes (batches of several instances);
    the node is killed (SIGKILL, every process) at a random moment. After a restart: every acknowledged
    instance is indexed and its file whole; no row without its file, no file without its row, no temp file."""
    rng = random.Random(seed)
    data = tmp_path / "data"
    server = cli_server_factory(data)
    streams = [ct_series(120, rows=128, cols=128, seed=seed * 100 + k) for k in range(6)]
    acknowledged: list[str] = []  # list.append is atomic: shared by the senders
    stop = threading.Event()
    problems: list[str] = []
    senders = [
        threading.Thread(target=send_until_killed, args=(server, s, acknowledged, stop, problems)) for s in streams
    ]
    for t in senders:
        t.start()
    kill_at = rng.randrange(40, 300)
    wait_for(lambda: len(acknowledged) >= kill_at or not any(t.is_alive() for t in senders), "acknowledgements")
    time.sleep(rng.random() * 0.05)  # somewhere inside the next batch
    server.kill9()  # the parent: its DIMSE processes die with it (PR_SET_PDEATHSIG)
    stop.set()
    for t in senders:
        t.join(60)
    total = sum(len(s) for s in streams)
    assert kill_at <= len(acknowledged) < total, (problems, server.log.read_text()[-3000:])

    restarted = cli_server_factory(data)  # starting again cleans what the dead processes left in tmp/
    status = httpx.get(f"http://127.0.0.1:{restarted.http_port}/api/status", timeout=10).json()
    files = {p.stem: p for p in stored_files(data)}
    pixels = {str(ds.SOPInstanceUID): ds.PixelData for s in streams for ds in s}
    for sop in acknowledged:  # every acknowledged instance is there, whole, and indexed
        assert sop in files
        assert pydicom.dcmread(files[sop]).PixelData == pixels[sop]
    with sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True) as index:
        rows = dict(index.execute("SELECT SOPInstanceUID, path FROM instances").fetchall())
    assert set(rows) == set(files)  # every row has its file, every file its row
    assert all((data / path).is_file() for path in rows.values())
    assert status["counts"]["instances"] == len(files) >= len(acknowledged)
    assert temp_files(data) == []


def test_an_instance_that_changes_nothing_above_it_still_marks_its_series_changed(store: Store) -> None:
    """The parents' upserts update only when a value changes (index.py: no rewrite of every index for each
    instance); the series' updated_at moves all the same, and a new value (a NULL never blanks) is applied."""
    ingest = Ingest(store)
    first, second, third = ct_series(3, rows=8, cols=8, seed=6)
    ingest.store_bytes(part10(first), SRC)
    conn = store.index.connection()

    def series_row() -> Any:
        return conn.execute(
            "SELECT * FROM series WHERE SeriesInstanceUID = ?", (str(first.SeriesInstanceUID),)
        ).fetchone()

    def study_row() -> Any:
        return conn.execute(
            "SELECT * FROM studies WHERE StudyInstanceUID = ?", (str(first.StudyInstanceUID),)
        ).fetchone()

    before, study_before = series_row(), study_row()
    time.sleep(0.002)  # updated_at has millisecond resolution
    ingest.store_bytes(part10(second), SRC)
    after = series_row()
    assert after["updated_at"] > before["updated_at"] and study_row()["updated_at"] > study_before["updated_at"]
    assert dict(after) | {"updated_at": None} == dict(before) | {"updated_at": None}
    assert [s for s, _ in store.index.series_changed(before["updated_at"], after["updated_at"])] == [
        str(first.SeriesInstanceUID)
    ]
    third.SeriesDescription = "Renamed"
    del third.Modality  # absent: the stored value stays
    ingest.store_bytes(part10(third), SRC)
    assert series_row()["SeriesDescription"] == "Renamed" and series_row()["Modality"] == "CT"
