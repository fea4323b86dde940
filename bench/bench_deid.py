#!/usr/bin/env python3
"""De-identification throughput and memory: header only on a CT series, with OCR (Clean Pixel Data) on a
multi-frame ultrasound; memory against the series' size.

Run on purpose, never in the test suite. From the repository root, with the virtualenv's python::

    python bench/bench_deid.py --out-md bench/results/2026-12-02-deid/run1.md --out-json .../run1.json

Phases, each in a fresh child process (so that its peak resident set, VmHWM, is its own):

  engine-ct-N     ``deid.engine.Deidentifier.apply`` over an N-slice 512x512 CT read file by file, each result
                  written back as a Part 10 file (Basic Profile + retain-longitudinal-modified-dates +
                  clean-descriptors): instances/s, peak RSS; run for two sizes to show memory flat in N
  cli-ct-N        ``dcmnode deidentify STUDY --project bench`` storing the de-identified study in the node
                  (the whole path: catalog, engine, ingest): instances/s, peak RSS
  engine-us-F     one F-frame 640x480 RGB ultrasound with a name, an ID and a date drawn on every frame, with
                  clean-pixel-data (tesseract OCR, both polarities, before and after masking): frames/s, peak RSS

Every output is checked: PatientIdentityRemoved = YES, a new SOP Instance UID, the original Patient Name absent
from the output bytes; the ultrasound's masked regions cover every frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEAK = re.compile(r"^PEAK-KIB (\d+)$", re.M)
RESULT = re.compile(r"^RESULT (.+)$", re.M)
OPTIONS = ("retain-longitudinal-modified-dates", "clean-descriptors")
NAME = "Bench^Deid^Patient"


def child(code: str, *args: str) -> tuple[dict[str, Any], float]:
    """Run ``code`` in a fresh interpreter; its RESULT json and its peak RSS in MiB (VmHWM at exit)."""
    prologue = (
        "import atexit, sys, json\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'src')!r}]\n"
        "def _peak():\n"
        "    with open('/proc/self/status') as s:\n"
        "        kib = next(l.split()[1] for l in s if l.startswith('VmHWM:'))\n"
        "    sys.stderr.write(f'\\nPEAK-KIB {kib}\\n')\n"
        "atexit.register(_peak)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", prologue + code, *args], capture_output=True, text=True, timeout=3600, check=False
    )
    peak, result = PEAK.search(done.stderr), RESULT.search(done.stdout)
    if done.returncode != 0 or peak is None or result is None:
        raise SystemExit(f"phase failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(result[1]), int(peak[1]) / 1024


MAKE_CT = """
from pathlib import Path
from tests.factories import ct_series, write_series
n, out = int(sys.argv[1]), Path(sys.argv[2])
write_series(out, ct_series(n, 512, 512, patient_id="DEID-BENCH-1", patient_name="Bench^Deid^Patient", phantom=True))
print("RESULT " + json.dumps({"files": n}))
"""

ENGINE_CT = """
import time
from pathlib import Path
import pydicom
from dcmnode.deid.engine import Deidentifier, Profile
from dcmnode.deid.keys import ProjectKey
from dcmnode.deid.options import parse_options
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
engine = Deidentifier(ProjectKey(bytes(range(32))), Profile(options=parse_options(sys.argv[3].split(","))))
files = sorted(src.glob("*.dcm"))
started = time.perf_counter()
for i, path in enumerate(files):
    ds = pydicom.dcmread(path)
    result = engine.apply(ds).dataset
    target = out / f"{i:05d}.dcm"
    result.save_as(target, enforce_file_format=True)
    assert result.PatientIdentityRemoved == "YES" and result.SOPInstanceUID != ds.SOPInstanceUID
    assert b"Bench" not in target.read_bytes()
elapsed = time.perf_counter() - started
print("RESULT " + json.dumps({"instances": len(files), "seconds": elapsed}))
"""

CLI_CT = """
import time
from dcmnode.cli import main
started = time.perf_counter()
code = main(sys.argv[1:])
print("RESULT " + json.dumps({"code": code, "seconds": time.perf_counter() - started}))
"""

ENGINE_US = """
import time
import numpy as np
from tests.test_deid_pixels import ANNOTATION, _frame, _us
from dcmnode.deid.engine import Deidentifier, Profile
from dcmnode.deid.keys import ProjectKey
from dcmnode.deid.options import parse_options
frames = int(sys.argv[1])
ds = _us([_frame(i, ANNOTATION, rgb=True) for i in range(frames)], PatientName="DOE^JOHN", PatientID="PID12345",
         PatientBirthDate="19700101", StudyInstanceUID="1.2.3.4", SeriesInstanceUID="1.2.3.4.5",
         BurnedInAnnotation="YES")
options = parse_options(["clean-pixel-data"])
engine = Deidentifier(ProjectKey(bytes(range(32))), Profile(options=options))
started = time.perf_counter()
outcome = engine.apply(ds)
elapsed = time.perf_counter() - started
covered = sorted({r.frame for r in outcome.masked})
assert covered == list(range(1, frames + 1)), covered
assert outcome.dataset.BurnedInAnnotation == "NO"
print("RESULT " + json.dumps({"frames": frames, "seconds": elapsed, "regions": len(outcome.masked)}))
"""


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    phases: dict[str, Any] = {}
    for n in args.ct_sizes:
        src = work / f"ct-{n}"
        child(MAKE_CT, str(n), str(src))
        result, peak = child(ENGINE_CT, str(src), str(work / f"out-{n}"), ",".join(OPTIONS))
        phases[f"engine-ct-{n}"] = {**result, "per_s": result["instances"] / result["seconds"], "peak_mib": peak}
        print(f"engine-ct-{n}: {phases[f'engine-ct-{n}']}", flush=True)
    largest = max(args.ct_sizes)
    data = work / "data"
    imported = subprocess.run(
        [sys.executable, "-m", "dcmnode", "import", "--data", str(data), "--no-progress", str(work / f"ct-{largest}")],
        capture_output=True, text=True, timeout=1800, check=False, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    if imported.returncode != 0:
        raise SystemExit(imported.stderr[-2000:])
    import pydicom

    study = pydicom.dcmread(next((work / f"ct-{largest}").glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    options = [item for name in OPTIONS for item in ("--option", name)]
    cli_args = ["deidentify", study, "--project", "bench", *options, "--data", str(data), "--no-progress"]
    result, peak = child(CLI_CT, *cli_args)
    if result["code"] != 0:
        raise SystemExit(f"dcmnode deidentify exited {result['code']}")
    phases[f"cli-ct-{largest}"] = {**result, "per_s": largest / result["seconds"], "peak_mib": peak}
    print(f"cli-ct-{largest}: {phases[f'cli-ct-{largest}']}", flush=True)
    for frames in args.us_frames:
        result, peak = child(ENGINE_US, str(frames))
        phases[f"engine-us-{frames}"] = {**result, "frames_per_s": frames / result["seconds"], "peak_mib": peak}
        print(f"engine-us-{frames}: {phases[f'engine-us-{frames}']}", flush=True)
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "options": OPTIONS,
        "phases": phases,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# De-identification, {result['when']} ({result['cores']} cores, load after "
        f"{' '.join(result['loadavg_after'])})",
        "",
        f"Header phases: Basic Profile + {', '.join(result['options'])}; ultrasound: clean-pixel-data (OCR).",
        "",
        "| phase | items | seconds | per second | peak RSS MiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, phase in result["phases"].items():
        items = phase.get("instances") or phase.get("frames") or name.rsplit("-", 1)[1]
        rate = phase.get("per_s") or phase.get("frames_per_s")
        lines.append(f"| {name} | {items} | {phase['seconds']:.1f} | {rate:.2f} | {phase['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-deid"), help="emptied and filled each run")
    parser.add_argument("--ct-sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--us-frames", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args()
    result = measure(args)
    text = markdown(result)
    print(text)
    for path, content in ((args.out_json, json.dumps(result, indent=2) + "\n"), (args.out_md, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
