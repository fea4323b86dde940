"""Read and check a Part 10 instance before anything is written.

Strict where it protects the store (complete file, required UIDs that are safe as paths, SOP Class consistent
with the file meta and the presentation context), tolerant otherwise (highdicom's "tolerant on decoding").
pydicom quietly accepts a truncated file, so the file object is wrapped to notice short reads.
"""

from __future__ import annotations

import functools
import io
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

from dcmnode.errors import Conflict, DcmnodeError, InvalidInstance, SopClassMismatch, UnsupportedTransferSyntax
from dcmnode.model import InstanceKey, check_uid
from dcmnode.part10 import limits, pixel_header, scan, walk
from dcmnode.store.index import InstanceRecord
from dcmnode.store.schema import INSTANCE_COLUMNS, INTEGER_COLUMNS, PATIENT_COLUMNS, SERIES_COLUMNS, STUDY_COLUMNS

META_HEAD = 64 * 1024  # bytes read to find the File Meta Information before the data set is parsed
DEFER_SIZE = 16 * 1024  # values larger than this are skipped (seeked over), not read into memory
_TAG_HEADER = 8  # pydicom reads an element's tag + VR/length 8 bytes at a time


@dataclass(frozen=True, slots=True)
class Expected:
    """What the transport says the instance must be (C-STORE request, STOW path)."""

    sop_class: str | None = None
    sop_instance: str | None = None
    study: str | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    key: InstanceKey
    sop_class: str
    transfer_syntax: str
    size: int
    record: InstanceRecord


class _TruncationGuard:
    """A read-only file wrapper that records whether the parser ever ran out of bytes."""

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self._fp = fp
        self._size = size
        self.truncated = False
        self._eof_reads = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fp.read(n)
        if n is not None and n > 0 and len(data) < n:
            if len(data) == 0 and n == _TAG_HEADER:
                # A clean end of data set. A second one means a nested sequence ended early.
                self._eof_reads += 1
                self.truncated |= self._eof_reads > 1
            else:
                self.truncated = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self._fp.seek(offset, whence)
        if pos > self._size:
            self.truncated = True
        return pos

    def tell(self) -> int:
        return self._fp.tell()


def parse_bytes(raw: bytes | memoryview, expected: Expected | None = None) -> Parsed:
    fast = _parse_fast(raw, expected)
    return fast if fast is not None else _parse(io.BytesIO(raw), len(raw), expected)


def parse_parts(head: bytes, data_set: memoryview, expected: Expected | None = None) -> Parsed:
    """``parse_bytes`` of ``head + data_set`` (a C-STORE: the File Meta the SCP wrote, the data set as received),
    without joining them: the scan reads the data set where it lies. Only what the scan declines (pydicom decides)
    pays for one joined copy."""
    try:
        found = scan.scan_parts(head, data_set, _SCAN_TAGS, _SCAN_SEQUENCES)
    except scan.Unsupported:
        found = None
    fast = _parsed(found, len(head) + len(data_set), expected) if found is not None else None
    if fast is not None:
        return fast
    raw = b"".join((head, data_set))
    return _parse(io.BytesIO(raw), len(raw), expected)


def parse_file(path: Path, expected: Expected | None = None) -> Parsed:
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        if size:
            with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as view:  # a 2 GB file is not read in
                fast = _parse_fast(view, expected)
            if fast is not None:
                return fast
        return _parse(fp, size, expected)


def _parse_fast(raw: bytes | memoryview | mmap.mmap, expected: Expected | None) -> Parsed | None:
    """The one-pass scan (``part10.scan``); None when it declines and pydicom must decide."""
    try:
        found = scan.scan(raw, _SCAN_TAGS, _SCAN_SEQUENCES)  # type: ignore[arg-type]
    except scan.Unsupported:
        return None
    return _parsed(found, len(raw), expected)


def _parsed(found: scan.Scanned, size: int, expected: Expected | None) -> Parsed | None:
    """The instance a scan found, checked; None when pydicom must decide."""
    check_transfer_syntax(found.meta)  # the scan takes any 1.2.840.10008.1.2.4.x as compressed
    try:
        values = _ScannedValues(found)
    except (ValueError, LookupError):  # a SpecificCharacterSet Python cannot look up (e.g. a NUL in it)
        return None  # pydicom decides (and explains)
    transfer_syntax = check_uid(values.meta_text(0x00020010), "TransferSyntaxUID (file meta)")
    key = InstanceKey.checked(
        values.get("StudyInstanceUID"), values.get("SeriesInstanceUID"), values.get("SOPInstanceUID")
    )
    sop_class = check_uid(values.get("SOPClassUID"), "SOPClassUID")
    try:
        _check_expected(values.meta_text(0x00020002), sop_class, key, expected or Expected())
        pixel_header.check_promise(found)
        record = _record(values, transfer_syntax)
        plain = pixel_header.plain_image(found)
        record.instance["render"] = plain.to_text() if plain is not None else None
        return Parsed(key, sop_class, transfer_syntax, size, record)
    except DcmnodeError as err:
        err.sop_class, err.sop_instance = sop_class, key.sop
        raise


PREAMBLE = b"\0" * 128 + b"DICM"


def lacks_preamble(path: Path) -> bool:
    """File Meta Information with no preamble and DICM prefix: what pydicom's dcmwrite() gives for a data set
    without ``preamble`` (dicomweb-client sends this). Tolerated: the store adds the preamble."""
    with open(path, "rb") as fp:
        head = fp.read(132)
    return head[:2] == b"\x02\x00" and head[128:] != b"DICM"


def check_transfer_syntax(meta: dict[int, bytes]) -> None:
    """UnsupportedTransferSyntax (0xC122) when the File Meta names a Transfer Syntax UID that is not one of
    DICOM's (PS3.5 §10, PS3.6 Annex A, as pydicom's dictionary lists them, retired ones included): no reader here
    could decode the data set, and pydicom would only guess. Nothing to check when the meta has none (the
    parser's own checks answer that)."""
    raw = meta.get(0x00020010)
    if not raw:
        return
    syntax = raw.decode("ascii", "replace").strip("\x00 ")
    if _is_transfer_syntax(syntax):
        return
    raise UnsupportedTransferSyntax(
        f"transfer syntax {syntax[:70]!r} (file meta) is not supported: not a DICOM transfer syntax",
        _meta_uid(meta, 0x00020002),
        _meta_uid(meta, 0x00020003),
    )


@functools.lru_cache(maxsize=256)
def _is_transfer_syntax(syntax: str) -> bool:
    """One of DICOM's transfer syntaxes (pydicom's ``UID`` validates the text on every make: looked up once)."""
    return syntax.startswith("1.2.840.10008.") and UID(syntax).is_transfer_syntax


def _meta_uid(meta: dict[int, bytes], tag: int) -> str | None:
    """A UID of the File Meta for the failure report, when it is one."""
    try:
        return check_uid(meta.get(tag, b"").decode("ascii", "replace"), "file meta UID")
    except InvalidInstance:
        return None


def _check_head(fp: BinaryIO) -> None:
    """The File Meta Information, read and walked once before pydicom reads on: its transfer syntax checked
    (``check_transfer_syntax``), and a deflated data set's inflated size bounded (``_check_inflated``)."""
    start = fp.tell()
    head = fp.read(META_HEAD)
    fp.seek(start)
    try:
        meta, pos = walk.file_meta(head)
    except walk.Unsupported:
        return  # pydicom decides (a meta longer than the head, or one that runs past the end)
    if len(head) >= 144 and head[128:132] == b"DICM":
        check_transfer_syntax(meta)
    if meta.get(0x00020010, b"").rstrip(b"\x00 ") == b"1.2.840.10008.1.2.1.99":
        _check_inflated(fp, start, start + pos)


def _parse(fp: BinaryIO, size: int, expected: Expected | None) -> Parsed:
    _check_head(fp)
    guard = _TruncationGuard(fp, size)
    try:
        ds = pydicom.dcmread(guard, defer_size=DEFER_SIZE)
    except InvalidDicomError as exc:
        raise InvalidInstance("not a DICOM Part 10 file (no DICM prefix or File Meta Information)") from exc
    except RecursionError as exc:
        raise limits.Refused(f"sequences nested more than {limits.MAX_DEPTH} deep") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input: all mean "cannot understand"
        raise InvalidInstance(f"cannot parse the data set: {exc}") from exc
    if guard.truncated:
        raise InvalidInstance("the file is truncated: the data set ends inside an element")
    try:
        _check_limits(ds)
    except DcmnodeError:
        raise
    except Exception as exc:  # an element pydicom cannot convert while the limits are checked
        raise InvalidInstance(f"cannot parse the data set: {exc}") from exc
    return _check(ds, size, expected or Expected())


def _check_inflated(fp: BinaryIO, start: int, data_set: int) -> None:
    """A deflated data set (PS3.5 A.5) inflating past ``limits.MAX_INFLATED``: refused before pydicom inflates
    it whole in memory. Inflates from ``data_set`` in bounded steps, keeping nothing; ``fp`` back at ``start``."""
    fp.seek(data_set)
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        while chunk := fp.read(1024 * 1024):
            while chunk:
                total += len(inflater.decompress(chunk, 1024 * 1024))
                if total > limits.MAX_INFLATED:
                    raise limits.Refused(f"the deflated data set inflates past {limits.MAX_INFLATED} bytes")
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error:
        pass  # pydicom decides (and explains)
    finally:
        fp.seek(start)


def _check_limits(ds: Dataset) -> None:
    """``part10.limits`` on a data set pydicom read (the files ``part10.scan`` declines): element count, depth,
    short-VR value lengths, the pixel data's promise. Raw elements are looked at as read (``Dataset.elements``:
    not converted); a sequence pydicom cannot convert is a data set it cannot understand."""
    count, stack = 0, [(ds, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limits.MAX_DEPTH:
            raise limits.Refused(f"sequences nested more than {limits.MAX_DEPTH} deep")
        for elem in item.elements():
            count += 1
            if count > limits.MAX_ELEMENTS:
                raise limits.Refused(f"more than {limits.MAX_ELEMENTS} elements in the data set")
            tag, length = elem.tag, getattr(elem, "length", 0)
            vr = elem.VR or _dictionary_vr(tag)
            raw = isinstance(elem, RawDataElement)
            if raw and limits.MAX_SHORT_VALUE < length != 0xFFFFFFFF and vr in limits.SHORT_VRS:
                raise limits.Refused(f"({tag.group:04X},{tag.elem:04X}) {vr} value of {length} bytes (at most 65535)")
            if vr == "SQ":
                try:
                    items = item[tag].value
                except Exception as exc:  # pydicom raises many types on corrupt input
                    raise InvalidInstance(f"cannot parse the data set: {exc}") from exc
                stack.extend((child, depth + 1) for child in items)
    pixels = ds.get_item(0x7FE00010, keep_deferred=True)
    if pixels is None or "Rows" not in ds:
        return
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        samples, frames = int(ds.get("SamplesPerPixel") or 1), max(int(ds.get("NumberOfFrames") or 1), 1)
        compressed = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))).is_compressed
    except Exception:  # odd values or an unknown transfer syntax: the checks after this one and the renderer explain
        return
    length = pixels.length if isinstance(pixels, RawDataElement) else len(pixels.value or b"")
    if length != 0xFFFFFFFF and not compressed:
        limits.check_pixels(rows, cols, samples, bits, frames, length)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _check(ds: Dataset, size: int, expected: Expected) -> Parsed:
    meta = ds.file_meta
    try:
        transfer_syntax = check_uid(meta.get("TransferSyntaxUID"), "TransferSyntaxUID (file meta)")
        meta_class = meta.get("MediaStorageSOPClassUID")
        key = InstanceKey.checked(ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID"))
        sop_class = check_uid(ds.get("SOPClassUID"), "SOPClassUID")
    except InvalidInstance:
        raise
    except Exception as exc:  # a value pydicom cannot decode (in the data set or the file meta)
        raise InvalidInstance(f"cannot read the instance UIDs: {exc}") from exc
    try:
        _check_expected(meta_class, sop_class, key, expected)
        return Parsed(key, sop_class, transfer_syntax, size, _record(ds, transfer_syntax))
    except DcmnodeError as err:
        err.sop_class, err.sop_instance = sop_class, key.sop
        raise


def _check_expected(meta_class: object, sop_class: str, key: InstanceKey, expected: Expected) -> None:
    if meta_class and str(meta_class) != sop_class:
        raise SopClassMismatch(f"file meta SOP Class {meta_class} differs from the data set's {sop_class}")
    if expected.sop_class and expected.sop_class != sop_class:
        raise SopClassMismatch(f"data set SOP Class {sop_class} does not match the request's {expected.sop_class}")
    if expected.sop_instance and expected.sop_instance != key.sop:
        raise InvalidInstance(f"data set SOP Instance UID {key.sop} differs from the request's {expected.sop_instance}")
    if expected.study and expected.study != key.study:
        raise Conflict(f"StudyInstanceUID {key.study} differs from the study in the request URL {expected.study}")


def _record(ds: Dataset | _ScannedValues, transfer_syntax: str) -> InstanceRecord:
    value = _ScannedValues.value if isinstance(ds, _ScannedValues) else _value
    try:
        patient = {c: value(ds, c) for c in PATIENT_COLUMNS}  # type: ignore[arg-type]
        patient["PatientID"] = patient["PatientID"] or ""
        patient["IssuerOfPatientID"] = patient["IssuerOfPatientID"] or ""
        study = {c: value(ds, c) for c in STUDY_COLUMNS}  # type: ignore[arg-type]
        series = {c: value(ds, c) for c in SERIES_COLUMNS}  # type: ignore[arg-type]
        request = ds.request() if isinstance(ds, _ScannedValues) else ds.get("RequestAttributesSequence")
        if request:
            series["ScheduledProcedureStepID"] = value(request[0], "ScheduledProcedureStepID")  # type: ignore[arg-type]
            series["RequestedProcedureID"] = value(request[0], "RequestedProcedureID")  # type: ignore[arg-type]
        instance = {c: value(ds, c) for c in INSTANCE_COLUMNS}  # type: ignore[arg-type]
    except Exception as exc:  # a value pydicom cannot convert (bad charset, bad IS/DS text)
        raise InvalidInstance(f"cannot read an indexed attribute: {exc}") from exc
    instance["TransferSyntaxUID"] = transfer_syntax
    return InstanceRecord(patient=patient, study=study, series=series, instance=instance)


def _value(ds: Dataset, keyword: str) -> Any:
    """An attribute as the index stores it: text (multi-values joined by backslash), int, or None."""
    tag = _TAGS[keyword]
    elem = ds.get_item(tag)
    if elem is None:
        return None
    raw = elem.value
    # Fast path (this runs ~45 times per instance): a text VR whose bytes are plain ASCII decodes to itself.
    # ISO 2022 escapes (ESC) and any other byte go through pydicom, which applies SpecificCharacterSet.
    ascii_text = isinstance(raw, bytes) and raw.isascii() and b"\x1b" not in raw
    if ascii_text and isinstance(elem, RawDataElement) and (elem.VR or _VRS[keyword]) in _TEXT_VRS:
        return _clean(raw.decode("ascii").strip(" \x00"), keyword)
    return _clean(ds[tag].value, keyword)


def _clean(value: Any, keyword: str) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, (list, MultiValue)):
        if keyword in INTEGER_COLUMNS:
            value = value[0] if len(value) else None
        else:
            return "\\".join(str(v) for v in value)
    if keyword in INTEGER_COLUMNS:
        try:
            return int(str(value).split("\\")[0])
        except (TypeError, ValueError):
            return None
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\x00 ")
    return str(value)


_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_KEYWORDS = {
    *PATIENT_COLUMNS,
    *STUDY_COLUMNS,
    *SERIES_COLUMNS,
    *INSTANCE_COLUMNS,
    "ScheduledProcedureStepID",
    "RequestedProcedureID",
}
_TAGS = {kw: Tag(number) for kw in _KEYWORDS if (number := tag_for_keyword(kw)) is not None}
_VRS = {kw: dictionary_VR(tag) for kw, tag in _TAGS.items()}


class _ScannedValues:
    """The scanned raw values, decoded the way ``_value`` decodes pydicom's (SpecificCharacterSet applied)."""

    def __init__(self, found: scan.Scanned, elements: dict[int, tuple[str, bytes]] | None = None) -> None:
        self.found = found
        self.elements = found.values if elements is None else elements
        charset = found.values.get(0x00080005)
        terms = charset[1].decode("ascii", "replace").split("\\") if charset else [""]
        self.encodings = convert_encodings([t.strip() for t in terms])

    def meta_text(self, tag: int) -> str | None:
        raw = self.found.meta.get(tag)
        return raw.decode("ascii", "replace").strip("\x00 ") if raw else None

    def get(self, keyword: str) -> str | None:
        found = self.elements.get(_TAGS[keyword])
        return found[1].decode("ascii", "replace").strip("\x00 ") if found else None

    def request(self) -> list[_ScannedValues]:
        items = self.found.items.get(_REQUEST_ATTRIBUTES, [])
        out = []
        for item in items:
            view = _ScannedValues.__new__(_ScannedValues)
            view.found, view.elements, view.encodings = self.found, item, self.encodings
            out.append(view)
        return out

    def value(self, keyword: str) -> Any:
        found = self.elements.get(_TAGS[keyword])
        if found is None:
            return None
        vr, raw = found
        if vr in _BINARY_NUMBERS:
            fmt = _BINARY_NUMBERS[vr]
            count = len(raw) // struct.calcsize(fmt)
            numbers = struct.unpack("<" + fmt[-1] * count, raw[: count * struct.calcsize(fmt)])
            return _clean(list(numbers) if count != 1 else numbers[0], keyword) if count else None
        if raw.isascii() and b"\x1b" not in raw:
            text = raw.decode("ascii")
        else:
            delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
            text = decode_bytes(raw, self.encodings, delimiters)
        return _clean(text.strip(" \x00"), keyword)


_BINARY_NUMBERS = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l"}
_REQUEST_ATTRIBUTES = 0x00400275  # RequestAttributesSequence
_SCAN_TAGS = {*(int(t) for t in _TAGS.values()), 0x00080005, *pixel_header.SCAN_TAGS}
_SCAN_SEQUENCES = {_REQUEST_ATTRIBUTES}
