"""A super-resolved (or uncertainty) image as a DICOM *derived* instance of its source.

What changes and what is kept follows ``../shared/notes/super-resolution.md`` §4, citing PS3.3:
- same SOP Class, Patient, Study and Frame of Reference; new Series and SOP Instance UIDs (C.12.1, C.7.3.1);
- Image Type ``DERIVED\\SECONDARY\\<source value 3>\\SUPERRES`` (C.7.6.1.1.2);
- Derivation Description and Derivation Code Sequence (DCM 113085 "Spatial resampling", plus 113086 "Edge
  enhancement" for the classical path), Source Image Sequence with purpose DCM 121322 (C.12.4, C.7.6.1.1.4);
- Referenced Series Sequence: the Common Instance Reference module, required because the instance references
  another instance of the same study (C.12.2);
- Contributing Equipment Sequence with purpose DCM 109102 "Processing Equipment" (C.12.1);
- Rows/Columns times the factor, Pixel Spacing (and Imager / Nominal Scanned Pixel Spacing) divided by it, Image
  Position (Patient) moved to the centre of the new first pixel (C.7.6.2.1.1); orientation, slice location and
  thickness unchanged;
- the stored values keep the source's bit depth, signedness, rescale and window: ``stored = round((v - b) / m)``,
  clipped to the stored range, so that HU stay HU (C.11.1); Smallest/Largest Pixel Value removed (stale);
- removed: icon image, overlays (drawn on the old grid), private elements, Referenced Performed Procedure Step.
Written uncompressed (explicit VR little endian): Lossy Image Compression is copied, never reset (C.7.6.1.1.5).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dcmnode.errors import NotAcceptable

SUPERRES, UNCERTAINTY = "SUPERRES", "UNCERTAINTY"
REMOVED = (
    "IconImageSequence",
    "ReferencedPerformedProcedureStepSequence",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "SourceImageSequence",
    "ReferencedImageSequence",
    "DerivationCodeSequence",
    "DerivationDescription",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
)
SCALED_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")


@dataclass(frozen=True, slots=True)
class Derivation:
    """What made the derived series: recorded in each instance and in the SR document."""

    factor: int
    method: str  # "learned" | "classical"
    description: str  # Derivation Description (0008,2111), at most 1024 characters
    software_version: str
    manufacturer: str = "dcmnode"
    when: datetime | None = None

    @property
    def stamp(self) -> datetime:
        return self.when or datetime.now().astimezone()


def uid_for(*parts: str) -> str:
    """A UID that depends only on ``parts`` (2.25 form): a retried job writes the same instances again."""
    return str(generate_uid(prefix=None, entropy_srcs=list(parts)))


def check_source(ds: Dataset) -> None:
    """Only single-frame grey images with a linear modality LUT go through SR (a clear reason otherwise)."""
    if "PixelData" not in ds or "Rows" not in ds:
        raise NotAcceptable(f"instance {ds.get('SOPInstanceUID', '?')} has no image")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise NotAcceptable("super-resolution takes grey images; this series is colour")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise NotAcceptable("super-resolution takes single-frame images; this series is multi-frame")
    if int(ds.BitsAllocated) not in (8, 16):
        raise NotAcceptable(f"BitsAllocated {ds.BitsAllocated}: super-resolution takes 8- or 16-bit images")
    if "ModalityLUTSequence" in ds:
        raise NotAcceptable("a Modality LUT Sequence cannot be inverted to stored values; not supported")


def derived(
    source: Dataset,
    values: np.ndarray,
    derivation: Derivation,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    series_description: str,
    kind: str = SUPERRES,
    padding: np.ndarray | None = None,
) -> Dataset:
    """The derived instance holding ``values`` (modality scale, e.g. HU) on the grid ``factor`` times finer.
    ``padding``: where (on the new grid) the source held Pixel Padding Value, which is written back there.
    ``source`` needs its header only (``check_source`` has vetted its image)."""
    f = derivation.factor
    rows, cols = int(source.Rows) * f, int(source.Columns) * f
    if values.shape != (rows, cols):
        raise ValueError(f"values are {values.shape}, expected {(rows, cols)}")
    ds = _copy_header(source)
    stamp = derivation.stamp
    date, time = stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S.%f")
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = date
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = time
    ds.ImageType = _image_type(source, kind)
    ds.DerivationDescription = derivation.description[:1024]
    ds.DerivationCodeSequence = DicomSequence(_derivation_codes(derivation.method))
    ds.SourceImageSequence = DicomSequence([_source_reference(source)])
    ds.ReferencedSeriesSequence = DicomSequence([_series_reference(source)])
    ds.ContributingEquipmentSequence = DicomSequence(
        [*source.get("ContributingEquipmentSequence", []), _equipment(derivation, stamp)]
    )
    _regrid(ds, source, f)
    if kind == UNCERTAINTY:
        _store_uncertainty(ds, values)
    else:
        _store_values(ds, source, values, padding)
    return ds


def _copy_header(source: Dataset) -> Dataset:
    ds = Dataset()
    for elem in source:
        if elem.tag.is_private or 0x6000 <= elem.tag.group <= 0x601E or elem.keyword in REMOVED:
            continue
        ds.add(pydicom.DataElement(elem.tag, elem.VR, elem.value))
    return ds


def _image_type(source: Dataset, kind: str) -> list[str]:
    values = list(source.get("ImageType", []) or [])
    third = values[2] if len(values) > 2 and values[2] else ("AXIAL" if source.get("Modality") == "CT" else "")
    return ["DERIVED", "SECONDARY", third, kind]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _derivation_codes(method: str) -> list[Dataset]:
    codes = [_code("113085", "DCM", "Spatial resampling")]  # CID 7203 has no super-resolution code
    if method == "classical":
        codes.append(_code("113086", "DCM", "Edge enhancement"))
    return codes


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code("121322", "DCM", "Source image for image processing operation")]
    )
    return item


def _series_reference(source: Dataset) -> Dataset:
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item = Dataset()
    item.SeriesInstanceUID = source.SeriesInstanceUID
    item.ReferencedInstanceSequence = DicomSequence([instance])
    return item


def _equipment(derivation: Derivation, stamp: datetime) -> Dataset:
    item = Dataset()
    item.Manufacturer = derivation.manufacturer
    item.SoftwareVersions = derivation.software_version
    item.ContributionDateTime = stamp.strftime("%Y%m%d%H%M%S.%f%z")
    item.ContributionDescription = f"{derivation.method} super-resolution x{derivation.factor}"[:64]
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code("109102", "DCM", "Processing Equipment")])
    return item


def _regrid(ds: Dataset, source: Dataset, f: int) -> None:
    ds.Rows, ds.Columns = int(source.Rows) * f, int(source.Columns) * f
    for keyword in SCALED_SPACINGS:
        values = source.get(keyword)
        if values:
            setattr(ds, keyword, [_ds(float(v) / f) for v in values])
    position, orientation, spacing = (
        source.get("ImagePositionPatient"),
        source.get("ImageOrientationPatient"),
        source.get("PixelSpacing"),
    )
    if position and orientation and spacing and len(position) == 3 and len(orientation) == 6:
        # The position is the centre of the first pixel (C.7.6.2.1.1): on a grid f times finer over the same
        # field of view it moves back by (f - 1) / (2 f) of the old spacing along the row and column directions.
        row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
        d_row, d_col = float(spacing[0]), float(spacing[1])
        shift = (f - 1) / (2 * f)
        moved = np.array(position, float) - shift * d_col * row_dir - shift * d_row * col_dir
        ds.ImagePositionPatient = [_ds(v) for v in moved]


def _ds(value: float) -> str:
    """A DS string of at most 16 characters (PS3.5 Table 6.2-1)."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6g}"


def stored_range(source: Dataset) -> tuple[int, int]:
    bits = int(source.BitsStored)
    if int(source.PixelRepresentation) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def value_range(source: Dataset) -> tuple[float, float]:
    """The modality-scale range the stored range can hold (SR output is clipped to it)."""
    low, high = stored_range(source)
    slope, intercept = float(source.get("RescaleSlope") or 1.0), float(source.get("RescaleIntercept") or 0.0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _store_values(ds: Dataset, source: Dataset, values: np.ndarray, padding: np.ndarray | None) -> None:
    slope, intercept = float(source.get("RescaleSlope") or 1.0), float(source.get("RescaleIntercept") or 0.0)
    low, high = stored_range(source)
    stored = np.clip(np.rint((values.astype(np.float64) - intercept) / slope), low, high)
    signed = int(source.PixelRepresentation) == 1
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (int(source.BitsAllocated), signed)
    ]
    if padding is not None and "PixelPaddingValue" in source:  # padding stays padding (C.7.5.1.1.2)
        stored[padding] = int(source.PixelPaddingValue)
    ds.PixelData = stored.astype(dtype).tobytes()


def _store_uncertainty(ds: Dataset, values: np.ndarray) -> None:
    """Per-pixel spread in modality units, unsigned 16-bit: through a finer rescale slope where the source's
    rescale is not the identity (CT), as whole units otherwise (MR has no Modality LUT; DX, MG and IO require
    Rescale Slope 1 and Intercept 0, PS3.3 C.8.11.3.1.2)."""
    spread = np.clip(np.nan_to_num(values.astype(np.float64)), 0, None)
    top = float(np.percentile(spread, 99.9)) if spread.size else 0.0
    identity = float(ds.get("RescaleSlope") or 1) == 1 and float(ds.get("RescaleIntercept") or 0) == 0
    if not identity:
        step = max(top / 4000.0, 1e-3)
        ds.RescaleSlope, ds.RescaleIntercept = _ds(step), "0"
    else:
        step = 1.0
    stored = np.clip(np.rint(spread / step), 0, 65535).astype(np.uint16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if "PresentationLUTShape" in ds:
        ds.PresentationLUTShape = "IDENTITY"
    for keyword in ("VOILUTSequence", "WindowCenterWidthExplanation", "PixelPaddingValue", "PixelPaddingRangeLimit"):
        if keyword in ds:
            del ds[keyword]
    width = max(top, step)
    ds.WindowCenter, ds.WindowWidth = _ds(width / 2), _ds(width)
    ds.PixelData = stored.tobytes()


def part10(ds: Dataset, implementation_version: str) -> bytes:
    """``ds`` as a Part 10 file, explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = implementation_version[:16]
    ds.file_meta = meta
    return encoded(ds)


def encoded(ds: Dataset) -> bytes:
    """``ds`` (with its File Meta) as Part 10 bytes."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def series_numbers(source_number: object, offsets: Sequence[int] = (1000, 2000, 3000)) -> list[int]:
    """Series numbers of the SR, uncertainty and report series: the source's plus an offset (IS fits 2^31)."""
    text = str(source_number or "").strip()
    base = int(text) if text.lstrip("-").isdigit() else 0
    return [(base + offset) % 2**31 for offset in offsets]
