"""Regression tests for what ``bench/fuzz_part10.py`` found (issue 17): each input is rebuilt here from a real
generated instance, and each must now meet a declared error (0xC000 with a reason, or ``Unsupported`` for the
readers that fall back to pydicom) instead of an unexpected exception (a C-STORE 0x0110 / STOW "internal error"
with a traceback in the log, or a 500)."""

from __future__ import annotations

import struct

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dcmnode.core.parse import parse_bytes
from dcmnode.errors import DcmnodeError, InvalidInstance
from dcmnode.part10 import json_model, scan
from tests import hostile_dicom
from tests.factories import part10


def test_a_file_ending_inside_a_long_vr_header_is_cannot_understand() -> None:
    # finding: walk.py read the 4-byte length of an OB/SQ/UN... header past the end (struct.error escaped scan)
    raw = part10(hostile_dicom.base()) + struct.pack("<HH2sH", 0x0042, 0x0011, b"OB", 0)  # no 4-byte length
    with pytest.raises(scan.Unsupported):
        scan.scan(raw, {0x00080018})
    with pytest.raises(InvalidInstance) as refused:
        parse_bytes(raw)
    assert refused.value.status == 0xC000


def test_a_file_meta_uid_that_is_no_transfer_syntax_meets_a_declared_answer() -> None:
    # finding (in the new pydicom-path limits check): UID.is_compressed raised ValueError for a non-syntax UID.
    # Whether such a file is refused is the unknown-transfer-syntax check's business; here: no other exception.
    raw = part10(hostile_dicom.base(pixels=True))
    odd = raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.5.1.4\x00", 1)
    assert odd != raw
    try:
        parse_bytes(odd)
    except DcmnodeError:
        pass


def test_json_model_declines_a_broken_deflate_stream_and_an_odd_syntax() -> None:
    # findings: zlib.error and UnicodeDecodeError escaped file_to_json (a 500 from /metadata instead of the
    # pydicom fallback)
    raw = part10(hostile_dicom.base(DeflatedExplicitVRLittleEndian))
    with pytest.raises(json_model.Unsupported):
        json_model.file_to_json(raw[:-40] + b"\xff" * 40, None, {})
    odd = part10(hostile_dicom.base()).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.1\xe9", 1)
    with pytest.raises(json_model.Unsupported):
        json_model.file_to_json(odd, None, {})


def test_a_specific_character_set_with_a_nul_is_cannot_understand() -> None:
    # finding: convert_encodings raised ValueError ("embedded null character") outside any handler in the fast
    # path: C-STORE 0x0110 and a traceback in the log instead of 0xC000
    ds = hostile_dicom.base()
    ds.SpecificCharacterSet = "ISO_IR 100"
    raw = part10(ds).replace(b"ISO_IR 100", b"ISO_IR\x00100", 1)
    with pytest.raises(InvalidInstance) as refused:
        parse_bytes(raw)
    assert refused.value.status == 0xC000


def test_a_garbled_vr_in_the_file_meta_is_cannot_understand() -> None:
    # finding: MediaStorageSOPClassUID with the VR bytes 55 01 reached pydicom's conversion outside any handler
    # (NotImplementedError: C-STORE 0x0110 and a traceback instead of 0xC000)
    raw = part10(hostile_dicom.base(DeflatedExplicitVRLittleEndian))  # the pydicom path reads the file meta
    at = raw.index(b"\x02\x00\x02\x00UI")
    garbled = raw[: at + 4] + b"\x55\x01" + raw[at + 6 :]
    with pytest.raises(InvalidInstance) as refused:
        parse_bytes(garbled)
    assert refused.value.status == 0xC000
