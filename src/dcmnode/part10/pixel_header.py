"""What a plain grey image renders from, read from ``part10.scan``'s pass over the file.

Ingest scans every file once anyway (``core.parse``); it keeps this summary in the index (``instances.render``),
so that a cold ``/rendered`` of a plain image goes straight to one read at the pixel data's offset instead of
walking the header again (~0.35 ms of a ~2 ms render for a 512x512 CT). A "plain" image is uncompressed little
endian, MONOCHROME1/2, one sample, 8 or 16 bits allocated (signed only when all bits are stored), and has nothing
that needs pydicom's view of the header: no LUT sequences, no palette, no overlay groups. Anything else renders
through the general path, as does every file ingested before this column existed (its value is NULL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dcmnode.part10 import limits, scan

NATIVE = {scan.EXPLICIT_LITTLE, scan.IMPLICIT_LITTLE}
TAGS = {
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "HighBit": 0x00280102,
    "PixelRepresentation": 0x00280103,
    "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004,
    "NumberOfFrames": 0x00280008,
    "WindowCenter": 0x00281050,
    "WindowWidth": 0x00281051,
    "VOILUTFunction": 0x00281056,
    "RescaleSlope": 0x00281053,
    "RescaleIntercept": 0x00281052,
    "PresentationLUTShape": 0x20500020,
}
NEEDS_PYDICOM = {0x00283000, 0x00283010, 0x00281201}  # Modality LUT Seq, VOI LUT Seq, palette LUT data
SCAN_TAGS = set(TAGS.values()) | NEEDS_PYDICOM  # what ``scan.scan`` must keep for ``plain_image``
VERSION = 1


@dataclass(frozen=True, slots=True)
class PlainImage:
    rows: int
    cols: int
    bits: int
    stored_bits: int
    signed: bool
    frames: int
    window: tuple[float, float, str] | None  # center, width, VOI LUT Function as stored (the renderer checks it)
    slope: float
    intercept: float
    invert: bool  # MONOCHROME1, unless Presentation LUT Shape INVERSE inverts it back
    offset: int  # file offset of the Pixel Data value

    def to_text(self) -> str:
        # the fields in order, without dataclasses.astuple (which deep-copies each value: most of this call's cost)
        fields = [getattr(self, name) for name in self.__slots__]
        return json.dumps([VERSION, *fields], separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str | None) -> PlainImage | None:
        """The summary ``to_text`` wrote; None for NULL or anything else (the caller scans the file instead)."""
        if not text:
            return None
        try:
            version, rows, cols, bits, stored_bits, signed, frames, window, slope, intercept, invert, offset = (
                json.loads(text)
            )
            if version != VERSION:
                return None
            window = tuple(window) if window is not None else None
            return cls(rows, cols, bits, stored_bits, signed, frames, window, slope, intercept, invert, offset)
        except (ValueError, TypeError):
            return None


def without_pydicom(found: scan.Scanned) -> bool:
    """Native pixel data in an uncompressed little-endian file, and nothing that needs pydicom's view of the
    header (LUT sequences, palette, overlay groups)."""
    if found.transfer_syntax not in NATIVE or found.pixel_offset is None:
        return False
    return not (any(0x6000 <= g <= 0x601E for g in found.groups) or NEEDS_PYDICOM & found.values.keys())


def plain_image(found: scan.Scanned) -> PlainImage | None:
    """The render summary of a scanned file, or None when it is not a plain grey image (or holds odd values:
    the general path then decides, and explains)."""
    if not without_pydicom(found):
        return None
    values = found.values

    def text(keyword: str) -> str:
        item = values.get(TAGS[keyword])
        return item[1].decode("ascii", "replace").strip("\x00 ") if item else ""

    def unsigned(keyword: str) -> int | None:
        item = values.get(TAGS[keyword])
        return int.from_bytes(item[1][:2], "little") if item and len(item[1]) >= 2 and item[0] == "US" else None

    try:
        photometric = text("PhotometricInterpretation")
        samples = unsigned("SamplesPerPixel") or 1
        rows, cols = unsigned("Rows"), unsigned("Columns")
        bits, stored_bits = unsigned("BitsAllocated"), unsigned("BitsStored")
        signed = unsigned("PixelRepresentation") == 1
        frames = int(text("NumberOfFrames").split("\\")[0] or 1)
        slope = float(text("RescaleSlope").split("\\")[0] or 1.0)
        intercept = float(text("RescaleIntercept").split("\\")[0] or 0.0)
        window = None
        if text("WindowCenter") and text("WindowWidth"):
            window = (
                float(text("WindowCenter").split("\\")[0]),
                float(text("WindowWidth").split("\\")[0]),
                text("VOILUTFunction").upper() or "LINEAR",
            )
    except ValueError:
        return None
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1 or not rows or not cols or frames < 1:
        return None
    if bits not in (8, 16) or stored_bits is None or (signed and stored_bits != bits):
        return None
    if any(v != v or v in (float("inf"), float("-inf")) for v in (slope, intercept, *(window or (0.0, 0.0))[:2])):
        return None  # NaN or infinite text: not something to keep in JSON
    invert = (photometric == "MONOCHROME1") != (text("PresentationLUTShape").upper() == "INVERSE")
    offset = found.pixel_offset
    if offset is None:
        return None  # no native Pixel Data value to read
    return PlainImage(rows, cols, bits, stored_bits, signed, frames, window, slope, intercept, invert, offset)


def check_promise(found: scan.Scanned) -> None:
    """Refuse (``limits.Refused``) Pixel Data that holds less than Rows, Columns, SamplesPerPixel, BitsAllocated
    and NumberOfFrames promise (``part10.limits``); nothing to check without Pixel Data or those attributes."""
    values = found.values

    def number(tag: int) -> int:
        item = values.get(tag)
        if item is None:
            return 0
        vr, raw = item
        if vr == "US":
            return int.from_bytes(raw[:2], "little") if len(raw) >= 2 else 0
        try:
            return int(raw.decode("ascii", "replace").split("\\")[0].strip("\x00 ") or 1)
        except ValueError:
            return 1  # an odd NumberOfFrames: the smallest promise (the renderer explains)

    rows, cols, bits = number(TAGS["Rows"]), number(TAGS["Columns"]), number(TAGS["BitsAllocated"])
    if not (rows and cols and bits):
        return
    frames = max(number(TAGS["NumberOfFrames"]), 1)
    if found.fragments is not None:
        limits.check_fragments(frames, found.fragments)
    elif found.pixel_offset is not None:
        samples = number(TAGS["SamplesPerPixel"]) or 1
        limits.check_pixels(rows, cols, samples, bits, frames, found.pixel_length)
