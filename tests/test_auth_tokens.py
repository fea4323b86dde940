"""Tokens and users from the command line, beside a running node on the same data folder; ``serve`` refuses a
non-loopback address without auth."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from dcmnode import config
from dcmnode.core.access import Scope
from dcmnode.core.services import Services
from tests.conftest import CliServer, run_cli


def cli_with_input(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcmnode", *args], input=text, capture_output=True, text=True, timeout=120
    )


def test_token_create_list_revoke_beside_a_running_node(tmp_path: Path, cli_server_factory: Any) -> None:
    data = tmp_path / "data"
    server: CliServer = cli_server_factory(data, env={"DCMNODE_HTTP_AUTH": "on"})
    url = f"http://127.0.0.1:{server.http_port}/dicom-web/studies"
    assert httpx.get(url).status_code == 401
    made = run_cli("token", "create", "ci", "--scopes", "read,write", "--data", str(data))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("dcm_") and len(token) >= 40 and " " not in token
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    again = run_cli("token", "create", "ci", "--scopes", "read", "--data", str(data))
    assert again.returncode == 2 and "exists" in again.stderr
    bad = run_cli("token", "create", "x", "--scopes", "read,fly", "--data", str(data))
    assert bad.returncode == 2 and "unknown scope" in bad.stderr
    listed = run_cli("token", "list", "--data", str(data))
    assert "ci" in listed.stdout and "active" in listed.stdout and token not in listed.stdout
    revoked = run_cli("token", "revoke", "ci", "--data", str(data))
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + 15  # the node's decision cache keeps a decision at most 10 s
    while httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code != 401:
        assert time.monotonic() < deadline, "a revoked token still works after 15 s"
        time.sleep(0.2)
    assert "revoked" in run_cli("token", "list", "--data", str(data)).stdout
    assert run_cli("token", "revoke", "ci", "--data", str(data)).returncode == 2
    server.stop()
    log = server.log.read_text()
    assert "-> 401" in log and token not in log and token[4:16] not in log


def test_user_add_list_passwd_remove(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    added = cli_with_input(
        "correct horse\n", "user", "add", "alice", "--scopes", "read,write", "--groups", "cardio", "--data", data
    )
    assert added.returncode == 0, added.stderr
    short = cli_with_input("short\n", "user", "add", "bob", "--scopes", "read", "--data", data)
    assert short.returncode == 2 and "8 characters" in short.stderr
    listed = run_cli("user", "list", "--data", data)
    assert "alice" in listed.stdout and "cardio" in listed.stdout and "correct horse" not in listed.stdout
    settings = config.load(None, {}, {"node": {"data_dir": data}})
    with Services.open(settings) as services:
        alice = services.auth.verify_password("alice", "correct horse")
        assert alice is not None and alice.scopes == {Scope.READ, Scope.WRITE} and alice.groups == {"cardio"}
        assert services.auth.verify_password("alice", "wrong horse!") is None
        assert services.auth.verify_password("nobody", "correct horse") is None
    changed = cli_with_input("battery staple\n", "user", "passwd", "alice", "--data", data)
    assert changed.returncode == 0, changed.stderr
    with Services.open(settings) as services:
        assert services.auth.verify_password("alice", "correct horse") is None
        assert services.auth.verify_password("alice", "battery staple") is not None
        stored = services.auth.table.user("alice")
        assert stored is not None and stored["password"].startswith("scrypt$") and "battery" not in stored["password"]
    assert run_cli("user", "remove", "alice", "--data", data).returncode == 0
    assert "no users" in run_cli("user", "list", "--data", data).stdout
    assert run_cli("user", "remove", "alice", "--data", data).returncode == 2


def test_serve_refuses_the_network_without_auth(tmp_path: Path, cli_server_factory: Any) -> None:
    data = tmp_path / "data"
    ports = ("--http-port", "0", "--dimse-port", "0")
    refused = run_cli("serve", "--data", str(data), "--host", "0.0.0.0", *ports)
    assert refused.returncode == 2
    assert "refusing to serve HTTP 0.0.0.0 and DIMSE 0.0.0.0 without authentication" in refused.stderr
    assert "--insecure-no-auth" in refused.stderr and "ready" not in refused.stdout
    env = {**os.environ, "DCMNODE_DIMSE_HOST": "0.0.0.0"}  # one server on the network is enough to refuse
    alone = subprocess.run(
        [sys.executable, "-m", "dcmnode", "serve", "--data", str(data), *ports], env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert alone.returncode == 2 and "DIMSE 0.0.0.0" in alone.stderr
    server = cli_server_factory(data, "--host", "0.0.0.0", "--insecure-no-auth")
    assert httpx.get(f"http://127.0.0.1:{server.http_port}/dicom-web/studies").status_code == 200
    server.stop()
    secured = cli_server_factory(data, "--host", "0.0.0.0", env={"DCMNODE_HTTP_AUTH": "on"})
    assert httpx.get(f"http://127.0.0.1:{secured.http_port}/dicom-web/studies").status_code == 401
