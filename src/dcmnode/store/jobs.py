"""The ``sr_jobs`` table: every statement of the super-resolution job queue. The states and their rules are
``core.jobs.queue``'s; this module only reads and writes rows, each change in one transaction.

Rows come back as plain dicts (column name -> value; ``result`` and ``sends`` as the JSON text stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dcmnode.store.index import Index, now

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewJob:
    series: str
    study: str
    factor: int
    method: str
    send_to: str | None
    origin: str
    status: str


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """A series as the rules see it (``core.jobs.rules``)."""

    uid: str
    modality: str
    description: str
    source_ae: str


class JobTable:
    def __init__(self, index: Index) -> None:
        self.index = index

    # -- reading ---------------------------------------------------------------------------------------------
    def get(self, job_id: int) -> Row | None:
        row = self.index.connection().execute("SELECT * FROM sr_jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else dict(row)

    def find(self, status: str | None, series: str | None, limit: int) -> list[Row]:
        """The newest jobs first, optionally of one status and one series."""
        where, params = _filters(status, series)
        sql = f"SELECT * FROM sr_jobs{where} ORDER BY id DESC LIMIT ?"
        return [dict(r) for r in self.index.connection().execute(sql, [*params, limit]).fetchall()]

    def has_job(self, series: str) -> bool:
        row = self.index.connection().execute("SELECT 1 FROM sr_jobs WHERE series = ? LIMIT 1", (series,)).fetchone()
        return row is not None

    def cancel_requested(self, job_id: int) -> bool:
        row = self.index.connection().execute("SELECT cancel_requested FROM sr_jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def with_status(self, status: str) -> list[Row]:
        rows = self.index.connection().execute(
            "SELECT id, worker, attempts, cancel_requested FROM sr_jobs WHERE status = ?", (status,)
        )
        return [dict(r) for r in rows.fetchall()]

    def series_without_jobs(self, since: str, until: str) -> list[SeriesSummary]:
        """Series last changed between ``since`` and ``until`` that have no job and hold no derived instance."""
        rows = self.index.connection().execute(
            "SELECT s.SeriesInstanceUID, s.Modality, s.SeriesDescription, s.source_ae FROM series s "
            "WHERE s.updated_at BETWEEN ? AND ? "
            "AND NOT EXISTS (SELECT 1 FROM sr_jobs j WHERE j.series = s.SeriesInstanceUID) "
            "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.SeriesInstanceUID = s.SeriesInstanceUID "
            "AND i.source = 'derived')",
            (since, until),
        )
        return [SeriesSummary(r[0], r[1] or "", r[2] or "", r[3] or "") for r in rows.fetchall()]

    # -- writing ---------------------------------------------------------------------------------------------
    def insert(self, job: NewJob, only_if_series_has_none: bool = False) -> int | None:
        """The new job's id; None when ``only_if_series_has_none`` and the series has a job (decided inside the
        write transaction, so two workers firing one rule queue one job)."""
        with self.index.write() as conn:
            if (
                only_if_series_has_none
                and conn.execute("SELECT 1 FROM sr_jobs WHERE series = ? LIMIT 1", (job.series,)).fetchone()
            ):
                return None
            row = conn.execute(
                "INSERT INTO sr_jobs (series, study, factor, method, send_to, origin, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (job.series, job.study, job.factor, job.method, job.send_to, job.origin, job.status, now()),
            ).fetchone()
        return int(row[0])

    def cancel(self, job_id: int, queued: str, cancelled: str, ended: tuple[str, ...]) -> str | None:
        """The job's status before: a ``queued`` job becomes ``cancelled`` at once, any other that has not
        ``ended`` is flagged ``cancel_requested``; None if there is no such job."""
        with self.index.write() as conn:
            row = conn.execute("SELECT status FROM sr_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] in ended:
                return None if row is None else str(row[0])
            if row[0] == queued:
                conn.execute(
                    "UPDATE sr_jobs SET status = ?, finished_at = ?, stage = 'cancelled before it started' "
                    "WHERE id = ?",
                    (cancelled, now(), job_id),
                )
            else:
                conn.execute("UPDATE sr_jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return str(row[0])

    def claim(
        self, worker: str, queued: str, running: str, job_id: int | None = None, max_running: int = 0
    ) -> int | None:
        """The oldest ``queued`` job (or ``job_id`` if still queued) is now ``running`` under ``worker``; its id,
        or None when there is none to take, or when ``max_running`` (> 0) jobs run already. One statement, so
        two workers never take one job nor, together, pass the cap."""
        only = "" if job_id is None else " AND id = ?"
        cap = "" if max_running <= 0 else " AND (SELECT COUNT(*) FROM sr_jobs WHERE status = ?) < ?"
        stamp = now()
        with self.index.write() as conn:
            row = conn.execute(
                "UPDATE sr_jobs SET status = ?, worker = ?, started_at = ?, heartbeat_at = ?, attempts = attempts + 1,"
                " progress = 0, stage = 'starting', error = NULL "
                f"WHERE id = (SELECT id FROM sr_jobs WHERE status = ?{only} ORDER BY id LIMIT 1){cap} RETURNING id",
                (
                    running, worker, stamp, stamp, queued,
                    *(() if job_id is None else (job_id,)),
                    *(() if max_running <= 0 else (running, max_running)),
                ),
            ).fetchone()  # fmt: skip
        return None if row is None else int(row[0])

    def progress(self, job_id: int, fraction: float, stage: str) -> bool:
        """Record progress and a heartbeat; True when a cancel was asked for."""
        with self.index.write() as conn:
            row = conn.execute(
                "UPDATE sr_jobs SET progress = ?, stage = ?, heartbeat_at = ? WHERE id = ? RETURNING cancel_requested",
                (fraction, stage, now(), job_id),
            ).fetchone()
        return bool(row and row[0])

    def end(self, job_id: int, status: str, error: str | None, result: str | None, done: bool) -> None:
        """Set the final ``status`` (``result``: JSON text, kept as it was when None; ``done``: progress 1)."""
        with self.index.write() as conn:
            conn.execute(
                "UPDATE sr_jobs SET status = ?, error = ?, result = COALESCE(?, result), finished_at = ?, "
                "progress = CASE WHEN ? THEN 1 ELSE progress END, stage = ? WHERE id = ?",
                (status, error, result, now(), int(done), status, job_id),
            )

    def record_send(self, job_id: int, send_status: str, sends: str) -> None:
        with self.index.write() as conn:
            conn.execute("UPDATE sr_jobs SET send_status = ?, sends = ? WHERE id = ?", (send_status, sends, job_id))

    def move(self, job_id: int, from_status: str, to_status: str, error: str | None, stage: str, ended: bool) -> None:
        """``from_status`` → ``to_status`` (nothing if the job has left ``from_status`` meanwhile)."""
        with self.index.write() as conn:
            conn.execute(
                "UPDATE sr_jobs SET status = ?, error = ?, stage = ?, finished_at = ? WHERE id = ? AND status = ?",
                (to_status, error, stage, now() if ended else None, job_id, from_status),
            )


def _filters(status: str | None, series: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if status:
        clauses.append("status = ?")
        params.append(status)
    if series:
        clauses.append("series = ?")
        params.append(series)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params
