"""Ingest benchmark for any DICOM node: C-STORE over 1 and 4 associations (dcmtk storescu) and STOW-RS in
batches of 50, with the node's peak RSS. Run on purpose, never in the test suite. See bench/README.md.

The dataset comes from ../shared/bench/make_dataset.py (copies c0, c1, c2 with distinct UIDs): c0 goes over
one association, c1 over 4 parallel associations, c2 by STOW-RS, so each phase stores new instances. After each
phase the node's instance count must have grown by exactly the number of files sent (``--count``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import httpx

BOUNDARY = "dcmnode-bench-boundary"


class RssMonitor(threading.Thread):
    """Samples the server's VmRSS every 50 ms; VmHWM gives the whole-life peak."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self._halt = pid, 0, threading.Event()

    def _field(self, name: str) -> int:
        if not self.pid:
            return 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return 0

    def run(self) -> None:
        while not self._halt.wait(0.05):
            self.peak_kb = max(self.peak_kb, self._field("VmRSS"))

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        return {"peak_rss_mib": round(self.peak_kb / 1024, 1), "vmhwm_mib": round(self._field("VmHWM") / 1024, 1)}


def count_instances(url: str) -> int:
    body = httpx.get(url, timeout=30).json()
    if "counts" in body:  # dcmnode /api/status
        return int(body["counts"]["instances"])
    return int(body["CountInstances"])  # Orthanc /statistics


def files_of(dataset: Path, copy: int) -> list[Path]:
    return sorted((dataset / f"c{copy}").rglob("*.dcm"))


def distinct_sops(files: list[Path]) -> int:
    """make_dataset.py repeats a few SOP Instance UIDs within a copy; a node keeps one of each."""
    import pydicom

    return len({pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files})


def warm(files: list[Path]) -> int:
    return sum(len(p.read_bytes()) for p in files)  # into the page cache: measure the node, not the disk


def storescu(args: argparse.Namespace, files: list[Path], log: IO[str]) -> subprocess.Popen[str]:
    cmd = [
        "storescu",
        "-v",
        "-aet",
        "BENCH",
        "-aec",
        args.aet,
        "-to",
        "30",
        "-ta",
        "30",
        "-td",
        "300",
        args.host,
        str(args.dimse_port),
        *map(str, files),
    ]
    # Output to a file, not a pipe: parallel clients writing into pipes read one after another stall on a full
    # pipe buffer (an earlier version of this script measured that stall).
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TCP_NODELAY": "1"}
    )


def phase_storescu(args: argparse.Namespace, files: list[Path], associations: int) -> dict[str, object]:
    nbytes = warm(files)
    chunks = [files[i::associations] for i in range(associations)]
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in chunks]
        t0 = time.perf_counter()
        procs = [storescu(args, chunk, log) for chunk, log in zip(chunks, logs, strict=True)]
        for p in procs:
            p.wait(timeout=1800)
        elapsed = time.perf_counter() - t0
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
    success = sum(len(re.findall(r"Received Store Response \(Success", out)) for out in outputs)
    assert all(p.returncode == 0 for p in procs), [out[-500:] for out in outputs]
    assert success == len(files), f"{success} successes for {len(files)} files"
    return {
        "instances": len(files),
        "seconds": round(elapsed, 2),
        "instances_per_s": round(len(files) / elapsed, 1),
        "mb_per_s": round(nbytes / 1e6 / elapsed, 1),
        "associations": associations,
    }


def multipart(paths: list[Path]) -> bytes:
    out = bytearray()
    for p in paths:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
    return bytes(out + f"--{BOUNDARY}--\r\n".encode())


def phase_stow(args: argparse.Namespace, files: list[Path], batch: int) -> dict[str, object]:
    warm(files)
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
        "Accept-Encoding": "identity",
    }
    latencies = []
    t0 = time.perf_counter()
    with httpx.Client(timeout=600) as client:
        for i in range(0, len(files), batch):
            part = files[i : i + batch]
            body = multipart(part)  # read per batch, as a client would
            s = time.perf_counter()
            r = client.post(f"{args.dicomweb_base}/studies", content=body, headers=headers)
            latencies.append((time.perf_counter() - s) * 1000)
            assert r.status_code == 200, (r.status_code, r.text[:500])
            assert len(r.json()["00081199"]["Value"]) == len(part)
    elapsed = time.perf_counter() - t0
    return {
        "instances": len(files),
        "seconds": round(elapsed, 2),
        "instances_per_s": round(len(files) / elapsed, 1),
        "batch": batch,
        "post_ms_p50": round(statistics.median(latencies), 1),
        "post_ms_p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", type=Path, required=True, help="made by ../shared/bench/make_dataset.py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dimse-port", type=int, default=11112)
    ap.add_argument("--aet", default="DCMNODE")
    ap.add_argument("--dicomweb-base", default="http://127.0.0.1:8080/dicom-web")
    ap.add_argument(
        "--count",
        required=True,
        help="URL giving the instance count: dcmnode http://…/api/status, Orthanc http://…/statistics",
    )
    ap.add_argument("--server-pid", type=int)
    ap.add_argument("--label", default="node")
    ap.add_argument("--out-json", type=Path)
    args = ap.parse_args()

    monitor = RssMonitor(args.server_pid)
    monitor.start()
    results: dict[str, object] = {"label": args.label}
    phases = [
        ("c_store_1_assoc", 0, lambda f: phase_storescu(args, f, 1)),
        ("c_store_4_assoc", 1, lambda f: phase_storescu(args, f, 4)),
        ("stow_batches_50", 2, lambda f: phase_stow(args, f, 50)),
    ]
    for name, copy, run in phases:
        files = files_of(args.dataset, copy)
        expected = distinct_sops(files)
        before = count_instances(args.count)
        results[name] = run(files)
        grew = count_instances(args.count) - before
        # dcmnode keeps SOP Instance UIDs unique (one instance each); Orthanc keys an instance by its
        # patient/study/series/SOP UIDs, so a SOP UID repeated under another series counts twice there.
        assert grew in (expected, len(files)), f"{name}: the node holds {grew} new instances for {len(files)} files"
        print(name, json.dumps(results[name]), flush=True)
    results["server"] = monitor.stop()
    print("server", json.dumps(results["server"]))
    if args.out_json:
        args.out_json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
