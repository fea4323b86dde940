"""The pynetdicom patches of dcmnode.dimse.compat: the version they were written for, and each one in force."""

from __future__ import annotations

import inspect
import time

import pynetdicom
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from dcmnode.app import Node
from dcmnode.dimse import compat, pacer
from tests.conftest import associate
from tests.factories import ct_series


def test_pynetdicom_is_the_version_the_patches_were_written_for() -> None:
    """On an upgrade: re-read both patches in dimse/compat.py against the new pynetdicom (is the socket still left
    open when shutdown() fails? is ``_run_loop_delay`` still the reactor's sleep?), then move the pin."""
    assert pynetdicom.__version__ == compat.PYNETDICOM_VERSION


def test_the_socket_close_patch_is_in_force() -> None:
    import dcmnode.dimse  # noqa: F401  (importing the adapter applies it)

    assert AssociationSocket._shutdown_socket is compat.close_even_if_shutdown_fails


def test_the_reactor_still_sleeps_the_delay_the_pacer_sets() -> None:
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor)
    assert compat.REACTOR_DELAY == 0.001 and "self._run_loop_delay = 0.001" in inspect.getsource(DULServiceProvider)


def test_a_busy_association_polls_fast_then_falls_back_when_idle(node: Node) -> None:
    assoc = associate(node.dimse_port)
    try:
        assert node.scp is not None
        seen = []
        for ds in ct_series(3, rows=8, cols=8):  # each C-STORE touches the pacer; one stall > 0.25 s is forgiven
            assert assoc.send_c_store(ds).Status == 0x0000
            [served] = node.scp.server.active_associations
            seen.append(served.dul._run_loop_delay)
        assert pacer.FAST in seen
        deadline = time.monotonic() + 10
        while served.dul._run_loop_delay != compat.REACTOR_DELAY:  # idle_after is 0.25 s
            assert time.monotonic() < deadline, "the pacer never restored pynetdicom's delay"
            time.sleep(0.05)
    finally:
        assoc.release()
