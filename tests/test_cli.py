"""The command line, run as a user runs it: subprocesses, real SCUs, kill -9."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import build_context

from tests.conftest import CliServer, associate, run_cli, stored_files, temp_files
from tests.factories import CT_IMAGE_STORAGE, TRANSFER_SYNTAX_FILES, bundled, ct_series, write_series


@pytest.mark.parametrize("command", [[], ["serve"], ["import"], ["status"], ["reindex"]])
def test_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage: dcmnode" in result.stdout
    if command == ["serve"]:
        for flag in ("--config", "--data", "--host", "--http-port", "--dimse-port", "--ae-title"):
            assert flag in result.stdout


def test_serve_prints_one_ready_line_and_answers_both_protocols(
    tmp_path: Path, cli_server_factory: Callable[..., CliServer]
) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('[peers.PACS1]\nhost = "127.0.0.1"\nport = 4242\n')
    server = cli_server_factory(tmp_path / "data", "--config", str(cfg), "--ae-title", "MYNODE")
    assert server.ae_title == "MYNODE" and "/dicom-web" in server.ready_line
    assoc = associate(server.dimse_port, called="MYNODE")
    assert assoc.send_c_echo().Status == 0 and assoc.send_c_store(ct_series(1)[0]).Status == 0
    assoc.release()
    status = httpx.get(f"http://127.0.0.1:{server.http_port}/api/status", timeout=10).json()
    assert status["counts"]["instances"] == 1 and status["ae_title"] == "MYNODE"
    page = httpx.get(f"http://127.0.0.1:{server.http_port}/", timeout=10)
    assert page.status_code == 200 and "dcmnode" in page.text
    assert server.stop() == 0  # SIGTERM: a clean shutdown


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_dimse_processes_share_the_port_and_die_with_the_node(
    tmp_path: Path, cli_server_factory: Callable[..., CliServer]
) -> None:
    server = cli_server_factory(tmp_path / "data", env={"DCMNODE_DIMSE_PROCESSES": "3"})
    workers = children_of(server.proc.pid)
    assert len(workers) == 3  # three DIMSE processes; no SR worker while there is no SR work (worker.OnDemand)
    assert [comm(pid) for pid in workers] == ["dcmnode-dimse"] * 3
    associations = [associate(server.dimse_port) for _ in range(3)]  # three at once, over the shared socket
    assert all(a.is_established for a in associations)
    assert [a.send_c_store(ds).Status for a, ds in zip(associations, ct_series(3), strict=True)] == [0, 0, 0]
    for a in associations:
        a.release()
    server.kill9()
    deadline = time.monotonic() + 10
    while any(
        Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2] for pid in workers
    ):
        assert time.monotonic() < deadline, "DIMSE or SR processes outlived the node"
        time.sleep(0.05)


def comm(pid: int) -> str:
    """The process's name (``/proc/PID/comm``): dcmnode names its DIMSE processes and its SR worker."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> dict[int, str]:
    """Every process whose parent is ``pid`` (whichever thread started it), with its command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False


def test_kill_9_leaves_no_process_behind(tmp_path: Path, cli_server_factory: Callable[..., CliServer]) -> None:
    """The forked DIMSE children, the SR worker and the spawned /metadata workers all end with the node. Both
    helpers start on demand by default (test_memory.py); here they are told to start with the node."""
    env = {"DCMNODE_SR_IDLE_EXIT_SECONDS": "0", "DCMNODE_HTTP_METADATA_IDLE_SECONDS": "0"}
    server = cli_server_factory(tmp_path / "data", env=env)
    deadline = time.monotonic() + 20
    while sum(
        "multiprocessing.spawn" in c for c in descendants(server.proc.pid).values()
    ) < 2 or "dcmnode-sr" not in map(comm, descendants(server.proc.pid)):
        assert time.monotonic() < deadline, f"the helper processes did not start: {descendants(server.proc.pid)}"
        time.sleep(0.2)
    family = descendants(server.proc.pid)
    assert sorted(comm(pid) for pid in family if comm(pid).startswith("dcmnode-")) == [
        "dcmnode-dimse",
        "dcmnode-dimse",
        "dcmnode-sr",
    ]
    server.kill9()
    deadline = time.monotonic() + 15
    while left := {pid: c for pid, c in family.items() if alive(pid)}:
        assert time.monotonic() < deadline, f"outlived the node: {left}"
        time.sleep(0.1)


def test_dimse_in_the_http_process(tmp_path: Path, cli_server_factory: Callable[..., CliServer]) -> None:
    server = cli_server_factory(tmp_path / "data", env={"DCMNODE_DIMSE_PROCESSES": "0", "DCMNODE_SR_WORKER": "thread"})
    assert children_of(server.proc.pid) == []
    assoc = associate(server.dimse_port)
    assert assoc.send_c_store(ct_series(1)[0]).Status == 0
    assoc.release()
    assert server.stop() == 0


def test_env_overrides_reach_serve(tmp_path: Path, cli_server_factory: Callable[..., CliServer]) -> None:
    server = cli_server_factory(tmp_path / "data", env={"DCMNODE_NODE_AE_TITLE": "ENVNODE"})
    assert server.ae_title == "ENVNODE"


def test_import_status_and_reindex(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    write_series(folder / "nested" / "deeper", ct_series(6))
    for name, _ in TRANSFER_SYNTAX_FILES[:4]:
        (folder / name).write_bytes(bundled(name).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.dcm").write_bytes(bundled("MR_truncated.dcm").read_bytes())
    data = tmp_path / "data"
    first = run_cli("import", str(folder), "--data", str(data))
    assert first.returncode == 0, first.stderr
    assert "it/s" in first.stderr or "file/s" in first.stderr  # the progress bar
    assert "12 file(s): 9 stored" in first.stdout and "1 duplicate, 2 failed" in first.stdout
    assert "notes.txt: not a DICOM Part 10 file" in first.stdout and "broken.dcm: the file is truncated" in first.stdout
    again = run_cli("import", str(folder), "--data", str(data), "--no-progress")
    assert "0 stored" in again.stdout and "10 duplicate" in again.stdout

    status = json.loads(run_cli("status", "--data", str(data), "--json").stdout)
    assert status["instances"] == 9 and status["series"] == 4 and status["bytes"] > 0
    (data / "index.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (data / f"index.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = run_cli("reindex", "--data", str(data))
    assert rebuilt.returncode == 0 and "reindexed 9 instance(s)" in rebuilt.stdout
    assert json.loads(run_cli("status", "--data", str(data), "--json").stdout) == status
    human = run_cli("status", "--data", str(data)).stdout
    assert "instances: 9" in human and "patients:" in human


def test_reindex_refuses_beside_a_running_node(tmp_path: Path, cli_server_factory: Callable[..., CliServer]) -> None:
    cli_server_factory(tmp_path / "data")
    result = run_cli("reindex", "--data", str(tmp_path / "data"))
    assert result.returncode == 2 and "in use by a running node" in result.stderr


@pytest.mark.slow
def test_acknowledged_instances_survive_kill_9(tmp_path: Path, cli_server_factory: Callable[..., CliServer]) -> None:
    data = tmp_path / "data"
    server = cli_server_factory(data)
    series = ct_series(400, rows=256, cols=256)
    acknowledged: list[str] = []
    killed = threading.Event()

    def send() -> None:
        assoc = associate(server.dimse_port, contexts=[build_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)])
        raw_socket = assoc.dul.socket.socket  # pynetdicom does not close it when the peer vanishes mid-DIMSE
        for ds in series:
            try:
                status = assoc.send_c_store(ds)
            except Exception:
                break
            if not status or "Status" not in status:
                break  # the association died under us
            if status.Status == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
                if len(acknowledged) == 60:
                    server.kill9()  # mid-stream, with instances in flight
                    killed.set()
        assoc.abort()
        assoc.join(10)
        raw_socket.close()

    sender = threading.Thread(target=send)
    sender.start()
    sender.join(120)
    assert killed.is_set() and 60 <= len(acknowledged) < len(series)

    restarted = cli_server_factory(data)  # starting again cleans what the dead process left in tmp/
    status = httpx.get(f"http://127.0.0.1:{restarted.http_port}/api/status", timeout=10).json()
    files = stored_files(data)
    by_sop = {p.stem: p for p in files}
    for sop in acknowledged:  # every acknowledged instance is there, whole, and indexed
        assert sop in by_sop
        assert pydicom.dcmread(by_sop[sop]).PixelData == next(ds.PixelData for ds in series if ds.SOPInstanceUID == sop)
    # no orphans either way: every file has its row and every row its file
    assert status["counts"]["instances"] == len(files)
    assert temp_files(data) == []
