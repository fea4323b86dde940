"""One pass over a Part 10 file's bytes: checks that every element, item and sequence ends where it says (a
truncated or garbled file fails: ``part10.walk`` checks the grammar), and keeps the raw values of the attributes
ingest needs.

pydicom's ``dcmread`` builds an object per element (~1.4 ms for a CT header with private groups); this walk costs
~0.3 ms, which is a tenth of a C-STORE's server time. ``core.parse`` uses it first and falls back to pydicom for
anything it declines (``Unsupported``): big endian, deflate, odd VRs, and every malformed file, so pydicom and
the truncation guard keep the last word on bad input.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from dcmnode.part10.walk import (
    END_SEQUENCE,
    ITEM_START,
    PIXEL_DATA,
    SEQUENCE,
    VALUE,
    Unsupported,
    Walk,
    Walking,
    file_meta,
)

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"

__all__ = ["EXPLICIT_LITTLE", "IMPLICIT_LITTLE", "Scanned", "Unsupported", "scan", "scan_parts"]


@dataclass(slots=True)
class Scanned:
    transfer_syntax: str
    meta: dict[int, bytes]  # File Meta elements (group 0002) by tag
    values: dict[int, tuple[str, bytes]]  # wanted top-level elements: tag -> (VR, raw value)
    items: dict[int, list[dict[int, tuple[str, bytes]]]] = field(default_factory=dict)  # wanted sequences
    pixel_offset: int | None = None  # file offset of a native Pixel Data value (None: absent or encapsulated)
    groups: set[int] = field(default_factory=set)  # the top-level groups present (e.g. 0x6000 overlays)
    pixel_length: int = 0  # bytes of the native Pixel Data value
    fragments: int | None = None  # encapsulated Pixel Data: its fragments (the Basic Offset Table not counted)


def scan(raw: bytes, wanted: Collection[int], sequences: Collection[int] = ()) -> Scanned:
    """Walk the whole file; keep ``wanted`` top-level values and the first-level items of ``sequences``."""
    if len(raw) < 144 or raw[128:132] != b"DICM":
        raise Unsupported("no preamble and DICM prefix")
    meta, pos = file_meta(raw)
    syntax = _syntax(meta)
    found, kept = Scanned(syntax, meta, {}), set(wanted)
    events = Walk(raw, syntax == IMPLICIT_LITTLE).elements(pos, len(raw), {*kept, *sequences, PIXEL_DATA})
    _keep(found, events, kept, set(sequences), raw)
    return found


def scan_parts(head: bytes, data_set: memoryview, wanted: Collection[int], sequences: Collection[int] = ()) -> Scanned:
    """``scan`` of a Part 10 file held in two pieces, as a C-STORE gives it: ``head`` (preamble, prefix and the File
    Meta Information, ending where the data set starts) and ``data_set`` (the bytes as received, not copied). The
    result is what ``scan`` gives for ``head + data_set``: offsets are file offsets, values are ``bytes``."""
    if len(head) < 144 or head[128:132] != b"DICM":
        raise Unsupported("no preamble and DICM prefix")
    meta, pos = file_meta(head)
    if pos != len(head):
        raise Unsupported("the head holds more than the File Meta Information")
    syntax = _syntax(meta)
    found, kept = Scanned(syntax, meta, {}), set(wanted)
    events = Walk(data_set, syntax == IMPLICIT_LITTLE).elements(0, len(data_set), {*kept, *sequences, PIXEL_DATA})
    _keep(found, events, kept, set(sequences), data_set)
    if found.pixel_offset is not None:
        found.pixel_offset += pos
    return found


def _syntax(meta: dict[int, bytes]) -> str:
    """The File Meta's transfer syntax, when the walk reads it (little endian, native or encapsulated)."""
    syntax = meta.get(0x00020010, b"").rstrip(b"\x00 ").decode("ascii", "replace")
    compressed = syntax.startswith("1.2.840.10008.1.2.4.") or syntax == "1.2.840.10008.1.2.5"
    if syntax not in (EXPLICIT_LITTLE, IMPLICIT_LITTLE) and not compressed:
        raise Unsupported(f"transfer syntax {syntax!r}")
    return syntax


def _keep(found: Scanned, events: Walking, wanted: set[int], sequences: set[int], data: bytes | memoryview) -> None:
    """Keep what ``scan`` was asked for from the walk's events (only those of ``wanted`` tags and sequences,
    and the first element of each group): top level (depth 0) values, groups and the native Pixel Data offset;
    the values directly in the items of a wanted top-level sequence."""
    depth = 0
    collect: int | None = None  # the wanted sequence open at the top
    keep: dict[int, tuple[str, bytes]] | None = None  # its current item
    groups, values = found.groups, found.values
    for kind, tag, vr, start, length in events:
        if kind == VALUE:
            if depth == 0:
                groups.add(tag >> 16)
                if tag in wanted:
                    values[tag] = (vr, bytes(data[start : start + length]))
                if tag == PIXEL_DATA:
                    found.pixel_offset, found.pixel_length = start, length
            elif keep is not None and depth == 1 and tag in wanted:
                keep[tag] = (vr, bytes(data[start : start + length]))
        elif kind == ITEM_START:
            if depth == 1 and collect is not None:
                keep = {}
                found.items.setdefault(collect, []).append(keep)
        elif kind == END_SEQUENCE:
            depth -= 1
            if depth == 0:
                collect = keep = None
        elif kind == SEQUENCE:
            if depth == 0:
                found.groups.add(tag >> 16)
                collect = tag if tag in sequences else None
            depth += 1
        elif depth == 0:  # FRAGMENTS: encapsulated Pixel Data
            found.groups.add(tag >> 16)
            if tag == PIXEL_DATA:
                found.fragments = _fragments(data, start)


def _fragments(data: bytes | memoryview, pos: int) -> int:
    """The fragments of encapsulated Pixel Data whose first item (the Basic Offset Table) starts at ``pos``; the
    walk has checked the items already."""
    items = -1  # the first item is the offset table
    while int.from_bytes(data[pos : pos + 4], "little") == 0xE000FFFE:
        items += 1
        pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
    return max(items, 0)
