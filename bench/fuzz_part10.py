"""Fuzz the Part 10 parser and the STOW-RS multipart parser with hypothesis (issue 17). Run on purpose, not in CI:

    PYTHONPATH=src python bench/fuzz_part10.py [--minutes 3]

Targets: ``core.parse.parse_bytes`` (the ingest check: part10 scan/walk, the pydicom fallback and the limits),
``part10.json_model.file_to_json`` (``/metadata``), ``part10.pixel_header`` (render summary) and
``dicomweb.multipart.PartSpooler`` (the STOW body). Inputs: real files (pydicom's bundled ones, a generated CT,
the hostile cases of ``tests/hostile_dicom``) mutated by byte flips, 16/32-bit length overwrites, splices,
truncations; multipart bodies built and then mutated. A finding is any exception other than the declared ones
(``DcmnodeError`` and ``part10`` ``Unsupported``), an example slower than ``--deadline`` seconds, or a
MemoryError under the address-space cap (an allocation out of proportion to the input). Prints a summary; exit
status 1 when something was found.
"""

from __future__ import annotations

import argparse
import collections
import logging
import resource
import struct
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import pydicom.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcmnode.core.parse import parse_bytes  # noqa: E402
from dcmnode.dicomweb.multipart import PartSpooler  # noqa: E402
from dcmnode.errors import DcmnodeError  # noqa: E402
from dcmnode.part10 import json_model, pixel_header, scan  # noqa: E402
from dcmnode.part10.walk import Unsupported  # noqa: E402

SEED_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "MR_small_RLE.dcm",
    "emri_small.dcm",
    "rtplan.dcm",
    "liver_1frame.dcm",
]
ADDRESS_SPACE = 3 * 1024**3  # a MemoryError under this cap is a finding


def seeds() -> list[bytes]:
    from tests import hostile_dicom
    from tests.factories import ct_series, part10

    folder = Path(pydicom.data.__file__).parent / "test_files"
    out = [(folder / name).read_bytes() for name in SEED_FILES if (folder / name).is_file()]
    out.append(part10(ct_series(1, rows=16, cols=16)[0]))
    out += [hostile_dicom.nested(70), hostile_dicom.huge_length(), hostile_dicom.huge_image()]
    out += [hostile_dicom.huge_encapsulated(), hostile_dicom.long_text(70_000), hostile_dicom.nested(20)]
    return out


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 5))
        pos = draw(st.integers(132, max(len(data) - 1, 132)))
        if kind == 0:  # flip a byte
            if pos < len(data):
                data[pos] = draw(st.integers(0, 255))
        elif kind == 1:  # a 32-bit length, often a hostile one
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0x10000, 0xFFFFFFF0, 0xFFFFFFFF, 0x7FFFFFFF]) | st.integers())
            data[pos : pos + 4] = struct.pack("<L", value & 0xFFFFFFFF)
        elif kind == 2:  # a 16-bit length
            data[pos : pos + 2] = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        elif kind == 3:  # truncate
            del data[pos:]
        elif kind == 4:  # splice bytes from elsewhere (element headers, item tags)
            start = draw(st.integers(0, max(len(data) - 1, 0)))
            data[pos:pos] = data[start : start + draw(st.integers(1, 64))]
        else:  # an item / delimiter tag
            data[pos:pos] = draw(st.sampled_from([b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"]))
    return bytes(data)


class Findings:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.runs: collections.Counter[str] = collections.Counter()
        self.found: dict[tuple[str, str, str], tuple[int, bytes]] = {}
        self.slowest: dict[str, float] = collections.defaultdict(float)

    def run(self, target: str, call: object, data: bytes, allowed: tuple[type[BaseException], ...]) -> None:
        self.runs[target] += 1
        start = time.perf_counter()
        try:
            call(data)  # type: ignore[operator]
        except allowed:
            pass
        except Exception as exc:  # noqa: BLE001 - everything else is a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = (target, type(exc).__name__, f"{Path(frame.filename).name}:{frame.lineno}")
            count, example = self.found.get(key, (0, data))
            self.found[key] = (count + 1, example if len(example) <= len(data) else data)
        took = time.perf_counter() - start
        self.slowest[target] = max(self.slowest[target], took)
        if took > self.deadline:
            key = (target, "slow", f"{took:.1f}s")
            self.found.setdefault(key, (1, data))


def spool(body: bytes, boundary: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spooler = PartSpooler(boundary, Path(tmp), 1 << 20, fsync=False)
        try:
            for n in range(0, len(body), 4096):
                spooler.write(body[n : n + 4096])
            spooler.finish()
        finally:
            spooler.discard()
            left = list(Path(tmp).iterdir())
            if left:
                raise AssertionError(f"discard left {left}")


@st.composite
def multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b", "boundary-123", "x" * 70, "--", "a b"]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        headers = draw(
            st.lists(st.sampled_from([b"Content-Type: application/dicom", b"X: " + b"y" * 300, b":", b"A"]), max_size=3)
        )
        payload = draw(st.binary(max_size=200))
        if draw(st.booleans()):
            payload += f"\r\n--{boundary}".encode()[: draw(st.integers(0, len(boundary) + 4))]
        parts.append(f"--{boundary}\r\n".encode() + b"\r\n".join(headers) + b"\r\n\r\n" + payload + b"\r\n")
    body = bytearray(b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b""))
    for _ in range(draw(st.integers(0, 3))):
        if body:
            pos = draw(st.integers(0, len(body) - 1))
            body[pos : pos + 1] = draw(
                st.sampled_from([b"\r", b"\n", b"-", b"\x00", b"", b"\r\n--" + boundary.encode()])
            )
    return bytes(body), boundary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds an example may take")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    logging.disable(logging.CRITICAL)  # python-multipart logs every malformed body
    warnings.simplefilter("ignore")  # pydicom warns on every odd element
    corpus = seeds()
    findings = Findings(args.deadline)
    declared = (DcmnodeError, Unsupported)

    def header(data: bytes) -> None:
        found = scan.scan(data, pixel_header.SCAN_TAGS)
        pixel_header.check_promise(found)
        pixel_header.plain_image(found)

    quiet = settings(
        max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=False
    )

    @quiet
    @given(mutated(corpus))
    def part10(data: bytes) -> None:
        findings.run("parse_bytes", parse_bytes, data, declared)
        findings.run("json_model", lambda d: json_model.file_to_json(d, None, {}), data, declared)
        findings.run("pixel_header", header, data, declared)

    @quiet
    @given(multipart())
    def stow(case: tuple[bytes, str]) -> None:
        body, boundary = case
        findings.run("multipart", lambda d: spool(d, boundary), body, declared)

    end = time.monotonic() + args.minutes * 60
    rounds = 0
    while time.monotonic() < end:
        part10()
        stow()
        rounds += 1
    print(f"fuzz_part10: {args.minutes:g} min, {rounds} rounds, {len(corpus)} seed files")
    for target, count in sorted(findings.runs.items()):
        print(f"  {target:14s} {count:7d} examples, slowest {findings.slowest[target]:.3f} s")
    if not findings.found:
        print("no findings")
        return 0
    out = Path(tempfile.mkdtemp(prefix="fuzz-part10-"))
    for n, ((target, kind, where), (count, example)) in enumerate(sorted(findings.found.items())):
        path = out / f"finding-{n}-{target}.bin"
        path.write_bytes(example)
        print(f"FINDING {target}: {kind} at {where} ({count}x), smallest example {len(example)} bytes: {path}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
