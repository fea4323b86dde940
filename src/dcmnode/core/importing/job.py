"""Import files, folders and archives through the ingest service: ``dcmnode import`` and upload jobs.

An ``ImportJob`` is the one import path. ``dcmnode import`` feeds it files from disk in the calling thread; the
upload adapter (``dcmnode.nodeapi.imports``) feeds it files spooled from HTTP request bodies and hands archives to the
job's own thread, which expands them member by member (``core.archives``) while more files arrive. Every DICOM
file or member goes through ``Ingest``; every other one is reported with its reason and the job goes on. The
counters are guarded by one lock, so request threads, the job's thread and readers (progress) can share a job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dcmnode.core import archives
from dcmnode.core.archives import Kind, Limits, Member
from dcmnode.core.audit import Transfers
from dcmnode.core.importing.report import FileResult, ImportReport
from dcmnode.core.ingest import Ingest
from dcmnode.errors import AuditUnavailable, Conflict, DcmnodeError
from dcmnode.model import InstanceKey, Level, Outcome, Source, SourceKind, StoredInstance
from dcmnode.store.files import Files, disk_errors
from dcmnode.store.index import now

log = logging.getLogger(__name__)

OPEN, IMPORTING, DONE, CANCELLED, FAILED = "open", "importing", "done", "cancelled", "failed"
ENDED = (DONE, CANCELLED, FAILED)

Progress = Callable[[str, ImportReport], None]


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and every file below folders named, in a stable order. Hidden entries are skipped."""
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        yield Path(dirpath) / name
        else:
            yield path


def import_files(
    ingest: Ingest,
    files: Iterable[Path],
    progress: Progress | None = None,
    limits: Limits | None = None,
    transfers: Transfers | None = None,
) -> ImportReport:
    """``dcmnode import``: files from disk, archives among them expanded, in the calling thread."""
    paths = list(files)
    job = ImportJob(ingest, limits, expected_files=len(paths), progress=progress, transfers=transfers)
    for path in paths:
        job.import_path(path)
    job.finish()
    return job.report


class Spool:
    """A store temp file filled chunk by chunk (an upload's body). ``close`` makes it durable and hands it over;
    ``discard`` removes it (a failed or truncated upload leaves nothing)."""

    def __init__(self, files: Files) -> None:
        self._files = files
        with disk_errors():
            fd, name = tempfile.mkstemp(dir=files.tmp_dir, suffix=".upload")
        self.path = Path(name)
        self._fp = os.fdopen(fd, "wb")
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        with disk_errors():
            self._fp.write(data)
        self.size += len(data)

    def close(self) -> Path:
        try:
            with disk_errors():
                self._fp.flush()
                if self._files.fsync:
                    os.fsync(self._fp.fileno())
                self._fp.close()
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._fp.close()
        self._files.discard(self.path)


class ImportJob:
    """One import: progress counters, a state (open → importing → done | cancelled | failed), archives queued
    for the job's thread. Methods are thread-safe."""

    def __init__(
        self,
        ingest: Ingest,
        limits: Limits | None = None,
        name: str = "",
        expected_files: int = 0,
        source: Source | None = None,
        progress: Progress | None = None,
        transfers: Transfers | None = None,
    ) -> None:
        self.id = secrets.token_hex(6)
        self.transfers = transfers  # the audit trail's batch: one 110104 record per study when the job ends
        self.name = name
        self.ingest = ingest
        self.limits = limits or Limits()
        self.source = source or Source(SourceKind.IMPORT)
        self.report = ImportReport(expected=expected_files)
        self.state = OPEN
        self.bytes_received = 0
        self.started_at = now()  # index rows created from now on were created by this job
        self.finished_at: str | None = None
        self.version = 0  # moves on every change: progress streams send when it does
        self._progress = progress
        self._t0 = time.monotonic()
        self._t1: float | None = None
        self._active = self._t0  # the last time a file or a chunk of one arrived
        self._lock = threading.Lock()
        self._queue: deque[tuple[Path, str]] = deque()
        self._receiving = 0  # files being received or ingested by request threads
        self._busy = False  # the job's thread is expanding an archive
        self._thread: threading.Thread | None = None

    # -- feeding the job ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """Around one file's upload and ingest: Conflict unless the job is open; finish() waits for it."""
        with self._lock:
            self._check_open()
            self._receiving += 1
            self._active = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._receiving -= 1
                self._maybe_done()

    def _check_open(self) -> None:
        if self.state != OPEN:
            raise Conflict(f"import {self.id} is {self.state}: it takes no more files")

    def add_received(self, count: int) -> None:
        with self._lock:
            self.bytes_received += count
            self.version += 1
            self._active = time.monotonic()

    def add_temp(self, temp: Path, path: str) -> FileResult:
        """A complete file spooled into the store's tmp folder (an upload). Takes ownership of ``temp``: a DICOM
        file is ingested, an archive queued for the job's thread, anything else skipped."""
        if self.state in ENDED:
            self.ingest.discard_temp(temp)
            raise Conflict(f"import {self.id} is {self.state}: it takes no more files")
        try:
            with open(temp, "rb") as fp:
                head = fp.read(archives.HEAD)
        except BaseException:
            self.ingest.discard_temp(temp)
            raise
        kind = archives.kind_of(head)
        if kind in archives.ARCHIVES:
            self._enqueue(temp, path)
            return FileResult(path, "queued")
        self._seen(1, path)
        if kind == Kind.DICOM:
            return self._ingest(path, lambda: self.ingest.store_temp(temp, self.source))
        self.ingest.discard_temp(temp)
        return self._skip(path, archives.skip_reason(head))

    def import_path(self, path: Path) -> None:
        """A file on disk (``dcmnode import``): an archive is expanded here and now, any other file checked in
        place and copied into the store (a file that is not DICOM fails with the parser's reason)."""
        display = str(path)
        try:
            kind = archives.kind_of_file(path) if path.is_file() else None
        except OSError:
            kind = None  # unreadable: store_path below reports why
        if kind in archives.ARCHIVES:
            self._expand(path, display)
            return
        self._seen(1, display)
        self._ingest(display, lambda: self._store_path(path))

    def _store_path(self, path: Path) -> StoredInstance:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist or is not a file")
        return self.ingest.store_path(path, self.source)

    # -- life cycle -----------------------------------------------------------------------------------------------
    def finish(self) -> None:
        """No more files: the job is done once the files in flight and the queued archives are."""
        with self._lock:
            if self.state == OPEN:
                self.state = IMPORTING
                self._maybe_done()
                self.version += 1

    def cancel(self) -> None:
        """Stop between members; queued archives are dropped; what was stored stays stored."""
        with self._lock:
            if self.state in ENDED:
                return
            self._end(CANCELLED)
            dropped = list(self._queue)
            self._queue.clear()
        for temp, path in dropped:
            self.ingest.discard_temp(temp)
            log.info("import %s cancelled: archive %s not expanded", self.id, path)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def abandoned(self, idle_seconds: float) -> bool:
        """Open, nothing in flight, and no file for ``idle_seconds``: its uploader went away."""
        with self._lock:
            return self.state == OPEN and not self._receiving and time.monotonic() - self._active > idle_seconds

    def ended_since(self) -> float | None:
        """Monotonic time the job ended, or None while it runs."""
        return self._t1

    def _end(self, state: str) -> None:  # under the lock
        self.state = state
        self.finished_at = now()
        self._t1 = time.monotonic()
        self.version += 1
        log.info("import %s %s: %s", self.id, state, self._summary())
        if self.transfers is not None:
            with contextlib.suppress(AuditUnavailable):  # what was stored stays stored; the failure is logged
                self.transfers.close()

    def _maybe_done(self) -> None:  # under the lock
        if self.state == IMPORTING and not self._queue and not self._busy and not self._receiving:
            self._end(DONE)

    def _summary(self) -> str:
        r = self.report
        return (
            f"{r.files_total} file(s), {r.stored} stored, {r.duplicate} duplicate, {len(r.failed)} failed, "
            f"{len(r.skipped)} skipped"
        )

    # -- archives -------------------------------------------------------------------------------------------------
    def _enqueue(self, temp: Path, path: str) -> None:
        with self._lock:
            if self.state in ENDED:
                self.ingest.discard_temp(temp)
                raise Conflict(f"import {self.id} is {self.state}: it takes no more files")
            self._queue.append((temp, path))
            self.version += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"import-{self.id}", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        """The job's thread: expands queued archives one after the other, then ends (a new one starts when an
        archive is queued again)."""
        while (item := self._next_archive()) is not None:
            temp, path = item
            try:
                self._expand(temp, path)
            except Exception as exc:
                log.exception("import %s: archive %s broke the job", self.id, path)
                self._fail(path, f"internal error: {exc}")
                with self._lock:
                    if self.state not in ENDED:
                        self._end(FAILED)
            finally:
                self.ingest.discard_temp(temp)
                with self._lock:
                    self._busy = False

    def _next_archive(self) -> tuple[Path, str] | None:
        with self._lock:
            if self._queue and self.state not in ENDED:
                self._busy = True
                return self._queue.popleft()
            self._thread = None
            self._maybe_done()
            dropped = list(self._queue)  # an ended job's leftovers
            self._queue.clear()
        for temp, _ in dropped:
            self.ingest.discard_temp(temp)
        return None

    def _expand(self, archive: Path, display: str) -> None:
        """Every member of one archive through ingest, stopping between members if the job is cancelled."""
        try:
            stream = archives.members(archive, self.ingest.store.files, self.limits, self.declare)
            with contextlib.closing(stream):
                for member in stream:
                    if self.state == CANCELLED:
                        if member.temp is not None:
                            self.ingest.discard_temp(member.temp)
                        break
                    self._member(member, f"{display}/{member.name}")
        except DcmnodeError as err:
            log.warning("import %s: archive %s refused: %s", self.id, display, err.reason)
            self._fail(display, err.reason)
        except OSError as exc:
            self._fail(display, f"cannot read the archive: {exc}")

    def _member(self, member: Member, path: str) -> None:
        self._seen(1, path)
        if member.status == archives.Status.SKIPPED:
            self._skip(path, member.reason)
        elif member.status == archives.Status.REFUSED:
            self._fail(path, member.reason)
        else:
            temp = member.temp
            assert temp is not None
            self._ingest(path, lambda: self.ingest.store_temp(temp, self.source))

    def declare(self, count: int) -> None:
        """Members an archive's directory declares, for the ETA (replacing the archive's own place)."""
        with self._lock:
            self.report.expected += max(count - 1, 0)

    # -- outcomes -------------------------------------------------------------------------------------------------
    def _seen(self, count: int, path: str) -> None:
        with self._lock:
            self.report.seen(count, path)
            self.version += 1

    def _ingest(self, path: str, store: Callable[[], StoredInstance]) -> FileResult:
        try:
            stored = store()
        except (DcmnodeError, OSError) as err:
            reason = err.reason if isinstance(err, DcmnodeError) else str(err)
            if self.transfers is not None:
                self.transfers.fail()
            return self._fail(path, reason)
        except Exception:
            log.exception("import %s: %s failed", self.id, path)
            if self.transfers is not None:
                self.transfers.fail()
            return self._fail(path, "internal error; see the node's log")
        if self.transfers is not None:
            self.transfers.add(stored)
        if stored.outcome == Outcome.DUPLICATE:
            with self._lock:
                self.report.count_duplicate(stored)
            self._notify(path)
            return FileResult(path, "duplicate")
        new_study, new_series = self._first_sight(stored)
        self._count_created(stored.key, new_study, new_series)
        self._notify(path)
        return FileResult(path, "stored")

    def _first_sight(self, stored: StoredInstance) -> tuple[bool, bool]:
        with self._lock:
            self.version += 1
            return self.report.count_stored(stored)

    def _count_created(self, key: InstanceKey, new_study: bool, new_series: bool) -> None:
        """A study or series seen for the first time counts as created when its index row is younger than the
        job (the ingest outcome says the instance is new; the row's created_at says whether its parents are)."""
        index = self.ingest.store.index
        study = new_study and index.created_since(Level.STUDY, key.study, self.started_at)
        series = new_series and index.created_since(Level.SERIES, key.series, self.started_at)
        if study or series:
            with self._lock:
                self.report.count_created(study, series)

    def _fail(self, path: str, reason: str) -> FileResult:
        with self._lock:
            self.report.failed.append((path, reason))
            self.version += 1
        self._notify(path)
        return FileResult(path, "failed", reason)

    def _skip(self, path: str, reason: str) -> FileResult:
        with self._lock:
            self.report.skipped.append((path, reason))
            self.version += 1
        self._notify(path)
        return FileResult(path, "skipped", reason)

    def _notify(self, path: str) -> None:
        if self._progress is not None:
            self._progress(path, self.report)

    # -- progress -------------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        with self._lock:
            elapsed = max((self._t1 or time.monotonic()) - self._t0, 1e-6)
            return {
                "id": self.id,
                "name": self.name,
                "state": self.state,
                "bytes_received": self.bytes_received,
                **self.report.to_json(elapsed, self.bytes_received, self._eta(elapsed)),
                "started_at": self.started_at,
                "finished_at": self.finished_at,
            }

    def _eta(self, elapsed: float) -> float | None:  # under the lock
        if self.state == DONE:
            return 0.0
        return None if self.state in ENDED else self.report.eta(elapsed)
