"""The SR worker loop: requeue jobs whose worker died, fire the rules, run one job, send its result back.

All state lives in the index (``core.jobs.queue``), so a worker may stop at any moment: a job whose worker died
is queued again. The worker sends derived series through the ``Sender`` it is given (the composition passes the
DIMSE C-STORE SCU), so this service knows nothing of the network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dcmnode.config import Peer, Settings
from dcmnode.core.catalog import Catalog
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs import queue, rules, runner
from dcmnode.core.retrieve import StoredFile
from dcmnode.errors import Cancelled, DcmnodeError, InvalidRequest

log = logging.getLogger(__name__)
CANCEL_CHECK_SECONDS = 0.5


class Delivery(Protocol):
    """What became of one instance sent to a peer."""

    @property
    def status(self) -> str: ...  # "sent" | "failed" | "pending"

    def to_json(self) -> dict[str, object]: ...


class Sender(Protocol):
    """Sends stored files to a declared peer; one outcome per file, in order."""

    def __call__(self, files: list[StoredFile], peer: Peer) -> Sequence[Delivery]: ...


class Worker:
    def __init__(self, settings: Settings, ingest: Ingest, catalog: Catalog, jobs: queue.Jobs, send: Sender) -> None:
        self.settings = settings
        self.ingest, self.catalog, self.jobs = ingest, catalog, jobs
        self.send = send
        self.stopping = threading.Event()

    @property
    def worker_id(self) -> str:
        return queue.worker_id()

    # -- the loop ----------------------------------------------------------------------------------------------
    def run_forever(self, idle_exit: float = 0.0) -> None:
        """Run jobs until stopped; with ``idle_exit`` > 0, also return once no job ran for that many seconds (the
        on-demand worker process of ``dcmnode serve``: ``sr.idle_exit_seconds``)."""
        log.info("SR worker %s started (%d rule(s))", self.worker_id, len(self.settings.sr_rules))
        busy = time.monotonic()
        while not self.stopping.is_set():
            try:
                if self.step():
                    busy = time.monotonic()
                    continue
            except Exception:
                log.exception("SR worker: unexpected error; going on")
            if idle_exit > 0 and time.monotonic() - busy >= idle_exit:
                log.info("SR worker %s: no job for %.0f s, exiting", self.worker_id, idle_exit)
                break
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
        self.run_job(job)
        return True

    def stop(self) -> None:
        self.stopping.set()

    # -- rules -------------------------------------------------------------------------------------------------
    def fire_rules(self) -> list[int]:
        if not self.settings.sr_rules:
            return []
        started = []
        for series in rules.complete_series(self.jobs.table, self.settings.sr):
            rule = rules.rule_for(self.settings.sr_rules, series)
            if rule is None:
                continue
            job = self.jobs.submit_once(series.uid, rule.factor, rule.method, rule.send_to or None, "rule")
            if job is None:  # another worker fired it first
                continue
            log.info("SR rule fired for series %s (%s): job %d", job.series, series.modality, job.id)
            started.append(job.id)
        return started

    # -- one job -----------------------------------------------------------------------------------------------
    def run_job(self, job: queue.Job) -> None:
        log.info("SR job %d: series %s x%d (%s), attempt %d", job.id, job.series, job.factor, job.method, job.attempts)
        watch = _CancelWatch(self.jobs, job.id)
        try:
            outcome = runner.run(
                job,
                self.catalog,
                self.ingest,
                watch.progress,
                watch.should_stop,
                seed=self.settings.sr.seed,
                max_output_side=self.settings.sr.max_output_side,
                params=self._params(job),
            )
        except Cancelled:
            log.info("SR job %d cancelled", job.id)
            self.jobs.cancelled(job.id)
            return
        except Exception as err:
            self._failed(job, err)
            return
        self.jobs.finish(job.id, {"series": outcome.series, "instances": outcome.instances, "run": outcome.run})
        log.info("SR job %d done: derived series %s", job.id, outcome.series["sr"])
        self.send_back(job, outcome.series)

    def _failed(self, job: queue.Job, err: Exception) -> None:
        reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        if isinstance(err, DcmnodeError):  # a reason for the user (not an image, too large...)
            log.warning("SR job %d failed: %s", job.id, reason)
        else:
            log.exception("SR job %d failed: %s", job.id, reason)
        self.jobs.fail(job.id, reason)

    def _params(self, job: queue.Job) -> dict[str, Any]:
        if job.method != "learned":
            return {}
        params: dict[str, Any] = {"max_train_seconds": self.settings.sr.max_train_seconds}
        if self.settings.sr.train_steps > 0:
            params["steps"] = self.settings.sr.train_steps
        return params

    def send_back(self, job: queue.Job, series: dict[str, str]) -> None:
        source_ae = self.jobs.index.series_source_ae(job.series)
        try:
            peer = queue.send_target(self.settings, job.send_to, source_ae)
        except InvalidRequest as err:
            self.jobs.record_send(job.id, "failed", [{"reason": err.reason}])
            return
        if peer is None:
            return
        files = [f for uid in series.values() for f in self.catalog.select({"SeriesInstanceUID": uid})]
        self.jobs.record_send(job.id, "sending", [])
        outcomes = self.send(files, peer)
        sent = sum(1 for o in outcomes if o.status == "sent")
        status = "sent" if sent == len(outcomes) else ("partial" if sent else "failed")
        self.jobs.record_send(job.id, status, [{"to": peer.ae_title, **o.to_json()} for o in outcomes])
        log.info("SR job %d: %d of %d instance(s) sent to %s", job.id, sent, len(outcomes), peer.ae_title)


def has_work(settings: Settings, jobs: queue.Jobs, alive: Callable[[str], bool] = queue.worker_alive) -> bool:
    """Whether a worker started now would find something to do (read-only: the process that asks starts a worker,
    the worker does the work): a job left ``running`` by a worker that is gone (``Jobs.recover`` requeues it), a
    queued job it may claim (fewer than ``sr.max_running`` running), or a complete series a rule fires on."""
    running = jobs.table.with_status(queue.Status.RUNNING)
    if any(not alive(row["worker"]) for row in running):
        return True
    if jobs.table.with_status(queue.Status.QUEUED) and (jobs.max_running <= 0 or len(running) < jobs.max_running):
        return True
    if settings.sr_rules:
        series = rules.complete_series(jobs.table, settings.sr)
        return any(rules.rule_for(settings.sr_rules, s) is not None for s in series)
    return False


class _CancelWatch:
    """Progress goes to the index at most twice a second, and tells whether a cancel was asked for."""

    def __init__(self, jobs: queue.Jobs, job_id: int) -> None:
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
