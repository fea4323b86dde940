"""Frames and bulk data out of a stored file, without reading the rest of it.

Native (uncompressed) pixel data: a frame is a byte range at a known offset (PS3.5 §8.1.1), read with one
seek. Encapsulated pixel data: the frame's fragments, located through the Basic (or Extended) Offset Table
or by walking the item headers (PS3.5 A.4), again without reading the other frames. Decoding to native only
happens when the client cannot take the stored encoding.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from dcmnode.errors import NotAcceptable, NotFound
from dcmnode.part10.pixel_header import PlainImage

PIXEL_DATA = 0x7FE00010
MAX_DECODED_FRAME = 512 * 1024 * 1024  # a frame decoded for a client that cannot take the stored encoding
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

# PS3.18 Table 8.7.3-5 (rendered as the media type a compressed frame is sent with)
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True, slots=True)
class PixelLayout:
    transfer_syntax: str
    number_of_frames: int
    offset: int  # file offset of the Pixel Data value
    frame_bytes: int  # native: bytes per frame
    bits_allocated: int

    @property
    def encapsulated(self) -> bool:
        return UID(self.transfer_syntax).is_compressed

    @property
    def swapped(self) -> bool:
        """Native big-endian words: a frame is byte-swapped before it is sent (little endian on the wire)."""
        return self.transfer_syntax == ExplicitVRBigEndian and self.bits_allocated > 8


def from_summary(transfer_syntax: str, plain: PlainImage) -> PixelLayout:
    """The layout of a plain grey image from its ingest summary (``part10.pixel_header``, kept in the index): no
    read of the file's header. A plain image is native little endian with one sample per pixel."""
    return PixelLayout(
        transfer_syntax, plain.frames, plain.offset, plain.rows * plain.cols * plain.bits // 8, plain.bits
    )


LAYOUT_CACHE = 64  # compact layouts (a few numbers each) of the files whose header was read last


@functools.lru_cache(maxsize=LAYOUT_CACHE)
def _cached_layout(path: Path, inode: int, size: int, mtime_ns: int) -> PixelLayout:
    return _read_layout(path)


def layout(path: Path) -> PixelLayout:
    """The pixel data layout of a stored file, read from its header (pydicom) once per file version: a viewer
    asking a multi-frame instance for its frames one by one reads the header once, not per frame."""
    st = os.stat(path)
    return _cached_layout(path, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_layout(path: Path) -> PixelLayout:
    ds = pydicom.dcmread(path, defer_size=1024)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax == DeflatedExplicitVRLittleEndian:
        raise NotAcceptable("frames of a deflated data set: retrieve the instance instead")
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if elem is None or "Rows" not in ds:
        raise NotFound("this instance has no pixel data")
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * samples
    frame_bytes = pixels * bits // 8
    if bits == 1 and pixels % 8:
        raise NotAcceptable("single-bit frames that are not byte aligned cannot be cut out one by one")
    offset = getattr(elem, "value_tell", None)  # a raw (deferred) element knows where its value starts
    if offset is None:
        raise NotAcceptable("the pixel data was read in full: cannot locate it in the file")
    return PixelLayout(syntax, frames, int(offset), frame_bytes, bits)


def check_numbers(numbers: list[int], layout_: PixelLayout) -> None:
    for number in numbers:
        if not 1 <= number <= layout_.number_of_frames:
            raise NotFound(f"frame {number} does not exist: the instance has {layout_.number_of_frames} frame(s)")


def native_span(layout_: PixelLayout, number: int, file_size: int) -> tuple[int, int]:
    """(file offset, length) of native frame ``number`` (1-based), checked against the file's size: the header
    may promise more than the file holds (``part10.limits``)."""
    if file_size < layout_.offset + number * layout_.frame_bytes:
        raise NotFound(f"frame {number} lies beyond the end of the stored pixel data")
    return layout_.offset + (number - 1) * layout_.frame_bytes, layout_.frame_bytes


def stored_frame(path: Path, layout_: PixelLayout, number: int) -> bytes:
    """Frame ``number`` (1-based) exactly as stored: native bytes, or the compressed bitstream."""
    with open(path, "rb") as fp:
        if not layout_.encapsulated:
            start, length = native_span(layout_, number, os.fstat(fp.fileno()).st_size)
            data = os.pread(fp.fileno(), length, start)
            if len(data) != length:
                raise NotFound(f"frame {number} lies beyond the end of the stored pixel data")
            if layout_.swapped:
                data = np.frombuffer(data, dtype=f">u{layout_.bits_allocated // 8}").byteswap().tobytes()
            return data
        fp.seek(layout_.offset)
        reader = _Window(fp)
        try:
            return get_frame(reader, number - 1, number_of_frames=layout_.number_of_frames)
        except ValueError as exc:  # fewer fragments than NumberOfFrames promises (PS3.5 A.4), a bad offset table
            raise NotFound(f"frame {number} is not in the stored pixel data: {exc}") from exc


class _Window(io.RawIOBase):
    """The file from the Pixel Data value on, as pydicom's frame reader expects (offset 0 = first item)."""

    def __init__(self, fp: io.BufferedReader) -> None:
        super().__init__()
        self._fp = fp
        self._start = fp.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._fp.read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._fp.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            return self._fp.seek(self._start + offset) - self._start
        return self._fp.seek(offset, whence) - self._start

    def tell(self) -> int:
        return self._fp.tell() - self._start


def native_frame(path: Path, layout_: PixelLayout, number: int) -> bytes:
    """Frame ``number`` decoded to native little-endian bytes (colour as RGB, PS3.5 §8.2.1 note)."""
    if not layout_.encapsulated:
        return stored_frame(path, layout_, number)
    if layout_.frame_bytes > MAX_DECODED_FRAME:
        raise NotAcceptable(
            f"a decoded frame of {layout_.frame_bytes} bytes is over the limit of {MAX_DECODED_FRAME}: "
            "retrieve it as stored (transfer-syntax=*)"
        )
    try:
        array = pixel_array(str(path), index=number - 1)
    except Exception as exc:
        raise NotAcceptable(f"cannot decode {UID(layout_.transfer_syntax).name}: {exc}") from exc
    bits = layout_.bits_allocated
    if bits > 8 and array.dtype.itemsize * 8 != bits:
        array = array.astype(f"{'i' if array.dtype.kind == 'i' else 'u'}{bits // 8}")
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def element_value(path: Path, tag: int) -> tuple[str, bytes]:
    """The VR and stored value of a top-level element (bulk data)."""
    ds = pydicom.dcmread(path, defer_size=1024)
    elem = ds.get_item(tag)
    if elem is None:
        raise NotFound(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in this instance")
    value = ds[tag].value  # encapsulated pixel data: its items as stored
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):
        raise NotFound(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) holds no bulk data")
    return ds[tag].VR, bytes(value)
