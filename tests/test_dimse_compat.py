"""The pynetdicom patches of dcmnode.dimse.compat: the version they were written for, and each one in force."""

from __future__ import annotations

import copy
import hashlib
import inspect
import threading
import time
from collections import Counter
from typing import Any

import pynetdicom
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

from dcmnode.app import Node
from dcmnode.dimse import compat
from tests.conftest import associate
from tests.factories import ct_series

# sha256 (first 16 hex digits) of the pynetdicom 3.0.4 source each patch of compat.ORIGINAL replaces with a copy
COPIED_FROM = {
    "DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "DULServiceProvider.kill_dul": "5ceccf8dd01c2072",
    "DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    "Association.__init__": "eb07516b8009ad8f",
    "Association._run_reactor": "f28838c5559e462a",
    "Association.kill": "8f9713666a7f4cff",
}


def test_pynetdicom_is_the_version_the_patches_were_written_for() -> None:
    """On an upgrade: re-read every patch in dimse/compat.py against the new pynetdicom (is the socket still left
    open when shutdown() fails? are the supported contexts still deep-copied per association? do the reactors
    still poll?), then move the pin."""
    assert pynetdicom.__version__ == compat.PYNETDICOM_VERSION


def test_the_replaced_methods_are_the_ones_the_patches_were_copied_from() -> None:
    """Patches 5 and 6 replace pynetdicom methods with edited copies: a changed original means the copy is stale."""
    found = {
        name: hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]
        for name, method in compat.ORIGINAL.items()
    }
    assert found == COPIED_FROM
    # what patch 4 works around, and the sleeps patches 5 and 6 replace
    assert "deepcopy(self.server.contexts)" in inspect.getsource(RequestHandler._create_association)
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(compat.ORIGINAL["DULServiceProvider.run_reactor"])
    assert "time.sleep(0.001)" in inspect.getsource(compat.ORIGINAL["Association._run_reactor"])
    assert "time.sleep(0.01)" in inspect.getsource(compat.ORIGINAL["Association.kill"])


def test_every_patch_is_in_force() -> None:
    import dcmnode.dimse  # noqa: F401  (importing the adapter applies them)

    assert AssociationSocket._shutdown_socket is compat.close_even_if_shutdown_fails
    assert DULServiceProvider.run_reactor is compat.dul_run_reactor
    assert DULServiceProvider.kill_dul is compat.dul_kill
    assert DULServiceProvider.stop_dul is compat.dul_stop
    assert Association.__init__ is compat.association_init
    assert Association._run_reactor is compat.association_run_reactor
    assert Association.kill is compat.association_kill


def served_association(node: Node, count: int = 1) -> list[Association]:
    """The SCP's side of the client associations just made (its acceptor threads)."""
    assert node.scp is not None
    deadline = time.monotonic() + 10
    while len(served := node.scp.server.active_associations) < count:
        assert time.monotonic() < deadline, "the SCP never served the association"
        time.sleep(0.01)
    return served


def test_associations_share_one_copy_of_the_supported_contexts(node: Node) -> None:
    """Patch 4: no deep copy of the 177 supported contexts per association; negotiation still uses them."""
    assert node.scp is not None
    server = node.scp.server
    assert isinstance(server.contexts, compat.SharedContexts) and len(server.contexts) > 100
    assert copy.deepcopy(server.contexts) is server.contexts
    clients = [associate(node.dimse_port), associate(node.dimse_port)]
    try:
        served = served_association(node, 2)
        assert all(s.acceptor.supported_contexts is server.contexts for s in served)
        assert [c.send_c_store(ds).Status for c, ds in zip(clients, ct_series(2, rows=8, cols=8), strict=True)] == [
            0,
            0,
        ]
        # a context the SCP does not support is still refused (abstract syntax not supported, PS3.8 9.3.3.2)
        unsupported = associate(node.dimse_port, contexts=[pynetdicom.build_context("1.2.3.4.5.6")])
        assert not unsupported.is_established
    finally:
        for client in clients:
            client.release()


def test_idle_reactors_wait_instead_of_polling(node: Node, monkeypatch: Any) -> None:
    """Patches 5 and 6: an idle association's DUL and association threads block (pynetdicom's poll 1000 times a
    second each); the SCP's reply to a C-ECHO wakes its DUL through the wake-up, not at its next poll."""
    dul_waits: Counter[int] = Counter()
    real_wait = compat._dul_wait

    def counting_dul_wait(dul: DULServiceProvider, wakeup: Any) -> None:
        dul_waits[threading.get_ident()] += 1
        real_wait(dul, wakeup)

    monkeypatch.setattr(compat, "_dul_wait", counting_dul_wait)
    client = associate(node.dimse_port)
    try:
        assert client.send_c_echo().Status == 0x0000
        [served] = served_association(node)
        wakes = compat.wakes_of(served)
        assert wakes is not None and wakes.dul is not None  # the DUL thread runs, with its wake-up descriptor
        before = wakes.wakeups
        assert client.send_c_echo().Status == 0x0000
        assert wakes.wakeups > before  # the response queued by the association thread woke the DUL

        assoc_waits: Counter[int] = Counter()
        for assoc in (served, client):
            event = compat.wakes_of(assoc).assoc  # type: ignore[union-attr]
            real = event.wait

            def counting(timeout: float | None = None, real: Any = real, ident: int = assoc.ident or 0) -> bool:
                assoc_waits[ident] += 1
                return bool(real(timeout))

            event.wait = counting  # type: ignore[method-assign]
        dul_waits.clear()
        time.sleep(1.0)  # idle: each thread wakes at most every WAIT_CAP (0.5 s) to look at its timers
        for assoc in (served, client):
            assert dul_waits[assoc.dul.ident or 0] <= 4, dul_waits
            assert assoc_waits[assoc.ident or 0] <= 4, assoc_waits
    finally:
        client.release()
    served.join(10)
    assert not served.is_alive() and not served.dul.is_alive()
    assert compat.wakes_of(served).dul is None  # type: ignore[union-attr]  (its wake-up closed with the DUL)


class CheckpointProbe(threading.Event):
    """An association's ``_reactor_checkpoint`` that notes, the first time the reactor passes it while it is set,
    what a sender clearing it at that instant would read in ``_is_paused`` (True: "paused, go ahead")."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self.set()
        self.assoc = assoc
        self.seen: bool | None = None
        self.passed = threading.Event()

    def _note(self) -> None:
        if threading.current_thread() is self.assoc and not self.passed.is_set():
            self.seen = self.assoc._is_paused
            self.passed.set()

    def is_set(self) -> bool:
        result = super().is_set()
        if result:
            self._note()
        return result

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        if result:
            self._note()
        return result


def test_the_reactor_is_marked_running_before_it_passes_the_checkpoint(node: Node) -> None:
    """Patch 6's race fix: pynetdicom's reactor passed ``_reactor_checkpoint`` while still marked paused, so a
    ``send_*`` clearing it then went ahead and the reactor took its response (the sender then waited
    ``dimse_timeout`` and aborted: 1 C-ECHO in ~1,200 against a fast peer here)."""
    client = associate(node.dimse_port)
    try:
        probe = CheckpointProbe(client)
        client._reactor_checkpoint = probe
        wakes = compat.wakes_of(client)
        if wakes is not None:  # (pynetdicom's own reactor passes it every millisecond)
            wakes.assoc.set()  # the idle reactor looks again, and passes the checkpoint
        assert probe.passed.wait(10)
        assert probe.seen is False
        assert client.send_c_echo().Status == 0x0000  # the handshake still works with the probe in place
    finally:
        client.release()
