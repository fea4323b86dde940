"""Burned-in text: which instances may carry it, and the Clean Pixel Data Option (PS3.15 E.3.1).

PS3.15 E.1.1 leaves text burned into the pixels to the de-identifier: the Basic Profile removes attributes, not
pixels, and Burned In Annotation (0028,0301, PS3.3 C.7.6.1.1.x General Image / C.24.2 Encapsulated Document) is the
only hint a header gives. ``may_carry_burned_in_text`` says which instances the engine must refuse unless Clean Pixel
Data is chosen; ``clean_pixel_data`` then finds text with OCR (Debian's ``tesseract-ocr`` through ``pytesseract``),
masks it on every frame together with the configured rectangles of the device (CTP's pixel anonymizer scripts:
Manufacturer, model and image size → rectangles), stores the result uncompressed (lossless), OCRs again and refuses
the instance if a value of the patient is still legible. No OCR engine is a refusal, never a silent pass.

Work is frame by frame: one decoded frame (and its OCR images) in memory at a time, plus the output pixel buffer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from dcmnode.errors import DeidentificationRefused


@dataclass(frozen=True, slots=True)
class PixelMask:
    """A configured ``[[deid.pixel_masks]]`` rule: where it matches (None = any), the rectangles (x, y, width,
    height, in pixels of the frame) are filled on every frame."""

    manufacturer: str | None
    model: str | None
    rows: int | None
    columns: int | None
    rectangles: tuple[tuple[int, int, int, int], ...]

    def matches(self, ds: Dataset) -> bool:
        """CTP style: Manufacturer and Manufacturer Model Name contain the text (case-insensitive), Rows and Columns
        equal."""
        return (
            _contains(ds.get("Manufacturer"), self.manufacturer)
            and _contains(ds.get("ManufacturerModelName"), self.model)
            and (self.rows is None or _int(ds.get("Rows")) == self.rows)
            and (self.columns is None or _int(ds.get("Columns")) == self.columns)
        )


@dataclass(frozen=True, slots=True)
class MaskedRegion:
    """A filled rectangle: ``frame`` is 1-based; ``source`` is "ocr" (text found) or "mask" (a configured rule)."""

    frame: int
    x: int
    y: int
    width: int
    height: int
    source: str


def _contains(value: Any, wanted: str | None) -> bool:
    return wanted is None or wanted.strip().upper() in str(value or "").upper()


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- which instances may carry burned-in text --------------------------------------------------------------------

# SOP Class UIDs (PS3.4 Annex B, Table B.5-1; PS3.6 Annex A) whose pixels routinely carry text: the patient's name,
# ID and dates typed by the device or captured from a screen.
ULTRASOUND = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
}
SECONDARY_CAPTURE = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
VISIBLE_LIGHT = {
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.5": "Wide Field Ophthalmic Photography Stereographic Projection Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.5.6": "Wide Field Ophthalmic Photography 3D Coordinates Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image Storage",  # label and overview images
    "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography Image Storage",
}
ENCAPSULATED = {
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",  # the document is the "pixels" (PS3.3 C.24.2)
}
BURNED_IN_CLASSES: dict[str, str] = {**ULTRASOUND, **SECONDARY_CAPTURE, **VISIBLE_LIGHT, **ENCAPSULATED}

# Any other class is suspect when its Image Type or description says it is a capture of a screen: dose reports and
# "patient protocol" pages are often CT or SC images of the console (CTP's DicomPixelAnonymizer filter, the ``deid``
# recipes' "SCREEN SAVE" / "Dose" rules).
SCREEN_IMAGE_TYPES = ("SCREEN SAVE", "SCREENSHOT", "SCREEN CAPTURE", "DOSE", "DOSE_INFO", "DOSE REPORT")
SCREEN_DESCRIPTION = re.compile(r"dose\s*(report|info|summary|record)|patient\s*protocol|screen\s*(save|shot|capture)",
                                re.IGNORECASE)  # fmt: skip


def may_carry_burned_in_text(ds: Dataset) -> bool:
    """Whether the instance's pixels may show identity: Burned In Annotation is not "NO" (or is absent) and the
    instance is ultrasound, secondary capture, visible light (endoscopy, photographs, microscopy), an encapsulated
    PDF, or a screen capture / dose report of any class. A "NO" is trusted (PS3.3: the device says there is none)."""
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "NO":
        return False
    if str(ds.get("SOPClassUID", "")) in BURNED_IN_CLASSES:
        return True
    image_type = [str(v).strip().upper() for v in _values(ds.get("ImageType"))]
    if any(t in image_type for t in SCREEN_IMAGE_TYPES):
        return True
    text = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ImageComments", "DerivationDescription"))
    return SCREEN_DESCRIPTION.search(text) is not None


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


# --- OCR ---------------------------------------------------------------------------------------------------------

# Every word tesseract reports is masked, whatever its confidence: a name with a caret ("DOE^JOHN") reads at 9 %.
# Page segmentation 3 (automatic layout) sets image regions (speckle, anatomy) apart from text lines, where the
# sparse-text modes 11/12 read hundreds of "words" into ultrasound speckle and take 4-6 times longer.
MIN_CONFIDENCE = 0.0
MIN_HEIGHT = 4  # pixels of the frame: smaller "words" are noise, not legible text
PAD = 3  # pixels added around each word box (tesseract's boxes hug the glyphs; anti-aliasing spills over)
MAX_TEXT_HEIGHT = 1 / 3  # a "word" taller than this share of the frame is not annotation: it is left, and checked
TESSERACT_CONFIG = "--psm 3"
UPSCALE_BELOW = 1200  # frames narrower than this are enlarged 2x for OCR (annotation fonts are small)


def _tesseract() -> Any:
    """pytesseract, once tesseract answers; DeidentificationRefused when either is missing."""
    try:
        import pytesseract
    except ImportError as exc:
        raise DeidentificationRefused(
            "Clean Pixel Data: the OCR engine is not available (the Python package pytesseract is not installed)"
        ) from exc
    # No OMP_THREAD_LIMIT set here: the process's environment is everyone's (it reached the SR worker's torch,
    # whose training then hung here).
    try:
        pytesseract.get_tesseract_version()
    except Exception as exc:  # TesseractNotFoundError, or a binary that does not run
        raise DeidentificationRefused(
            "Clean Pixel Data: the OCR engine is not available (tesseract not found: install Debian's tesseract-ocr)"
        ) from exc
    return pytesseract


def _ocr_images(frame: np.ndarray, photometric: str) -> tuple[list[Image.Image], float]:
    """The frame as 8-bit grey images for tesseract, both polarities (tesseract reads dark text on light best,
    annotation is mostly light on dark), enlarged when small; and the scale factor."""
    values = frame.max(axis=2) if frame.ndim == 3 else frame  # coloured text: its brightest channel
    values = values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    grey = ((values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)).astype(np.uint8)
    if photometric == "MONOCHROME1":
        grey = 255 - grey  # as displayed
    image = Image.fromarray(grey)
    scale = 2.0 if image.width < UPSCALE_BELOW else 1.0
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    inverted = Image.fromarray(255 - np.asarray(image))
    return [inverted, image], scale


@dataclass(frozen=True, slots=True)
class _Word:
    text: str
    x: int
    y: int
    width: int
    height: int


def _words(tesseract: Any, frame: np.ndarray, photometric: str) -> list[_Word]:
    """Words tesseract reads in the frame (either polarity), boxes in frame pixels."""
    images, scale = _ocr_images(frame, photometric)
    found: list[_Word] = []
    for image in images:
        try:
            data = tesseract.image_to_data(image, config=TESSERACT_CONFIG, output_type=tesseract.Output.DICT)
        except Exception as exc:  # TesseractError (no language data, a crash): no silent pass
            raise DeidentificationRefused(f"Clean Pixel Data: the OCR engine failed: {str(exc)[:200]}") from exc
        for text, conf, left, top, width, height in zip(
            data["text"], data["conf"], data["left"], data["top"], data["width"], data["height"], strict=True
        ):
            text = str(text).strip()
            if not text or not any(c.isalnum() for c in text) or float(conf) < MIN_CONFIDENCE:
                continue
            if height / scale < MIN_HEIGHT:
                continue
            found.append(
                _Word(text, int(left / scale), int(top / scale), int(np.ceil(width / scale)),
                      int(np.ceil(height / scale)))
            )  # fmt: skip
    return list(dict.fromkeys(found))  # both polarities often read the same word


# OCR's usual confusions, folded on both sides before comparing (O/0, I/l/1/|, S/5, B/8, Z/2).
_FOLD = str.maketrans({"0": "O", "Q": "O", "D": "O", "1": "I", "L": "I", "|": "I", "!": "I", "5": "S", "$": "S",
                       "8": "B", "2": "Z"})  # fmt: skip


def _normalise(text: str) -> str:
    return "".join(c for c in text.upper().translate(_FOLD) if c.isalnum())


def _legible(words: Iterable[_Word], identifying: Sequence[str]) -> list[str]:
    """The identifying values (4+ characters) found in the recognised text (words joined line by line, so
    "DOE, JOHN" and "DOE^JOHN" both read as DOEJOHN)."""
    text = _normalise("".join(w.text for w in words))
    hits = []
    for value in identifying:
        folded = _normalise(value)
        if len(value.strip()) >= 4 and len(folded) >= 4 and folded in text:
            hits.append(value)
    return hits


# --- masking -----------------------------------------------------------------------------------------------------

NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def clean_pixel_data(ds: Dataset, masks: Sequence[PixelMask], identifying: Sequence[str]) -> list[MaskedRegion]:
    """Mask burned-in text on every frame of ``ds`` (in place): the words OCR finds and the rectangles of every
    matching ``masks`` rule, filled with black (the minimum of the representation; MONOCHROME1's maximum). The
    pixels are stored uncompressed in Explicit VR Little Endian (compressed input is decoded: lossless from there
    on), every pixel outside the returned regions identical to the decoded input. Then OCR runs again and the
    instance is refused if any of ``identifying`` is still legible. Burned In Annotation becomes "NO"."""
    if "PixelData" not in ds:
        what = "an encapsulated document" if "EncapsulatedDocument" in ds else "no pixel data"
        raise DeidentificationRefused(f"Clean Pixel Data cannot clean this instance: it has {what} (not an image)")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise DeidentificationRefused("Clean Pixel Data cannot clean float pixel data")
    tesseract = _tesseract()
    rows, columns = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    bits = _int(ds.get("BitsAllocated")) or 0
    samples = _int(ds.get("SamplesPerPixel")) or 1
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if rows <= 0 or columns <= 0 or bits not in (8, 16) or samples not in (1, 3):
        raise DeidentificationRefused(
            f"Clean Pixel Data cannot clean {rows}x{columns} pixels of {bits} bits, {samples} samples"
            " (8 or 16 bits, 1 or 3 samples)"
        )
    if photometric == "PALETTE COLOR":
        raise DeidentificationRefused("Clean Pixel Data cannot clean PALETTE COLOR pixels (convert to RGB first)")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise DeidentificationRefused(f"Clean Pixel Data: Number of Frames is not a number: {exc}") from exc
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)) if "file_meta" in dir(ds) else ""
    rectangles = [r for mask in masks if mask.matches(ds) for r in mask.rectangles]

    out: bytearray | None = None
    regions: list[MaskedRegion] = []
    out_photometric = photometric
    for index in range(frames):
        try:
            frame = pixel_array(ds, index=index if frames > 1 else None, as_rgb=True)
        except Exception as exc:
            name = getattr(UID(syntax), "name", syntax)
            raise DeidentificationRefused(f"Clean Pixel Data cannot decode the pixel data ({name}): {exc}") from exc
        if samples == 3 and photometric.startswith("YBR"):
            out_photometric = "RGB"  # decoded as RGB (pydicom converts YBR), stored as RGB
        frame = np.ascontiguousarray(frame)
        fill = _fill(frame, ds, photometric)
        found = _mask_frame(tesseract, frame, out_photometric, rectangles, fill, index + 1)
        regions.extend(found)
        hits = _legible(_words(tesseract, frame, out_photometric), identifying)
        if hits:
            raise DeidentificationRefused(
                f"Clean Pixel Data: text of the patient is still legible on frame {index + 1} after masking"
                f" ({len(hits)} value(s)); the instance is not released"
            )  # the values themselves are never put in a message (logs)
        data = frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()
        if out is None:
            out = bytearray(len(data) * frames)
        out[index * len(data) : (index + 1) * len(data)] = data
    assert out is not None
    if len(out) % 2:
        out.append(0)  # PS3.5 7.1: even length
    _store_native(ds, bytes(out), bits, out_photometric, samples)
    ds.BurnedInAnnotation = "NO"  # PS3.15 E.3.1; the engine adds 113101 to the method code sequence
    return regions


def _fill(frame: np.ndarray, ds: Dataset, photometric: str) -> int:
    """Black: the minimum of the pixel representation, except MONOCHROME1 where the maximum is black."""
    info = np.iinfo(frame.dtype)
    stored = _int(ds.get("BitsStored")) or info.bits
    signed = info.min < 0
    low = -(1 << (stored - 1)) if signed else 0
    high = (1 << (stored - 1)) - 1 if signed else (1 << stored) - 1
    return high if photometric == "MONOCHROME1" else low


def _mask_frame(
    tesseract: Any,
    frame: np.ndarray,
    photometric: str,
    rectangles: Sequence[tuple[int, int, int, int]],
    fill: int,
    number: int,
) -> list[MaskedRegion]:
    rows, columns = frame.shape[0], frame.shape[1]
    regions: list[MaskedRegion] = []
    for x, y, w, h in rectangles:
        region = _clip(x, y, w, h, rows, columns)
        if region:
            regions.append(MaskedRegion(number, *region, "mask"))
    for word in _words(tesseract, frame, photometric):
        if word.height > rows * MAX_TEXT_HEIGHT:
            continue  # not annotation; if it is the patient's, the check after masking refuses the instance
        pad = max(PAD, word.height // 6)
        region = _clip(word.x - pad, word.y - pad, word.width + 2 * pad, word.height + 2 * pad, rows, columns)
        if region:
            regions.append(MaskedRegion(number, *region, "ocr"))
    regions = list(dict.fromkeys(regions))  # both polarities often find the same word
    for r in regions:
        frame[r.y : r.y + r.height, r.x : r.x + r.width] = fill
    return regions


def _clip(x: int, y: int, w: int, h: int, rows: int, columns: int) -> tuple[int, int, int, int] | None:
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(columns, x + w), min(rows, y + h)
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _store_native(ds: Dataset, data: bytes, bits: int, photometric: str, samples: int) -> None:
    """The masked pixels as native Pixel Data in Explicit VR Little Endian: the encapsulation attributes go
    (PS3.5 A.4: Extended Offset Table only with encapsulated data), the File Meta says the new syntax. Lossy Image
    Compression stays as it was: a lossy history is kept (PS3.3 C.7.6.1.1.5)."""
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    ds.add_new(0x7FE00010, "OB" if bits == 8 else "OW", data)
    ds["PixelData"].is_undefined_length = False
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0  # pydicom's decode is colour-by-pixel; stored so
    if "file_meta" in dir(ds):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
