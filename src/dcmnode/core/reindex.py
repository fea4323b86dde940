"""Rebuild the index from the files (``dcmnode reindex``).

The files are the source of truth. A new index is built beside the old one and swapped in with one rename, so
an interrupted reindex leaves the old index as it was. Study labels are not in the files: those of the studies
the new index holds are carried over from the old one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dcmnode.core.parse import parse_file
from dcmnode.errors import DcmnodeError
from dcmnode.model import SourceKind
from dcmnode.store import INDEX_NAME, Store, labels
from dcmnode.store.index import Index

BATCH = 500


@dataclass(slots=True)
class ReindexReport:
    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def reindex(root: Path) -> ReindexReport:
    store = Store.open(root, exclusive=True)  # refuses while a node or import uses the folder
    try:
        report = ReindexReport()
        target = root / (INDEX_NAME + ".rebuild")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(target) + suffix).unlink()
        fresh = Index(target)
        fresh.migrate()
        batch: list[Path] = []
        for path in store.files.walk():
            batch.append(path)
            if len(batch) >= BATCH:
                _index_batch(store, fresh, batch, report)
                batch = []
        _index_batch(store, fresh, batch, report)
        with fresh.write() as conn:
            labels.restore(conn, labels.every(store.index))
        fresh.checkpoint()
        fresh.close()
        store.index.close()
        os.replace(target, root / INDEX_NAME)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(root / INDEX_NAME) + suffix).unlink()
            with contextlib.suppress(FileNotFoundError):
                Path(str(target) + suffix).unlink()
        return report
    finally:
        store.close()


def _index_batch(store: Store, index: Index, paths: list[Path], report: ReindexReport) -> None:
    with index.write() as conn:
        for path in paths:
            try:
                parsed = parse_file(path)
                if store.files.path_for(parsed.key) != path:
                    raise DcmnodeError(f"file is not where its UIDs place it ({store.files.relative(path)})")
            except DcmnodeError as err:
                report.failed.append((str(path), err.reason))
                continue
            stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="milliseconds")
            parsed.record.instance.update(
                path=store.files.relative(path), size=parsed.size, source=str(SourceKind.REINDEX), received_at=stamp
            )
            try:
                index.upsert_instance(conn, parsed.record)
            except DcmnodeError as err:
                report.failed.append((str(path), err.reason))
                continue
            report.indexed += 1
