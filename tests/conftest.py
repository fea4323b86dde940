"""Fixtures: nodes with real servers on 127.0.0.1 and free ports, real SCUs, real subprocesses."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.association import Association

from dcmnode import config
from dcmnode.app import Node

HOST = "127.0.0.1"

# pynetdicom installs its own echoscu/storescu/findscu/movescu/getscu into the virtualenv's bin, which comes first
# on PATH when the virtualenv is activated. The tests mean dcmtk's (Debian's), so that folder goes last.
_VENV_BIN = str(Path(sys.executable).parent)
os.environ["PATH"] = os.pathsep.join(
    [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != _VENV_BIN] + [_VENV_BIN]
)
READY = re.compile(r"ready: DIMSE (\S+)@[\d.]+:(\d+)\s+HTTP https?://[\d.]+:(\d+)/")


def make_settings(data: Path, **sections: dict[str, Any]) -> config.Settings:
    overrides: dict[str, dict[str, Any]] = {
        "node": {"data_dir": str(data)},
        "dimse": {"host": HOST, "port": 0},
        # metadata worker processes only where a test asks for them (each node would spawn two interpreters)
        "http": {"host": HOST, "port": 0, "metadata_workers": 0},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return config.load(None, {}, overrides)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Build a node with its SCP listening on a free port; every node is closed at teardown."""
    nodes: list[Node] = []

    def factory(data: Path | None = None, peers_toml: str = "", **sections: dict[str, Any]) -> Node:
        settings = make_settings(data or tmp_path / f"data{len(nodes)}", **sections)
        if peers_toml:
            cfg = tmp_path / f"peers{len(nodes)}.toml"
            cfg.write_text(peers_toml)
            base = config.load(cfg)
            settings = dataclasses.replace(settings, peers=base.peers)
        node = Node(settings)
        node.start_dimse()
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.close()


@pytest.fixture
def node(node_factory: Callable[..., Node]) -> Node:
    return node_factory()


class LiveServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets NODELAY
        sock.bind((HOST, 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(node.asgi(), log_config=None, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_factory(node_factory: Callable[..., Node]) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def factory(**sections: dict[str, Any]) -> LiveServer:
        server = LiveServer(node_factory(**sections))
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def live(live_factory: Callable[..., LiveServer]) -> LiveServer:
    return live_factory()


def associate(port: int, calling: str = "TESTSCU", called: str = "DCMNODE", contexts: Any = None) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.requested_contexts = contexts or StoragePresentationContexts[:127]
    if contexts is None:
        ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate(HOST, port, ae_title=called)


class CliServer:
    """``python -m dcmnode serve`` as a subprocess; waits for its ready line and fails fast with its output."""

    def __init__(self, data: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.log = data.parent / f"serve-{data.name}-{time.monotonic_ns()}.log"
        self._log_fp = open(self.log, "w")  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "dcmnode",
            "serve",
            "--data",
            str(data),
            "--host",
            HOST,
            "--http-port",
            "0",
            "--dimse-port",
            "0",
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log_fp,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=data.parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = READY.search(line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"serve did not start: {line!r}\n{self.log.read_text()}")
        self.ready_line = line
        self.ae_title, self.dimse_port, self.http_port = match[1], int(match[2]), int(match[3])

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL: no handler runs, nothing is flushed or cleaned up
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_fp.close()
        return self.proc.returncode


@pytest.fixture
def cli_server_factory() -> Iterator[Callable[..., CliServer]]:
    servers: list[CliServer] = []

    def factory(data: Path, *extra: str, env: dict[str, str] | None = None) -> CliServer:
        server = CliServer(data, *extra, env=env)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcmnode", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def stored_files(data: Path) -> list[Path]:
    return sorted((data / "dicom").rglob("*.dcm"))


def temp_files(data: Path) -> list[Path]:
    return sorted(p for p in (data / "tmp").rglob("*") if p.is_file())
