"""The SR worker process: the composition of ``core.jobs.worker.Worker`` with the node's services and the DIMSE
C-STORE SCU it sends results with.

It runs beside the server, never in its way: as a low-priority child process of ``dcmnode serve``
(``sr.worker = "process"``, the default), as a thread (``"thread"``), or alone (``dcmnode worker``).

The child process runs only while there is SR work (``OnDemand``): ``dcmnode serve`` starts it when a job is
queued (by the API, ``dcmnode sr`` or a rule) or a rule would fire, and it exits after ``sr.idle_exit_seconds``
without a job. torch alone is hundreds of MiB; an idle node holds none of it, nor an idle interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from dcmnode.config import Peer, Settings, configure_logging
from dcmnode.core import coercion
from dcmnode.core.jobs import queue
from dcmnode.core.jobs.worker import Worker, has_work
from dcmnode.core.retrieve import StoredFile
from dcmnode.core.services import Services
from dcmnode.dimse import send

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PROCESS_NAME = "dcmnode-sr"  # /proc/PID/comm of the worker process (ps, top; bench/bench_memory.py)
# The worker process is a new interpreter (never a fork of the threaded HTTP process): it reads its settings and
# the parent's sys.path from stdin, then runs ``spawned``.
BOOT = (
    "import pickle, sys; boot = pickle.load(sys.stdin.buffer); sys.path[:] = boot['path']; "
    "from dcmnode import worker; raise SystemExit(worker.spawned(boot))"
)
STOP_SECONDS = 15.0
MAX_BACKOFF = 60.0


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


def run_process(settings: Settings, stop: threading.Event | None = None, nice: int = 10, idle_exit: float = 0.0) -> int:
    """The body of a worker process: lower priority, then the loop until SIGTERM/SIGINT (or ``stop``), or until
    no job ran for ``idle_exit`` seconds (> 0)."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    _limit_cores(settings.sr.threads)
    with Services.open(settings) as services:
        worker = worker_for(services)
        if stop is not None:
            threading.Thread(target=_stop_when_set, args=(stop, worker), daemon=True).start()
        worker.run_forever(idle_exit)
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


# -- the on-demand worker process of ``dcmnode serve`` ---------------------------------------------------------
class OnDemand:
    """``sr.worker = "process"``: a thread of ``dcmnode serve`` that looks every ``sr.poll_seconds`` whether there is
    SR work (``core.jobs.worker.has_work``: a read, no write) and, when there is and no worker process runs, starts
    one (a new interpreter, ``BOOT``) at lower priority. That process runs the usual loop and exits after
    ``sr.idle_exit_seconds`` without a job; with 0 it starts with the node and runs as long as it does. It dies
    with the node (PR_SET_PDEATHSIG, tied to this thread, which lives as long as the node), so a ``kill -9`` of
    the node leaves no worker behind; its job is then requeued by the next worker (``Jobs.recover``)."""

    def __init__(self, settings: Settings, jobs: queue.Jobs) -> None:
        self.settings, self.jobs = settings, jobs
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0  # worker processes started so far
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sr-on-demand", daemon=True)
        self._retry_at = 0.0
        self._failures = 0

    @property
    def pid(self) -> int | None:
        """The running worker process, if any."""
        with self._lock:
            return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        always = self.settings.sr.idle_exit_seconds <= 0
        while not self._stopping.is_set():
            try:
                self._reap()
                idle = self.proc is None and time.monotonic() >= self._retry_at
                if idle and (always or has_work(self.settings, self.jobs)):
                    self._spawn()
            except Exception:
                log.exception("SR worker supervision failed; going on")
            self._stopping.wait(self.settings.sr.poll_seconds)

    def _reap(self) -> None:
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is None:
                return
            self.proc = None
        if proc.returncode == 0:
            self._failures = 0
            return
        self._failures += 1  # a worker that dies at once is not restarted every poll: 2, 4 ... 60 s
        delay = min(MAX_BACKOFF, 2.0**self._failures)
        self._retry_at = time.monotonic() + delay
        log.error("SR worker process %d exited (status %d); next start in %.0f s", proc.pid, proc.returncode, delay)

    def _spawn(self) -> None:
        boot = {"path": list(sys.path), "settings": self.settings, "parent": os.getpid()}
        with self._lock:
            if self._stopping.is_set():
                return
            proc = subprocess.Popen([sys.executable, "-c", BOOT], stdin=subprocess.PIPE)  # noqa: S603
            self.proc = proc
            self.started += 1
        assert proc.stdin is not None
        try:
            proc.stdin.write(pickle.dumps(boot))
            proc.stdin.close()
        except OSError:  # it died at once; _reap tells
            pass
        log.info("SR worker process %d started", proc.pid)

    def stop(self) -> None:
        """Ask the worker to stop (SIGTERM: it ends after the running step); ``wait`` for it."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    def wait(self, seconds: float = STOP_SECONDS) -> None:
        with self._lock:
            proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawned(boot: dict[str, Any]) -> int:
    """The worker process ``OnDemand`` starts: dies with its parent, logs as it does, runs until SIGTERM/SIGINT or
    ``sr.idle_exit_seconds`` without a job."""
    settings: Settings = boot["settings"]
    libc = None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_NAME, PROCESS_NAME.encode(), 0, 0, 0)
    if os.getppid() != boot["parent"]:  # the node died before prctl took effect
        return 1
    configure_logging(settings.node.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        return run_process(settings, stop, idle_exit=settings.sr.idle_exit_seconds)
    finally:
        sys.stdout.flush()
