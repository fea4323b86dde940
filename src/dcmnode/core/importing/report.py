"""What an import job reports: its counters, each file's outcome, the progress JSON and the ETA.

The job (``core.importing.job``) updates a report under its own lock; nothing here locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcmnode.model import StoredInstance


@dataclass(slots=True)
class ImportReport:
    files_total: int = 0  # files and archive members seen (an archive is a container, not a file)
    expected: int = 0  # files announced by the client, plus the members ZIP directories declare: ETA only
    stored: int = 0
    duplicate: int = 0
    bytes: int = 0  # bytes stored
    processed_bytes: int = 0  # bytes of every DICOM file or member handled
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)  # studies and series that received a stored instance
    series: set[str] = field(default_factory=set)
    studies_created: int = 0
    series_created: int = 0
    current_folder: str = ""

    @property
    def processed(self) -> int:
        return self.stored + self.duplicate + len(self.failed) + len(self.skipped)

    def seen(self, count: int, path: str) -> None:
        """``count`` more files (or archive members), the last one at ``path``."""
        self.files_total += count
        self.current_folder = folder_of(path)

    def count_duplicate(self, stored: StoredInstance) -> None:
        self.duplicate += 1
        self.processed_bytes += stored.size

    def count_stored(self, stored: StoredInstance) -> tuple[bool, bool]:
        """Counts a stored instance; whether its study and its series are the first this report has seen."""
        self.stored += 1
        self.bytes += stored.size
        self.processed_bytes += stored.size
        new_study, new_series = stored.key.study not in self.studies, stored.key.series not in self.series
        self.studies.add(stored.key.study)
        self.series.add(stored.key.series)
        return new_study, new_series

    def count_created(self, study: bool, series: bool) -> None:
        self.studies_created += int(study)
        self.series_created += int(series)

    def to_json(self, elapsed: float, bytes_received: int, eta: float | None) -> dict[str, Any]:
        """The report's part of a job's progress JSON, ``elapsed`` seconds in (the job adds who and when)."""
        return {
            "files_total": self.files_total,
            "processed": self.processed,
            "stored": self.stored,
            "duplicate": self.duplicate,
            "failed_count": len(self.failed),
            "skipped_count": len(self.skipped),
            "failed": [{"path": p, "reason": why} for p, why in self.failed],
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
            "studies_created": self.studies_created,
            "series_created": self.series_created,
            "mb_per_s": round(max(bytes_received, self.processed_bytes) / elapsed / 1e6, 2),
            "eta_seconds": eta,
            "current_folder": self.current_folder,
        }

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at the pace so far; None before the first file is done or once none is left."""
        total, done = max(self.files_total, self.expected), self.processed
        if done == 0 or total <= done:
            return None
        return round((total - done) * elapsed / done, 1)


@dataclass(frozen=True, slots=True)
class FileResult:
    path: str
    status: str  # stored | duplicate | failed | skipped | queued
    reason: str = ""

    def to_json(self) -> dict[str, str]:
        if self.status == "queued":  # an archive: its members' outcomes come with the job
            return {"path": self.path, "status": self.status}
        return {"path": self.path, "status": self.status, "reason": self.reason}


def folder_of(path: str) -> str:
    return path.rpartition("/")[0]
