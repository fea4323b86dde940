#!/usr/bin/env python3
"""Peak memory of one super-resolution job (``dcmnode.core.jobs.runner.run``) against the number of slices.

Builds a CT series of N 512x512 slices (pydicom's CT_small header, a Shepp-Logan phantom in HU as pixels), stores
it in a fresh data folder, runs one job in this process and reports the process's peak RSS during the job above
its RSS just before it (``VmHWM``, reset before the job). Each configuration runs in its own child process.

    python bench/sr_memory.py                       # classical x2 and x4, 10 and 40 slices
    python bench/sr_memory.py --slices 40 --factors 4 --methods learned
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def status_mib(key: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS (proc(5))."""
    Path("/proc/self/clear_refs").write_text("5")


def series(n: int) -> list:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from sr_eval import phantom

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = phantom(512, seed=0)
    series_uid, out = generate_uid(), []
    for i in range(n):
        ds = copy.deepcopy(template)
        stored = np.round((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)).astype(np.int16)
        ds.Rows, ds.Columns, ds.PixelData = 512, 512, stored.tobytes()
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        out.append(ds)
    return out


def one(slices: int, factor: int, method: str) -> dict[str, object]:
    from pydicom.filebase import DicomBytesIO

    from dcmnode.core.catalog import Catalog
    from dcmnode.core.ingest import Ingest
    from dcmnode.core.jobs import queue as jobs
    from dcmnode.core.jobs import runner
    from dcmnode.model import Source, SourceKind
    from dcmnode.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "data", fsync=False)
        catalog, ingest = Catalog(store), Ingest(store)
        for ds in series(slices):
            buf = DicomBytesIO()
            ds.save_as(buf, enforce_file_format=True)
            ingest.store_bytes(buf.getvalue(), Source(SourceKind.IMPORT))
        job = jobs.Jobs(store.index).submit(ds.SeriesInstanceUID, factor=factor, method=method)
        reset_peak()
        before = status_mib("VmRSS")
        t0 = time.perf_counter()
        runner.run(job, catalog, ingest, lambda f, s: None, lambda: False, params={"max_train_seconds": 20.0})
        wall = time.perf_counter() - t0
        peak = status_mib("VmHWM")
        catalog.close()
        store.close()
    return {"slices": slices, "factor": factor, "method": method, "rss_before_mib": round(before),
            "peak_above_mib": round(peak - before), "seconds": round(wall, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, nargs="*", default=[10, 40])
    ap.add_argument("--factors", type=int, nargs="*", default=[2, 4])
    ap.add_argument("--methods", nargs="*", default=["classical"])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(int(args.child[0]), int(args.child[1]), args.child[2])))
        return 0
    for method in args.methods:
        for factor in args.factors:
            for n in args.slices:
                cmd = [sys.executable, __file__, "--child", str(n), str(factor), method]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
