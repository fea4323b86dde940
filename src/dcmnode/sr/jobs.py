"""The super-resolution job queue, kept in the index so that it survives a restart. Imports: stdlib, errors, store.

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
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from dcmnode.config import Peer, Settings
from dcmnode.errors import Conflict, InvalidRequest, NotFound
from dcmnode.store.index import Index, now

FACTORS = (2, 4)
METHODS = ("learned", "classical")
MAX_ATTEMPTS = 3
NO_SEND = "-"  # send_to: keep the derived series here only


class Cancelled(Exception):
    """A job stopped because a cancel was asked for (``sr.api`` raises it from inside a run)."""


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
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = {k: row[k] for k in row.keys() if k != "heartbeat_at"}  # noqa: SIM118 (sqlite3.Row)
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
    def __init__(self, index: Index) -> None:
        self.index = index

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
        if factor not in FACTORS:
            raise InvalidRequest(f"factor {factor!r}: one of {', '.join(map(str, FACTORS))}")
        if method not in METHODS:
            raise InvalidRequest(f"method {method!r}: one of {', '.join(METHODS)}")
        row = (
            self.index.connection()
            .execute("SELECT StudyInstanceUID FROM series WHERE SeriesInstanceUID = ?", (series,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"series {series} is not stored here")
        with self.index.write() as conn:
            if once and conn.execute("SELECT 1 FROM sr_jobs WHERE series = ? LIMIT 1", (series,)).fetchone():
                return None
            job_id = conn.execute(
                "INSERT INTO sr_jobs (series, study, factor, method, send_to, origin, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (series, row[0], factor, method, send_to or None, origin, Status.QUEUED, now()),
            ).fetchone()[0]
        return self.get(int(job_id))

    def get(self, job_id: int) -> Job:
        row = self.index.connection().execute("SELECT * FROM sr_jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no super-resolution job {job_id}")
        return Job.from_row(row)

    def list(self, status: str | None = None, series: str | None = None, limit: int = 100) -> list[Job]:
        where, params = [], []
        if status:
            if status not in set(Status):
                raise InvalidRequest(f"status {status!r}: one of {', '.join(Status)}")
            where.append("status = ?")
            params.append(status)
        if series:
            where.append("series = ?")
            params.append(series)
        sql = "SELECT * FROM sr_jobs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        rows = self.index.connection().execute(sql, [*params, limit]).fetchall()
        return [Job.from_row(r) for r in rows]

    def cancel(self, job_id: int) -> Job:
        """A queued job ends at once; a running one is asked to stop (its worker ends it within a second or so)."""
        with self.index.write() as conn:
            row = conn.execute("SELECT status FROM sr_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no super-resolution job {job_id}")
            if row[0] in ENDED:
                raise Conflict(f"job {job_id} has already ended ({row[0]})")
            if row[0] == Status.QUEUED:
                conn.execute(
                    "UPDATE sr_jobs SET status = ?, finished_at = ?, stage = 'cancelled before it started' "
                    "WHERE id = ?",
                    (Status.CANCELLED, now(), job_id),
                )
            else:
                conn.execute("UPDATE sr_jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def has_job(self, series: str) -> bool:
        row = self.index.connection().execute("SELECT 1 FROM sr_jobs WHERE series = ? LIMIT 1", (series,)).fetchone()
        return row is not None

    # -- working -----------------------------------------------------------------------------------------------
    def claim(self, worker: str, job_id: int | None = None) -> Job | None:
        """The oldest queued job (or job ``job_id`` if it is still queued), now running under ``worker``; None
        when there is none to take."""
        only = "" if job_id is None else " AND id = ?"
        with self.index.write() as conn:
            row = conn.execute(
                "UPDATE sr_jobs SET status = ?, worker = ?, started_at = ?, heartbeat_at = ?, attempts = attempts + 1,"
                " progress = 0, stage = 'starting', error = NULL "
                f"WHERE id = (SELECT id FROM sr_jobs WHERE status = ?{only} ORDER BY id LIMIT 1) RETURNING id",
                (Status.RUNNING, worker, now(), now(), Status.QUEUED, *(() if job_id is None else (job_id,))),
            ).fetchone()
        return None if row is None else self.get(int(row[0]))

    def cancel_requested(self, job_id: int) -> bool:
        row = self.index.connection().execute("SELECT cancel_requested FROM sr_jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def progress(self, job_id: int, fraction: float, stage: str) -> bool:
        """Record progress (and a heartbeat); True when a cancel was asked for."""
        with self.index.write() as conn:
            row = conn.execute(
                "UPDATE sr_jobs SET progress = ?, stage = ?, heartbeat_at = ? WHERE id = ? RETURNING cancel_requested",
                (max(0.0, min(1.0, fraction)), stage[:200], now(), job_id),
            ).fetchone()
        return bool(row and row[0])

    def finish(self, job_id: int, result: dict[str, Any]) -> None:
        self._end(job_id, Status.DONE, None, result)

    def fail(self, job_id: int, error: str) -> None:
        self._end(job_id, Status.FAILED, error, None)

    def cancelled(self, job_id: int) -> None:
        self._end(job_id, Status.CANCELLED, None, None)

    def _end(self, job_id: int, status: Status, error: str | None, result: dict[str, Any] | None) -> None:
        with self.index.write() as conn:
            conn.execute(
                "UPDATE sr_jobs SET status = ?, error = ?, result = COALESCE(?, result), finished_at = ?, "
                "progress = CASE WHEN ? = 'done' THEN 1 ELSE progress END, stage = ? WHERE id = ?",
                (
                    status,
                    error,
                    json.dumps(result) if result is not None else None,
                    now(),
                    status,
                    str(status),
                    job_id,
                ),
            )

    def record_send(self, job_id: int, send_status: str, sends: list[dict[str, Any]]) -> None:
        with self.index.write() as conn:
            conn.execute(
                "UPDATE sr_jobs SET send_status = ?, sends = ? WHERE id = ?", (send_status, json.dumps(sends), job_id)
            )

    def recover(self, alive: Callable[[str], bool] = worker_alive) -> list[int]:
        """Jobs left ``running`` by a worker that is gone: back to the queue, or failed after MAX_ATTEMPTS."""
        rows = (
            self.index.connection()
            .execute("SELECT id, worker, attempts, cancel_requested FROM sr_jobs WHERE status = ?", (Status.RUNNING,))
            .fetchall()
        )
        orphans = [r for r in rows if not alive(r["worker"])]
        for r in orphans:
            with self.index.write() as conn:
                if r["cancel_requested"]:
                    status, error = Status.CANCELLED, None
                elif r["attempts"] >= MAX_ATTEMPTS:
                    status, error = Status.FAILED, f"the worker stopped during each of {r['attempts']} attempts"
                else:
                    status, error = Status.QUEUED, None
                conn.execute(
                    "UPDATE sr_jobs SET status = ?, error = ?, stage = ?, finished_at = ? WHERE id = ? AND status = ?",
                    (
                        status,
                        error,
                        "requeued: its worker stopped" if status == Status.QUEUED else str(status),
                        None if status == Status.QUEUED else now(),
                        r["id"],
                        Status.RUNNING,
                    ),
                )
        return [int(r["id"]) for r in orphans]


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
