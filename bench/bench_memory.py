"""Memory of a running node as a whole: PSS of every process of ``dcmnode serve``'s tree, sampled while the shared
harness (``../shared/bench/bench_node.py``) drives it, summed as that harness sums it (``tree_peak_pss_MiB``).

Run on purpose, never in the test suite (see bench/README.md, "DIMSE profile (issue 19): memory")::

    /tmp/benchvenv/bin/python ../shared/bench/make_dataset.py --studies 6 --series-per-study 2 \\
        --instances-per-series 40 --out /tmp/mem-ds                      # 480 CT instances per copy
    /work/main/.venv/bin/python bench/bench_memory.py --dataset /tmp/mem-ds --rounds 3 --out-md /tmp/memory.md

Each round starts a fresh node (new data folder, default settings but for the ports and a ``[peers.BENCH]`` for
C-MOVE), samples every ``--interval`` seconds: idle after start, then during the harness's phases (``--phases``,
default all: echo, C-STORE by storescu and pynetdicom, STOW, C-FIND, QIDO, WADO, C-MOVE, C-GET), then
``--idle-after`` seconds of idle after the load. Each process is named by its role: ``http`` (the node's own
process), ``dimse`` (a DIMSE process), ``sr-worker``, ``metadata`` (a /metadata worker), ``mp-tracker``
(multiprocessing's resource tracker), from the process name dcmnode gives its children (``/proc/PID/comm``) or
the command line. It prints per-role peaks and the summed peak, and, per process, whether it maps libtorch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parents[1] / "shared" / "bench" / "bench_node.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(root: int) -> list[int]:
    """The process and all its descendants (as the harness walks them: /proc/PID/task/TID/children)."""
    pids, i = [root], 0
    while i < len(pids):
        try:
            for tid in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{tid}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return None


def role(pid: int, root: int) -> str:
    if pid == root:
        return "http"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "resource_tracker" in cmd:
        return "mp-tracker"
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "metadata"
    if comm.startswith("dcmnode-dimse"):
        return "dimse"
    if comm.startswith("dcmnode-sr"):
        return "sr-worker"
    return "child"  # a forked child of a node that does not name its processes (before issue 19)


def maps_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


class Sampler(threading.Thread):
    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.phase = "start"
        self.sum_peak: dict[str, int] = {}  # phase -> peak of the summed PSS (KiB)
        self.count_peak: dict[str, int] = {}  # phase -> most processes at once
        self.proc_peak: dict[int, int] = {}  # pid -> peak PSS (KiB)
        self.phase_proc_peak: dict[str, dict[int, int]] = {}  # phase -> pid -> peak PSS (KiB)
        self.roles: dict[int, str] = {}
        self.torch: dict[int, bool] = {}
        self.last: dict[int, int] = {}

    def set_phase(self, phase: str) -> None:
        with self.lock:
            self.phase = phase

    def sample(self) -> None:
        total, now = 0, {}
        for pid in tree(self.root):
            kib = pss_kib(pid)
            if kib is None:
                continue
            now[pid] = kib
            total += kib
            if pid not in self.roles or self.roles[pid] == "child":
                self.roles[pid] = role(pid, self.root)
            self.proc_peak[pid] = max(self.proc_peak.get(pid, 0), kib)
            if not self.torch.get(pid):
                self.torch[pid] = maps_torch(pid)
        with self.lock:
            phase = self.phase_proc_peak.setdefault(self.phase, {})
            for pid, kib in now.items():
                phase[pid] = max(phase.get(pid, 0), kib)
            self.sum_peak[self.phase] = max(self.sum_peak.get(self.phase, 0), total)
            self.count_peak[self.phase] = max(self.count_peak.get(self.phase, 0), len(now))
            self.last = now

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join()


def start_node(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"http": free_port(), "dimse": free_port(), "scp": free_port()}
    config = work / "bench.toml"
    config.write_text(f'[peers.BENCH]\nhost = "127.0.0.1"\nport = {ports["scp"]}\n' + args.extra_config)
    env = dict(os.environ, PYTHONPATH=str(Path(args.src).resolve()), DCMNODE_CONFIG=str(config))
    log = (work / "serve.log").open("wb")
    cmd = [args.python, "-m", "dcmnode", "serve", "--data", str(work / "data")]
    cmd += ["--http-port", str(ports["http"]), "--dimse-port", str(ports["dimse"])]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while b" ready: " not in (work / "serve.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the node did not start:\n" + (work / "serve.log").read_text())
        time.sleep(0.1)
    return proc, ports


def one_round(args: argparse.Namespace, n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dcmnode-mem-") as tmp:
        work = Path(tmp)
        proc, ports = start_node(args, work)
        sampler = Sampler(proc.pid, args.interval)
        sampler.start()
        harness: dict[str, object] = {}
        try:
            time.sleep(args.idle_before)
            idle_procs = dict(sampler.last)
            sampler.set_phase("load")
            if args.phases != "none":
                out = work / "harness.json"
                cmd = [args.harness_python, str(args.harness), "--dataset", args.dataset]
                cmd += ["--dimse-port", str(ports["dimse"]), "--aet", "DCMNODE", "--scp-port", str(ports["scp"])]
                cmd += ["--dicomweb-base", f"http://127.0.0.1:{ports['http']}/dicom-web", "--phases", args.phases]
                cmd += ["--server-pid", str(proc.pid), "--label", f"dcmnode-r{n}", "--out-json", str(out)]
                cmd += args.harness_args
                run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                assert run.stdout is not None
                tail: list[str] = []
                for line in run.stdout:  # "[12:00:00] phase wado ...": the samples that follow are that phase's
                    tail = [*tail[-40:], line]
                    if line.startswith("[") and line.rstrip().endswith(" ..."):
                        sampler.set_phase(line.split()[2])
                run.wait()
                if run.returncode != 0:
                    print("".join(tail), file=sys.stderr)
                    print(f"round {n}: the harness exited {run.returncode} (figures kept)", file=sys.stderr)
                if out.exists():
                    result = json.loads(out.read_text())
                    harness = {"tree_peak_pss_MiB": result.get("server_process", {}).get("tree_peak_pss_MiB")}
                    harness["passed"] = run.returncode == 0
                    harness["failed_checks"] = [
                        f"{phase}: {check.get('check')} ({check.get('detail')})"
                        for phase, r in result.get("phases", {}).items()
                        for check in r.get("checks", [])
                        if not check.get("ok")
                    ]
            sampler.set_phase("idle-after")
            time.sleep(args.idle_after)
            after_procs = dict(sampler.last)
        finally:
            sampler.stop()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        by_role: dict[str, list[float]] = {}
        for pid, kib in sampler.proc_peak.items():
            by_role.setdefault(sampler.roles.get(pid, "?"), []).append(round(kib / 1024, 1))
        phases = {
            phase: _roles(procs, sampler.roles) | {"sum_peak_MiB": round(sampler.sum_peak[phase] / 1024, 1)}
            for phase, procs in sampler.phase_proc_peak.items()
        }
        load = [v for k, v in sampler.sum_peak.items() if k not in ("start", "idle-after")]
        return {
            "load_peak_MiB": round(max(load) / 1024, 1) if load else None,
            "sum_peak_MiB": {k: round(v / 1024, 1) for k, v in sampler.sum_peak.items()},
            "phases": phases,
            "processes_peak": sampler.count_peak,
            "idle": _roles(idle_procs, sampler.roles),
            "idle_after": _roles(after_procs, sampler.roles),
            "peak_by_role_MiB": by_role,
            "torch_mapped_by": sorted({sampler.roles.get(p, "?") for p, t in sampler.torch.items() if t}),
            "harness": harness,
        }


def _roles(procs: dict[int, int], roles: dict[int, str]) -> dict[str, object]:
    out: dict[str, list[float]] = {}
    for pid, kib in procs.items():
        out.setdefault(roles.get(pid, "?"), []).append(round(kib / 1024, 1))
    return {"sum_MiB": round(sum(procs.values()) / 1024, 1), "processes": len(procs), "by_role": out}


def report(rounds: list[dict[str, object]], args: argparse.Namespace) -> str:
    def med(path: list[str]) -> float | None:
        values = []
        for r in rounds:
            v: object = r
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if isinstance(v, int | float):
                values.append(float(v))
        return round(statistics.median(values), 1) if values else None

    lines = [
        f"bench_memory.py, {len(rounds)} round(s), phases {args.phases}, dataset {args.dataset}, "
        f"sampled every {args.interval}s; medians over rounds",
        "",
        "| figure | MiB |",
        "| --- | --- |",
        f"| idle after start, summed PSS | {med(['idle', 'sum_MiB'])} |",
        f"| peak during the load, summed PSS (this sampler) | {med(['load_peak_MiB'])} |",
        f"| peak during the load, harness `tree_peak_pss_MiB` | {med(['harness', 'tree_peak_pss_MiB'])} |",
        f"| {args.idle_after:.0f} s after the load, summed PSS | {med(['idle_after', 'sum_MiB'])} |",
        "",
        "per phase (the harness's phases as it announces them), medians over rounds of the summed peak; the per-role",
        "peaks are round 1's:",
        "",
        "| phase | summed peak MiB | peak per process (role: MiB) |",
        "| --- | --- | --- |",
    ]
    first = rounds[0]["phases"]
    assert isinstance(first, dict)
    for phase, value in first.items():
        lines.append(f"| {phase} | {med(['phases', phase, 'sum_peak_MiB'])} | {_fmt(value['by_role'])} |")
    lines += [
        "",
        "| round | idle: processes (role: PSS MiB) | peak per process during the run | after | torch mapped by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n, r in enumerate(rounds, 1):
        idle, after = r["idle"], r["idle_after"]
        assert isinstance(idle, dict) and isinstance(after, dict)
        lines.append(
            f"| {n} | {idle['processes']}: {_fmt(idle['by_role'])} | {_fmt(r['peak_by_role_MiB'])} | "
            f"{after['processes']}: {_fmt(after['by_role'])} | {', '.join(r['torch_mapped_by']) or 'none'} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines) + "\n"


def _fmt(by_role: object) -> str:
    assert isinstance(by_role, dict)
    return "; ".join(f"{k} {', '.join(str(v) for v in sorted(vs, reverse=True))}" for k, vs in sorted(by_role.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a folder written by ../shared/bench/make_dataset.py")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--phases", default="all", help="harness phases (comma-separated), all, or none (idle only)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between samples (the harness: 0.1)")
    ap.add_argument("--idle-before", type=float, default=5.0, help="seconds idle after the node is ready")
    ap.add_argument("--idle-after", type=float, default=5.0, help="seconds idle after the load")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs dcmnode")
    ap.add_argument("--src", default=str(HERE.parent / "src"), help="dcmnode's source folder (PYTHONPATH)")
    ap.add_argument("--harness", default=str(HARNESS))
    ap.add_argument("--harness-python", default="/tmp/benchvenv/bin/python")
    ap.add_argument("--extra-config", default="", help="TOML appended to the node's configuration")
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    args, rest = ap.parse_known_args()
    args.harness_args = rest  # anything else goes to bench_node.py (--n-queries 20 ...)
    rounds = []
    for n in range(1, args.rounds + 1):
        print(f"[{time.strftime('%H:%M:%S')}] round {n} ...", flush=True)
        rounds.append(one_round(args, n))
        print(json.dumps(rounds[-1]), flush=True)
    md = report(rounds, args)
    print(md)
    if args.out_md:
        Path(args.out_md).write_text(md)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
