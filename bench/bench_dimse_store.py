"""C-STORE into a fresh ``dcmnode serve`` (issue 19): dcmtk storescu over 1, 4 and 16 parallel associations, a
pynetdicom SCU over 1, with ``store.fsync = true`` (the default), and this disk's fsync limit in the same run.
Run on purpose, never in the test suite. See bench/README.md, "DIMSE profile (issue 19): C-STORE".

Each line of each round starts a node from an empty data folder (``--src``: the source tree it runs, so that a
before/after pair runs the same harness), sends one copy of a ``make_dataset.py`` data set, checks every response
(one Success per file) and the node's instance count, and stops the node. Per line: instances/s, the CPU the
node's DIMSE processes used per instance (utime + stime from /proc), and how the associations spread over those
processes (their ``association from`` log lines, by process). The fsync limit: write + fsync + rename of files
of one instance's size, in 1 and 4 threads, in a folder beside the node's data (same file system).

    /work/main/.venv/bin/python bench/bench_dimse_store.py --dataset /tmp/ds-ingest --rounds 3 \\
        --src src --src /path/to/other/checkout/src --out-json /tmp/store.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_ingest import count_instances, distinct_sops, files_of, storescu, warm

PYSCU = """
import sys, socket, time
from pynetdicom import AE
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
files = sys.argv[3:]
ae = AE(ae_title="BENCH")
ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title=sys.argv[2])
assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ok = 0
for i, f in enumerate(files):
    st = assoc.send_c_store(f, msg_id=i % 65535 + 1)
    ok += int(st.Status == 0)
assoc.release()
print("ok", ok)
"""


class Node:
    """``python -m dcmnode serve`` from ``src`` on a fresh data folder, on free ports; its DIMSE processes."""

    def __init__(self, src: Path, root: Path, python: str) -> None:
        self.data = root / "data"
        self.log = root / "serve.log"
        env = {**os.environ, "PYTHONPATH": str(src.resolve())}
        self._log = open(self.log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [python, "-m", "dcmnode", "serve", "--data", str(self.data), "--dimse-port", "0", "--http-port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=root,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"DIMSE \S+@[\d.]+:(\d+).*HTTP https?://[\d.]+:(\d+)/", line)
        if not found:
            self.proc.kill()
            raise SystemExit(f"serve did not start: {line!r}\n{self.log.read_text()[-2000:]}")
        self.dimse_port, self.http_port = int(found[1]), int(found[2])
        self.children = [int(p) for p in subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                                         text=True).stdout.split()]  # fmt: skip

    def dimse_cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) of each child process (the DIMSE processes, and the SR worker)."""
        ticks = os.sysconf("SC_CLK_TCK")
        out = {}
        for pid in self.children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks
        return out

    def spread(self) -> dict[str, int]:
        """Associations accepted, by process (the log's ``[pid thread]``)."""
        counts: dict[str, int] = {}
        for pid in re.findall(r"\[(\d+) [^\]]*\] dcmnode\.dimse\.scp: association from", self.log.read_text()):
            counts[pid] = counts.get(pid, 0) + 1
        return counts

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()


def storescu_line(node: Node, files: list[Path], associations: int) -> float:
    args = argparse.Namespace(aet="DCMNODE", host="127.0.0.1", dimse_port=node.dimse_port)
    chunks = [files[i::associations] for i in range(associations)]
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in chunks]
        t0 = time.perf_counter()
        procs = [storescu(args, chunk, log) for chunk, log in zip(chunks, logs, strict=True)]
        for p in procs:
            p.wait(timeout=1800)
        elapsed = time.perf_counter() - t0
        success = 0
        for log, p in zip(logs, procs, strict=True):
            log.seek(0)
            out = log.read()
            assert p.returncode == 0, out[-1000:]
            success += len(re.findall(r"Received Store Response \(Success", out))
    assert success == len(files), f"{success} successes for {len(files)} files"
    return elapsed


def pynetdicom_line(node: Node, files: list[Path], python: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(
        [python, "-c", PYSCU, str(node.dimse_port), "DCMNODE", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0 and f"ok {len(files)}" in done.stdout, done.stdout + done.stderr[-1000:]
    return elapsed


def run_line(src: Path, line: str, files: list[Path], expected: int, python: str, client_python: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir="/tmp") as tmp:
        node = Node(src, Path(tmp), python)
        try:
            cpu0 = node.dimse_cpu()
            if line == "pynetdicom_1":
                elapsed = pynetdicom_line(node, files, client_python)
            else:
                elapsed = storescu_line(node, files, int(line.split("_")[1]))
            cpu1 = node.dimse_cpu()
            count = count_instances(f"http://127.0.0.1:{node.http_port}/api/status")
            spread = node.spread()
        finally:
            node.stop()
    assert count == expected, f"{line}: {count} instances stored, {expected} sent"
    # the processes that served associations (not the SR worker, nor the HTTP process's metadata workers)
    cpu = sum(cpu1.get(int(pid), 0) - cpu0.get(int(pid), 0) for pid in spread)
    return {
        "instances_per_s": round(len(files) / elapsed, 1),
        "seconds": round(elapsed, 2),
        "server_cpu_ms_per_instance": round(1000 * cpu / len(files), 2),
        "associations_by_process": sorted(spread.values(), reverse=True),
        "load1": round(os.getloadavg()[0], 2),
    }


def fsync_limit(folder: Path, size: int, threads: int, count: int = 400) -> float:
    """Files per second: write ``size`` bytes + fsync + rename, ``threads`` threads with their own files."""
    data = os.urandom(size)
    work = folder / f"fsync-{threads}"
    work.mkdir(parents=True)

    def one(t: int) -> None:
        for i in range(count // threads):
            temp, final = work / f"{t}-{i}.part", work / f"{t}-{i}.dcm"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)

    workers = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    shutil.rmtree(work)
    return round((count // threads * threads) / elapsed, 1)


LINES = ["storescu_1", "pynetdicom_1", "storescu_4", "storescu_16"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True, help="made by ../shared/bench/make_dataset.py")
    ap.add_argument("--copy", type=int, default=0, help="the copy each line sends (every line has a fresh node)")
    ap.add_argument("--src", type=Path, action="append", required=True, help="a dcmnode source tree (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lines", default=",".join(LINES))
    ap.add_argument("--python", default=sys.executable, help="runs the node (its venv has dcmnode's dependencies)")
    ap.add_argument("--client-python", default=sys.executable, help="runs the pynetdicom SCU")
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()

    files = files_of(args.dataset, args.copy)
    expected = distinct_sops(files)  # make_dataset repeats a few SOP Instance UIDs in a copy: one instance each
    size = int(statistics.median(p.stat().st_size for p in files))
    lines = args.lines.split(",")
    results: dict[str, Any] = {"instances": len(files), "instance_bytes": size, "rounds": []}
    for r in range(args.rounds):
        warm(files)
        one_round: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="bench-fsync-", dir="/tmp") as tmp:
            one_round["fsync_limit_files_per_s"] = {t: fsync_limit(Path(tmp), size, t) for t in (1, 4)}
        print(f"round {r + 1} fsync limit", json.dumps(one_round["fsync_limit_files_per_s"]), flush=True)
        srcs = args.src if r % 2 == 0 else args.src[::-1]  # alternate the order: neither always runs first
        for src in srcs:
            for line in lines:
                got = run_line(src, line, files, expected, args.python, args.client_python)
                one_round[f"{src}:{line}"] = got
                print(f"round {r + 1} {src} {line}", json.dumps(got), flush=True)
        results["rounds"].append(one_round)
    print("\nmedians of the rounds (instances/s, server CPU ms per instance)")
    for src in args.src:
        for line in lines:
            got = [rnd[f"{src}:{line}"] for rnd in results["rounds"]]
            rate = statistics.median(g["instances_per_s"] for g in got)
            cpu = statistics.median(g["server_cpu_ms_per_instance"] for g in got)
            print(f"{src}  {line:14s} {rate:7.1f}/s  {cpu:5.2f} ms  {[g['instances_per_s'] for g in got]}")
    limits = [rnd["fsync_limit_files_per_s"] for rnd in results["rounds"]]
    for t in (1, 4):
        median = statistics.median(x[t] for x in limits)
        print(f"fsync limit, {t} thread(s): {median:.0f} files/s {[x[t] for x in limits]}")
    if args.out_json:
        args.out_json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
