"""The Part 10 head of a received C-STORE data set: preamble, ``DICM`` and the File Meta Information.

A C-STORE carries no File Meta (PS3.7 9.1.1, PS3.10 7.1): the SCP writes it from the request and the presentation
context. These are the bytes pynetdicom's ``Event.encoded_dataset()`` puts in front of the data set
(``create_file_meta`` + ``encode_file_meta``: Group Length, Version 00 01, Media Storage SOP Class and Instance UIDs
from the request, the context's Transfer Syntax UID, pynetdicom's Implementation Class UID and Version Name),
written directly instead of through a pydicom ``FileMetaDataset`` (~0.4 ms per instance): the stored files stay
byte for byte what they were (tests/test_dimse_store.py compares the two).
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dcmnode.errors import InvalidInstance

PREAMBLE = b"\0" * 128 + b"DICM"
_SHORT = struct.Struct("<HH2sH")


def _element(elem: int, vr: bytes, value: bytes) -> bytes:
    return _SHORT.pack(0x0002, elem, vr, len(value)) + value


def _uid(text: str) -> bytes:
    """A UI value as Part 10 writes it: ASCII, padded to even length with NUL (PS3.5 6.2)."""
    raw = text.encode("ascii", "replace")
    if len(raw) > 64:
        raise InvalidInstance("the request's Affected SOP Class or Instance UID is longer than a UID (64 characters)")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


_VERSION = b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<L", 2) + b"\x00\x01"  # (0002,0001) OB, 4-byte length
_IMPLEMENTATION = _element(0x0012, b"UI", _uid(str(PYNETDICOM_IMPLEMENTATION_UID))) + _element(
    0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION)
)


def head(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information for a data set received under ``transfer_syntax``."""
    group = b"".join(
        (
            _VERSION,
            _element(0x0002, b"UI", _uid(sop_class)),
            _element(0x0003, b"UI", _uid(sop_instance)),
            _element(0x0010, b"UI", _uid(transfer_syntax)),
            _IMPLEMENTATION,
        )
    )
    return b"".join((PREAMBLE, b"\x02\x00\x00\x00UL\x04\x00", struct.pack("<L", len(group)), group))
