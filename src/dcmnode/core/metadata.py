"""WADO-RS metadata (PS3.18 §10.4.1.1.2): the DICOM JSON of every instance of a series, built once and cached.

OHIF asks for one series' metadata per series it shows and waits on it
(anchors §3.9: Orthanc read every file per call, OHIF#1491), so the answer is precomputed: a background
worker builds each series' JSON a few seconds after its last instance arrived and keeps it under
``cache/metadata/``; a request for a series whose cache is stale builds it on the spot (and keeps it).

Large binary values of the top-level data set (Pixel Data, over ``BULK_THRESHOLD`` bytes) become
``BulkDataURI`` (F.2.6) pointing at ``.../instances/{uid}/bulkdata/{tag}``; the URIs are written with a
placeholder for the DICOMweb root and completed per request, so the cache serves any host name. The File Meta
Transfer Syntax UID (0002,0010) is included: viewers pick their decoder by it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom

from dcmnode.errors import NotFound
from dcmnode.part10 import json_model
from dcmnode.part10.frames import BINARY_VRS
from dcmnode.store import Store

log = logging.getLogger(__name__)

BULK_THRESHOLD = 1024
QUIET_SECONDS = 3.0  # a series is precomputed once no instance has arrived for this long
POOL_MIN_INSTANCES = 64  # smaller series are built inline (a process hop costs more than it saves)
BASE = "@@DCMNODE-BASE@@"  # stands for the DICOMweb root in cached JSON
_BASE_BYTES = BASE.encode()


def instance_json(path: Path, study: str, series: str, sop: str, memo: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One instance as DICOM JSON, large top-level binary values as BulkDataURI. Pass one ``memo`` for the
    instances of a series: their repeated elements are converted once."""
    uri = f"{BASE}/studies/{study}/series/{series}/instances/{sop}/bulkdata/"

    def bulk_uri(tag: int, vr: str, length: int) -> dict[str, Any] | None:
        if length <= BULK_THRESHOLD:
            return None
        return {"vr": vr, "BulkDataURI": f"{uri}{tag:08X}"}

    try:
        syntax, out = json_model.file_to_json(path.read_bytes(), bulk_uri, memo)
    except json_model.Unsupported as exc:
        log.debug("metadata of %s through pydicom: %s", path, exc)
        return _instance_json_pydicom(path, uri)
    out["00020010"] = {"vr": "UI", "Value": [syntax]}
    return {tag: out[tag] for tag in sorted(out)}


def _instance_json_pydicom(path: Path, uri: str) -> dict[str, Any]:
    ds = pydicom.dcmread(path, defer_size=BULK_THRESHOLD)
    bulk: dict[str, dict[str, str]] = {}
    for key in list(ds.keys()):
        elem = ds.get_item(key, keep_deferred=True)  # no value read: a deferred element keeps its length
        length = getattr(elem, "length", None)
        if length is None and elem is not None and isinstance(elem.value, (bytes, bytearray)):
            length = len(elem.value)
        vr = str(elem.VR) if elem is not None else ""
        if vr in BINARY_VRS and length is not None and (length > BULK_THRESHOLD or length == 0xFFFFFFFF):
            tag = f"{int(key):08X}"
            bulk[tag] = {"vr": vr, "BulkDataURI": uri + tag}
            del ds[key]
    out = ds.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)
    out.update(bulk)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax:  # always set for stored files (ingest checks it)
        out["00020010"] = {"vr": "UI", "Value": [str(syntax)]}
    return {tag: out[tag] for tag in sorted(out)}


@dataclass(frozen=True, slots=True)
class SeriesStamp:
    study: str
    series: str
    count: int
    last: str  # latest received_at

    @property
    def key(self) -> str:
        digest = hashlib.sha1(f"{self.count}|{self.last}".encode()).hexdigest()[:16]
        return f"{self.series}.{digest}"


def _build_chunk(job: tuple[str, str, list[tuple[str, str]]]) -> str:
    """Instances of one series as comma-separated JSON objects (runs in a worker process or inline)."""
    study, series, rows = job
    memo: dict[Any, Any] = {}
    out = []
    for sop, path in rows:
        try:
            item = instance_json(Path(path), study, series, sop, memo)
        except FileNotFoundError:
            continue  # replaced or deleted while we read; the next version rebuilds
        out.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
    return ",".join(out)


class MetadataCache:
    """Series metadata built once per version of the series and kept in ``cache/metadata/``. A large series is
    built by ``workers`` processes, started when the first such build comes (that build runs in this process
    while they start) and stopped after ``idle_seconds`` without one (``http.metadata_idle_seconds``; 0: they stay
    once started, and ``start_workers`` starts them with the node)."""

    def __init__(self, store: Store, workers: int = 0, idle_seconds: float = 0.0) -> None:
        self.store = store
        self.workers = workers
        self.idle_seconds = idle_seconds
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._warm: list[concurrent.futures.Future[str]] = []  # the pool's first tasks: done once workers are up
        self._in_use = 0  # builds running on the pool now (it is not stopped under them)
        self._last_used = 0.0
        self._closed = threading.Event()
        self.folder = store.root / "cache" / "metadata"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._building: dict[str, threading.Event] = {}

    def stamp(self, series: str) -> SeriesStamp | None:
        found = self.store.index.series_version(series)
        if found is None:
            return None
        study, count, latest = found
        return SeriesStamp(study, series, count, latest)

    def series_json(self, study: str, series: str) -> tuple[bytes, str]:
        """(the series' metadata as a JSON array with the BASE placeholder, its version key); cached. The key
        changes whenever the series does, so it serves as the ETag without hashing the JSON."""
        stamp = self.stamp(series)
        if stamp is None or stamp.study != study:
            raise NotFound(f"series {series} of study {study} is not stored here")
        path = self.folder / f"{stamp.key}.json"
        try:
            return path.read_bytes(), stamp.key
        except FileNotFoundError:
            pass
        return self._build(stamp, path), stamp.key

    def forget(self, series: str) -> int:
        """Remove the cached metadata of a series (a delete). A deleted series is never served from here anyway
        (its version is looked up in the index first, and it has none); this frees the space and makes sure a
        series stored again is built from its new files. Returns how many cache files went."""
        removed = 0
        for path in self._versions(series):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def _versions(self, series: str) -> list[Path]:
        """The cache files of this series' versions (``{series}.{digest}.json``; not those of a series whose UID
        merely starts with this one)."""
        return [p for p in self.folder.glob(f"{series}.*.json") if "." not in p.name[len(series) + 1 : -5]]

    def _build(self, stamp: SeriesStamp, path: Path, inline: bool = False) -> bytes:
        with self._lock:
            waiting = self._building.get(stamp.key)
            if waiting is None:
                self._building[stamp.key] = threading.Event()
        if waiting is not None:  # another thread builds this very version: wait for it
            waiting.wait(300)
            if path.exists():
                return path.read_bytes()
        try:
            data = self._compute(stamp, inline)
            tmp = self.store.files.tmp_dir / f"meta-{stamp.key}-{threading.get_ident()}"
            tmp.write_bytes(data)
            os.replace(tmp, path)
            for old in self._versions(stamp.series):
                if old != path:
                    old.unlink(missing_ok=True)
            return data
        finally:
            with self._lock:
                event = self._building.pop(stamp.key, None)
            if event is not None:
                event.set()

    def _compute(self, stamp: SeriesStamp, inline: bool = False) -> bytes:
        started = time.perf_counter()
        rows = [
            (sop, str(self.store.files.absolute(rel))) for sop, rel in self.store.index.series_instances(stamp.series)
        ]
        pool = self._acquire() if len(rows) >= POOL_MIN_INSTANCES and not inline else None
        if pool is None:
            parts = [_build_chunk((stamp.study, stamp.series, rows))]
        else:  # in worker processes, in as many chunks as there are workers: off this process's GIL, on every core
            try:
                size = -(-len(rows) // self.workers)
                chunks = [(stamp.study, stamp.series, rows[i : i + size]) for i in range(0, len(rows), size)]
                parts = list(pool.map(_build_chunk, chunks))
            finally:
                self._release()
        data = ("[" + ",".join(p for p in parts if p) + "]").encode("utf-8")
        log.info(
            "metadata of series %s: %d instances, %d KB in %.2f s%s",
            stamp.series,
            len(rows),
            len(data) // 1024,
            time.perf_counter() - started,
            "" if pool is None else f" on {self.workers} worker processes",
        )
        return data

    def _acquire(self) -> concurrent.futures.ProcessPoolExecutor | None:
        """The worker pool, counted in use until ``_release``, once its processes are up; None when there are no
        workers, or while they start (started now if they were not: a spawned interpreter needs ~0.5 s to import
        pydicom, so this build runs here and the next ones there)."""
        if self.workers <= 0:
            return None
        with self._lock:
            if self._closed.is_set():
                return None
            pool = self._start_locked()
            if not all(f.done() for f in self._warm):
                return None
            self._in_use += 1
            return pool

    @property
    def workers_ready(self) -> bool:
        """Whether the worker processes are up: a large series is built on them now, not in this process."""
        with self._lock:
            return self._pool is not None and all(f.done() for f in self._warm)

    def _release(self) -> None:
        with self._lock:
            self._in_use -= 1
            self._last_used = time.monotonic()

    def _start_locked(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
            self._pool = pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
            )
            self._warm = [pool.submit(_build_chunk, ("", "", [])) for _ in range(self.workers)]  # one per worker
            for future in self._warm:  # idle from the moment they are up (the lock may be held here: no lock)
                future.add_done_callback(lambda done: setattr(self, "_last_used", time.monotonic()))
            self._last_used = time.monotonic()
            if self.idle_seconds > 0:
                threading.Thread(target=self._stop_when_idle, args=(pool,), name="metadata-idle", daemon=True).start()
        return self._pool

    def _stop_when_idle(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        while not self._closed.wait(min(self.idle_seconds, 5.0)):
            with self._lock:
                if self._pool is not pool:
                    return
                starting = not all(f.done() for f in self._warm)
                if starting or self._in_use or time.monotonic() - self._last_used < self.idle_seconds:
                    continue
                self._pool, self._warm = None, []
            pool.shutdown(wait=True)
            log.info("metadata workers stopped after %.0f s without a large series to build", self.idle_seconds)
            return

    def start_workers(self) -> None:
        """Start the worker processes now, so that the first large /metadata request does not wait for them
        (``http.metadata_idle_seconds = 0``: they start with the node and stay)."""
        if self.workers > 0:
            with self._lock:
                self._start_locked()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            pool, self._pool, self._warm = self._pool, None, []
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def precompute_changed(self, since: str, quiet: float = QUIET_SECONDS, stop: threading.Event | None = None) -> str:
        """Build the cache of every series changed after ``since`` that has been quiet for ``quiet`` seconds
        (a series still arriving would be rebuilt again and again); returns the new watermark."""
        cutoff = (datetime.now(UTC) - timedelta(seconds=quiet)).isoformat(timespec="milliseconds")
        rows = self.store.index.series_changed(since, cutoff)
        watermark = since
        for series, updated in rows:
            if stop is not None and stop.is_set():
                break
            stamp = self.stamp(series)
            if stamp is not None:
                path = self.folder / f"{stamp.key}.json"
                if not path.exists():
                    self._build(stamp, path, inline=True)
            watermark = updated
        return watermark


def with_base(data: bytes, base: str) -> bytes:
    return data.replace(_BASE_BYTES, base.encode())


class Precomputer:
    """A daemon thread that keeps series metadata ready: every ``interval`` seconds it builds the cache of the
    series that changed (the cost moves from OHIF's first request to the seconds after ingest)."""

    def __init__(self, cache: MetadataCache, interval: float = 2.0) -> None:
        self.cache = cache
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metadata-precompute", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        # Background work must not slow ingest down (the DIMSE processes compete for the same cores): this thread
        # runs at the lowest priority (Linux lets a thread have its own nice value) and builds in-thread.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        # The watermark persists, so series that arrived while the node was down (``dcmnode import``) are
        # built after the next start; a new cache folder builds every series once, in the background.
        mark = self.cache.folder / ".watermark"
        watermark = mark.read_text().strip() if mark.exists() else ""
        while not self._stop.wait(self.interval):
            try:
                new = self.cache.precompute_changed(watermark, stop=self._stop)
            except Exception:
                log.exception("metadata precompute failed; retrying")
                continue
            if new != watermark:
                watermark = new
                mark.write_text(watermark)


def _die_with_parent(parent: int) -> None:
    """In each worker process: exit once the node that spawned it is gone (a ``kill -9`` of the node leaves no
    worker behind). A watcher thread, not PR_SET_PDEATHSIG, which fires when the spawning *thread* ends."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
