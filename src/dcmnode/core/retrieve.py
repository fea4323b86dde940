"""What a retrieve (WADO-RS, WADO-URI, C-MOVE, C-GET) sends: the stored instances a request names, and each
one in a transfer syntax the receiver accepts.

Stored files are sent as stored whenever the receiver accepts their transfer syntax (no decode, no re-encode);
otherwise decompressed to explicit (or implicit) VR little endian, the syntax every DICOM receiver accepts
(PS3.5 §10.1) — what dcm4chee learned to do (dcm4chee-arc-light#1210) and Orthanc#312 lacked.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dcmnode.core import query as q
from dcmnode.errors import NotAcceptable, NotFound
from dcmnode.part10 import walk
from dcmnode.store import Store

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)


@dataclass(frozen=True, slots=True)
class StoredFile:
    study: str
    series: str
    sop: str
    sop_class: str
    transfer_syntax: str
    path: Path
    size: int
    render: str | None = None  # the render summary kept at ingest (part10.pixel_header), NULL for older rows


def select(
    store: Store, matches: Mapping[str, str], level: q.Level = q.Level.IMAGE, groups: frozenset[str] | None = None
) -> list[StoredFile]:
    """The stored instances under the entities ``matches`` names (unique keys, or any matching key), of the
    studies ``groups`` sees (None or ``*``: every study)."""
    rows = q.instances(store.index, matches, level, groups)
    return [
        StoredFile(
            study=r["StudyInstanceUID"],
            series=r["SeriesInstanceUID"],
            sop=r["SOPInstanceUID"],
            sop_class=r["SOPClassUID"],
            transfer_syntax=r["TransferSyntaxUID"],
            path=store.files.absolute(r["path"]),
            size=int(r["size"]),
            render=r["render"],
        )
        for r in rows
    ]


def resource(
    store: Store, study: str, series: str | None = None, sop: str | None = None, groups: frozenset[str] | None = None
) -> list[StoredFile]:
    """The instances of a study, series or instance named in a URL; NotFound if there are none, or if the study
    is outside ``groups`` (as if it did not exist)."""
    matches = {"StudyInstanceUID": study}
    if series:
        matches["SeriesInstanceUID"] = series
    if sop:
        matches["SOPInstanceUID"] = sop
    found = select(store, matches, groups=groups)
    if not found:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFound(f"{what} is not stored here")
    return found


def plan(stored: str, accepted: Iterable[str]) -> str | None:
    """How to send a file to a receiver that accepted ``accepted`` for its SOP class: ``"as-stored"``,
    ``"decompress"`` (to explicit VR little endian; the DIMSE layer re-encodes between uncompressed
    syntaxes), or None when nothing fits."""
    accepted = set(accepted)
    uncompressed = accepted & set(UNCOMPRESSED[:3])
    if stored in accepted or (stored in UNCOMPRESSED and uncompressed):
        return AS_STORED
    return DECOMPRESS if uncompressed else None


AS_STORED = "as-stored"
DECOMPRESS = "decompress"
HEAD = 4096  # bytes read for the File Meta (dcmnode writes ~200; a longer meta is read whole, up to META_MAX)
META_MAX = 1 << 20
TRANSFER_SYNTAX_TAG = 0x00020010


@dataclass(frozen=True, slots=True)
class Head:
    offset: int  # where the data set starts in the file (after preamble, DICM and the File Meta)
    transfer_syntax: str  # the File Meta's Transfer Syntax UID


def stored_head(path: Path) -> Head | None:
    """Where the stored file's data set starts and its transfer syntax, from its File Meta (no pydicom); None
    when the file has no well-formed File Meta with a Transfer Syntax UID (the caller then reads it with
    pydicom)."""
    size = HEAD
    with open(path, "rb") as fp:
        head = fp.read(size)
        while True:
            whole = len(head) < size  # the file ends inside what was read
            try:
                meta, offset = walk.file_meta(head)
                if whole or offset + 8 <= len(head):  # it stopped at an element of another group, or at the end
                    break
            except walk.Unsupported:  # an element runs past what was read
                if whole:
                    return None
            if size >= META_MAX:
                return None
            head += fp.read(size)
            size *= 2
    syntax = meta.get(TRANSFER_SYNTAX_TAG)
    if head[128:132] != b"DICM" or syntax is None:
        return None
    return Head(offset, syntax.rstrip(b"\0 ").decode("ascii", "replace"))


COLD = 0.0005  # seconds: a 4 KiB read of the page cache takes ~20 us; slower, and the file is on disk


class Readahead:
    """Reads the next instance of a retrieve into the page cache while the current one is sent: one daemon thread
    per process, fed by ``ahead`` (never blocks: a full queue drops the hint). It times a 4 KiB read of the file's
    head and, when that came from disk (slower than ``COLD``), asks the kernel for the whole file
    (``posix_fadvise`` WILLNEED, which walks every page and costs more than reading a cached file, so a cached
    file is left alone)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._pid = 0  # the process whose thread runs (a forked child starts its own)
        self._lock = threading.Lock()

    def ahead(self, path: Path) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    threading.Thread(
                        target=self._run, args=(self._queue,), name="retrieve-readahead", daemon=True
                    ).start()
                    self._pid = os.getpid()
        if self._queue.qsize() < 4:
            self._queue.put(path)

    @staticmethod
    def _run(paths: queue.SimpleQueue[Path]) -> None:
        while True:
            warm(paths.get())


def warm(path: Path) -> bool:
    """Bring ``path`` into the page cache if its head read showed it is not there; whether it asked the kernel."""
    advise = getattr(os, "posix_fadvise", None)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        started = time.perf_counter()
        os.pread(fd, 4096, 0)
        if advise is None or time.perf_counter() - started < COLD:
            return False
        advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


READAHEAD = Readahead()


def dataset(item: StoredFile, how: str = AS_STORED) -> Dataset:
    """The instance as a pydicom Dataset, as stored or decompressed."""
    ds = pydicom.dcmread(item.path)
    if how == DECOMPRESS and UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        decompress(ds)
    return ds


def decompress(ds: Dataset) -> Dataset:
    """Decompress pixel data in place to explicit VR little endian (pylibjpeg plugins: JPEG, JPEG-LS,
    JPEG 2000, RLE). NotAcceptable when no codec can. The instance keeps its SOP Instance UID: decoding the stored
    bitstream is a change of transfer syntax, not a new instance (pydicom 3 makes a new UID by default, so each
    WADO-RS retrieve or C-MOVE of a compressed instance to a peer that takes only native data got another one)."""
    source = UID(ds.file_meta.TransferSyntaxUID)
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # no plugin for this syntax, or a corrupt stream
        raise NotAcceptable(f"cannot decompress {source.name or source}: {exc}") from exc
    return ds


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """A Part 10 file of ``ds`` in an uncompressed little-endian syntax. Big-endian pixel data is swapped
    (pydicom re-encodes the other values, not the raw Pixel Data bytes)."""
    if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise NotAcceptable(f"cannot encode in {transfer_syntax}: only explicit or implicit VR little endian")
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        decompress(ds)
    if ds.original_encoding[1] is False and "PixelData" in ds:
        pixels = ds.pixel_array
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.preamble = ds.preamble or b"\0" * 128
    buffer = io.BytesIO()
    pydicom.dcmwrite(
        buffer, ds, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True, force_encoding=True
    )
    return buffer.getvalue()
