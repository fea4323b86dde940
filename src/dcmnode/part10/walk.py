"""The Part 10 element grammar (PS3.5 7.1 data elements, 7.5 sequences and items, A.4 encapsulated pixel data) as
one iterator over a data set's bytes.

``Walk.elements`` yields an event per element, item start and sequence end, in file order (or only those a
consumer wants); ``part10.scan`` and ``part10.json_model`` consume it. It reads explicit and implicit VR
little endian and explicit VR big endian, values and sequences of defined and undefined length, and checks as it
goes that every element, item and sequence ends where it says: a truncated or garbled data set raises
``Unsupported`` (the caller falls back to pydicom, which keeps the last word on bad input). A data set over one
of ``part10.limits`` (nesting depth, element count, a short-VR value longer than 64 KiB) raises ``Refused``: no
fallback, pydicom would only recurse or allocate on it. The walk holds no values: an event is a position in the
bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Generator

from pydicom.datadict import dictionary_VR

from dcmnode.part10.limits import MAX_DEPTH, MAX_ELEMENTS, MAX_SHORT_VALUE, SHORT_VRS, Refused

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

# Event kinds: (kind, tag, vr, start, length)
VALUE = 0  # an element with a value of defined length: the bytes data[start : start + length]
SEQUENCE = 1  # a sequence (SQ, or UN of undefined length) opens; its items follow, then END_SEQUENCE
ITEM_START = 2  # an item opens (length may be UNDEFINED), the previous item of its sequence (if any) has ended
END_SEQUENCE = 3  # the sequence's last item (if any) has ended, and so has the sequence
FRAGMENTS = 4  # encapsulated Pixel Data (undefined length) walked over; length is its fragments' total

Event = tuple[int, int, str, int, int]
Walking = Generator[Event, None, int]  # the events of a data set, returning the position after it

_EXPLICIT_LE = struct.Struct("<HH2sH").unpack_from
_EXPLICIT_BE = struct.Struct(">HH2sH").unpack_from
_IMPLICIT_LE = struct.Struct("<HHL").unpack_from
_IMPLICIT_BE = struct.Struct(">HHL").unpack_from
_LONG_LE = struct.Struct("<L").unpack_from
_LONG_BE = struct.Struct(">L").unpack_from
_VR_NAMES: dict[bytes, str] = {}


class Unsupported(Exception):
    """Not a well-formed data set this walk reads (or not one its consumer takes): let pydicom decide."""


class Walk:
    """The element grammar over ``data``, in one transfer syntax. ``signed`` (PixelRepresentation, which the
    consumer sets when it reads it) resolves "US or SS" in implicit VR; ``known_un``: a UN element of defined
    length takes its dictionary VR (PS3.5 6.2.2), as a JSON writer wants, so a known sequence sent as UN is walked."""

    __slots__ = ("data", "implicit", "little", "known_un", "signed", "_explicit", "_long", "_item")

    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool = True, known_un: bool = False) -> None:
        self.data = data
        self.implicit = implicit
        self.little = little
        self.known_un = known_un and little
        self.signed = False
        self._explicit = _EXPLICIT_LE if little else _EXPLICIT_BE
        self._long = _LONG_LE if little else _LONG_BE
        self._item = _IMPLICIT_LE if little else _IMPLICIT_BE

    def elements(self, pos: int, end: int, wanted: Container[int] | None = None) -> Walking:
        """The events of the elements from ``pos`` to ``end`` (or to an item delimiter), the items of their
        sequences included; returns the position after them. ``wanted``: report only the VALUEs of these tags
        (and the first top-level element of each group), and a sequence not wanted as its SEQUENCE and
        END_SEQUENCE alone; everything is walked and checked all the same.

        One function on purpose: this loop is the hot path of ingest and ``/metadata``, and a call per element
        (or a generator per sequence) costs 10-30 %. The open sequences are a stack of (end, length, end of the
        data set holding it, whether that data set was reported)."""
        data, size, implicit, explicit, long = self.data, len(self.data), self.implicit, self._explicit, self._long
        stack: list[tuple[int, int, int, bool]] = []
        quiet, top_group = False, -1  # quiet: inside a sequence that is not reported
        count = 0  # elements walked (part10.limits.MAX_ELEMENTS)
        while True:
            if pos < end:
                if pos + 8 > size:
                    raise Unsupported("element header runs past the end")
                if implicit:
                    group, elem, length = _IMPLICIT_LE(data, pos)
                else:
                    group, elem, vr_bytes, length = explicit(data, pos)
                tag, pos = group << 16 | elem, pos + 8
                if tag != ITEM_END:
                    count += 1
                    if count > MAX_ELEMENTS:
                        raise Refused(f"more than {MAX_ELEMENTS} elements in the data set")
                    if implicit:
                        vr = implicit_vr(tag, self.signed)
                        if MAX_SHORT_VALUE < length != UNDEFINED and vr in SHORT_VRS:
                            raise Refused(
                                f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} value of {length} bytes "
                                f"(at most {MAX_SHORT_VALUE}, PS3.5 7.1.2)"
                            )
                    else:
                        vr = _VR_NAMES.get(vr_bytes) or _vr_name(vr_bytes, pos - 8)
                        if vr_bytes in LONG_VRS:
                            if pos + 4 > size:
                                raise Unsupported("element header runs past the end")
                            length, pos = long(data, pos)[0], pos + 4
                        if self.known_un and vr == "UN" and length != UNDEFINED:
                            vr = implicit_vr(tag, self.signed)
                    if vr != "SQ" and (length != UNDEFINED or tag == PIXEL_DATA or vr != "UN"):
                        start = pos
                        if length == UNDEFINED:
                            pos, length = self._fragments(start, tag, vr)
                            kind = FRAGMENTS
                        elif (pos := start + length) > size:
                            raise Unsupported("value runs past the end")
                        else:
                            kind = VALUE
                        if quiet:
                            continue
                        if wanted is None or tag in wanted:
                            yield kind, tag, vr, start, length
                        elif group != top_group and not stack:
                            top_group = group
                            yield kind, tag, vr, start, length
                        continue
                    if len(stack) >= MAX_DEPTH:
                        raise Refused(f"sequences nested more than {MAX_DEPTH} deep")
                    if not quiet:
                        yield SEQUENCE, tag, vr, pos, length
                    stack.append((_sequence_end(pos, length, size), length, end, quiet))
                    quiet = quiet or (wanted is not None and tag not in wanted)
            elif pos != end and end != size:
                raise Unsupported("item content does not end where its length says")
            if not stack:
                return pos  # the data set ended (at ``end``, or at a stray item delimiter at the top)
            item_length, pos, end = self._next(pos, stack[-1][0], stack[-1][1])
            if end >= 0:
                if not quiet:
                    yield ITEM_START, ITEM, "", pos, item_length
            else:
                _, _, end, quiet = stack.pop()
                if not quiet:
                    yield END_SEQUENCE, SEQUENCE_END, "", pos, 0

    def _next(self, pos: int, sequence_end: int, length: int) -> tuple[int, int, int]:
        """At ``pos`` in a sequence: its next item (the item's length, where it starts, where it ends) or its end
        (0, the position after it, -1)."""
        data, size = self.data, len(self.data)
        if pos < sequence_end:
            if pos + 8 > size:
                raise Unsupported("item header runs past the end")
            group, elem, item_length = self._item(data, pos)
            tag, pos = group << 16 | elem, pos + 8
            if tag == ITEM:
                if item_length == UNDEFINED:
                    return item_length, pos, size
                if pos + item_length > sequence_end:
                    raise Unsupported("item runs past its sequence")
                return item_length, pos, pos + item_length
            if tag != SEQUENCE_END:
                raise Unsupported(f"expected an item, found ({tag:08X})")
        elif length == UNDEFINED:
            raise Unsupported("sequence without a delimiter")
        return 0, pos, -1

    def _fragments(self, pos: int, tag: int, vr: str) -> tuple[int, int]:
        """(position after the sequence delimiter, total length of the fragments) of encapsulated Pixel Data; an
        undefined length anywhere else is not Part 10 (PS3.5 7.1.1)."""
        if tag != PIXEL_DATA:
            raise Unsupported(f"undefined length on ({tag:08X}) {vr}")
        data, size, total = self.data, len(self.data), 0
        while pos + 8 <= size:
            group, elem, length = _IMPLICIT_LE(data, pos)
            tag, pos = group << 16 | elem, pos + 8
            if tag == SEQUENCE_END:
                return pos, total
            if tag != ITEM or length == UNDEFINED or pos + length > size:
                raise Unsupported("bad fragment")
            pos, total = pos + length, total + length
        raise Unsupported("encapsulated pixel data without a delimiter")


def _sequence_end(pos: int, length: int, size: int) -> int:
    end = size if length == UNDEFINED else pos + length
    if end > size:
        raise Unsupported("sequence runs past the end")
    return end


def _vr_name(vr_bytes: bytes, pos: int) -> str:
    if not (vr_bytes.isalpha() and vr_bytes.isupper()):
        raise Unsupported(f"VR {vr_bytes!r} at {pos}")
    _VR_NAMES[vr_bytes] = vr_bytes.decode("ascii")
    return _VR_NAMES[vr_bytes]


def implicit_vr(tag: int, signed: bool = False) -> str:
    """The VR of an element read in implicit VR: private creators LO, other private UN, group lengths UL, the
    data dictionary otherwise; ambiguous VRs resolved by PixelRepresentation (``signed``) and to OW."""
    if tag >> 16 & 1:  # private
        return "LO" if 0x10 <= (tag & 0xFFFF) <= 0xFF else "UN"
    if tag & 0xFFFF == 0:
        return "UL"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if vr in ("US or SS", "US or SS or OW"):
        return "SS" if signed else "US"
    if vr in ("OB or OW", "US or OW"):
        return "OW"
    return vr


def file_meta(raw: bytes) -> tuple[dict[int, bytes], int]:
    """The File Meta Information (group 0002, explicit VR little endian, after the preamble and DICM prefix) by
    tag, and the position of the data set after it."""
    pos, meta = 132, {}
    while pos + 8 <= len(raw) and raw[pos : pos + 2] == b"\x02\x00":
        group, elem, vr, length = _EXPLICIT_LE(raw, pos)
        if vr in LONG_VRS:
            if pos + 12 > len(raw):
                raise Unsupported("file meta runs past the end")
            length, start = _LONG_LE(raw, pos + 8)[0], pos + 12
        else:
            start = pos + 8
        if start + length > len(raw):
            raise Unsupported("file meta runs past the end")
        meta[group << 16 | elem] = raw[start : start + length]
        pos = start + length
    return meta, pos


GROUP_LENGTH_VALUE = 140  # file offset of the File Meta Information Group Length's value when it comes first


def meta_group_length(head: bytes) -> tuple[int | None, int] | None:
    """(the File Meta Information Group Length (0002,0000) as declared, the length of the group 0002 elements after
    it) when it is the first element, a UL of 4 bytes at ``GROUP_LENGTH_VALUE`` as PS3.10 §7.1 has it; None when the
    head is no such Part 10 start or the meta runs past it. The declared value is None when it is absent."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    try:
        _, end = file_meta(head)
    except Unsupported:
        return None
    if head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return None, end - 132
    return int.from_bytes(head[140:144], "little"), end - 144
