"""Burned-in text (deid/pixels.py): which instances may carry it, OCR masking on every frame, configured rectangles,
compressed input, the check after masking, and no OCR engine → refused. Images are drawn at run time with Pillow."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pixel_array
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from dcmnode.deid import pixels
from dcmnode.deid.pixels import MaskedRegion, PixelMask, clean_pixel_data, may_carry_burned_in_text
from dcmnode.errors import DeidentificationRefused

US_MF = "1.2.840.10008.5.1.4.1.1.3.1"
US = "1.2.840.10008.5.1.4.1.1.6.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
REPO = Path(__file__).resolve().parents[1]
IDENTIFYING = ["DOE^JOHN", "DOE", "JOHN", "PID12345", "19700101"]
ROWS, COLUMNS = 480, 640


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's own scalable font (no system font needed)


def _frame(seed: int, texts: Sequence[tuple[tuple[int, int], str, int]], rgb: bool) -> np.ndarray:
    """An ultrasound-like frame: a sector of smooth speckle on black, annotation drawn on top."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    sector = (np.hypot(xx - 320, yy - 60) < 380) & (np.abs(xx - 320) < (yy - 60) * 0.9)
    speckle = rng.integers(20, 150, (ROWS // 4, COLUMNS // 4), dtype=np.uint8)
    speckle = np.asarray(Image.fromarray(speckle).resize((COLUMNS, ROWS), Image.Resampling.BILINEAR))
    grey = np.where(sector, speckle, 0).astype(np.uint8)
    image = Image.fromarray(np.stack([grey] * 3, axis=2) if rgb else grey)
    draw = ImageDraw.Draw(image)
    for (x, y), text, size in texts:
        draw.text((x, y), text, fill=(255, 255, 160) if rgb else 255, font=_font(size))
    return np.asarray(image)


ANNOTATION = [((16, 12), "DOE^JOHN", 26), ((420, 12), "PID12345", 26), ((16, 440), "19700101 10:22", 22)]


def _us(frames: list[np.ndarray], sop_class: str = US_MF, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.Manufacturer = "Acme Medical"
    ds.ManufacturerModelName = "Sono 5000"
    ds.Rows, ds.Columns = frames[0].shape[:2]
    rgb = frames[0].ndim == 3
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 * frames[0].dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = b"".join(f.astype(f.dtype.newbyteorder("<")).tobytes() for f in frames)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _frames(ds: Dataset) -> list[np.ndarray]:
    count = int(ds.get("NumberOfFrames") or 1)
    return [pixel_array(ds, index=i if count > 1 else None) for i in range(count)]


def _legible(frame: np.ndarray, photometric: str = "RGB") -> list[str]:
    return pixels._legible(pixels._words(pixels._tesseract(), frame, photometric), IDENTIFYING)


def _outside_identical(before: np.ndarray, after: np.ndarray, regions: list[MaskedRegion], frame: int) -> None:
    keep = np.ones(before.shape[:2], dtype=bool)
    for r in regions:
        if r.frame == frame:
            keep[r.y : r.y + r.height, r.x : r.x + r.width] = False
    assert np.array_equal(before[keep], after[keep]), f"frame {frame}: a pixel outside the masks changed"
    assert not np.array_equal(before, after), f"frame {frame}: nothing was masked"


def test_names_drawn_on_three_frames_are_masked_on_each_and_nothing_else_changes() -> None:
    # the text moves a little from frame to frame: each frame is read on its own
    originals = [_frame(n, [((x + 8 * n, y), t, s) for (x, y), t, s in ANNOTATION], rgb=True) for n in range(3)]
    ds = _us(originals)
    rule = PixelMask("acme", None, ROWS, COLUMNS, ((600, 200, 30, 40),))
    elsewhere = PixelMask("Other Vendor", None, None, None, ((0, 0, 640, 480),))
    assert all(_legible(f) for f in originals)  # the detector reads the name before (the test can fail)
    started = time.perf_counter()
    regions = clean_pixel_data(ds, [rule, elsewhere], IDENTIFYING)
    seconds = (time.perf_counter() - started) / 3
    print(f"\nclean_pixel_data: {seconds:.2f} s per 640x480 RGB frame (OCR before and after, both polarities)")
    after = _frames(ds)
    assert {r.frame for r in regions if r.source == "ocr"} == {1, 2, 3}
    assert [(r.frame, r.x, r.y, r.width, r.height) for r in regions if r.source == "mask"] == [
        (n, 600, 200, 30, 40) for n in (1, 2, 3)
    ]  # the matching rule on every frame, the other vendor's not at all
    for n, (before, out) in enumerate(zip(originals, after, strict=True), 1):
        assert _legible(out) == [], f"frame {n}: the name is still legible"
        _outside_identical(before, out, regions, n)
        assert (out[200:240, 600:630] == 0).all()  # black
        drawn = np.any(before != _frame(n - 1, [], rgb=True), axis=2)  # every pixel the annotation touched
        assert (out[drawn] == 0).all(), f"frame {n}: a pixel of the drawn text is not masked"
    assert ds.BurnedInAnnotation == "NO"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_jpeg_baseline_input_is_decoded_masked_and_stored_uncompressed() -> None:
    source = _frame(7, ANNOTATION, rgb=True)
    buffer = io.BytesIO()
    Image.fromarray(source).save(buffer, format="JPEG", quality=95)  # YCbCr 4:2:0, as ultrasound carts store
    ds = _us([source], sop_class=US)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    decoded = pixel_array(ds, as_rgb=True)
    regions = clean_pixel_data(ds, [], IDENTIFYING)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    assert not ds["PixelData"].is_undefined_length and len(ds.PixelData) == ROWS * COLUMNS * 3
    assert ds.LossyImageCompression == "01"  # its lossy history stays
    out = pixel_array(ds)
    _outside_identical(decoded, out, regions, 1)
    assert _legible(out) == []


def test_monochrome1_16_bit_is_filled_with_its_black() -> None:
    grey = _frame(3, ANNOTATION[:1], rgb=False).astype(np.uint16) * 16  # 12 bits stored
    ds = _us([4095 - grey], sop_class=US, PhotometricInterpretation="MONOCHROME1", BitsStored=12, HighBit=11)
    regions = clean_pixel_data(ds, [], IDENTIFYING)
    out = pixel_array(ds)
    drawn = grey != _frame(3, [], rgb=False).astype(np.uint16) * 16
    assert (out[drawn] == 4095).all()
    _outside_identical(4095 - grey, out, regions, 1)


def _tall_name() -> Dataset:
    image = Image.new("L", (640, 150), 0)
    ImageDraw.Draw(image).text((40, 30), "JOHN DOE", fill=255, font=_font(80))
    return _us([np.asarray(image)], sop_class=US)


def test_a_name_that_is_not_masked_is_found_after_masking_and_refused() -> None:
    # words taller than a third of the frame are not taken for annotation and are left alone; the check after
    # masking still reads the patient's name there, so the instance is refused (and left as it was)
    ds = _tall_name()
    assert "JOHN" in _legible(pixel_array(ds), "MONOCHROME2")
    before = bytes(ds.PixelData)
    with pytest.raises(DeidentificationRefused, match="still legible on frame 1") as caught:
        clean_pixel_data(ds, [], IDENTIFYING)
    assert "JOHN" not in str(caught.value).upper()  # the message goes to logs: it names no value
    assert bytes(ds.PixelData) == before and "BurnedInAnnotation" not in ds


def test_no_tesseract_is_a_refusal_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    ds = _us([_frame(1, ANNOTATION, rgb=False)], sop_class=US)
    with pytest.raises(DeidentificationRefused, match="OCR engine is not available"):
        clean_pixel_data(ds, [], IDENTIFYING)


def test_no_tesseract_on_path_in_a_fresh_process_is_a_refusal() -> None:
    code = (
        "from pydicom.dataset import Dataset\n"
        "from dcmnode.deid.pixels import clean_pixel_data\n"
        "from dcmnode.errors import DeidentificationRefused\n"
        "ds = Dataset(); ds.Rows = ds.Columns = 2; ds.BitsAllocated = 8; ds.SamplesPerPixel = 1\n"
        "ds.PhotometricInterpretation = 'MONOCHROME2'; ds.PixelData = bytes(4)\n"
        "try:\n    clean_pixel_data(ds, [], [])\n"
        "except DeidentificationRefused as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "", "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "OCR engine is not available" in result.stdout


def test_an_encapsulated_pdf_cannot_be_cleaned() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    ds.EncapsulatedDocument = b"%PDF-1.4\n"
    with pytest.raises(DeidentificationRefused, match="encapsulated document"):
        clean_pixel_data(ds, [], IDENTIFYING)


@pytest.mark.parametrize(
    ("sop_class", "attrs", "expected"),
    [
        (US, {}, True),  # the flag absent
        (US, {"BurnedInAnnotation": "YES"}, True),
        (US, {"BurnedInAnnotation": "NO"}, False),  # trusted
        (US_MF, {}, True),
        ("1.2.840.10008.5.1.4.1.1.6.2", {}, True),  # Enhanced US Volume
        ("1.2.840.10008.5.1.4.1.1.7", {}, True),  # Secondary Capture
        ("1.2.840.10008.5.1.4.1.1.7.4", {"BurnedInAnnotation": "YES"}, True),  # multi-frame true colour SC
        ("1.2.840.10008.5.1.4.1.1.7.2", {"BurnedInAnnotation": "NO"}, False),
        ("1.2.840.10008.5.1.4.1.1.77.1.1", {}, True),  # VL Endoscopic
        ("1.2.840.10008.5.1.4.1.1.77.1.4", {}, True),  # VL Photographic
        ("1.2.840.10008.5.1.4.1.1.104.1", {}, True),  # Encapsulated PDF
        (CT, {}, False),
        (CT, {"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, True),
        (CT, {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "SeriesDescription": "Dose Report"}, True),
        (CT, {"SeriesDescription": "Patient Protocol"}, True),
        (CT, {"SeriesDescription": "Dose Report", "BurnedInAnnotation": "NO"}, False),
        ("1.2.840.10008.5.1.4.1.1.4", {"SeriesDescription": "T1 AX"}, False),  # MR
    ],
)
def test_which_instances_may_carry_burned_in_text(sop_class: str, attrs: dict[str, object], expected: bool) -> None:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    for key, value in attrs.items():
        setattr(ds, key, value)
    assert may_carry_burned_in_text(ds) is expected


def test_mask_rules_match_like_ctp() -> None:
    ds = _us([np.zeros((4, 6), dtype=np.uint8)], sop_class=US)
    assert PixelMask(None, None, None, None, ()).matches(ds)
    assert PixelMask("ACME", "sono", 4, 6, ()).matches(ds)
    assert not PixelMask("ACME", "sono", 4, 7, ()).matches(ds)
    assert not PixelMask("GE", None, None, None, ()).matches(ds)


def test_looking_for_tesseract_leaves_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment is every later child's: an OMP_THREAD_LIMIT=1 set for tesseract reached the SR
    worker's torch, whose training then hung (the learned SR tests timed out after the pixel tests had run)."""
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    before = dict(os.environ)
    pixels._tesseract()
    assert dict(os.environ) == before
