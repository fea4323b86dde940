"""The de-identification jobs of one process (``/api/deidentify``): submitted, found, listed, cancelled.

Each job runs on its own thread; at most ``MAX_RUNNING`` run at once (the others wait, ``queued``). A principal
sees and cancels its own jobs (``core.limits.client_key``); one with the ``admin`` scope sees every job. Ended jobs
are kept for an hour so that their result can be read and their archive downloaded; then the job and its archive
go (an archive nobody fetched does not stay in the tmp folder; the tmp folder of a process that stopped is
cleaned when the node starts, ``store.files``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping

from dcmnode.config import Peer
from dcmnode.core.audit import Actor, Audit
from dcmnode.core.catalog import Catalog
from dcmnode.core.deid.job import DeidJob, DeidRequest, resolve
from dcmnode.core.deid.keys import KeyStore
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs.worker import Sender
from dcmnode.deid.pixels import PixelMask
from dcmnode.errors import NotFound, TooManyRequests

log = logging.getLogger(__name__)

KEEP_ENDED_SECONDS = 3600.0
MAX_RUNNING = 1  # one instance at a time per job, and one job at a time: the node keeps serving meanwhile
MAX_OPEN_PER_CLIENT = 20  # queued or running jobs of one client (principal, else address): one more is 429


class DeidRegistry:
    def __init__(
        self,
        catalog: Catalog,
        ingest: Ingest,
        keys: KeyStore,
        peers: Mapping[str, Peer],
        audit: Audit | None = None,
        send: Sender | None = None,
        masks: tuple[PixelMask, ...] = (),
    ) -> None:
        self.catalog, self.ingest, self.keys, self.peers = catalog, ingest, keys, peers
        self.audit, self.send, self.masks = audit, send, masks
        self._jobs: dict[int, DeidJob] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._running = threading.Semaphore(MAX_RUNNING)
        self._reserved: dict[str, int] = {}  # places taken by submits in progress, by owner

    def submit(self, request: DeidRequest, who: Actor, owner: str, groups: frozenset[str] | None = None) -> DeidJob:
        """Resolve the source (NotFound for a study or series the principal does not see), take the project's
        key (made on first use) and start the job."""
        with self._lock:  # a place is reserved at once, so that concurrent submits cannot all pass the check
            open_jobs = sum(1 for j in self._jobs.values() if j.owner == owner and not j.ended)
            waiting = open_jobs + self._reserved.get(owner, 0)
            if waiting >= MAX_OPEN_PER_CLIENT:  # each job holds a thread until it runs: a flood would pile them up
                raise TooManyRequests(
                    f"{waiting} de-identification jobs of this client are queued or running (at most "
                    f"{MAX_OPEN_PER_CLIENT}); wait for one to end",
                    retry_after=30.0,
                )
            self._reserved[owner] = self._reserved.get(owner, 0) + 1
        try:
            files = resolve(self.catalog, request, groups)
            key = self.keys.get(request.project)
            peer = self.peers.get(request.send_to) if request.send_to else None
            with self._lock:
                self._prune()
                job = DeidJob(
                    next(self._ids), request, files, key, self.ingest, self.audit, who, owner, groups, self.send,
                    peer, masks=self.masks,
                )  # fmt: skip
                self._jobs[job.id] = job
        finally:
            with self._lock:
                self._reserved[owner] -= 1
        threading.Thread(target=self._run, args=(job,), name=f"deidentify-{job.id}", daemon=True).start()
        return job

    def _run(self, job: DeidJob) -> None:
        with self._running:
            job.run()

    def get(self, job_id: int, owner: str | None) -> DeidJob:
        """The job, if ``owner`` (None: anyone's) submitted it; NotFound otherwise (another's job is answered as
        if it did not exist)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"no de-identification job {job_id}")
        return job

    def jobs(self, owner: str | None) -> list[DeidJob]:
        with self._lock:
            self._prune()
            return [j for j in self._jobs.values() if owner is None or j.owner == owner]

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()

    def _prune(self) -> None:  # under the lock
        cutoff = time.monotonic() - KEEP_ENDED_SECONDS
        for job_id, job in list(self._jobs.items()):
            if job.ended_at is not None and job.ended_at < cutoff:
                job.discard()
                del self._jobs[job_id]
