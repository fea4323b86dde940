"""Bulk upload of one ~1 GB ZIP (2,000 CT slices, 512x512, 16-bit) through the import job API, sampling the
node's RSS: shows that neither the upload nor the archive's expansion sits in the node's memory.

Starts nothing itself. Builds the ZIP once (cached under /tmp; its UIDs are fixed, so upload to a node whose data
folder does not hold them yet), then: POST /api/imports, PUT the ZIP to /api/imports/{id}/files/<name>.zip
(streamed from disk), POST .../finish, follow .../events until the job ends. Prints one markdown table row.

    .venv/bin/dcmnode serve --data /tmp/upl-data --http-port 18090 --dimse-port 18190 &
    python bench/bench_upload.py --base http://127.0.0.1:18090 --server-pid <PID>
"""

from __future__ import annotations

import argparse
import io
import json
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CACHE = Path("/tmp/bench-upload")
CHUNK = 1024 * 1024


# -- the archive --------------------------------------------------------------------------------------------------
def build_zip(path: Path, count: int, size: int) -> Path:
    """``count`` slices in series of 200, stored (not deflated: CT noise barely compresses), written slice by
    slice. Cached: built once per (count, size)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for i in range(count):
            if i % 200 == 0:
                series = generate_uid()
            ds = _slice(study, series, i, rng.integers(0, 2000, size=(size, size), dtype=np.int16))
            buffer = io.BytesIO()  # one slice at a time (pydicom needs a seekable file)
            ds.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"upload/series{i // 200:02d}/IM{i:05d}.dcm", buffer.getvalue())
    partial.rename(path)
    return path


def _slice(study: str, series: str, i: int, pixels: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "Bench^Upload", "BENCH-UPL", "20260101", "CT"
    ds.SeriesNumber, ds.InstanceNumber = i // 200 + 1, i % 200 + 1
    ds.ImagePositionPatient = [-250.0, -250.0, float(i % 200) * 1.25]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.98, 0.98], 1.25
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.tobytes()
    return ds


# -- the node's memory --------------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+)", status)
    return int(match[1]) if match else 0


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared by forked children counted once across the tree, not once each."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+)", rollup, re.M)
    return int(match[1]) if match else 0


def tree(pid: int) -> list[int]:
    """The process and its descendants (DIMSE, metadata and SR worker children of ``dcmnode serve``)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_main = self.peak_tree = self.peak_pss = self.processes = 0
        self.before_main = rss_kib(pid)
        self.before_tree = sum(rss_kib(p) for p in tree(pid))
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            pids = tree(self.pid)
            self.processes = max(self.processes, len(pids))
            self.peak_main = max(self.peak_main, rss_kib(self.pid))
            self.peak_tree = max(self.peak_tree, sum(rss_kib(p) for p in pids))
            self.peak_pss = max(self.peak_pss, sum(pss_kib(p) for p in pids))


# -- the upload ---------------------------------------------------------------------------------------------------
def chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fp:
        while data := fp.read(CHUNK):
            yield data


def follow(client: httpx.Client, base: str, job_id: str) -> dict[str, Any]:
    last: dict[str, Any] = {}
    with client.stream("GET", f"{base}/api/imports/{job_id}/events", timeout=None) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
    return last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="http://127.0.0.1:8080", help="the node's HTTP root")
    ap.add_argument("--server-pid", type=int, required=True, help="the node's HTTP process (dcmnode serve)")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--size", type=int, default=512, help="rows = columns of each slice")
    args = ap.parse_args()
    archive = build_zip(CACHE / f"upload-{args.files}x{args.size}.zip", args.files, args.size)
    mb = archive.stat().st_size / 1e6
    sampler = Sampler(args.server_pid)
    sampler.start()
    with httpx.Client(timeout=3600) as client:
        t0 = time.perf_counter()
        job = client.post(f"{args.base}/api/imports", json={"name": "bench", "expected_files": 1}).json()
        put = client.put(f"{args.base}/api/imports/{job['id']}/files/{archive.name}", content=chunks(archive))
        uploaded = time.perf_counter() - t0
        assert put.status_code == 202, put.text
        client.post(f"{args.base}/api/imports/{job['id']}/finish").raise_for_status()
        final = follow(client, args.base, job["id"])
        wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    print(
        f"| {args.files} files, {mb:.0f} MB ZIP | {final['state']}: {final['stored']} stored, "
        f"{final['duplicate']} duplicate, {final['failed_count']} failed, {final['skipped_count']} skipped "
        f"| upload {uploaded:.1f} s | wall {wall:.1f} s | {final['stored'] / wall:.0f} instances/s "
        f"| {mb / wall:.0f} MB/s | HTTP process RSS {sampler.before_main / 1024:.0f} → peak "
        f"{sampler.peak_main / 1024:.0f} MiB | node ({sampler.processes} processes) RSS sum "
        f"{sampler.before_tree / 1024:.0f} → peak {sampler.peak_tree / 1024:.0f} MiB, "
        f"peak PSS sum {sampler.peak_pss / 1024:.0f} MiB |"
    )
    return 0 if final.get("state") == "done" and not final.get("failed_count") else 1


if __name__ == "__main__":
    raise SystemExit(main())
