"""Parallel C-STORE and the fsync limit of the disk, for bench/side_by_side.sh (issue 19). Run on purpose, never
in the test suite. See bench/README.md, "Side by side with Orthanc".

``store``: N dcmtk ``storescu`` processes started together (``TCP_NODELAY=1``), each sending its own slice of one
copy of a ``make_dataset.py`` data set over one association; the wall time runs from the first start to the last
exit. Every process must exit 0 with one association and one Success response per file, and the node's instance
count (dcmnode ``/api/status``, Orthanc ``/statistics``) must grow by the instances sent. The node must not hold
that copy yet (a fresh node, or another ``--tag``).

``fsync-limit``: what this disk allows a node that acknowledges only durable instances: write + fsync + rename of
N files of one instance's size into a folder, then fsync of that folder (dcmnode's path: ``store/files.py``), in
1 and 4 threads (each thread its own files). Run it in a folder on the node's file system.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from bench_ingest import count_instances, distinct_sops, files_of, storescu, warm


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2)}


def cpu_times() -> list[int]:
    """The machine's CPU counters (all cores): user nice system idle iowait irq softirq steal, in ticks."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def cpu_share(before: list[int], after: list[int]) -> dict[str, float]:
    """Busy and steal shares of all cores between two ``cpu_times`` readings, in %."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    idle = d[3] + d[4]
    return {"cpu_busy_pct": round(100 * (total - idle) / total, 1), "cpu_steal_pct": round(100 * d[7] / total, 1)}


class TreePss(threading.Thread):
    """Peak of the proportional set size summed over a process and its descendants (as ../shared/bench does)."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kb, self.processes = pid, interval, 0, 0
        self._halt = threading.Event()

    def tree(self) -> list[int]:
        pids, i = [self.pid] if self.pid else [], 0
        while i < len(pids):
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pids[i]}/task"):
                    with open(f"/proc/{pids[i]}/task/{tid}/children") as f:
                        pids += [int(c) for c in f.read().split()]
            i += 1
        return pids

    def sample(self) -> None:
        pids, total = self.tree(), 0
        for pid in pids:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
        self.peak_kb, self.processes = max(self.peak_kb, total), max(self.processes, len(pids))

    def run(self) -> None:
        while self.pid and not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, float | int | None]:
        self._halt.set()
        if self.is_alive():
            self.join()
        if not self.pid:
            return {}
        return {"tree_peak_pss_MiB": round(self.peak_kb / 1024, 1), "processes": self.processes}


def run_store(args: argparse.Namespace) -> dict[str, object]:
    files = files_of(args.dataset, args.copy)
    if not files:
        raise SystemExit(f"no .dcm files under {args.dataset / f'c{args.copy}'}")
    n = args.associations
    chunks = [files[i::n] for i in range(n)]  # distinct files per association
    expected = distinct_sops(files)
    nbytes = warm(files)  # into the page cache: measure the node, not the source disk
    before = count_instances(args.count)
    monitor = TreePss(args.server_pid)
    monitor.start()
    load0, cpu0 = load(), cpu_times()
    ends: list[float] = [0.0] * n
    with contextlib.ExitStack() as stack:
        logs: list[IO[str]] = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in chunks]
        t0 = time.perf_counter()
        procs = [storescu(args, chunk, log) for chunk, log in zip(chunks, logs, strict=True)]

        def wait(i: int) -> None:
            try:
                procs[i].wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                procs[i].kill()
                procs[i].wait()
            ends[i] = time.perf_counter() - t0

        waiters = [threading.Thread(target=wait, args=(i,)) for i in range(n)]
        for w in waiters:
            w.start()
        for w in waiters:
            w.join()
        elapsed = max(ends)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
    cpu1, load1 = cpu_times(), load()
    server = monitor.stop()
    problems = []
    success = 0
    for i, (p, out, chunk) in enumerate(zip(procs, outputs, chunks, strict=True)):
        ok_i = len(re.findall(r"Received Store Response \(Success", out))
        assocs = len(re.findall(r"Association Accepted", out))
        success += ok_i
        if p.returncode != 0 or ok_i != len(chunk) or assocs != 1:
            tail = out.strip().splitlines()[-3:]
            problems.append(f"association {i}: rc={p.returncode}, {ok_i}/{len(chunk)} Success, {assocs} assoc: {tail}")
    time.sleep(0.2)  # the last index commit is acknowledged before the response; the count reads the index
    grew = count_instances(args.count) - before
    # dcmnode keeps SOP Instance UIDs unique, Orthanc counts a SOP UID repeated under another series twice
    count_ok = grew in (expected, len(files))
    checks = [
        {"check": "every storescu exit 0, one association, one Success per file", "ok": not problems,
         "detail": "; ".join(problems[:4]) or f"{success}/{len(files)} Success"},
        {"check": "node instance count grew by the instances sent", "ok": count_ok,
         "detail": f"grew {grew} for {len(files)} files ({expected} distinct SOP UIDs)"},
    ]  # fmt: skip
    return {
        "tool": "bench_parallel_store.py store",
        "label": args.label,
        "associations": n,
        "instances": len(files),
        "files_per_association": [len(c) for c in chunks],
        "bytes": nbytes,
        "seconds": round(elapsed, 3),
        "instances_per_s": round(len(files) / elapsed, 1),
        "MB_per_s": round(nbytes / 1e6 / elapsed, 1),
        "association_seconds_min_max": [round(min(ends), 3), round(max(ends), 3)],
        "copy": str(args.dataset / f"c{args.copy}"),
        "command": "TCP_NODELAY=1 storescu -v -aet BENCH -aec AET -to 30 -ta 30 -td 300 HOST PORT FILES... (x N)",
        "server": server,
        "load_before": load0,
        "load_after": load1,
        **cpu_share(cpu0, cpu1),
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


def fsync_files(folder: Path, data: bytes, names: range) -> None:
    """dcmnode's durable write: temp file written and fsynced, renamed into place, the folder fsynced."""
    tmp = folder / "tmp"
    final = folder / "final"
    dir_fd = os.open(final, os.O_RDONLY)
    try:
        for i in names:
            part = tmp / f"{i}.part"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(part, final / f"{i}.dcm")
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def run_fsync(args: argparse.Namespace) -> dict[str, object]:
    data = args.sample.read_bytes() if args.sample else os.urandom(args.size)
    args.dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, object]] = []
    for threads in args.threads:
        folder = Path(tempfile.mkdtemp(prefix=f"fsync-{threads}t-", dir=args.dir))
        try:
            (folder / "tmp").mkdir()
            (folder / "final").mkdir()
            os.sync()  # start from a quiet disk: no dirty pages of earlier phases
            n = args.files - args.files % threads
            per = n // threads
            load0, cpu0 = load(), cpu_times()
            t0 = time.perf_counter()
            workers = [
                threading.Thread(target=fsync_files, args=(folder, data, range(k * per, (k + 1) * per)))
                for k in range(threads)
            ]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - t0
            written = len(os.listdir(folder / "final"))
            results.append(
                {
                    "threads": threads,
                    "files": n,
                    "file_bytes": len(data),
                    "seconds": round(elapsed, 3),
                    "files_per_s": round(n / elapsed, 1),
                    "MB_per_s": round(n * len(data) / 1e6 / elapsed, 1),
                    "ok": written == n,
                    "load_before": load0,
                    "load_after": load(),
                    **cpu_share(cpu0, cpu_times()),
                }
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    st = os.statvfs(args.dir)
    return {
        "tool": "bench_parallel_store.py fsync-limit",
        "dir": str(args.dir),
        "st_dev": os.stat(args.dir).st_dev,
        "fs_free_GB": round(st.f_bavail * st.f_frsize / 1e9, 1),
        "method": "per file: open O_CREAT|O_EXCL, write, fsync, close, rename into final/, fsync(final/)",
        "runs": results,
        "ok": all(r["ok"] for r in results),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("store", help="N parallel storescu associations")
    st.add_argument("--dataset", type=Path, required=True, help="made by ../shared/bench/make_dataset.py")
    st.add_argument("--copy", type=int, default=0, help="the copy (cN) sent; the node must not hold it yet")
    st.add_argument("--associations", type=int, required=True)
    st.add_argument("--host", default="127.0.0.1")
    st.add_argument("--dimse-port", type=int, required=True)
    st.add_argument("--aet", required=True, help="the node's AE title")
    st.add_argument("--count", required=True, help="dcmnode http://…/api/status or Orthanc http://…/statistics")
    st.add_argument("--server-pid", type=int, help="the node's main PID: peak PSS summed over its process tree")
    st.add_argument("--timeout", type=float, default=600, help="seconds each storescu may take")
    st.add_argument("--label", default="node")
    fs = sub.add_parser("fsync-limit", help="write+fsync+rename+dir fsync rate of the disk")
    fs.add_argument("--dir", type=Path, required=True, help="a folder on the node's file system (emptied after)")
    fs.add_argument("--files", type=int, default=1000, help="files per measurement (split over the threads)")
    fs.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    fs.add_argument("--sample", type=Path, help="a file whose bytes are written (e.g. one 530 KB instance)")
    fs.add_argument("--size", type=int, default=530_000, help="bytes per file without --sample")
    for p in (st, fs):
        p.add_argument("--out-json", type=Path)
    args = ap.parse_args()
    if args.cmd == "store" and not 1 <= args.associations <= 64:
        ap.error("--associations must be 1..64")
    result = run_store(args) if args.cmd == "store" else run_fsync(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out_json:
        args.out_json.write_text(text + "\n")
    for check in result.get("checks", []):
        if not check["ok"]:
            print(f"check failed: {check['check']}: {check['detail']}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
