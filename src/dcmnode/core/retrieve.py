"""What a retrieve (WADO-RS, WADO-URI, C-MOVE, C-GET) sends: the stored instances a request names, and each
one in a transfer syntax the receiver accepts.

Stored files are sent as stored whenever the receiver accepts their transfer syntax (no decode, no re-encode);
otherwise decompressed to explicit (or implicit) VR little endian, the syntax every DICOM receiver accepts
(PS3.5 §10.1) — what dcm4chee learned to do (dcm4chee-arc-light#1210) and Orthanc#312 lacked.
"""

from __future__ import annotations

import io
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
