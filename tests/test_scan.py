"""The one-pass scan that ingest uses first gives exactly what the pydicom path gives, and declines (leaving
pydicom and its truncation guard to answer) whatever it is not sure of."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest

from dcmnode.core import parse
from dcmnode.errors import DcmnodeError, InvalidInstance
from tests.factories import DEID_FILES, TEST_FILES, bundled, part10, query_corpus

FILES = sorted(TEST_FILES.glob("*.dcm")) + sorted(DEID_FILES.rglob("*.dcm"))


def both(raw: bytes) -> tuple[object, object]:
    def run(fn, *args):  # noqa: ANN001, ANN202
        try:
            return fn(*args)
        except DcmnodeError as err:
            return (type(err).__name__, err.reason)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast, slow = run(parse._parse_fast, raw, None), run(parse._parse, io.BytesIO(raw), len(raw), None)
    if isinstance(fast, parse.Parsed):  # the render summary is the scan's extra (tests/test_render.py checks it)
        assert "render" in fast.record.instance
        fast.record.instance.pop("render")
    return fast, slow


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_scan_agrees_with_pydicom(path: Path) -> None:
    fast, slow = both(path.read_bytes())
    if fast is not None:
        assert fast == slow


def test_scan_takes_the_common_files_and_agrees_on_the_corpus() -> None:
    taken = 0
    for ds in query_corpus():  # ISO_IR 192 names, empty dates, several modalities
        fast, slow = both(part10(ds))
        assert fast is not None and fast == slow
        taken += 1
    assert taken == len(query_corpus())
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm"):
        fast, slow = both(bundled(name).read_bytes())
        assert fast is not None and fast == slow, name


@pytest.mark.parametrize("cut", [200, 1000, 3000, -1, -100, -5000])
def test_a_truncated_file_is_never_accepted(cut: int) -> None:
    raw = bundled("CT_small.dcm").read_bytes()[:cut]
    assert parse._parse_fast(raw, None) is None  # declined: pydicom and the guard decide...
    with pytest.raises(InvalidInstance):
        parse.parse_bytes(raw)  # ...and refuse it


def test_parse_file_maps_the_file_instead_of_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(bundled("CT_small.dcm").read_bytes())
    assert parse.parse_file(path) == parse.parse_bytes(path.read_bytes())
