"""C-FIND identifiers encoded from index rows (dimse/identifier.py) are the bytes pydicom writes for the Dataset
``row_to_dataset`` builds: every level, every attribute the index returns, implicit and explicit VR, multi-values,
empty values, non-ASCII text, unknown keys returned empty; and a value the encoder does not write exactly is left
to pydicom (None), never written differently."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pynetdicom.dsutils import encode

from dcmnode.core import query as q
from dcmnode.dimse import identifier
from dcmnode.dimse.query_retrieve import row_to_dataset

AE = "DCMNODE"
# Values as the index holds them (TEXT or INTEGER columns, counts as int), by VR: plain, odd and even lengths,
# multi-values (backslash), empty string, NULL.
VALUES: dict[str, list[Any]] = {
    "PN": ["DOE^JOHN", "Doe^Jo", "A^B\\C^D", "", None, "ODD^NAME^X", "Smith^Anne^^Dr.^"],
    "LO": ["BENCH42-C0-P0009", "CT CHEST W/O", "A\\B\\C", "", None, "x", " leading and trailing "],
    "SH": ["A1234", "ACC", "", None, "+0100", "S\\T"],
    "LT": ["free text, with punctuation: ok.", "", None, "odd"],
    "CS": ["CT", "CT\\MR\\SR", "M", "", None, "ORIGINAL\\PRIMARY\\AXIAL", "O"],
    "DA": ["20220819", "", None, "2022081"],
    "TM": ["101010", "101010.123", "", None, "0930"],
    "AS": ["045Y", "", None],
    "UI": [
        "1.2.826.0.1.3680043.8.498.11798658089685502195309761257474977194",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3",
        "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.4",
        "",
        None,
    ],  # fmt: skip
    "IS": [40, 0, 1, -3, 123456, "007", "12\\13", "", None, 2**31],
    "DS": ["70.5", "070", "1e3", "-.5", "1.75\\2", "", None, "80"],
    "US": [512, 0, 1, 65535, None],
}
NON_ASCII = {"PN": ["Müller^Jürgen", "山田^太郎=やまだ^たろう", "Ñandú^Ó"], "LO": ["Zürich Süd", "東京"], "SH": ["é"],
             "LT": ["Größe: 1,8 m"]}  # fmt: skip
UNKNOWN = [0x00101060, 0x00321060, 0x00400275, 0x00080090 + 0x10000000]  # PN, LO, SQ, a tag no dictionary knows


def names(level: q.Level) -> list[str]:
    return q.Query(level=level, include_all=True, defaults=frozenset({level})).returned()


def rows(level: q.Level, non_ascii: bool = False) -> list[dict[str, Any]]:
    keys = names(level)
    out = []
    for i in range(12):
        row = {}
        for n, key in enumerate(keys):
            vr = q.ATTRIBUTES[key].vr
            choices = VALUES[vr]
            row[key] = choices[(i + n) % len(choices)]
            if non_ascii and vr in NON_ASCII and (i + n) % 3 == 0:
                row[key] = NON_ASCII[vr][(i + n) % len(NON_ASCII[vr])]
        out.append(row)
    return out


def pydicom_bytes(row: dict[str, Any], level: q.Level, unknown: list[int], implicit: bool) -> bytes:
    data = encode(row_to_dataset(row, level, unknown, AE), implicit, True)
    assert data is not None
    return data


@pytest.mark.parametrize(
    ("level", "implicit", "non_ascii"), list(itertools.product(list(q.Level), [True, False], [False, True]))
)
def test_every_level_and_vr_encodes_as_pydicom_does(level: q.Level, implicit: bool, non_ascii: bool) -> None:
    encoder = identifier.Identifiers(names(level), UNKNOWN, str(level), AE, implicit)
    fast = 0
    for row in rows(level, non_ascii):
        data = encoder.encode(row)
        if data is not None:
            fast += 1
            assert data == pydicom_bytes(row, level, UNKNOWN, implicit), row
    assert fast >= 8  # most rows take the fast path; the others hold a value only pydicom writes exactly


def test_a_non_ascii_row_carries_specific_character_set_and_utf8() -> None:
    level = q.Level.STUDY
    keys = ["PatientName", "PatientID", "StudyInstanceUID", "NumberOfStudyRelatedInstances"]
    row = {
        "PatientName": "Müller^Jürgen",
        "PatientID": "P1",
        "StudyInstanceUID": "1.2.3",
        "NumberOfStudyRelatedInstances": 4,
    }
    data = identifier.Identifiers(keys, [], str(level), AE, implicit=False).encode(row)
    assert data == pydicom_bytes(row, level, [], False)
    assert b"CS\x0a\x00ISO_IR 192" in data and "Müller^Jürgen".encode() in data


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Modality", "ÇT"),  # non-ASCII outside the text VRs: pydicom writes latin-1
        ("SeriesNumber", " 4"),  # pydicom strips a number's spaces
        ("SeriesInstanceUID", "1.2.3 "),  # and a UID's
        ("NumberOfSeriesRelatedInstances", True),  # not an int pydicom writes as one
        ("SeriesDescription", 4.5),
    ],
)
def test_values_only_pydicom_writes_exactly_are_left_to_it(key: str, value: Any) -> None:
    level = q.Level.SERIES
    keys = ["SeriesInstanceUID", key] if key != "SeriesInstanceUID" else [key]
    row = {"SeriesInstanceUID": "1.2.3", key: value}
    assert identifier.Identifiers(keys, [], str(level), AE, implicit=True).encode(row) is None


def test_an_ambiguous_vr_among_the_unknown_keys_leaves_explicit_vr_to_pydicom() -> None:
    level = q.Level.IMAGE
    unknown = [0x00280106]  # Smallest Image Pixel Value, "US or SS"
    row = {"SOPInstanceUID": "1.2.3"}
    assert identifier.Identifiers(["SOPInstanceUID"], unknown, str(level), AE, implicit=False).encode(row) is None
    data = identifier.Identifiers(["SOPInstanceUID"], unknown, str(level), AE, implicit=True).encode(row)
    assert data == pydicom_bytes(row, level, unknown, True)
