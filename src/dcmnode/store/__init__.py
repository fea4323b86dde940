"""The indexed store: files (the truth) + SQLite index.

``Store.open`` takes a shared lock on ``data/.lock`` for as long as the store is open, so several writers
(the node, ``dcmnode import``) can work side by side while ``dcmnode reindex``, which needs the store to
itself, takes the lock exclusively and refuses to start beside them.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from dcmnode.errors import Conflict
from dcmnode.store.files import Files
from dcmnode.store.index import DeletedInstance, Index, InstanceRecord

__all__ = ["DeletedInstance", "Files", "Index", "InstanceRecord", "Store"]

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"


class Store:
    def __init__(self, root: Path, files: Files, index: Index, lock_fd: int) -> None:
        self.root = root
        self.files = files
        self.index = index
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, root: Path, fsync: bool = True, exclusive: bool = False) -> Store:
        root.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            held = "in use by a running node or import" if exclusive else "being reindexed"
            raise Conflict(f"data folder {root} is {held}; try again when it has finished") from exc
        files = Files(root, fsync=fsync)
        files.clean_temp()
        index = Index(root / INDEX_NAME, durable=fsync)
        index.migrate()
        store = cls(root, files, index, lock_fd)
        store.finish_deletes()
        return store

    def delete(self, study: str, series: str | None = None, sop: str | None = None) -> list[DeletedInstance]:
        """Delete a study, a series or an instance: the index rows first, in one transaction, then the files.

        The files to remove are noted in ``deleting/`` before the COMMIT and unlinked after it, still under the
        writer lock (no one can store the same instance again in between); the note goes once they are gone. A
        crash leaves at worst files without rows, never a row without its file, and the next ``Store.open``
        removes those files (``finish_deletes``)."""
        gone: list[DeletedInstance] = []
        journal: list[Path] = []

        def unlink() -> None:
            if journal:
                self.files.remove_many([g.path for g in gone])
                self.files.discard(journal[0])

        with self.index.write(then=unlink) as conn:
            gone += self.index.delete_entity(conn, study, series, sop)
            if gone:
                journal.append(self.files.write_journal([g.path for g in gone]))
        return gone

    def finish_deletes(self) -> int:
        """Finish the deletes of processes that died between their COMMIT and their unlinks: remove each noted
        file that no index row holds (under the writer lock, so a store of the same instance cannot interleave).
        Costs one look-up per noted file, not a walk of the store. Returns how many files were removed."""
        removed = 0
        for journal in self.files.stale_journals():
            noted = [line for line in journal.read_text(encoding="ascii").splitlines() if line]
            orphans: list[str] = []

            def unlink(journal: Path = journal, orphans: list[str] = orphans) -> None:
                self.files.remove_many(orphans)
                self.files.discard(journal)

            with self.index.write(then=unlink) as conn:
                orphans += [rel for rel in noted if not self.index.holds(conn, rel)]
            removed += len(orphans)
        if removed:
            log.warning("removed %d file(s) an interrupted delete left without an index row", removed)
        return removed

    def close(self) -> None:
        self.index.close()
        self.files.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
