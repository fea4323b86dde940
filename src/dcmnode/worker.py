"""The SR worker process: the composition of ``core.jobs.worker.Worker`` with the node's services and the DIMSE
C-STORE SCU it sends results with.

It runs beside the server, never in its way: as a low-priority child process of ``dcmnode serve``
(``sr.worker = "process"``, the default), as a thread (``"thread"``), or alone (``dcmnode worker``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Sequence

from dcmnode.config import Peer, Settings
from dcmnode.core import coercion
from dcmnode.core.jobs.worker import Worker
from dcmnode.core.retrieve import StoredFile
from dcmnode.core.services import Services
from dcmnode.dimse import send


def send_series(settings: Settings, files: Sequence[StoredFile], peer: Peer, *, coerce: bool = True) -> list[send.Sent]:
    """C-STORE ``files`` to ``peer`` with the retries of ``[sr] send_*``, de-identified when the peer is declared
    with ``deidentify`` (SR send-back and ``dcmnode send``). ``coerce=False`` for files a de-identification job
    made already: a second pass would map their new UIDs again, away from the mapping the job reported."""
    retry = send.Retry(settings.sr.send_attempts, settings.sr.send_backoff, settings.sr.send_backoff_max)
    how = coercion.for_peer(settings, peer) if coerce else None
    return send.send(files, peer, settings.node.ae_title, retry, coercion=how)


def worker_for(services: Services) -> Worker:
    """A worker over ``services`` that sends with the DIMSE SCU."""
    settings = services.settings
    sender = functools.partial(send_series, settings)
    return Worker(settings, services.ingest, services.catalog, services.jobs, sender)


def start_thread(settings: Settings) -> tuple[Worker, threading.Thread]:
    """A worker thread with its own services (``sr.worker = "thread"``, and tests)."""
    services = Services.open(settings)
    worker = worker_for(services)
    thread = threading.Thread(target=_run_and_close, args=(worker, services), name="sr-worker", daemon=True)
    thread.start()
    return worker, thread


def _run_and_close(worker: Worker, services: Services) -> None:
    with services:
        worker.run_forever()


def run_process(settings: Settings, stop: threading.Event | None = None, nice: int = 10) -> int:
    """The body of a worker process: lower priority, then the loop until SIGTERM/SIGINT (or ``stop``)."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    _limit_cores(settings.sr.threads)
    with Services.open(settings) as services:
        worker = worker_for(services)
        if stop is not None:
            threading.Thread(target=_stop_when_set, args=(stop, worker), daemon=True).start()
        worker.run_forever()
    return 0


def _stop_when_set(stop: threading.Event, worker: Worker) -> None:
    stop.wait()
    worker.stop()


def _limit_cores(threads: int) -> None:
    """``sr.threads``: this process runs on that many cores (torch sizes its thread pool to them)."""
    cores = sorted(os.sched_getaffinity(0))
    if 0 < threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])


def run_job_here(settings: Settings, job_id: int) -> None:
    """``dcmnode sr --here``: claim this job in this process and run it (no node needed); nothing happens when a
    node's worker took it first."""
    with Services.open(settings) as services:
        worker = worker_for(services)
        job = worker.jobs.claim(worker.worker_id, job_id)
        if job is not None:
            worker.run_job(job)
