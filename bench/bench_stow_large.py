"""One large STOW-RS request (every file of a folder in a single POST, streamed by the client) while sampling the
node's RSS: shows that the request body never sits in the node's memory. Run on purpose; see bench/README.md."""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BOUNDARY = "dcmnode-large-stow"


def body(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield path.read_bytes()
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", type=Path, help="e.g. /tmp/bench-ds-20x2x50/c2 (a copy the node does not hold yet)")
    ap.add_argument("--dicomweb-base", default="http://127.0.0.1:8080/dicom-web")
    ap.add_argument("--server-pid", type=int, required=True, help="the node's HTTP process")
    args = ap.parse_args()
    files = sorted(args.folder.rglob("*.dcm"))
    size = sum(os.path.getsize(p) for p in files)
    peak, done = 0, threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.05):
            status = Path(f"/proc/{args.server_pid}/status").read_text()
            peak = max(peak, int(re.search(r"VmRSS:\s+(\d+)", status)[1]))  # type: ignore[index]

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    response = httpx.post(
        f"{args.dicomweb_base}/studies",
        content=body(files),
        timeout=1800,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
    )
    elapsed = time.perf_counter() - t0
    done.set()
    watcher.join()
    referenced = len(response.json().get("00081199", {}).get("Value", []))
    print(
        f"one STOW-RS request: {len(files)} files, {size / 1e6:.0f} MB -> HTTP {response.status_code}, "
        f"{referenced} referenced, {elapsed:.1f} s, node peak RSS {peak / 1024:.0f} MiB"
    )
    return 0 if response.status_code == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
