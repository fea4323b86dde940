"""A Part 10 file straight to the DICOM JSON Model (PS3.18 Annex F), without building pydicom objects.

pydicom's ``to_json_dict`` costs ~20 ms for a CT
header with its private groups; this reads the elements once (the events of ``part10.walk``) and converts each
value from its bytes (~10x faster), which is what makes an uncached series ``/metadata`` quick. It reads explicit
and implicit VR little endian, explicit VR big endian and deflated data sets, sequences of defined and
undefined length and encapsulated pixel data. Anything it does not expect raises ``Unsupported`` and the
caller falls back to pydicom.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any

from pydicom.charset import decode_bytes, default_encoding

from dcmnode.part10.limits import Refused
from dcmnode.part10.walk import (
    FRAGMENTS,
    ITEM_START,
    SEQUENCE,
    VALUE,
    Unsupported,
    Walk,
    Walking,
    file_meta,
)

__all__ = ["BulkHandler", "Unsupported", "file_to_json"]

BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
SINGLE_VALUED_TEXT = {"LT", "ST", "UT", "UR"}
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
KNOWN_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
SPECIFIC_CHARACTER_SET = 0x00080005
PIXEL_REPRESENTATION = 0x00280103
TRAILING_PADDING = 0xFFFCFFFC

BulkHandler = Callable[[int, str, int], dict[str, Any] | None]  # (tag, vr, length) -> JSON element or None


class _Reader:
    __slots__ = ("walk", "data", "little", "encodings", "bulk", "memo")

    def __init__(self, data: bytes, implicit: bool, little: bool, bulk: BulkHandler | None) -> None:
        self.walk = Walk(data, implicit, little, known_un=True)
        self.data = data
        self.little = little
        self.encodings: list[str] = [default_encoding]
        self.bulk = bulk
        self.memo: dict[tuple[int, str, bytes], dict[str, Any]] = {}


MEMO_VALUE_BYTES = 256  # values up to this size are remembered across the files of one ``memo``


def file_to_json(
    raw: bytes, bulk: BulkHandler | None = None, memo: dict[tuple[int, str, bytes], dict[str, Any]] | None = None
) -> tuple[str, dict[str, Any]]:
    """(transfer syntax, DICOM JSON of the data set) of a Part 10 file's bytes; ``bulk`` may turn a top-level
    binary value into a BulkDataURI element."""
    if raw[128:132] != b"DICM":
        raise Unsupported("no DICM prefix")
    meta, pos = file_meta(raw)
    syntax = meta.get(0x00020010, b"").rstrip(b"\x00 ").decode("ascii", "replace")
    compressed = syntax.startswith("1.2.840.10008.1.2.4.") or syntax == "1.2.840.10008.1.2.5"
    if syntax not in KNOWN_SYNTAXES and not compressed:
        raise Unsupported(f"transfer syntax {syntax!r}")
    body = raw[pos:]
    if syntax == "1.2.840.10008.1.2.1.99":
        try:
            body = zlib.decompress(body, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise Unsupported(f"deflated data set: {exc}") from exc
    implicit = syntax == "1.2.840.10008.1.2"
    little = syntax != "1.2.840.10008.1.2.2"
    reader = _Reader(body, implicit, little, bulk)
    if memo is not None and little:  # instances of one series repeat most elements byte for byte: convert once
        reader.memo = memo
    try:
        return syntax, _dataset(reader, reader.walk.elements(0, len(body)), top=True)[0]
    except (Unsupported, Refused):  # Refused: over ``part10.limits``, pydicom must not try either
        raise
    except Exception as exc:  # odd lengths, bad text: whatever it is, pydicom decides
        raise Unsupported(f"{type(exc).__name__}: {exc}") from exc


def _dataset(r: _Reader, events: Walking, top: bool = False) -> tuple[dict[str, Any], int]:
    """The JSON of one data set: the walk's events up to the end of its item (or of the file); and the event
    kind that ended it (ITEM_START, END_SEQUENCE, or VALUE at the end of the file)."""
    out: dict[str, Any] = {}
    data, memo = r.data, r.memo
    for kind, tag, vr, start, length in events:
        if kind == VALUE:
            if not tag & 0xFFFF or tag == TRAILING_PADDING:
                continue  # group lengths and padding are not part of the JSON model
            raw = data[start : start + length]
            if tag in _STATEFUL or (top and r.bulk and vr in BINARY):
                element = _special(r, tag, vr, raw, top)
                if element is not None:
                    out[f"{tag:08X}"] = element
                    continue
            if length <= MEMO_VALUE_BYTES and raw.isascii() and b"\x1b" not in raw:  # decodes alike in any charset
                element = memo.get(key := (tag, vr, raw))
                if element is None:
                    element = memo[key] = _element(r, vr, raw)
                out[f"{tag:08X}"] = element
            else:
                out[f"{tag:08X}"] = _element(r, vr, raw)
        elif kind == SEQUENCE:
            items = _sequence(r, events)
            if tag & 0xFFFF:
                out[f"{tag:08X}"] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif kind == FRAGMENTS:  # encapsulated pixel data
            element = r.bulk(tag, vr, length) if (top and r.bulk) else None
            out[f"{tag:08X}"] = element or {"vr": vr}
        else:  # ITEM_START or END_SEQUENCE: the item has ended
            return out, kind
    return out, VALUE


_STATEFUL = {SPECIFIC_CHARACTER_SET, PIXEL_REPRESENTATION}  # values that decide how later ones are read


def _special(r: _Reader, tag: int, vr: str, raw: bytes, top: bool) -> dict[str, Any] | None:
    """A top-level binary value as bulk data (None if ``bulk`` keeps it inline); a value the rest of the data
    set is read by is noted (then None: it is converted as any other)."""
    if top and r.bulk and vr in BINARY:
        element = r.bulk(tag, vr, len(raw))
        if element is not None:
            return element
    if tag == SPECIFIC_CHARACTER_SET:
        r.encodings = _encodings(raw)
    elif tag == PIXEL_REPRESENTATION and len(raw) == 2:
        r.walk.signed = raw != b"\x00\x00"
    return None


def _sequence(r: _Reader, events: Walking) -> list[dict[str, Any]]:
    """The items of a sequence: each item's events, up to the sequence's end."""
    items: list[dict[str, Any]] = []
    kind = next(events)[0]
    while kind == ITEM_START:
        saved = r.encodings
        item, kind = _dataset(r, events)
        items.append(item)
        r.encodings = saved
    return items


def _encodings(raw: bytes) -> list[str]:
    from pydicom.charset import convert_encodings

    terms = [t.strip() for t in raw.decode("ascii", "replace").split("\\")]
    return convert_encodings([t for t in terms] or [""])


def _text(r: _Reader, raw: bytes, vr: str) -> str:
    if raw.isascii() and b"\x1b" not in raw:
        return raw.decode("ascii")
    delimiters = {0x5C, 0x3D, 0x5E} if vr == "PN" else {0x5C}
    return decode_bytes(raw, r.encodings, delimiters)


def _element(r: _Reader, vr: str, raw: bytes) -> dict[str, Any]:
    if not raw:
        return {"vr": vr}
    if vr in _PLAIN_TEXT and raw.isascii() and b"\x1b" not in raw:  # the common case, kept short
        values = [p.strip(" ") or None for p in raw.decode("ascii").rstrip("\x00 ").split("\\")]
        return {"vr": vr, "Value": values} if any(values) else {"vr": vr}
    fmt = NUMBER_FORMATS.get(vr)
    if fmt is not None:
        order = "<" if r.little else ">"
        size = struct.calcsize(order + fmt)
        count = len(raw) // size
        return {"vr": vr, "Value": list(struct.unpack(order + fmt * count, raw[: count * size]))}
    if vr in BINARY:
        return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode("ascii")}
    if vr == "AT":
        words = struct.unpack(("<" if r.little else ">") + "H" * (len(raw) // 2), raw)
        return {"vr": vr, "Value": [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, len(words) - 1, 2)]}
    if vr == "UI":
        parts = raw.rstrip(b"\x00 ").decode("ascii", "replace").split("\\")
        return _values(vr, [p.strip("\x00 ") or None for p in parts])
    text = _text(r, raw, vr)
    if vr in SINGLE_VALUED_TEXT:
        text = text.rstrip("\x00 ")
        return {"vr": vr, "Value": [text]} if text else {"vr": vr}
    parts = [p.strip("\x00 ") for p in text.rstrip("\x00 ").split("\\")]
    if vr == "PN":
        return _values(vr, [_person_name(p) for p in parts])
    if vr == "IS":
        return _values(vr, [_number(p, int) for p in parts])
    if vr == "DS":
        return _values(vr, [_number(p, float) for p in parts])
    return _values(vr, [p or None for p in parts])


_PLAIN_TEXT = {"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC"}  # multi-valued text kept as text


def _values(vr: str, values: list[Any]) -> dict[str, Any]:
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = ("Alphabetic", "Ideographic", "Phonetic")
    return {g: t for g, t in zip(groups, text.split("="), strict=False) if t} or None


def _number(text: str, kind: type) -> Any:
    if not text:
        return None
    try:
        if kind is int:
            return int(text)
        value = float(text)
        return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    except ValueError:
        try:
            return int(float(text)) if kind is int else None
        except ValueError:
            return None
