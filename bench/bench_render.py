#!/usr/bin/env python3
"""/rendered latency for any DICOMweb server: 512x512 CT frames (PNG and JPEG, cold and cached), a large 16-bit
DX image, and (dcmnode's vendor extension) enhance=clahe. Run on purpose, never in the test suite.

    python bench/bench_render.py make --out /tmp/render-ds            # 40 CT 512x512 + 3 DX 3000x2500, 16-bit
    storescu +sd +r 127.0.0.1 <port> /tmp/render-ds                   # load each node (or dcmnode import)
    python bench/bench_render.py run --dataset /tmp/render-ds --dicomweb-base http://127.0.0.1:8080/dicom-web \\
        --label dcmnode [--enhance]

"Cold" = the first request for an instance (each of the 20 CT instances is asked once per format);
"cached" = the same request repeated (20 times). Every answer is decoded and checked: the right size, not blank.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_FILES = 40
DX_FILES = 3


def make(out: Path, ct_source: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(ct_source.rglob("*.dcm"))[:CT_FILES]
    manifest: dict[str, list[dict[str, str]]] = {"ct": [], "dx": []}
    study = generate_uid(entropy_srcs=["render-bench"])
    series = generate_uid(entropy_srcs=["render-bench-ct"])
    for n, path in enumerate(sources):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["ct", str(n)])
        ds.PatientID, ds.PatientName = "RENDER-BENCH", "Render^Bench"
        ds.save_as(out / f"ct{n:03d}.dcm")
        manifest["ct"].append({"study": study, "series": series, "sop": ds.SOPInstanceUID, "rows": str(ds.Rows)})
    rng = np.random.default_rng(7)
    dx_series = generate_uid(entropy_srcs=["render-bench-dx"])
    for n in range(DX_FILES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["dx", str(n)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, dx_series
        ds.PatientID, ds.PatientName, ds.Modality = "RENDER-BENCH", "Render^Bench", "DX"
        ds.Rows, ds.Columns = 3000, 2500
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
        ds.WindowCenter, ds.WindowWidth = 8000, 12000
        y, x = np.mgrid[0:3000, 0:2500]
        body = 4000 + 6000 * np.exp(-(((x - 1250) / 900) ** 2 + ((y - 1500) / 1300) ** 2))
        ds.PixelData = (body + rng.normal(0, 150, body.shape)).clip(0, 16383).astype(np.uint16).tobytes()
        ds.save_as(out / f"dx{n}.dcm", enforce_file_format=True)
        manifest["dx"].append({"study": study, "series": dx_series, "sop": ds.SOPInstanceUID, "rows": "3000"})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {len(manifest['ct'])} CT and {len(manifest['dx'])} DX files to {out}")


def _url(base: str, item: dict[str, str]) -> str:
    return f"{base}/studies/{item['study']}/series/{item['series']}/instances/{item['sop']}/rendered"


def _timed(client: httpx.Client, url: str, accept: str, params: dict[str, str], rows: int) -> float:
    started = time.perf_counter()
    response = client.get(url, headers={"Accept": accept}, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code} {response.text[:200]}")
    picture = np.asarray(Image.open(io.BytesIO(response.content)))
    if picture.shape[0] != rows or picture.std() < 1:
        raise SystemExit(f"{url}: unexpected image {picture.shape}, std {picture.std():.1f}")
    return elapsed


def _line(name: str, values: list[float]) -> dict[str, float | str]:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    print(f"| {name} | {statistics.median(values):.1f} / {p95:.1f} ms (n={len(values)}) |")
    return {"metric": name, "p50_ms": round(statistics.median(values), 1), "p95_ms": round(p95, 1), "n": len(values)}


def run(args: argparse.Namespace) -> int:
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    client = httpx.Client(headers={"Accept-Encoding": args.accept_encoding}, timeout=120)
    results = []
    print(f"## /rendered, {args.label}\n\n| metric | p50 / p95 |\n| --- | --- |")
    ct = manifest["ct"][:20]
    # One unmeasured request first, on an instance the cold lines do not use: both servers' first request pays
    # for the connection and for lazy start-up work (imports, thread pools) that no later request sees.
    _timed(client, _url(args.dicomweb_base, manifest["ct"][-1]), "image/jpeg", {"quality": "50"}, 512)
    for accept in ("image/jpeg", "image/png"):
        cold = [_timed(client, _url(args.dicomweb_base, item), accept, {}, 512) for item in ct]
        results.append(_line(f"CT 512x512 {accept}, cold (first request per instance)", cold))
        cached = [_timed(client, _url(args.dicomweb_base, ct[0]), accept, {}, 512) for _ in range(20)]
        results.append(_line(f"CT 512x512 {accept}, cached (same request again)", cached))
    dx = manifest["dx"]
    cold = [_timed(client, _url(args.dicomweb_base, item), "image/jpeg", {}, 3000) for item in dx]
    results.append(_line("DX 3000x2500 16-bit image/jpeg, cold", cold))
    cached = [_timed(client, _url(args.dicomweb_base, dx[0]), "image/jpeg", {}, 3000) for _ in range(5)]
    results.append(_line("DX 3000x2500 16-bit image/jpeg, cached", cached))
    if args.enhance:
        clahe = [
            _timed(client, _url(args.dicomweb_base, item), "image/jpeg", {"enhance": "clahe:0.02"}, 512)
            for item in manifest["ct"][20:40]
        ]
        results.append(_line("CT 512x512 image/jpeg enhance=clahe:0.02, cold", clahe))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"label": args.label, "results": results}, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--out", type=Path, required=True)
    mk.add_argument("--ct-source", type=Path, default=Path("/tmp/bench-ds-20x2x50/c0"))
    mk.set_defaults(func=lambda a: make(a.out, a.ct_source) or 0)
    rn = sub.add_parser("run")
    rn.add_argument("--dataset", type=Path, required=True)
    rn.add_argument("--dicomweb-base", required=True)
    rn.add_argument("--label", default="node")
    rn.add_argument("--accept-encoding", default="gzip, deflate")
    rn.add_argument("--enhance", action="store_true", help="also measure enhance=clahe (dcmnode's extension)")
    rn.add_argument("--out-json")
    rn.set_defaults(func=run)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
