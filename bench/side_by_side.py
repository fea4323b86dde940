"""dcmnode and Orthanc 1.10.1 side by side in one run (issue 19). Started by bench/side_by_side.sh; see
bench/README.md, "Side by side with Orthanc (issue 19)".

Each round starts a fresh Orthanc (``ORTHANC_TCP_NODELAY=1 orthanc_up.sh --fresh``) and a fresh dcmnode (new data
folder, ``store.fsync = true``, ``[peers.BENCH]``), one after the other (the order alternates per round), runs
``../shared/bench/bench_node.py`` against each (one invocation per phase, same client options for both, so the load
of the machine is recorded before and after each phase), then the parallel C-STORE of ``bench_parallel_store.py``
(4 and 16 associations), and stops the node. After both nodes the round measures the disk's fsync limit. The
table is built from the medians of the rounds. Nothing is left running: every process started here is stopped by
its PID (or the process group this script created for it), also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
PHASES = ["echo", "ingest_storescu", "ingest_pynetdicom", "stow", "find", "qido", "wado", "move", "get"]
NODES = ("orthanc", "dcmnode")


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP: stop, clean up, exit."""


class Failure(Exception):
    """A set-up step that makes the run meaningless (missing tool, busy port, node that does not start)."""


def on_signal(signum: int, frame: object) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # one clean-up only
    raise Interrupted(signal.Signals(signum).name)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ----------------------------------------------------------------------------------------------- machine state
def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2)}


def cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def cpu_share(before: list[int], after: list[int]) -> dict[str, float]:
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    return {
        "cpu_busy_pct": round(100 * (total - d[3] - d[4]) / total, 1),
        "cpu_steal_pct": round(100 * d[7] / total, 1),
    }


@contextlib.contextmanager
def machine(record: dict[str, Any]) -> Iterator[None]:
    """Load averages before/after and the CPU busy/steal shares of all cores during the block, into ``record``."""
    record["load_before"], cpu0, t0 = load(), cpu_times(), time.perf_counter()
    try:
        yield
    finally:
        record["load_after"] = load()
        record.update(cpu_share(cpu0, cpu_times()))
        record["wall_s"] = round(time.perf_counter() - t0, 2)


# ----------------------------------------------------------------------------------------------- processes
def run(
    cmd: list[str], log_path: Path, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Run a command in its own process group, output to ``log_path``; on timeout or interruption the group is
    terminated (then killed)."""
    with open(log_path, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            out.write(f"\n*** timeout after {timeout:.0f} s: stopped by the harness\n")
            stop_group(proc)
            return -1
        except BaseException:
            stop_group(proc)
            raise


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process group created for ``proc`` (its PID), SIGKILL after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            if not group_members(proc.pid):
                return


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid`` (one this script created)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def choose_port(wanted: int, what: str) -> int:
    """``wanted`` if it is free, else (or when 0) a free port; other helpers' nodes run on this machine too."""
    if wanted and port_free(wanted):
        return wanted
    port = free_port()
    if wanted:
        log(f"note: port {wanted} ({what}) is in use: {port} instead")
    return port


def http_get(url: str, timeout: float = 3.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URL built here
            return bytes(r.read())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- the nodes
class Orthanc:
    name = "orthanc"

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.dir = a.work / "orthanc"
        self.pid: int | None = None
        self.version = ""
        self.dimse_port = self.http_port = self.scp_port = 0

    aet = "ORTHANC"

    def choose_ports(self) -> None:
        self.dimse_port = choose_port(self.a.orthanc_dicom_port, "Orthanc DICOM")
        self.http_port = choose_port(self.a.orthanc_http_port, "Orthanc HTTP")
        self.scp_port = choose_port(self.a.scp_port, "the harness's C-MOVE SCP")

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ORTHANC_BENCH_DIR": str(self.dir),
            "ORTHANC_HTTP_PORT": str(self.http_port),
            "ORTHANC_DICOM_PORT": str(self.dimse_port),
            "ORTHANC_AET": "ORTHANC",
            "BENCH_AET": "BENCH",
            "BENCH_PORT": str(self.scp_port),
            "ORTHANC_TCP_NODELAY": "1",
        }

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def count_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/statistics"

    @property
    def data_dir(self) -> Path:
        return self.dir / "storage"

    def start(self, logs: Path) -> None:
        try:
            rc = run(["bash", str(self.a.shared / "orthanc_up.sh"), "--fresh"], logs / "orthanc_up.log", 90, self.env)
        finally:  # Orthanc runs in its own session: the pidfile is how it is found and stopped
            with contextlib.suppress(OSError, ValueError):
                self.pid = int((self.dir / "orthanc.pid").read_text())
        text = (logs / "orthanc_up.log").read_text()
        if rc != 0:
            raise Failure(f"orthanc_up.sh failed (rc {rc}):\n{text[-1500:]}")
        self.version = next((line.split(" up:")[0] for line in text.splitlines() if line.startswith("Orthanc ")), "")

    def stop(self, logs: Path) -> dict[str, Any]:
        if not (self.dir / "orthanc.pid").exists():
            return {"clean_stop": True}
        rc = run(["bash", str(self.a.shared / "orthanc_down.sh"), "--wipe"], logs / "orthanc_down.log", 90, self.env)
        if self.dir.joinpath("orthanc.log").exists():
            shutil.copy(self.dir / "orthanc.log", logs / "orthanc.log")
        left = self.pid is not None and os.path.isdir(f"/proc/{self.pid}")
        self.pid = None
        return {"clean_stop": rc == 0 and not left, "down": (logs / "orthanc_down.log").read_text()[-600:]}


class Dcmnode:
    name = "dcmnode"
    aet = "DCMNODE"

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.dir = a.work / "dcmnode"
        self.proc: subprocess.Popen[Any] | None = None
        self.pid: int | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DCMNODE_")}  # the config file decides
        self.env["PYTHONPATH"] = str(a.dcmnode_src)
        self.version = ""
        self.dimse_port = self.http_port = self.scp_port = 0

    def choose_ports(self) -> None:
        self.dimse_port = choose_port(self.a.dcmnode_dimse_port, "dcmnode DIMSE")
        self.http_port = choose_port(self.a.dcmnode_http_port, "dcmnode HTTP")
        self.scp_port = choose_port(self.a.scp_port, "the harness's C-MOVE SCP")

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def count_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/status"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def config(self) -> str:
        return (
            "# written by bench/side_by_side.py: the node under test, fresh for each round\n"
            f'[node]\nae_title = "{self.aet}"\ndata_dir = "{self.data_dir}"\n\n'
            f'[dimse]\nhost = "127.0.0.1"\nport = {self.dimse_port}\n\n'
            f'[http]\nhost = "127.0.0.1"\nport = {self.http_port}\n\n'
            "[store]\nfsync = true\n\n"
            f'[peers.BENCH]\nhost = "127.0.0.1"\nport = {self.scp_port}\n'
        )

    def start(self, logs: Path) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "dcmnode.toml"
        cfg.write_text(self.config())
        out = open(logs / "dcmnode.log", "w")  # noqa: SIM115 - the node writes here until it stops
        cmd = [str(self.a.python), "-m", "dcmnode", "serve", "--config", str(cfg)]
        out.write(f"$ PYTHONPATH={self.env['PYTHONPATH']} {' '.join(cmd)}\n")
        out.flush()
        self.proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.dir,
            start_new_session=True,
        )
        out.close()
        self.pid = self.proc.pid
        (self.a.work / "dcmnode.pid").write_text(f"{self.pid}\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(
                    f"dcmnode exited during start-up (rc {self.proc.returncode}):\n"
                    + (logs / "dcmnode.log").read_text()[-2000:]
                )
            text = (logs / "dcmnode.log").read_text()
            if " ready: " in text and http_get(self.count_url) is not None:
                self.version = next(line for line in text.splitlines() if " ready: " in line)[:200]
                return
            time.sleep(0.25)
        raise Failure("dcmnode did not answer within 120 s; see " + str(logs / "dcmnode.log"))

    def stop(self, logs: Path) -> dict[str, Any]:
        if self.proc is None:
            return {"clean_stop": True}
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                clean = False
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while group_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_members(self.proc.pid)
        if left:  # children of the node that outlived it: ours (its process group), stopped by PID
            clean = False
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        rc = self.proc.returncode
        self.proc = self.pid = None
        trim_log(logs / "dcmnode.log")
        with contextlib.suppress(FileNotFoundError):
            (self.a.work / "dcmnode.pid").unlink()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return {"clean_stop": clean and rc == 0, "rc": rc, "leftover_pids": left}


def trim_log(path: Path, keep: int = 40) -> None:
    """A node's log without its INFO lines (one per association and instance: megabytes per round), except the first
    and last ``keep``; warnings and errors stay."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    if len(lines) <= 3 * keep:
        return
    middle = [line for line in lines[keep:-keep] if " INFO " not in line]
    dropped = len(lines) - 2 * keep - len(middle)
    path.write_text(
        "\n".join([*lines[:keep], f"... ({dropped} INFO lines left out by side_by_side.py)", *middle, *lines[-keep:]])
        + "\n"
    )


# ----------------------------------------------------------------------------------------------- one node
def bench_node(a: argparse.Namespace, node: Orthanc | Dcmnode, phase: str, rdir: Path, logs: Path) -> dict[str, Any]:
    out = rdir / "phases" / f"{node.name}-{phase}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(a.bench_python),
        *([] if a.stock_client else [str(HERE / "bench_node_client.py")]),
        str(a.shared / "bench_node.py"),
        "--dataset",
        str(a.dataset),
        "--dimse-port",
        str(node.dimse_port),
        "--aet",
        node.aet,
        "--calling-aet",
        "BENCH",
        "--move-dest",
        "BENCH",
        "--scp-port",
        str(node.scp_port),
        "--dicomweb-base",
        node.web,
        "--phases",
        phase,
        "--accept-encoding",
        "identity",
        "--client-nodelay",
        "--server-pid",
        str(node.pid),
        "--phase-timeout",
        str(a.phase_timeout),
        "--label",
        node.name,
        "--out-json",
        str(out),
    ]
    record: dict[str, Any] = {"phase": phase}
    with machine(record):
        rc = run(cmd, logs / f"bench_node-{phase}.log", a.phase_timeout + 180)
    record["rc"] = rc
    record["json"] = json.loads(out.read_text()) if out.exists() else None
    return record


def parallel(a: argparse.Namespace, node: Orthanc | Dcmnode, n: int, copy: int, rdir: Path, logs: Path) -> dict:
    out = rdir / f"{node.name}-parallel-{n}.json"
    cmd = [
        str(a.bench_python),
        str(HERE / "bench_parallel_store.py"),
        "store",
        "--dataset",
        str(a.par_dataset),
        "--copy",
        str(copy),
        "--associations",
        str(n),
        "--dimse-port",
        str(node.dimse_port),
        "--aet",
        node.aet,
        "--count",
        node.count_url,
        "--server-pid",
        str(node.pid),
        "--label",
        node.name,
        "--timeout",
        str(a.phase_timeout),
        "--out-json",
        str(out),
    ]
    record: dict[str, Any] = {"phase": f"parallel_{n}"}
    with machine(record):
        record["rc"] = run(cmd, logs / f"parallel-{n}.log", a.phase_timeout + 120)
    record["json"] = json.loads(out.read_text()) if out.exists() else None
    return record


def merge(node: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One bench_node-shaped result (``compare.py`` reads it) from the per-phase invocations of a round."""
    merged: dict[str, Any] = {"label": node, "tool": "bench_node.py (one invocation per phase)", "phases": {}}
    peak, procs = 0.0, 0
    for r in runs:
        js = r["json"]
        if not js:
            merged["phases"][r["phase"]] = {"ok": False, "error": f"no result (rc {r['rc']})", "metrics": {}}
            continue
        for key in ("date", "node", "dataset", "client", "settings"):
            merged.setdefault(key, js.get(key))
        ph = js["phases"].get(r["phase"], {"ok": False, "error": "phase missing", "metrics": {}})
        ph["machine"] = {k: r[k] for k in ("load_before", "load_after", "cpu_busy_pct", "cpu_steal_pct", "wall_s")}
        merged["phases"][r["phase"]] = ph
        sp = js.get("server_process") or {}
        peak = max(peak, sp.get("tree_peak_pss_MiB") or 0)
        procs = max(procs, sp.get("processes") or 0)
    merged["server_process"] = {"tree_peak_pss_MiB": peak or None, "processes": procs or None}
    merged["all_ok"] = all(p.get("ok") for p in merged["phases"].values()) and bool(merged["phases"])
    return merged


def one_node(a: argparse.Namespace, node: Orthanc | Dcmnode, rnd: int, rdir: Path) -> dict[str, Any]:
    logs = rdir / "logs" / node.name
    logs.mkdir(parents=True, exist_ok=True)
    node.choose_ports()
    log(f"round {rnd}: {node.name} starting")
    started = time.perf_counter()
    result: dict[str, Any] = {"node": node.name}
    try:
        node.start(logs)
        result.update(
            version=node.version,
            pid=node.pid,
            ports={"dimse": node.dimse_port, "http": node.http_port, "scp": node.scp_port},
        )
        runs = []
        for phase in a.phases:
            r = bench_node(a, node, phase, rdir, logs)
            runs.append(r)
            ok = bool(r["json"]) and r["json"]["phases"].get(phase, {}).get("ok")
            log(
                f"round {rnd} {node.name} {phase}: {'ok' if ok else 'FAILED'} in {r['wall_s']} s, load "
                f"{r['load_before']['load1']} -> {r['load_after']['load1']}, busy {r['cpu_busy_pct']} %"
            )
        result["bench"] = merge(node.name, runs)
        (rdir / f"{node.name}.json").write_text(json.dumps(result["bench"], indent=1, default=str) + "\n")
        result["parallel"] = {}
        for k, n in enumerate(a.parallel):
            r = parallel(a, node, n, k % a.par_copies, rdir, logs)
            result["parallel"][str(n)] = r
            js = r["json"] or {}
            log(
                f"round {rnd} {node.name} parallel {n}: {'ok' if js.get('ok') else 'FAILED'}, "
                f"{js.get('instances_per_s')} inst/s, load {r['load_before']['load1']} -> {r['load_after']['load1']}"
            )
    finally:
        result["stop"] = node.stop(logs)
        result["wall_s"] = round(time.perf_counter() - started, 1)
    log(f"round {rnd}: {node.name} stopped ({'clean' if result['stop']['clean_stop'] else 'NOT CLEAN'})")
    return result


def fsync_limit(a: argparse.Namespace, rdir: Path, sample: Path) -> dict[str, Any]:
    out = rdir / "fsync-limit.json"
    cmd = [
        str(a.bench_python),
        str(HERE / "bench_parallel_store.py"),
        "fsync-limit",
        "--dir",
        str(a.work / "fsync"),
        "--files",
        str(a.fsync_files),
        "--threads",
        "1,4",
        "--sample",
        str(sample),
        "--out-json",
        str(out),
    ]
    record: dict[str, Any] = {"phase": "fsync_limit"}
    with machine(record):
        record["rc"] = run(cmd, rdir / "logs" / "fsync-limit.log", 600)
    record["json"] = json.loads(out.read_text()) if out.exists() else None
    runs = (record["json"] or {}).get("runs", [])
    log("fsync limit: " + ", ".join(f"{r['threads']} thread(s) {r['files_per_s']} files/s" for r in runs))
    return record


# ----------------------------------------------------------------------------------------------- the table
def metric(bench: dict[str, Any] | None, phase: str, name: str, key: str) -> float | None:
    ph = (bench or {}).get("phases", {}).get(phase)
    if not ph or not ph.get("ok"):
        return None
    v = ph.get("metrics", {}).get(name, {}).get(key)
    return float(v) if isinstance(v, int | float) else None


def med(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


def ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def ratio(d: float | None, o: float | None) -> float | None:
    return d / o if d is not None and o else None


def fx(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def table_lines(man: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's lines. kind "lat": value = median ms, ratio dcmnode/Orthanc, met if <= target; "thr": ratio of
    the throughputs, met if >= target. A line with two parts is met when both are."""
    m = man["instances_per_series"]
    n = man["instances_per_copy"]
    return [
        {
            "line": "C-ECHO on a new association, median",
            "kind": "lat",
            "target": 0.5,
            "parts": [("echo", "c_echo_new_association", "median_ms", None)],
        },
        {
            "line": "C-ECHO inside an association",
            "kind": "lat",
            "target": 0.5,
            "parts": [("echo", "c_echo_in_association", "median_ms", None)],
        },
        {
            "line": "C-FIND study, PatientName=* ({results} studies)",
            "kind": "lat",
            "target": 0.5,
            "parts": [("find", "c_find_study_patientname_all", "median_ms", None)],
        },
        {
            "line": "C-FIND study, PatientName=letter*",
            "kind": "lat",
            "target": 0.5,
            "parts": [("find", "c_find_study_patientname_letter", "median_ms", None)],
        },
        {
            "line": f"C-MOVE of a {m}-instance series",
            "kind": "thr",
            "target": 1.2,
            "parts": [("move", "c_move_series", "median_ms", "instances_per_s_median")],
        },
        {
            "line": f"C-GET of a {m}-instance series",
            "kind": "thr",
            "target": 1.2,
            "parts": [("get", "c_get_series", "median_ms", "instances_per_s_median")],
        },
        {
            "line": f"C-STORE, dcmtk storescu, 1 association ({n} inst)",
            "kind": "thr",
            "target": 1.5,
            "parts": [("ingest_storescu", "c_store_storescu", None, "instances_per_s")],
        },
        {
            "line": f"C-STORE, pynetdicom SCU, 1 association ({n} inst)",
            "kind": "thr",
            "target": 1.5,
            "parts": [("ingest_pynetdicom", "c_store_pynetdicom", None, "instances_per_s")],
        },
        {
            "line": "WADO-RS instance / first frame, median",
            "kind": "lat",
            "target": 0.5,
            "parts": [("wado", "wado_instance", "median_ms", None), ("wado", "wado_frame1", "median_ms", None)],
        },
        {
            "line": f"WADO-RS series retrieve ({m} inst)",
            "kind": "thr",
            "target": 1.2,
            "parts": [("wado", "wado_series_retrieve", "median_ms", "instances_per_s_median")],
        },
        {
            "line": "rendered JPEG, STOW POST latency",
            "kind": "lat",
            "target": 0.5,
            "parts": [
                ("wado", "wado_rendered_jpeg", "median_ms", None),
                ("stow", "stow_rs_post_latency", "median_ms", None),
            ],
        },
    ]


def part_value(bench: dict[str, Any] | None, part: tuple[str, str, str | None, str | None]) -> dict[str, Any]:
    phase, name, ms_key, thr_key = part
    return {
        "ms": metric(bench, phase, name, ms_key) if ms_key else None,
        "thr": metric(bench, phase, name, thr_key) if thr_key else None,
    }


def show(v: dict[str, float | None]) -> str:
    if v["thr"] is not None and v["ms"] is not None:
        return f"{ms(v['ms'])} ({v['thr']:.0f} inst/s)"
    if v["thr"] is not None:
        return f"{v['thr']:.1f} inst/s"
    return ms(v["ms"])


def summarize(a: argparse.Namespace, rounds: list[dict[str, Any]], man: dict[str, Any]) -> dict[str, Any]:
    def benches(node: str) -> list[dict[str, Any] | None]:
        return [r.get(node, {}).get("bench") for r in rounds]

    rows = []
    for spec in table_lines(man):
        row: dict[str, Any] = {"line": spec["line"], "kind": spec["kind"], "target": spec["target"], "parts": []}
        for part in spec["parts"]:
            per_round = {node: [part_value(b, part) for b in benches(node)] for node in NODES}
            medians = {node: {k: med([v[k] for v in per_round[node]]) for k in ("ms", "thr")} for node in NODES}
            key = "thr" if spec["kind"] == "thr" else "ms"
            r = ratio(medians["dcmnode"][key], medians["orthanc"][key])
            met = None if r is None else (r >= spec["target"] if spec["kind"] == "thr" else r <= spec["target"])
            row["parts"].append({"per_round": per_round, "median": medians, "ratio": r, "met": met})
        if "{results}" in row["line"]:
            res = next(
                (
                    b["phases"]["find"]["metrics"]["c_find_study_patientname_all"].get("results")
                    for b in benches("dcmnode") + benches("orthanc")
                    if b and b["phases"].get("find", {}).get("ok")
                ),
                "?",
            )
            row["line"] = row["line"].format(results=res)
        rows.append(row)
    # peak PSS over the process tree
    pss = {
        node: [(b or {}).get("server_process", {}).get("tree_peak_pss_MiB") for b in benches(node)] for node in NODES
    }
    procs = {node: [(b or {}).get("server_process", {}).get("processes") for b in benches(node)] for node in NODES}
    pss_med = {node: med(pss[node]) for node in NODES}
    r = ratio(pss_med["dcmnode"], pss_med["orthanc"])
    rows.append(
        {
            "line": "peak memory, PSS summed over the process tree",
            "kind": "mem",
            "target": 0.5,
            "parts": [
                {
                    "per_round": {n: pss[n] for n in NODES},
                    "processes": procs,
                    "median": pss_med,
                    "ratio": r,
                    "met": None if r is None else r <= 0.5,
                }
            ],
        }
    )
    # parallel C-STORE and the fsync limit
    par = []
    for n in a.parallel:
        per_round = {
            node: [((r.get(node, {}).get("parallel", {}).get(str(n)) or {}).get("json") or {}) for r in rounds]
            for node in NODES
        }
        values = {node: [j.get("instances_per_s") if j.get("ok") else None for j in per_round[node]] for node in NODES}
        medians = {node: med(values[node]) for node in NODES}
        par.append(
            {
                "associations": n,
                "per_round": values,
                "median": medians,
                "ratio": ratio(medians["dcmnode"], medians["orthanc"]),
                "met": None if medians["dcmnode"] is None else medians["dcmnode"] >= a.parallel_target,
                "ok": {node: [bool(j.get("ok")) for j in per_round[node]] for node in NODES},
            }
        )
    fsync: dict[str, list[float | None]] = {}
    for r in rounds:
        for run_ in ((r.get("fsync") or {}).get("json") or {}).get("runs", []):
            fsync.setdefault(str(run_["threads"]), []).append(run_["files_per_s"] if run_["ok"] else None)
    return {"rows": rows, "parallel": par, "fsync": {k: {"per_round": v, "median": med(v)} for k, v in fsync.items()}}


def yes(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "no")


def markdown(a: argparse.Namespace, s: dict[str, Any], rounds: list[dict[str, Any]], env: dict[str, Any]) -> str:
    nr = len(rounds)
    out = [
        f"# dcmnode and Orthanc 1.10.1 side by side ({env['date'][:10]}, {nr} round{'s' * (nr != 1)}, medians)",
        "",
        f"Command: `{env['command']}`",
        "",
        f"dcmnode: {env['dcmnode']}  ",
        f"Orthanc: {env['orthanc']} (ORTHANC_TCP_NODELAY=1)  ",
        f"Data set: {env['dataset']}  ",
        "Client: bench_node.py, `--accept-encoding identity --client-nodelay`, one invocation per phase, "
        + ("stock" if a.stock_client else "with bench_node_client.py's fix of pynetdicom's reactor race")
        + f"; machine: {env['machine']}",
        "",
        "| line (dcmnode / Orthanc) | dcmnode | Orthanc | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in s["rows"]:
        parts = row["parts"]
        if row["kind"] == "mem":
            p = parts[0]

            def mib(node: str, p: dict[str, Any] = p) -> str:
                v = p["median"][node]
                np_ = max((x for x in p["processes"][node] if x), default=None)
                return "n/a" if v is None else f"{v:.0f} MiB ({np_} process{'es' * (np_ != 1)})"

            cells = [mib("dcmnode"), mib("orthanc"), fx(p["ratio"])]
        else:
            cells = [
                " / ".join(show(p["median"]["dcmnode"]) for p in parts),
                " / ".join(show(p["median"]["orthanc"]) for p in parts),
                " / ".join(fx(p["ratio"]) for p in parts) + (" throughput" if row["kind"] == "thr" else ""),
            ]
        target = (">= " if row["kind"] == "thr" else "<= ") + f"{row['target']}x"
        mets = [p["met"] for p in parts]
        met = None if None in mets else all(mets)
        out.append(f"| {row['line']} | " + " | ".join(cells) + f" | {target} | {yes(met)} |")
    fs = s["fsync"]

    def fsync_cell(threads: str) -> str:
        v = fs.get(threads, {}).get("median")
        return "n/a" if v is None else f"{v:.0f} files/s"

    out += [
        "",
        "Parallel C-STORE (dcmtk storescu processes started together, `TCP_NODELAY=1`, distinct files per "
        "association, dcmnode with `store.fsync = true`) beside the fsync limit of this disk measured in the same "
        f"run (write + fsync + rename of {a.fsync_files} files of one instance's size, then fsync of the folder; "
        "same file system as the nodes' data):",
        "",
        "| line | dcmnode | Orthanc | ratio | target | met? | fsync limit, 1 thread / 4 threads |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in s["parallel"]:
        inst = env.get("par_instances", "?")

        def th(node: str, p: dict[str, Any] = p) -> str:
            v = p["median"][node]
            return "n/a" if v is None else f"{v:.0f} inst/s"

        out.append(
            f"| C-STORE, {p['associations']} parallel associations ({inst} inst) | {th('dcmnode')} | "
            f"{th('orthanc')} | {fx(p['ratio'])} | >= {a.parallel_target:.0f} inst/s | {yes(p['met'])} | "
            f"{fsync_cell('1')} / {fsync_cell('4')} |"
        )
    # per round
    out += [
        "",
        "## Per round (dcmnode / Orthanc; ratio)",
        "",
        "| line | " + " | ".join(f"round {i + 1} ({rounds[i]['order'][0]} first)" for i in range(nr)) + " |",
        "| --- |" + " --- |" * nr,
    ]
    for row in s["rows"]:
        cells = []
        for i in range(nr):
            bits = []
            for p in row["parts"]:
                if row["kind"] == "mem":
                    d, o = p["per_round"]["dcmnode"][i], p["per_round"]["orthanc"][i]
                    bits.append(f"{d} / {o} MiB ({fx(ratio(d, o))})")
                    continue
                d, o = p["per_round"]["dcmnode"][i], p["per_round"]["orthanc"][i]
                key = "thr" if row["kind"] == "thr" else "ms"
                bits.append(f"{show(d)} / {show(o)} ({fx(ratio(d[key], o[key]))})")
            cells.append("; ".join(bits))
        out.append(f"| {row['line']} | " + " | ".join(cells) + " |")
    for p in s["parallel"]:
        cells = [
            f"{p['per_round']['dcmnode'][i]} / {p['per_round']['orthanc'][i]} inst/s "
            f"({fx(ratio(p['per_round']['dcmnode'][i], p['per_round']['orthanc'][i]))})"
            for i in range(nr)
        ]
        out.append(f"| C-STORE, {p['associations']} parallel associations | " + " | ".join(cells) + " |")
    for threads, v in fs.items():
        out.append(f"| fsync limit, {threads} thread(s) | " + " | ".join(f"{x} files/s" for x in v["per_round"]) + " |")
    # checks and load
    out += ["", "## Checks", ""]
    for i, r in enumerate(rounds):
        for node in NODES:
            nr_ = r.get(node)
            if not nr_:
                out.append(f"- round {i + 1} {node}: not run")
                continue
            bench = nr_.get("bench") or {}
            bad = [
                f"{ph}: "
                + (
                    p.get("error")
                    or "; ".join(
                        c["check"] + " (" + str(c["detail"])[:120] + ")" for c in p.get("checks", []) if not c["ok"]
                    )
                )
                for ph, p in bench.get("phases", {}).items()
                if not p.get("ok")
            ]
            for n, pr in (nr_.get("parallel") or {}).items():
                js = pr.get("json") or {}
                if not js.get("ok"):
                    bad.append(
                        f"parallel {n}: " + "; ".join(c["detail"][:200] for c in js.get("checks", []) if not c["ok"])
                        or f"rc {pr.get('rc')}"
                    )
            stop = nr_.get("stop", {})
            state = "all checks passed" if not bad else "FAILED: " + " | ".join(bad)
            out.append(
                f"- round {i + 1} {node}: {state}; stopped {'cleanly' if stop.get('clean_stop') else 'NOT cleanly'}"
                f" ({nr_.get('wall_s')} s)"
            )
    out += [
        "",
        "## Load of the machine (1-min load average before -> after each phase; CPU busy % of both cores "
        "during the phase, steal %)",
        "",
        "Other helpers ran tests on the same 2 cores during this run; the load shows how much.",
        "",
        "| round | node | " + " | ".join(a.phases + [f"parallel {n}" for n in a.parallel]) + " |",
        "| --- | --- |" + " --- |" * (len(a.phases) + len(a.parallel)),
    ]
    for i, r in enumerate(rounds):
        for node in NODES:
            nr_ = r.get(node)
            if not nr_:
                continue
            cells = []
            for ph in a.phases:
                mach = (nr_.get("bench") or {}).get("phases", {}).get(ph, {}).get("machine")
                cells.append(cell_load(mach))
            for n in a.parallel:
                cells.append(cell_load((nr_.get("parallel") or {}).get(str(n))))
            out.append(f"| {i + 1} | {node} | " + " | ".join(cells) + " |")
        fz = r.get("fsync")
        if fz:
            out.append(f"| {i + 1} | fsync limit | {cell_load(fz)} |" + " |" * (len(a.phases) + len(a.parallel) - 1))
    out += [
        "",
        "Raw results: `round<N>/{orthanc,dcmnode}.json` (bench_node.py format, phases merged; "
        "`../shared/bench/compare.py` reads them), `round<N>/phases/*.json` (each invocation as written), "
        "`round<N>/*-parallel-<n>.json`, `round<N>/fsync-limit.json`, `summary.json`, `run.json`; "
        "logs under `round<N>/logs/`.",
        "",
    ]
    return "\n".join(out)


def cell_load(m: dict[str, Any] | None) -> str:
    if not m or "load_before" not in m:
        return ""
    return (
        f"{m['load_before']['load1']:.1f} -> {m['load_after']['load1']:.1f}, "
        f"{m['cpu_busy_pct']:.0f} % ({m['cpu_steal_pct']:.0f} st)"
    )


# ----------------------------------------------------------------------------------------------- set-up
def ensure_dataset(
    a: argparse.Namespace, path: Path, studies: int, series: int, inst: int, copies: int, tag: str | None
) -> dict[str, Any]:
    manifest = path / "manifest.json"
    if not manifest.exists():
        if path.exists() and any(path.iterdir()):
            raise Failure(f"{path} exists without manifest.json (an interrupted make_dataset.py?): remove it")
        need = studies * series * inst * copies * 0.55e6 * 1.2
        free = shutil.disk_usage(path.parent).free
        if free < need:
            raise Failure(f"{path.parent}: {free / 1e9:.1f} GB free, the data set needs {need / 1e9:.1f} GB")
        log(f"making the data set {path} ({studies}x{series}x{inst}, {copies} copies)")
        cmd = [
            str(a.bench_python),
            str(a.shared / "make_dataset.py"),
            "--studies",
            str(studies),
            "--series-per-study",
            str(series),
            "--instances-per-series",
            str(inst),
            "--copies",
            str(copies),
            "--out",
            str(path),
        ] + (["--tag", tag] if tag else [])
        a.work.mkdir(parents=True, exist_ok=True)
        if run(cmd, a.work / f"make_dataset-{path.name}.log", 3600) != 0:
            raise Failure(f"make_dataset.py failed: see {a.work / f'make_dataset-{path.name}.log'}")
    man = json.loads(manifest.read_text())
    if len(man["copies"]) < copies:
        raise Failure(f"{path} has {len(man['copies'])} copies, {copies} needed")
    return dict(man)


def version_of(python: Path, module: str, env: dict[str, str] | None = None) -> str:
    code = f"import {module} as m; print(getattr(m, '__version__', '?'), m.__file__)"
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return p.stdout.strip() if p.returncode == 0 else f"import failed: {p.stderr.strip()[-300:]}"


def git_rev(path: Path) -> str:
    """Branch, HEAD, and the last commit that changed the node's code (``path``, a checkout's src/)."""

    def git(*args: str) -> str:
        p = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30)
        return p.stdout.strip() if p.returncode == 0 else ""

    head = git("rev-parse", "--short=12", "HEAD")
    if not head:
        return "not a git checkout"
    src, _, subject = git("log", "-1", "--format=%h %s", "--", ".").partition(" ")
    subject = subject if len(subject) <= 60 else subject[:57] + "..."
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", ".") else ""
    return f'{head} ({git("rev-parse", "--abbrev-ref", "HEAD")}), src/ as of {src} "{subject}"{dirty}'


def preflight(a: argparse.Namespace) -> None:
    for f in ("bench_node.py", "make_dataset.py", "orthanc_up.sh", "orthanc_down.sh"):
        if not (a.shared / f).exists():
            raise Failure(f"{a.shared / f} missing: --shared must name ../shared/bench (the shared harness)")
    if not os.access(a.bench_python, os.X_OK):
        raise Failure(f"{a.bench_python} missing: run `bash {a.shared}/setup.sh` (as root) first")
    if "orthanc" in a.nodes and not (shutil.which("Orthanc") or os.access("/usr/sbin/Orthanc", os.X_OK)):
        raise Failure(f"Orthanc is not installed: run `bash {a.shared}/setup.sh` (as root) first")
    if not shutil.which("storescu"):
        raise Failure(f"dcmtk storescu not found: run `bash {a.shared}/setup.sh` (as root) first")
    if "dcmnode" in a.nodes:
        if not os.access(a.python, os.X_OK):
            raise Failure(f"--python {a.python}: not an executable (the venv with dcmnode's dependencies)")
        if not (a.dcmnode_src / "dcmnode" / "__init__.py").exists():
            raise Failure(f"--dcmnode-src {a.dcmnode_src}: no dcmnode package there")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="side_by_side.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--shared",
        type=Path,
        default=CHECKOUT.parent / "shared" / "bench",
        help="the shared harness (default: ../shared/bench next to the checkout)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="results folder (default bench/results/<date>-side-by-side)")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/side-by-side"),
        help="scratch: node data, Orthanc storage, fsync probe (same file system for all)",
    )
    ap.add_argument(
        "--bench-python",
        type=Path,
        default=Path("/tmp/benchvenv/bin/python"),
        help="the harness's venv (made by ../shared/bench/setup.sh)",
    )
    ap.add_argument(
        "--python",
        type=Path,
        default=Path("/work/main/.venv/bin/python"),
        help="Python with dcmnode's dependencies that runs `-m dcmnode serve`",
    )
    ap.add_argument(
        "--dcmnode-src",
        type=Path,
        default=CHECKOUT / "src",
        help="PYTHONPATH of the node: the src/ of the checkout under test (default: this checkout's)",
    )
    ap.add_argument(
        "--dataset",
        type=Path,
        default=Path("/tmp/bench-ds-20x1x40"),
        help="made (once) with make_dataset.py --studies 20 --series-per-study 1 --instances-per-series 40",
    )
    ap.add_argument(
        "--par-dataset",
        type=Path,
        default=Path("/tmp/bench-ds-par-20x2x40"),
        help="for the parallel C-STORE: 2 copies of 20x2x40, tag PAR42 (made once)",
    )
    ap.add_argument("--nodes", default="orthanc,dcmnode", help="comma list; the table needs both")
    ap.add_argument("--phases", default=",".join(PHASES), help="bench_node.py phases")
    ap.add_argument("--parallel", default="4,16", help="associations of the parallel C-STORE runs; '' = none")
    ap.add_argument("--parallel-target", type=float, default=450.0, help="instances/s the issue asks for")
    ap.add_argument("--fsync-files", type=int, default=1000, help="files per fsync-limit measurement; 0 = skip")
    ap.add_argument("--phase-timeout", type=float, default=900)
    ap.add_argument("--dcmnode-dimse-port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--dcmnode-http-port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--orthanc-dicom-port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--orthanc-http-port", type=int, default=0, help="0 = any free port")
    ap.add_argument(
        "--scp-port",
        type=int,
        default=11113,
        help="the harness's C-MOVE destination (peer BENCH); a free one if in use",
    )
    ap.add_argument(
        "--stock-client",
        action="store_true",
        help="run bench_node.py as it is, without bench_node_client.py's fix of pynetdicom's reactor race",
    )
    ap.add_argument("--setup", action="store_true", help="(side_by_side.sh) run setup.sh first when needed")
    a = ap.parse_args()
    a.shared = a.shared.resolve()
    a.work = a.work.resolve()
    a.dcmnode_src = a.dcmnode_src.resolve()
    a.nodes = [n.strip() for n in a.nodes.split(",") if n.strip()]
    a.phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    a.parallel = [int(x) for x in a.parallel.split(",") if x.strip()]
    if set(a.nodes) - set(NODES) or not a.nodes:
        ap.error(f"--nodes: choose from {NODES}")
    if set(a.phases) - set(PHASES):
        ap.error(f"--phases: choose from {PHASES}")
    if not 1 <= a.rounds <= 20:
        ap.error("--rounds must be 1..20")
    if any(not 1 <= n <= 64 for n in a.parallel):
        ap.error("--parallel: 1..64 associations")
    today = datetime.date.today().isoformat()
    a.out = (a.out or HERE / "results" / f"{today}-side-by-side").resolve()
    return a


def main() -> int:
    a = parse()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    nodes: dict[str, Orthanc | Dcmnode] = {}
    rounds: list[dict[str, Any]] = []
    try:
        preflight(a)
        a.work.mkdir(parents=True, exist_ok=True)
        a.out.mkdir(parents=True, exist_ok=True)
        man = ensure_dataset(a, a.dataset, 20, 1, 40, 3, None)
        par = ensure_dataset(a, a.par_dataset, 20, 2, 40, 2, "PAR42") if a.parallel else {}
        if par and par["tag"] == man["tag"]:
            raise Failure(f"{a.par_dataset} and {a.dataset} share the tag {man['tag']}: their UIDs collide")
        a.par_copies = len(par.get("copies", [])) or 1
        if a.parallel and a.par_copies < len(a.parallel):
            log(f"note: {len(a.parallel)} parallel runs but {a.par_copies} copies: copies are reused within a round")
        sample = next(iter(sorted((a.dataset / "c0").rglob("*.dcm"))))
        need = 2.5 * (man["total_bytes"] + par.get("total_bytes", 0))
        free = shutil.disk_usage(a.work).free
        if free < need:
            raise Failure(f"{a.work}: {free / 1e9:.1f} GB free; a node's store needs about {need / 1e9:.1f} GB")
        for d in (a.work / "orthanc", a.work / "dcmnode", a.work / "fsync"):
            d.mkdir(parents=True, exist_ok=True)
        devs = {os.stat(d).st_dev for d in (a.work / "orthanc", a.work / "dcmnode", a.work / "fsync")}
        dcm_env = {k: v for k, v in os.environ.items() if not k.startswith("DCMNODE_")}
        dcm_env["PYTHONPATH"] = str(a.dcmnode_src)
        env = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["bench/side_by_side.sh", *sys.argv[1:]]),
            "dcmnode": f"{git_rev(a.dcmnode_src)} ({version_of(a.python, 'dcmnode', dcm_env)}), "
            f"pynetdicom {version_of(a.python, 'pynetdicom').split()[0]}, `{a.python} -m dcmnode serve`",
            "orthanc": "",
            "dataset": f"{a.dataset} ({man['studies']}x{man['series_per_study']}x{man['instances_per_series']}, "
            f"{len(man['copies'])} copies of {man['instances_per_copy']} CT {man['rows']}x{man['cols']}, "
            f"{man['total_bytes'] / 1e6 / len(man['copies']):.0f} MB each, tag {man['tag']})"
            + (f"; parallel: {a.par_dataset} ({par['instances_per_copy']} per copy, tag {par['tag']})" if par else ""),
            "par_instances": par.get("instances_per_copy"),
            "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            "same_file_system": len(devs) == 1,
            "load_at_start": load(),
            "settings": {k: str(v) for k, v in vars(a).items()},
        }
        log(f"dcmnode: {env['dcmnode']}")
        log(f"results in {a.out}")
        if "orthanc" in a.nodes:
            nodes["orthanc"] = Orthanc(a)
        if "dcmnode" in a.nodes:
            nodes["dcmnode"] = Dcmnode(a)
        for rnd in range(1, a.rounds + 1):
            rdir = a.out / f"round{rnd}"
            rdir.mkdir(parents=True, exist_ok=True)
            order = [n for n in NODES if n in nodes]
            if rnd % 2 == 0:
                order.reverse()
            record: dict[str, Any] = {"round": rnd, "order": order}
            rounds.append(record)
            for name in order:
                record[name] = one_node(a, nodes[name], rnd, rdir)
                if name == "orthanc":
                    env["orthanc"] = env["orthanc"] or nodes[name].version
            if a.fsync_files:
                record["fsync"] = fsync_limit(a, rdir, sample)
        env["load_at_end"] = load()
        summary = summarize(a, rounds, man)
        md = markdown(a, summary, rounds, env)
        (a.out / "summary.md").write_text(md)
        (a.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        (a.out / "run.json").write_text(
            json.dumps({**env, "rounds": [{k: v for k, v in r.items()} for r in rounds]}, indent=1, default=str) + "\n"
        )
        print("\n" + md)
        ok = all(r[n].get("bench", {}).get("all_ok") for r in rounds for n in nodes)
        ok = ok and all(
            ((p.get("json") or {}).get("ok"))
            for r in rounds
            for n in nodes
            for p in (r[n].get("parallel") or {}).values()
        )
        return 0 if ok else 1
    except Failure as exc:
        print(f"side_by_side: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"side_by_side: interrupted ({exc}): stopping the nodes", file=sys.stderr)
        return 130
    finally:
        for node in nodes.values():  # idempotent: a node already stopped is left alone
            with contextlib.suppress(Exception):
                node.stop(a.work)
        shutil.rmtree(a.work / "fsync", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
