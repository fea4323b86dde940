"""What a Part 10 data set may hold: the one place these limits are decided (issue 17, hostile input).

Each limit sits far above what real instances need and below what would let a small input make the node
allocate, recurse or spend time out of proportion to the bytes it was given. Ingest (C-STORE, STOW-RS, import)
refuses an instance over a limit with 0xC000 "cannot understand" and the reason (``Refused``); the readers of
stored files (``/metadata``, ``/rendered``, frames) refuse the same with a 4xx before decoding or allocating.

- ``MAX_DEPTH`` sequences nested in one another. pydicom reads, writes and converts a data set recursively and
  fails with RecursionError near depth 250 (pydicom#2330); SR content trees, the deepest real nesting, rarely
  pass 10.
- ``MAX_ELEMENTS`` elements in the whole data set, items' elements included. pydicom keeps ~250 bytes per
  element and the DICOM JSON model ~450, so a million empty elements (8 MB on the wire) would cost ~0.5 GB in
  ``/metadata``; an enhanced multi-frame header of several thousand frames holds ~100 000.
- ``MAX_SHORT_VALUE`` bytes in a value of a VR whose explicit-VR length field has 16 bits (PS3.5 §7.1.2, Table
  7.1-2: AE, AS, ..., US). Such a value can only be longer in implicit VR, where it could never be written in
  explicit VR again (retrieve transcodes); its VR's own maximum is far lower (LO 64 characters, PS3.5 Table 6.2-1).
- Native Pixel Data must hold at least Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x NumberOfFrames
  bytes (PS3.5 §8.1.1, PS3.3 C.7.6.3.1); encapsulated Pixel Data at least one fragment per frame (PS3.5 A.4: a
  fragment never holds data of two frames). Otherwise a 1 KB file may promise 2^31 frames of 65535 x 65535.
- ``MAX_INFLATED`` bytes of a Deflated Explicit VR Little Endian data set once inflated (PS3.5 A.5): pydicom
  inflates it whole in memory.
- Frames larger than ``imaging.pipeline.MAX_PIXELS`` are not decoded for rendering (existing guard), and a frame
  is read from the file only when the file holds all of it.
"""

from __future__ import annotations

from dcmnode.errors import InvalidInstance

MAX_DEPTH = 64
MAX_ELEMENTS = 250_000
MAX_SHORT_VALUE = 0xFFFF
MAX_INFLATED = 256 * 1024 * 1024
SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST", "TM"}
    | {"UI", "UL", "US"}
)


class Refused(InvalidInstance):
    """A data set over one of the limits above: refused outright (0xC000), not handed to pydicom to decide."""


def native_pixel_bytes(rows: int, cols: int, samples: int, bits: int, frames: int) -> int:
    """The bytes native Pixel Data of this shape holds (PS3.5 §8.1.1; 1-bit data packed, PS3.5 §8.1.1 note)."""
    count = rows * cols * samples * frames
    return (count * bits + 7) // 8


def check_pixels(rows: int, cols: int, samples: int, bits: int, frames: int, length: int) -> None:
    """Refuse native Pixel Data of ``length`` bytes that holds less than its header promises."""
    promised = native_pixel_bytes(rows, cols, samples, bits, frames)
    if length < promised:
        # the reason first: a C-STORE Error Comment holds 64 characters
        raise Refused(
            f"Pixel Data holds {length} of the {promised} bytes promised by Rows {rows}, Columns {cols}, "
            f"SamplesPerPixel {samples}, BitsAllocated {bits}, NumberOfFrames {frames}"
        )


def check_fragments(frames: int, fragments: int) -> None:
    """Refuse encapsulated Pixel Data with fewer fragments (the Basic Offset Table not counted) than frames."""
    if fragments < frames:
        raise Refused(f"Pixel Data holds {fragments} fragment(s) for {frames} frames (NumberOfFrames)")
