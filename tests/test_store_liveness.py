"""A store's notes of dead processes are recovered: ``_alive`` (store/files.py) counts a zombie as dead."""

from __future__ import annotations

import os
import time

from dcmnode.store import files


def test_a_live_process_is_alive_and_a_zombie_is_not() -> None:
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        assert files._alive(pid)
        assert files._proc_state(pid) == (False, False)
    finally:
        os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while files._proc_state(pid) != (True, False) and time.monotonic() < deadline:
        time.sleep(0.01)  # not reaped yet: a zombie, which os.kill(pid, 0) still finds
    os.kill(pid, 0)
    assert not files._alive(pid)
    os.waitpid(pid, 0)
    assert not files._alive(pid)
