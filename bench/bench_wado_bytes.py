#!/usr/bin/env python3
"""WADO-RS byte-serving latency and STOW-RS POST latency of a DICOMweb server, one keep-alive client, no gzip
(``Accept-Encoding: identity``), as ``../shared/bench/bench_node.py``'s wado and stow phases ask. Run on purpose,
never in the test suite.

    python bench/bench_wado_bytes.py --source /tmp/ds-wado/c0 --dicomweb-base http://127.0.0.1:8080/dicom-web \\
        [--n 30] [--series-n 10] [--stow-posts 6] [--server-pid PID] [--label dcmnode] [--out-md FILE]

``--source``: a folder of DICOM files (e.g. ``make_dataset.py``'s ``c0``). Each STOW-RS POST sends 50 of them with
new Study/Series/SOP Instance UIDs (one new set per POST, series kept together), so every run stores new
instances and may be repeated on the same node. The WADO-RS requests then read what the first POSTs stored:

- ``instance``: one instance as ``multipart/related; type="application/dicom"`` (as stored: explicit VR LE);
- ``frame``: ``/frames/1`` as ``multipart/related; type="application/octet-stream"``;
- ``series``: a whole series as multipart DICOM;
- ``rendered JPEG``: ``/rendered`` as ``image/jpeg``, each instance asked once (a cold render);
- ``STOW 50``: one POST of 50 instances.

Every answer is checked (status, part count, byte length; the frame against the file's pixel data). With
``--server-pid`` the server's CPU time (user + system, from /proc, that process only) per request is reported too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid

STOW_BATCH = 50


def ticks(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(name: str, lats: list[float], cpu: float | None = None) -> dict[str, str]:
    lats = sorted(lats)
    p95 = lats[min(len(lats) - 1, int(round(0.95 * (len(lats) - 1))))]
    p10 = lats[int(round(0.10 * (len(lats) - 1)))]
    row = {
        "request": name,
        "n": str(len(lats)),
        "median ms": f"{statistics.median(lats) * 1000:.2f}",
        "p95 ms": f"{p95 * 1000:.2f}",
        "p10 ms": f"{p10 * 1000:.2f}",
        "min ms": f"{lats[0] * 1000:.2f}",
    }
    if cpu is not None:
        row["server CPU ms/request"] = f"{cpu * 1000 / len(lats):.2f}"
    return row


def renamed(files: list[tuple[Path, str]]) -> list[tuple[bytes, dict[str, str]]]:
    """The files with new UIDs, one new UID per (salt, old UID): files that shared a study or series in one salt
    share the new one; as bytes."""
    out = []
    for path, salt in files:

        def new(uid: str, salt: str = salt) -> str:
            return str(generate_uid(entropy_srcs=[salt, uid]))

        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = new(ds.StudyInstanceUID)
        ds.SeriesInstanceUID = new(ds.SeriesInstanceUID)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new(ds.SOPInstanceUID)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        ids = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID, "sop": ds.SOPInstanceUID}
        out.append((buffer.getvalue(), ids))
    return out


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"').encode()
    parts = []
    for piece in body.split(b"--" + boundary)[1:]:
        if piece.startswith(b"--"):
            break
        _, _, data = piece.partition(b"\r\n\r\n")
        parts.append(data[:-2])  # the CRLF before the next boundary
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="folder of DICOM files (e.g. make_dataset.py's c0)")
    ap.add_argument("--dicomweb-base", required=True)
    ap.add_argument("--n", type=int, default=30, help="requests per instance/frame/rendered variant")
    ap.add_argument("--series-n", type=int, default=10, help="whole-series retrieves")
    ap.add_argument("--stow-posts", type=int, default=6, help=f"STOW-RS POSTs of {STOW_BATCH} instances")
    ap.add_argument("--server-pid", type=int, default=None, help="report this process's CPU time per request")
    ap.add_argument("--label", default="node")
    ap.add_argument("--out-md", type=Path, default=None, help="append the table to this file")
    ap.add_argument("--out-json", type=Path, default=None, help="write the rows (and the label) as JSON")
    args = ap.parse_args()

    files = sorted(args.source.rglob("*.dcm"))
    if len(files) < STOW_BATCH:
        sys.exit(f"{args.source}: {len(files)} DICOM files, at least {STOW_BATCH} needed")
    base = args.dicomweb_base.rstrip("/")
    client = httpx.Client(timeout=120, headers={"User-Agent": "bench_wado_bytes/1", "Accept-Encoding": "identity"})
    rows: list[dict[str, str]] = []
    salt = uuid.uuid4().hex

    # -- STOW-RS: each POST 50 new instances ------------------------------------------------------------------
    stored: list[tuple[dict[str, str], bytes]] = []
    lats: list[float] = []
    cpu = 0.0
    for post in range(args.stow_posts):
        numbers = range(post * STOW_BATCH, (post + 1) * STOW_BATCH)  # each pass over the files: new UIDs
        batch = renamed([(files[k % len(files)], f"{salt}-{k // len(files)}") for k in numbers])
        boundary = "BENCH" + uuid.uuid4().hex
        chunks = []
        for data, _ in batch:
            chunks += [b"--", boundary.encode(), b"\r\nContent-Type: application/dicom\r\n\r\n", data, b"\r\n"]
        chunks += [b"--", boundary.encode(), b"--\r\n"]
        body = b"".join(chunks)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        c0, t0 = ticks(args.server_pid), time.perf_counter()
        r = client.post(f"{base}/studies", content=body, headers=headers)
        lats.append(time.perf_counter() - t0)
        cpu += ticks(args.server_pid) - c0
        if r.status_code != 200:
            sys.exit(f"STOW-RS POST {post}: HTTP {r.status_code} {r.text[:300]}")
        stored += [(ids, data) for data, ids in batch]
    rows.append(stats(f"STOW-RS POST of {STOW_BATCH} instances", lats, cpu if args.server_pid else None))

    # the instances of the first posts, once each, for the instance-level requests
    seen: set[str] = set()
    sample = []
    for ids, data in stored:
        if ids["sop"] not in seen:
            seen.add(ids["sop"])
            sample.append((ids, data))
    sample = sample[: args.n]

    def url(ids: dict[str, str], instance: bool = True) -> str:
        u = f"{base}/studies/{ids['study']}/series/{ids['series']}"
        return u + (f"/instances/{ids['sop']}" if instance else "")

    def run(name: str, items: list[tuple[str, str]], check: object) -> None:
        lats, cpu = [], 0.0
        for address, accept in items:
            c0, t0 = ticks(args.server_pid), time.perf_counter()
            r = client.get(address, headers={"Accept": accept})
            body = r.content
            lats.append(time.perf_counter() - t0)
            cpu += ticks(args.server_pid) - c0
            if r.status_code != 200:
                sys.exit(f"{name}: {address}: HTTP {r.status_code} {r.text[:300]}")
            check(r, body, address)  # type: ignore[operator]
        rows.append(stats(name, lats, cpu if args.server_pid else None))

    by_url = {url(ids): data for ids, data in sample}

    def check_instance(r: httpx.Response, body: bytes, address: str) -> None:
        parts = multipart_parts(body, r.headers["content-type"])
        assert len(parts) == 1 and parts[0] == by_url[address], "the instance differs from the file sent"

    def check_frame(r: httpx.Response, body: bytes, address: str) -> None:
        parts = multipart_parts(body, r.headers["content-type"])
        pixels = pydicom.dcmread(io.BytesIO(by_url[address.rsplit("/frames/", 1)[0]])).PixelData
        assert len(parts) == 1 and parts[0] == pixels, "frame 1 differs from the pixel data sent"

    def check_jpeg(r: httpx.Response, body: bytes, address: str) -> None:
        assert r.headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8", "not a JPEG"

    dicom = 'multipart/related; type="application/dicom"'
    octets = 'multipart/related; type="application/octet-stream"'
    run("WADO-RS instance (multipart DICOM)", [(url(ids), dicom) for ids, _ in sample], check_instance)
    frames = [(url(ids) + "/frames/1", octets) for ids, _ in sample]
    run("WADO-RS /frames/1 (multipart octet-stream)", frames, check_frame)
    run("/rendered JPEG, cold", [(url(ids) + "/rendered", "image/jpeg") for ids, _ in sample], check_jpeg)

    series: dict[str, list[bytes]] = {}
    for ids, data in stored:
        series.setdefault(url(ids, instance=False), []).append(data)
    largest = max(len(v) for v in series.values())
    whole = [(k, v) for k, v in series.items() if len(v) == largest]  # whole series only (a POST may cut one)
    counts = {largest}

    def check_series(r: httpx.Response, body: bytes, address: str) -> None:
        parts = multipart_parts(body, r.headers["content-type"])
        assert sorted(parts) == sorted(series[address]), f"{len(parts)} parts, not the {len(series[address])} sent"

    picks = [(whole[k % len(whole)][0], dicom) for k in range(args.series_n)]
    run(f"WADO-RS whole series ({'/'.join(map(str, sorted(counts)))} instances, multipart DICOM)", picks, check_series)

    columns = list(rows[0].keys() | rows[-1].keys())
    order = ["request", "n", "median ms", "p95 ms", "p10 ms", "min ms", "server CPU ms/request"]
    columns = [c for c in order if c in columns]
    lines = [f"{args.label}: {base}, keep-alive httpx {httpx.__version__}, Accept-Encoding identity", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    text = "\n".join(lines)
    print(text)
    if args.out_md:
        with args.out_md.open("a") as out:
            out.write(text + "\n\n")
    if args.out_json:
        args.out_json.write_text(json.dumps({"label": args.label, "base": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
