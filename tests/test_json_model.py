"""The fast Part 10 → DICOM JSON walker gives what pydicom's to_json_dict gives, on every bundled test file and
the deid-data files it reads (where it declines, metadata falls back to pydicom)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dcmnode.core.metadata import instance_json
from dcmnode.part10 import json_model
from tests.factories import DEID_FILES, TEST_FILES

FILES = sorted(TEST_FILES.glob("*.dcm")) + sorted(DEID_FILES.rglob("*.dcm"))
# Differences we accept, by design: group lengths and trailing padding are left out, Pixel Data (compared
# elsewhere) is bulk data, an empty sequence has no "Value", and an empty component of a multi-valued
# string is null (PS3.18 F.2.5) where pydicom writes "".
SKIPPED_TAGS = ("0000", "FFFCFFFC", "7FE00010")


def normalise(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if len(key) == 8 and (key.endswith("0000") or key in SKIPPED_TAGS):
                continue
            value = normalise(value)
            if isinstance(value, dict) and value.get("Value") == []:
                value = {k: v for k, v in value.items() if k != "Value"}
            out[key] = value
        return out
    if isinstance(obj, list):
        return [None if v == "" else normalise(v.strip() if isinstance(v, str) else v) for v in obj]
    return obj


def reference(path: Path) -> dict[str, Any] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return json.loads(json.dumps(pydicom.dcmread(path).to_json_dict(bulk_data_threshold=2**31)))
    except Exception:
        return None


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_walker_matches_pydicom(path: Path) -> None:
    expected = reference(path)
    if expected is None:
        pytest.skip("pydicom itself cannot read this file")
    try:
        _, got = json_model.file_to_json(path.read_bytes())
    except json_model.Unsupported:
        return  # declined: the caller uses pydicom (checked below)
    assert normalise(json.loads(json.dumps(got))) == normalise(expected)


def test_most_files_take_the_fast_path_and_the_rest_fall_back() -> None:
    declined = []
    for path in FILES:
        try:
            json_model.file_to_json(path.read_bytes())
        except json_model.Unsupported:
            declined.append(path)
    assert len(declined) <= len(FILES) // 6, declined  # the bundled set is full of deliberately odd files
    for path in declined:
        if reference(path) is not None:
            out = instance_json(path, "1.2", "1.2.3", "1.2.3.4")  # the pydicom fallback answers
            assert out and list(out) == sorted(out)


def test_bulk_data_uri_for_large_top_level_values() -> None:
    path = TEST_FILES / "CT_small.dcm"
    out = instance_json(path, "1.2", "1.2.3", "1.2.3.4")
    assert out["7FE00010"]["BulkDataURI"].endswith("/studies/1.2/series/1.2.3/instances/1.2.3.4/bulkdata/7FE00010")
    assert out["00020010"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    assert list(out) == sorted(out)
