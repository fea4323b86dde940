"""C-FIND match identifiers encoded straight from index rows: the bytes pydicom writes for the same Dataset.

``query_retrieve.row_to_dataset`` builds a pydicom Dataset per match and pynetdicom encodes it: ~40 % of a C-FIND's
CPU (one ``DataElement`` per key, its value converted and validated, then ``write_dataset``). ``Identifiers`` does
the same work once per query: it puts the keys in tag order, encodes the ones every match shares (Query/Retrieve
Level, Retrieve AE Title, the requested keys the index does not hold, returned empty) with pydicom itself, and per
row writes only the values, in implicit or explicit VR little endian as the presentation context says
(``compat.EncodedIdentifier``, patch 11). A value it does not write exactly as pydicom would (a non-ASCII
character outside the text VRs, a number with spaces, a UID with whitespace, a US out of range, any other type)
makes that one row a pydicom Dataset, as before: tests/test_dimse_identifier.py compares both over every level and
VR the index returns. Values follow ``row_to_dataset``: None or "" is an empty element, text with backslashes is a
multi-value (the same bytes, joined again), and a row holding any non-ASCII text gets Specific Character Set
"ISO_IR 192" with its text VRs in UTF-8.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode as pydicom_encode

from dcmnode.core import query as q

TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})  # written in the Specific Character Set
ASCII_VRS = frozenset({"CS", "DA", "TM", "DT", "AS", "AE", "UR"})  # pydicom writes these in its default encoding
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_INTEGER = re.compile(r"[+-]?\d+")  # IS as pydicom keeps it (its original string), no spaces to strip
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_UID = re.compile(r"[0-9.]*")
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sHI")
_US = struct.Struct("<H")
CHARSET_TAG = 0x00080005
UTF8 = "ISO_IR 192"


class Identifiers:
    """The matches of one C-FIND, encoded per row: ``names`` are the row's keys (``core.query.Query.returned``),
    ``unknown`` the requested tags the index does not hold, ``level`` and ``ae_title`` the Query/Retrieve Level and
    Retrieve AE Title every match carries, ``implicit`` the context's VR encoding (little endian; a big-endian
    context keeps pydicom)."""

    def __init__(self, names: Sequence[str], unknown: Sequence[int], level: str, ae_title: str, implicit: bool) -> None:
        self.implicit = implicit
        fixed, self._charset, self.fast = shared_elements(level, ae_title, tuple(unknown), implicit)
        plan: list[tuple[int, str | None, bytes, str, bool]] = [(tag, None, data, "", False) for tag, data in fixed]
        for name in names:
            attr = q.ATTRIBUTES[name]
            plan.append((attr.tag, name, b"", attr.vr, attr.vr in LONG_VRS))
        plan.sort(key=lambda step: step[0])
        self._plan = plan
        self._before_charset = sum(1 for step in plan if step[0] < CHARSET_TAG)

    def encode(self, row: Mapping[str, Any]) -> bytes | None:
        """The row's identifier as pydicom would encode ``row_to_dataset``'s Dataset; None when a value is one this
        does not write (the caller then builds that Dataset)."""
        if not self.fast:
            return None
        utf8 = any(isinstance(v, str) and not v.isascii() for v in row.values())
        parts: list[bytes] = []
        for tag, name, data, vr, long in self._plan:
            if name is None:
                parts.append(data)
                continue
            value = _value(vr, row[name], utf8)
            if value is None or (not long and len(value) > 0xFFFF and not self.implicit):
                return None
            parts.append(self._header(tag, vr, long, len(value)))
            parts.append(value)
        if utf8:
            parts.insert(self._position_of_charset(), self._charset)
        return b"".join(parts)

    def _header(self, tag: int, vr: str, long: bool, length: int) -> bytes:
        if self.implicit:
            return _IMPLICIT.pack(tag >> 16, tag & 0xFFFF, length)
        if long:
            return _EXPLICIT_LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
        return _EXPLICIT_SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)

    def _position_of_charset(self) -> int:
        """Where (0008,0005) goes among the parts: a fixed element is one part, a row element two."""
        return sum(1 if step[1] is None else 2 for step in self._plan[: self._before_charset])


@functools.lru_cache(maxsize=256)
def shared_elements(
    level: str, ae_title: str, unknown: tuple[int, ...], implicit: bool
) -> tuple[tuple[tuple[int, bytes], ...], bytes, bool]:
    """What every match of a query shares, encoded by pydicom once (and kept for the next query of the same
    shape): each element's bytes by tag (Query/Retrieve Level, Retrieve AE Title, the unknown keys empty),
    Specific Character Set "ISO_IR 192", and whether the rows may be encoded here (not in explicit VR when an
    unknown key has an ambiguous VR: pydicom decides it from the rest of the data set)."""
    shared = Dataset()
    shared.QueryRetrieveLevel = level
    shared.RetrieveAETitle = ae_title
    for tag in unknown:
        shared.add_new(tag, vr_of(tag), None)
    fast = implicit or not any(" or " in elem.VR for elem in shared)
    fixed = []
    for elem in shared:
        one = Dataset()
        one.add(elem)
        fixed.append((int(elem.tag), pydicom_encode(one, implicit, True) or b""))
    charset = Dataset()
    charset.SpecificCharacterSet = UTF8
    return tuple(fixed), pydicom_encode(charset, implicit, True) or b"", fast


def _value(vr: str, value: Any, utf8: bool) -> bytes | None:
    """A value's bytes, padded to even length as pydicom pads them; None for what only pydicom writes exactly."""
    if value is None or value == "":
        return b""
    if vr == "US":
        if type(value) is not int or not 0 <= value <= 0xFFFF:
            return None
        return _US.pack(value)
    if type(value) is int:
        if vr != "IS":
            return None
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if vr in TEXT_VRS:
        data = text.encode("utf-8") if utf8 else text.encode("ascii")  # utf8 covers every non-ASCII row
        return data + b" " if len(data) % 2 else data
    if not text.isascii():
        return None  # pydicom writes these in latin-1, and a row with them in UTF-8 elsewhere: leave it to pydicom
    if vr == "UI":
        if not _UID.fullmatch(text.replace("\\", "")):
            return None  # whitespace pydicom strips, or anything else a UID is not
    elif vr == "IS":
        if type(value) is not int and not all(_INTEGER.fullmatch(part) for part in text.split("\\")):
            return None
    elif vr == "DS":
        if not all(_DECIMAL.fullmatch(part) for part in text.split("\\")):
            return None
    elif vr not in ASCII_VRS:
        return None
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def vr_of(tag: int) -> str:
    """A tag's dictionary VR; UN for a tag the dictionary does not know."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"
