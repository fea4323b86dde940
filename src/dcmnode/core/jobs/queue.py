"""The super-resolution job queue, kept in the index (``store.jobs``) so that it survives a restart.

A job is ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled``. A worker claims the oldest queued job in
one transaction, reports progress (which is also its heartbeat and the moment it learns of a cancel request), and
ends the job. A job whose worker process died (``kill -9``, a crash, a restart) goes back to the queue and is
tried again, at most ``MAX_ATTEMPTS`` times. Sending the derived series is recorded apart from the job's status
(``send_status``: ``''`` nothing asked, ``sending``, ``sent``, ``partial``, ``failed``), because a failed send
loses nothing: the series stays in the store and can be sent again.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from dcmnode import sr
from dcmnode.config import Peer, Settings
from dcmnode.errors import Conflict, InvalidRequest, NotFound
from dcmnode.store.index import Index
from dcmnode.store.jobs import JobTable, NewJob

FACTORS = sr.FACTORS
METHODS = ("learned", "classical")  # what a job offers (the library also has the plain interpolations)
MAX_ATTEMPTS = 3
NO_SEND = "-"  # send_to: keep the derived series here only


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = (Status.DONE, Status.FAILED, Status.CANCELLED)


@dataclass(slots=True)
class Job:
    id: int
    series: str
    study: str
    factor: int
    method: str
    send_to: str | None
    origin: str
    status: str
    progress: float
    stage: str
    attempts: int
    cancel_requested: bool
    worker: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    result: dict[str, Any] = field(default_factory=dict)
    send_status: str = ""
    sends: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        values = {k: v for k, v in row.items() if k != "heartbeat_at"}
        values["result"] = json.loads(values["result"]) if values["result"] else {}
        values["sends"] = json.loads(values["sends"]) if values["sends"] else []
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str) -> bool:
    """Whether the process named by ``worker_id()`` still runs (on this machine; another machine's: assume so)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return host != socket.gethostname()
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fp:
            state = fp.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in (b"Z", b"X")  # a zombie (its parent was killed, nobody reaped it yet) is dead


class Jobs:
    """The queue's rules over its table (``store.jobs``): what may be asked, and each state change."""

    def __init__(self, index: Index, max_running: int = 0) -> None:
        self.index = index
        self.table = JobTable(index)
        self.max_running = max_running  # sr.max_running: jobs running at once, node-wide (0: no limit)

    # -- asking ------------------------------------------------------------------------------------------------
    def submit(
        self, series: str, factor: int = 2, method: str = "learned", send_to: str | None = None, origin: str = "api"
    ) -> Job:
        job = self._insert(series, factor, method, send_to, origin, once=False)
        assert job is not None
        return job

    def submit_once(self, series: str, factor: int, method: str, send_to: str | None, origin: str) -> Job | None:
        """Queue a job only if the series has none yet (rules), decided inside the write transaction: two
        workers firing the same rule queue one job, and the other gets None."""
        return self._insert(series, factor, method, send_to, origin, once=True)

    def _insert(
        self, series: str, factor: int, method: str, send_to: str | None, origin: str, once: bool
    ) -> Job | None:
        check_options(factor, method)
        study = self.index.series_study(series)
        if study is None:
            raise NotFound(f"series {series} is not stored here")
        new = NewJob(series, study, factor, method, send_to or None, origin, Status.QUEUED)
        job_id = self.table.insert(new, only_if_series_has_none=once)
        return None if job_id is None else self.get(job_id)

    def get(self, job_id: int) -> Job:
        row = self.table.get(job_id)
        if row is None:
            raise NotFound(f"no super-resolution job {job_id}")
        return Job.from_row(row)

    def find(self, status: str | None = None, series: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first (``GET /api/sr/jobs``)."""
        if status and status not in set(Status):
            raise InvalidRequest(f"status {status!r}: one of {', '.join(Status)}")
        return [Job.from_row(r) for r in self.table.find(status, series, limit)]

    def cancel(self, job_id: int) -> Job:
        """A queued job ends at once; a running one is asked to stop (its worker ends it within a second or so)."""
        before = self.table.cancel(job_id, Status.QUEUED, Status.CANCELLED, ENDED)
        if before is None:
            raise NotFound(f"no super-resolution job {job_id}")
        if before in ENDED:
            raise Conflict(f"job {job_id} has already ended ({before})")
        return self.get(job_id)

    def has_job(self, series: str) -> bool:
        return self.table.has_job(series)

    # -- working -----------------------------------------------------------------------------------------------
    def claim(self, worker: str, job_id: int | None = None) -> Job | None:
        """The oldest queued job (or job ``job_id`` if it is still queued), now running under ``worker``; None
        when there is none to take, or when ``sr.max_running`` jobs run already (the job waits in the queue). A
        job asked for by id (``dcmnode sr --here``, the operator's own run) is not held back by the cap."""
        cap = self.max_running if job_id is None else 0
        claimed = self.table.claim(worker, Status.QUEUED, Status.RUNNING, job_id, cap)
        return None if claimed is None else self.get(claimed)

    def cancel_requested(self, job_id: int) -> bool:
        return self.table.cancel_requested(job_id)

    def progress(self, job_id: int, fraction: float, stage: str) -> bool:
        """Record progress (and a heartbeat); True when a cancel was asked for."""
        return self.table.progress(job_id, max(0.0, min(1.0, fraction)), stage[:200])

    def finish(self, job_id: int, result: dict[str, Any]) -> None:
        self.table.end(job_id, Status.DONE, None, json.dumps(result), done=True)

    def fail(self, job_id: int, error: str) -> None:
        self.table.end(job_id, Status.FAILED, error, None, done=False)

    def cancelled(self, job_id: int) -> None:
        self.table.end(job_id, Status.CANCELLED, None, None, done=False)

    def record_send(self, job_id: int, send_status: str, sends: list[dict[str, Any]]) -> None:
        self.table.record_send(job_id, send_status, json.dumps(sends))

    def recover(self, alive: Callable[[str], bool] = worker_alive) -> list[int]:
        """Jobs left ``running`` by a worker that is gone: back to the queue, or failed after MAX_ATTEMPTS."""
        orphans = [r for r in self.table.with_status(Status.RUNNING) if not alive(r["worker"])]
        for r in orphans:
            if r["cancel_requested"]:
                status, error = Status.CANCELLED, None
            elif r["attempts"] >= MAX_ATTEMPTS:
                status, error = Status.FAILED, f"the worker stopped during each of {r['attempts']} attempts"
            else:
                status, error = Status.QUEUED, None
            stage = "requeued: its worker stopped" if status == Status.QUEUED else str(status)
            self.table.move(r["id"], Status.RUNNING, status, error, stage, ended=status != Status.QUEUED)
        return [int(r["id"]) for r in orphans]


def check_options(factor: object, method: object) -> None:
    """The factors and methods a job may ask for (the API, the CLI and the rules all come through here)."""
    if not isinstance(factor, int) or factor not in FACTORS:
        raise InvalidRequest(f"factor {factor!r}: one of {', '.join(map(str, FACTORS))}")
    if method not in METHODS:
        raise InvalidRequest(f"method {method!r}: one of {', '.join(METHODS)}")


def send_target(settings: Settings, requested: str | None, source_ae: str) -> Peer | None:
    """The peer a derived series goes to: the one asked for, else the AE that sent the source when it is a
    declared peer; None for "-" or when there is nobody to send to."""
    if requested == NO_SEND:
        return None
    if requested:
        peer = settings.peers.get(requested)
        if peer is None:
            raise InvalidRequest(f"send_to {requested!r} is not a declared peer ([peers.{requested}] host/port)")
        return peer
    return settings.peers.get(source_ae) if source_ae else None


def check_send_to(settings: Settings, requested: str | None) -> None:
    if requested not in (None, "", NO_SEND):
        send_target(settings, requested, "")
