"""The STOW-RS part spooler (``dicomweb/multipart.py``): each part's file is fsynced in the background as soon as
the part ends, and ``finish`` returns only once every part is durable; a request that fails leaves no file and no
thread behind. ``os.fsync`` is wrapped to note (and slow down) the calls: the test would fail if ``finish``
answered before a part's fsync had returned, or skipped one."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dcmnode.dicomweb import multipart
from dcmnode.errors import InvalidRequest, PayloadTooLarge
from tests.test_stow import BOUNDARY, body


class SlowFsync:
    """``os.fsync`` as it is, after a pause, noting which files were made durable."""

    def __init__(self) -> None:
        self.real = os.fsync
        self.done: set[tuple[int, int]] = set()
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        time.sleep(0.02)
        self.real(fd)
        st = os.fstat(fd)
        with self.lock:
            self.done.add((st.st_dev, st.st_ino))

    def durable(self, path: Path) -> bool:
        st = path.stat()
        return (st.st_dev, st.st_ino) in self.done


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> SlowFsync:
    wrapper = SlowFsync()
    monkeypatch.setattr(os, "fsync", wrapper)
    return wrapper


def spooler(tmp_path: Path, fsync: bool = True, max_parts: int = 100) -> multipart.PartSpooler:
    return multipart.PartSpooler(BOUNDARY, tmp_path, 1 << 20, fsync, max_parts)


def feed(spool: multipart.PartSpooler, data: bytes, chunk: int = 1000) -> None:
    spool.write_all([data[k : k + chunk] for k in range(0, len(data), chunk)])


def syncer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stow-fsync")]


def test_every_part_is_durable_when_finish_returns(tmp_path: Path, fsyncs: SlowFsync) -> None:
    payloads = [os.urandom(3000 + 100 * k) for k in range(10)]
    spool = spooler(tmp_path)
    feed(spool, body(*payloads))
    parts = spool.finish()
    assert [p.path.read_bytes() for p in parts] == payloads
    assert all(fsyncs.durable(p.path) for p in parts)
    assert syncer_threads() == []


def test_without_fsync_nothing_is_synced(tmp_path: Path, fsyncs: SlowFsync) -> None:
    spool = spooler(tmp_path, fsync=False)
    feed(spool, body(b"a" * 500, b"b" * 500))
    assert [p.size for p in spool.finish()] == [500, 500]
    assert fsyncs.done == set()


def test_a_truncated_or_refused_body_leaves_nothing(tmp_path: Path, fsyncs: SlowFsync) -> None:
    spool = spooler(tmp_path)
    feed(spool, body(b"x" * 2000, b"y" * 2000, close=False))
    with pytest.raises(InvalidRequest, match="closing boundary"):
        spool.finish()
    spool.discard()
    assert list(tmp_path.iterdir()) == [] and syncer_threads() == []
    limited = spooler(tmp_path, max_parts=3)
    with pytest.raises(PayloadTooLarge):
        feed(limited, body(*[b"z" * 100] * 5))
    limited.discard()
    assert list(tmp_path.iterdir()) == [] and syncer_threads() == []
