"""Hostile Part 10 files, generated at run time (issue 17; notes privacy-security.md §3.6): each is small on the
wire, or promises far more than it holds. Built from a real generated CT header with the hostile elements
spliced in as raw bytes, so that no library "corrects" them on the way out."""

from __future__ import annotations

import struct
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from tests.factories import ct_series, part10

PIXEL_TAG = b"\xe0\x7f\x10\x00"


def base(transfer_syntax: str = ExplicitVRLittleEndian, pixels: bool = False) -> Dataset:
    """One generated CT instance (fresh UIDs), without its pixel data unless asked."""
    ds = ct_series(1, rows=8, cols=8)[0]
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if not pixels:
        del ds.PixelData
    return ds


def _explicit(group: int, elem: int, vr: bytes, length: int) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2sHL", group, elem, vr, 0, length)
    return struct.pack("<HH2sH", group, elem, vr, length)


def _item(length: int = 0xFFFFFFFF) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, length)


ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def nested(depth: int = 300) -> bytes:
    """ContentSequence (0040,A730) nested ``depth`` deep (undefined lengths), at the end of the data set."""
    open_ = (_explicit(0x0040, 0xA730, b"SQ", 0xFFFFFFFF) + _item()) * depth
    close = (ITEM_END + SEQUENCE_END) * depth
    return part10(base()) + open_ + close


def huge_length(length: int = 0xFFFFFFF0) -> bytes:
    """An OB (Encapsulated Document, 0042,0011) declaring ``length`` bytes, in a file of about 1 KB."""
    return part10(base()) + _explicit(0x0042, 0x0011, b"OB", length) + b"\0" * 64


def long_text(size: int = 200 * 1024 * 1024) -> bytes:
    """Implicit VR: StudyDescription (LO, at most 64 characters, PS3.5 Table 6.2-1) of ``size`` bytes."""
    ds = base(ImplicitVRLittleEndian)
    ds.StudyDescription = "PLACEHOLDER-XYZ!"
    raw = part10(ds)
    old = struct.pack("<HHL", 0x0008, 0x1030, 16) + b"PLACEHOLDER-XYZ!"
    assert raw.count(old) == 1
    head, tail = raw.split(old)
    return head + struct.pack("<HHL", 0x0008, 0x1030, size) + b"A" * size + tail


def many_elements(count: int = 1_000_000) -> bytes:
    """``count`` empty private SH elements (8 bytes each) after the header, in private groups 0x0011, 0x0013..."""
    out = [part10(base())]
    per_group = 0xFFFF - 0x1000
    for n in range(count):
        group, elem = 0x0011 + 2 * (n // per_group), 0x1000 + n % per_group
        out.append(struct.pack("<HH2sH", group, elem, b"SH", 0))
    return b"".join(out)


def huge_image(frames: int = 2**31 - 1) -> bytes:
    """Rows = Columns = 65535, 16 bits, ``frames`` frames, and 10 bytes of native Pixel Data."""
    ds = base()
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = frames
    ds.PixelData = b"\0" * 10
    return part10(ds)


def huge_encapsulated(frames: int = 2**31 - 1) -> bytes:
    """JPEG Baseline, 65535 x 65535 x ``frames`` frames, one 10-byte fragment."""
    ds = base(JPEGBaseline8Bit)
    ds.Rows = ds.Columns = 65535
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    raw = part10(ds)
    pixels = _explicit(0x7FE0, 0x0010, b"OB", 0xFFFFFFFF) + _item(0) + _item(10) + b"\xff\xd8" + b"\0" * 8
    return raw + pixels + SEQUENCE_END


CASES: dict[str, Callable[[], bytes]] = {
    "nested-300": nested,
    "length-0xFFFFFFF0": huge_length,
    "lo-200mb": long_text,
    "million-elements": many_elements,
    "huge-native-image": huge_image,
    "huge-encapsulated-image": huge_encapsulated,
}
