"""The import jobs of one process (bulk uploads through ``/api/imports``): created, found, listed, cancelled.

Ended jobs are kept for an hour so that a page can read their report; an open job that got no file for
``http.import_abandoned_seconds`` and was never finished is cancelled (its page went away).
"""

from __future__ import annotations

import logging
import threading
import time

from dcmnode.config import Settings
from dcmnode.core.archives import Limits
from dcmnode.core.audit import Actor, Audit
from dcmnode.core.importing.job import ImportJob, Spool
from dcmnode.core.ingest import Ingest
from dcmnode.core.limits import Quota
from dcmnode.errors import AuditUnavailable, NotFound, TooManyRequests
from dcmnode.model import Source

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KEEP_ENDED_SECONDS = 3600.0
RETRY_SECONDS = 10.0  # Retry-After of an import refused for the client's open jobs (one may end any moment)


def _open(job: ImportJob) -> bool:
    return not job.ended


class Registry:
    def __init__(self, ingest: Ingest, settings: Settings, audit: Audit | None = None) -> None:
        self.ingest = ingest
        self.audit = audit
        self.max_request_bytes = settings.http.max_request_mb * MIB
        self.abandoned_seconds = settings.http.import_abandoned_seconds
        self.limits = Limits(
            max_member_bytes=settings.http.max_part_mb * MIB,
            max_expanded_bytes=settings.http.max_archive_expanded_mb * MIB,
        )
        self._jobs: dict[str, ImportJob] = {}
        self.open_jobs: Quota[ImportJob] = Quota(
            settings.http.max_imports_per_client, "import jobs open", "http.max_imports_per_client", RETRY_SECONDS
        )
        self._lock = threading.Lock()

    def create(
        self, name: str, expected_files: int, source: Source, who: Actor | None = None, client: str = ""
    ) -> ImportJob:
        """A new job; ``who`` (default: anonymous at the source's address) is audited as the source of what
        it stores. ``client`` (``core.limits.client_key``; default: the source's address) may hold at most
        ``http.max_imports_per_client`` open jobs: one more is ``TooManyRequests`` (logged, and a 110113)."""
        actor = who or Actor("anonymous", "anonymous", source.address)
        with self._lock:
            self._prune()  # abandoned jobs are cancelled first: they no longer count
        try:
            with self.open_jobs.admit(client or f"address:{source.address}", _open) as add:
                transfers = self.audit.transfer_in(actor, "import") if self.audit is not None else None
                job = ImportJob(self.ingest, self.limits, name, expected_files, source, transfers=transfers)
                add(job)
        except TooManyRequests as err:
            log.warning("import refused for %s %s (%s): %s", actor.kind, actor.name, source.address, err.reason)
            if self.audit is not None:
                try:
                    self.audit.security_alert(f"import refused: {err.reason}", actor.name, source.address)
                except AuditUnavailable:
                    pass  # counted and logged by the trail; the import is refused in any case
            raise
        with self._lock:
            self._prune()
            self._jobs[job.id] = job
        log.info("import %s opened (%r, %d file(s) expected) from %s", job.id, name, expected_files, source.address)
        return job

    def get(self, job_id: str) -> ImportJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no import {job_id!r}")
        return job

    def jobs(self) -> list[ImportJob]:
        with self._lock:
            self._prune()
            return list(self._jobs.values())

    def spool(self) -> Spool:
        """A temporary file in the store for one uploaded body (moved into the store, or removed)."""
        return Spool(self.ingest.store.files)

    def cancel_all(self) -> None:
        for job in self.jobs():
            job.cancel()

    def _prune(self) -> None:  # under the lock
        cutoff = time.monotonic() - KEEP_ENDED_SECONDS
        for job_id, job in list(self._jobs.items()):
            if job.abandoned(self.abandoned_seconds):
                log.warning(
                    "import %s: no file for %.0f s and never finished; cancelled", job_id, self.abandoned_seconds
                )
                job.cancel()
            ended = job.ended_since()
            if ended is not None and ended < cutoff:
                del self._jobs[job_id]
