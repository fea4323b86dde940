"""Association set-up on the DIMSE listener (``dimse/scp.py`` ``listen``, ``SharedSocketServer``): what accepted
connections inherit, and how parallel associations spread over the DIMSE processes sharing the socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from pynetdicom.association import Association

from dcmnode.app import Node
from dcmnode.dimse import scp
from tests.conftest import CliServer, associate, make_settings
from tests.factories import ct_series


def test_accepted_connections_have_nagle_off_and_block(node: Node) -> None:
    """TCP_NODELAY is set once, on the listener, and every accepted socket inherits it (Linux); the listener is
    non-blocking for the processes' accept race, the sockets it hands to pynetdicom are not."""
    assert node.scp is not None
    server = node.scp.server
    assert server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert not server.socket.getblocking()
    client = associate(node.dimse_port)
    try:
        deadline = time.monotonic() + 10
        while not server.active_associations:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [served] = server.active_associations
        assert served.dul.socket is not None and served.dul.socket.socket is not None
        accepted = served.dul.socket.socket
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert accepted.getblocking() and accepted.gettimeout() is None
        assert client.send_c_echo().Status == 0x0000
    finally:
        client.release()


def test_only_processes_sharing_the_socket_yield_new_connections(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    """A process that listens alone (``dimse.processes`` = 0: threads in the HTTP process; the tests' nodes) has
    no idler process to leave a new connection to, so it never waits (``ACCEPT_YIELD``) before accepting; one of
    several DIMSE processes on the same socket does."""
    alone = node_factory()
    assert alone.scp is not None and isinstance(alone.scp.server, scp.SharedSocketServer)
    assert alone.scp.server.shared is False
    sock = scp.listen("127.0.0.1", 0)
    one_of_two = Node(make_settings(tmp_path / "second"))  # as _dimse_child starts it: the parent's socket
    try:
        assert one_of_two.settings.dimse.processes == 2
        assert one_of_two.start_dimse(sock).server.shared is True  # type: ignore[attr-defined]
    finally:
        one_of_two.close()


def serving_pid(client: Association, pids: list[int]) -> int:
    """Which of ``pids`` holds the server end of ``client``'s TCP connection (/proc/net/tcp and each fd)."""
    client_port, server_port = (
        client.dul.socket.socket.getsockname()[1],  # type: ignore[union-attr]
        client.dul.socket.socket.getpeername()[1],  # type: ignore[union-attr]
    )
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[3]
        if (local, remote, state) == (server_port, client_port, "01") and fields[9] != "0":  # 01: ESTABLISHED
            inode = fields[9]
    assert inode, "the server's end of the connection was not found"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no DIMSE process holds socket {inode}")


def test_parallel_associations_spread_over_the_dimse_processes(
    tmp_path: Path, cli_server_factory: Callable[..., CliServer]
) -> None:
    """Four associations held open at once land on both DIMSE processes (least-loaded first: a process already
    serving some yields the accept to an idler one), so parallel C-STOREs use both cores."""
    server = cli_server_factory(tmp_path / "data", env={"DCMNODE_DIMSE_PROCESSES": "2", "DCMNODE_SR_WORKER": "off"})
    children = [int(c) for c in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()]
    dimse = [pid for pid in children if "serve" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(dimse) == 2
    clients = [associate(server.dimse_port) for _ in range(4)]
    try:
        assert all(c.is_established for c in clients)
        by_process = [serving_pid(c, dimse) for c in clients]
        assert set(by_process) == set(dimse), by_process
        statuses = [c.send_c_store(ds).Status for c, ds in zip(clients, ct_series(4, rows=8, cols=8), strict=True)]
        assert statuses == [0, 0, 0, 0]
    finally:
        for c in clients:
            c.release()
