"""The indexed store: files (the truth) + SQLite index.

``Store.open`` takes a shared lock on ``data/.lock`` for as long as the store is open, so several writers
(the node, ``dcmnode import``) can work side by side while ``dcmnode reindex``, which needs the store to
itself, takes the lock exclusively and refuses to start beside them.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dcmnode.errors import Conflict
from dcmnode.store.files import Files
from dcmnode.store.index import Index, InstanceRecord

__all__ = ["Files", "Index", "InstanceRecord", "Store"]

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
        index = Index(root / INDEX_NAME)
        index.migrate()
        return cls(root, files, index, lock_fd)

    def close(self) -> None:
        self.index.close()
        self.files.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
