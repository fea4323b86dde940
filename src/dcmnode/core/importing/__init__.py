"""Imports of files, folders and archives: the job (``job``: state machine, lock, spool, entry points) and what it
reports (``report``: counters, progress JSON, ETA)."""

from dcmnode.core.importing.job import ENDED, ImportJob, Spool, import_files, iter_files
from dcmnode.core.importing.report import FileResult, ImportReport

__all__ = ["ENDED", "FileResult", "ImportJob", "ImportReport", "Spool", "import_files", "iter_files"]
