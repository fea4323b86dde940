"""Import files and folders from disk through the ingest service (``dcmnode import``).

Imports: stdlib, errors, model, core.ingest, core.parse. Each file is checked in place and copied into the
store; a failure is recorded with its reason and the import goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dcmnode.core.ingest import Ingest
from dcmnode.errors import DcmnodeError
from dcmnode.model import Outcome, Source, SourceKind


@dataclass(slots=True)
class ImportReport:
    stored: int = 0
    duplicate: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    @property
    def processed(self) -> int:
        return self.stored + self.duplicate + len(self.failed)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and every file below folders named, in a stable order. Hidden entries are skipped."""
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        yield Path(dirpath) / name
        else:
            yield path


def import_files(
    ingest: Ingest, files: Iterable[Path], progress: Callable[[Path, ImportReport], None] | None = None
) -> ImportReport:
    report = ImportReport()
    source = Source(SourceKind.IMPORT)
    for path in files:
        try:
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist or is not a file")
            stored = ingest.store_path(path, source)
        except (DcmnodeError, OSError) as err:
            reason = err.reason if isinstance(err, DcmnodeError) else str(err)
            report.failed.append((str(path), reason))
        else:
            if stored.outcome == Outcome.DUPLICATE:
                report.duplicate += 1
            else:
                report.stored += 1
                report.bytes += stored.size
                report.studies.add(stored.key.study)
        if progress is not None:
            progress(path, report)
    return report
