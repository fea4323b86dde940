"""The SR worker: runs queued super-resolution jobs, fires the automatic rules, sends results back.

Imports: stdlib, config, model, store, core, sr, dimse (the C-STORE SCU). It runs beside the server, never in
its way: as a low-priority child process of ``dcmnode serve`` (``sr.worker = "process"``, the default), as a
thread (``"thread"``), or alone (``dcmnode worker``). All state lives in the index (``sr.jobs``), so any of them
may stop at any moment: a job whose worker died is queued again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dcmnode.config import Peer, Settings, SrRule
from dcmnode.core import query as q
from dcmnode.core.catalog import Catalog
from dcmnode.core.ingest import Ingest
from dcmnode.dimse import send
from dcmnode.errors import DcmnodeError, InvalidRequest
from dcmnode.sr import jobs as sr_jobs
from dcmnode.sr import runner
from dcmnode.store import Store

log = logging.getLogger(__name__)
CANCEL_CHECK_SECONDS = 0.5


@dataclass
class Services:
    store: Store
    ingest: Ingest
    catalog: Catalog

    @classmethod
    def open(cls, settings: Settings) -> Services:
        store = Store.open(settings.data_dir, fsync=settings.store.fsync)
        return cls(store, Ingest(store, settings.store.on_duplicate), Catalog(store))

    def close(self) -> None:
        self.catalog.close()
        self.store.close()


class Worker:
    def __init__(self, settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.jobs = sr_jobs.Jobs(services.store.index)
        self.stopping = threading.Event()

    @property
    def worker_id(self) -> str:
        return sr_jobs.worker_id()

    # -- the loop ----------------------------------------------------------------------------------------------
    def run_forever(self) -> None:
        log.info("SR worker %s started (%d rule(s))", self.worker_id, len(self.settings.sr_rules))
        while not self.stopping.is_set():
            try:
                if not self.step():
                    self.stopping.wait(self.settings.sr.poll_seconds)
            except Exception:
                log.exception("SR worker: unexpected error; going on")
                self.stopping.wait(self.settings.sr.poll_seconds)
        log.info("SR worker %s stopped", self.worker_id)

    def step(self) -> bool:
        """One round: requeue orphans, fire rules, run one job. True when a job ran."""
        requeued = self.jobs.recover()
        if requeued:
            log.warning("SR jobs %s were running in a worker that stopped: queued again", requeued)
        self.fire_rules()
        job = self.jobs.claim(self.worker_id)
        if job is None:
            return False
        self.execute(job)
        return True

    def stop(self) -> None:
        self.stopping.set()

    # -- rules -------------------------------------------------------------------------------------------------
    def fire_rules(self) -> list[int]:
        if not self.settings.sr_rules:
            return []
        started = []
        for series in self._complete_series():
            rule = self._rule_for(series)
            if rule is None:
                continue
            send_to = rule.send_to or None
            job = self.jobs.submit_once(series["SeriesInstanceUID"], rule.factor, rule.method, send_to, "rule")
            if job is None:  # another worker fired it first
                continue
            log.info("SR rule fired for series %s (%s): job %d", job.series, series["Modality"], job.id)
            started.append(job.id)
        return started

    def _complete_series(self) -> list[dict[str, Any]]:
        """Series that got no new instance for ``quiet_seconds``, received within the look-back, made by
        nobody here (derived series never trigger rules) and without a job yet."""
        now = datetime.now(UTC)
        quiet = (now - timedelta(seconds=self.settings.sr.quiet_seconds)).isoformat(timespec="milliseconds")
        since = (now - timedelta(hours=self.settings.sr.rule_lookback_hours)).isoformat(timespec="milliseconds")
        rows = (
            self.services.store.index.connection()
            .execute(
                "SELECT s.SeriesInstanceUID, s.Modality, s.SeriesDescription, s.source_ae FROM series s "
                "WHERE s.updated_at BETWEEN ? AND ? "
                "AND NOT EXISTS (SELECT 1 FROM sr_jobs j WHERE j.series = s.SeriesInstanceUID) "
                "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.SeriesInstanceUID = s.SeriesInstanceUID "
                "AND i.source = 'derived')",
                (since, quiet),
            )
            .fetchall()
        )
        return [dict(r) for r in rows]

    def _rule_for(self, series: dict[str, Any]) -> SrRule | None:
        for rule in self.settings.sr_rules:
            if rule.matches(series["Modality"] or "", series["source_ae"] or "", series["SeriesDescription"] or ""):
                return rule
        return None

    # -- one job -----------------------------------------------------------------------------------------------
    def execute(self, job: sr_jobs.Job) -> None:
        log.info("SR job %d: series %s x%d (%s), attempt %d", job.id, job.series, job.factor, job.method, job.attempts)
        watch = _CancelWatch(self.jobs, job.id)
        try:
            outcome = runner.run(
                job,
                self.services.catalog,
                self.services.ingest,
                watch.progress,
                watch.should_stop,
                seed=self.settings.sr.seed,
                max_output_side=self.settings.sr.max_output_side,
                params=self._params(job),
            )
        except Exception as err:
            if _is_cancel(err):
                log.info("SR job %d cancelled", job.id)
                self.jobs.cancelled(job.id)
                return
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            if isinstance(err, DcmnodeError):  # a reason for the user (not an image, too large...)
                log.warning("SR job %d failed: %s", job.id, reason)
            else:
                log.exception("SR job %d failed: %s", job.id, reason)
            self.jobs.fail(job.id, reason)
            return
        result = {"series": outcome.series, "instances": outcome.instances, "run": outcome.run}
        self.jobs.finish(job.id, result)
        log.info("SR job %d done: derived series %s", job.id, outcome.series["sr"])
        self.send_back(job, outcome.series)

    def _params(self, job: sr_jobs.Job) -> dict[str, Any]:
        if job.method != "learned":
            return {}
        params: dict[str, Any] = {"max_train_seconds": self.settings.sr.max_train_seconds}
        if self.settings.sr.train_steps > 0:
            params["steps"] = self.settings.sr.train_steps
        return params

    def send_back(self, job: sr_jobs.Job, series: dict[str, str]) -> None:
        source_ae = self._source_ae(job.series)
        try:
            peer = sr_jobs.send_target(self.settings, job.send_to, source_ae)
        except InvalidRequest as err:
            self.jobs.record_send(job.id, "failed", [{"reason": err.reason}])
            return
        if peer is None:
            return
        files = [f for uid in series.values() for f in self.services.catalog.select({"SeriesInstanceUID": uid})]
        self.jobs.record_send(job.id, "sending", [])
        outcomes = send_series(self.settings, files, peer)
        sent = sum(1 for o in outcomes if o.status == "sent")
        status = "sent" if sent == len(outcomes) else ("partial" if sent else "failed")
        self.jobs.record_send(job.id, status, [{"to": peer.ae_title, **o.to_json()} for o in outcomes])
        log.info("SR job %d: %d of %d instance(s) sent to %s", job.id, sent, len(outcomes), peer.ae_title)

    def _source_ae(self, series: str) -> str:
        row = (
            self.services.store.index.connection()
            .execute("SELECT source_ae FROM series WHERE SeriesInstanceUID = ?", (series,))
            .fetchone()
        )
        return str(row[0]) if row else ""


def send_series(settings: Settings, files: list[Any], peer: Peer) -> list[send.Sent]:
    retry = send.Retry(settings.sr.send_attempts, settings.sr.send_backoff, settings.sr.send_backoff_max)
    return send.send(files, peer, settings.node.ae_title, retry)


def series_files(catalog: Catalog, series: str) -> list[Any]:
    return catalog.select({"SeriesInstanceUID": series}, q.Level.SERIES)


def _is_cancel(err: BaseException) -> bool:
    """``sr.jobs.Cancelled``, or the numerical core's own (it may not derive from ours)."""
    return isinstance(err, sr_jobs.Cancelled) or type(err).__name__ == "Cancelled"


class _CancelWatch:
    """Progress goes to the index at most twice a second, and tells whether a cancel was asked for."""

    def __init__(self, jobs: sr_jobs.Jobs, job_id: int) -> None:
        self.jobs, self.job_id = jobs, job_id
        self.cancel = False
        self.last = 0.0
        self.stage = ""

    def progress(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if stage != self.stage or now - self.last >= CANCEL_CHECK_SECONDS:
            self.cancel = self.jobs.progress(self.job_id, fraction, stage) or self.cancel
            self.last, self.stage = now, stage

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self.last >= CANCEL_CHECK_SECONDS:
            self.cancel = self.jobs.cancel_requested(self.job_id) or self.cancel
            self.last = now
        return self.cancel


# -- running it --------------------------------------------------------------------------------------------
def start_thread(settings: Settings) -> tuple[Worker, threading.Thread]:
    """A worker thread with its own store handle (``sr.worker = "thread"``, and tests)."""
    worker = Worker(settings, Services.open(settings))
    thread = threading.Thread(target=_run_and_close, args=(worker,), name="sr-worker", daemon=True)
    thread.start()
    return worker, thread


def _run_and_close(worker: Worker) -> None:
    try:
        worker.run_forever()
    finally:
        worker.services.close()


def run_process(settings: Settings, stop: threading.Event | None = None, nice: int = 10) -> int:
    """The body of a worker process: lower priority, then the loop until SIGTERM/SIGINT (or ``stop``)."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    _limit_cores(settings.sr.threads)
    worker = Worker(settings, Services.open(settings))
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), worker.stop()), daemon=True).start()
    try:
        worker.run_forever()
    finally:
        worker.services.close()
    return 0


def _limit_cores(threads: int) -> None:
    """``sr.threads``: this process runs on that many cores (torch sizes its thread pool to them)."""
    cores = sorted(os.sched_getaffinity(0))
    if 0 < threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])


def run_job_here(settings: Settings, job_id: int) -> None:
    """``dcmnode sr --here``: claim this job in this process and run it (no node needed); nothing happens when a
    node's worker took it first."""
    services = Services.open(settings)
    try:
        worker = Worker(settings, services)
        job = worker.jobs.claim(worker.worker_id, job_id)
        if job is not None:
            worker.execute(job)
    finally:
        services.close()
