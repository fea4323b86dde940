"""The pixel pipeline against an independent renderer, dcmtk's dcmj2pnm, on every image of pydicom's bundled
files and the deid-data files that both render; plus the rules of PS3.3 C.11 checked directly."""

from __future__ import annotations

import io
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dcmnode.core import parse, render
from dcmnode.errors import DcmnodeError, InvalidInstance, InvalidRequest, NotAcceptable
from dcmnode.imaging import pipeline
from dcmnode.part10 import pixel_header
from tests.factories import DEID_FILES, TEST_FILES, ct_series

GENERATED = Path(tempfile.mkdtemp(prefix="dcmnode-oracle-"))


def _generated() -> list[Path]:
    """Kinds the bundled files lack: MONOCHROME1 (a CR-like inverted image) and a SIGMOID VOI function."""
    mono1 = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    mono1.PhotometricInterpretation = "MONOCHROME1"
    mono1.save_as(GENERATED / "generated_monochrome1.dcm")
    sigmoid = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    sigmoid.WindowCenter, sigmoid.WindowWidth, sigmoid.VOILUTFunction = 600, 800, "SIGMOID"
    sigmoid.save_as(GENERATED / "generated_sigmoid.dcm")
    return sorted(GENERATED.glob("*.dcm"))


FILES = sorted(TEST_FILES.glob("*.dcm")) + sorted(DEID_FILES.rglob("*.dcm")) + _generated()
# Where the two renderers may differ, and why (everything else must match within one grey level):
TOLERANCE = {
    # 12-bit lossy JPEG: pylibjpeg's decoder and dcmtk's IJG 12-bit library round the IDCT differently
    "JPGExtended.dcm": 2,
}
# dcmj2pnm renders this big-endian copy unlike its own little-endian original (rtdose.dcm); ours renders both
# alike, which test_big_endian_renders_like_its_little_endian_copy checks instead.
DCMTK_DISAGREES_WITH_ITSELF = {"rtdose_expb.dcm", "rtdose_expb_1frame.dcm"}


def read(path: Path) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds or "Rows" not in ds:
                return None
            int(ds.Rows), int(ds.Columns), int(ds.get("BitsAllocated") or 0)  # noqa: B018 (values must parse)
        except Exception:
            return None  # pydicom's deliberately broken files (bad VRs, no meta)
    return ds


def ours(ds: Dataset, window: pipeline.Window | None) -> np.ndarray:
    return render.render_array(ds, pipeline.decode(ds, 1), render.RenderRequest(window=window))


# Images (Part 10 files with pixel data, as pydicom reads them); the rest of pydicom's files (SR, RT plan,
# waveforms, files without meta) are not parametrised at all.
IMAGES = [p for p in FILES if read(p) is not None]
# pydicom's deliberately broken images: the decoder must refuse each with this error, never render it.
REFUSED: dict[str, tuple[type[DcmnodeError], str]] = {
    # 12-bit JPEG Extended whose scan header is malformed (pylibjpeg: misplaced marker; Pillow has no 12-bit)
    "JPEG-lossy.dcm": (NotAcceptable, "cannot decode the pixel data"),
    # a sequence delimiter inside the JPEG 2000 fragment: the codestream header cannot be read
    "JPEG2000-embedded-sequence-delimiter.dcm": (NotAcceptable, "cannot decode the pixel data"),
    # Pixel Data shorter than Rows x Columns x Bits Allocated
    "MR_truncated.dcm": (NotAcceptable, "cannot decode the pixel data"),
    # Number of Frames '1A' (badVR.dcm's invalid IS)
    "badVR.dcm": (InvalidInstance, "NumberOfFrames is not a number"),
}
ORACLE = [p for p in IMAGES if p.name not in REFUSED]


def dcmtk(path: Path, out: Path, window: pipeline.Window | None) -> np.ndarray | None:
    args = ["+Ww", str(window.center), str(window.width)] if window else []
    if window and window.function == "SIGMOID":
        args.append("+Wfs")
    result = subprocess.run(["dcmj2pnm", "+on", "+F", "1", *args, str(path), str(out)], capture_output=True, timeout=60)
    return np.asarray(Image.open(out)) if result.returncode == 0 and out.exists() else None


@pytest.mark.parametrize("path", ORACLE, ids=[p.name for p in ORACLE])
def test_matches_dcmj2pnm(path: Path, tmp_path: Path) -> None:
    if path.name in DCMTK_DISAGREES_WITH_ITSELF:
        pytest.skip("dcmj2pnm renders this file unlike its own little-endian copy (see the big-endian test)")
    ds = read(path)
    assert ds is not None
    stored = pipeline.decode(ds, 1)  # any refusal not listed in REFUSED fails here
    window = None
    if not pipeline.is_color(ds):  # the same explicit window for both: the stored one, else min-max
        values = pipeline.modality(ds, stored)
        low, high = float(values.min()), float(values.max())
        window = pipeline.stored_window(ds) or pipeline.Window((low + high) / 2 + 0.5, high - low + 1)
    theirs = dcmtk(path, tmp_path / "dcmtk.png", window)
    if theirs is None:
        pytest.skip("dcmj2pnm cannot render it (e.g. JPEG 2000: Debian's dcmtk has no codec)")
    mine = ours(ds, window)
    assert mine.shape == theirs.shape
    assert int(np.abs(mine.astype(int) - theirs.astype(int)).max()) <= TOLERANCE.get(path.name, 1)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refuses_the_broken_images(name: str) -> None:
    ds = read(TEST_FILES / name)
    assert ds is not None, f"{name} is no longer a readable image of pydicom's test files"
    error, reason = REFUSED[name]
    with pytest.raises(error, match=reason):
        pipeline.decode(ds, 1)


def test_the_oracle_covers_the_kinds_that_matter() -> None:
    """The comparison above is only worth something if it runs on all these kinds of image."""
    kinds = set()
    for path in FILES:
        ds = read(path)
        if ds is None:
            continue
        try:
            pipeline.number_of_frames(ds)
        except InvalidInstance:
            continue
        kinds.add(str(ds.get("PhotometricInterpretation")))
        kinds.add(str(ds.file_meta.get("TransferSyntaxUID")))
        if int(ds.get("PixelRepresentation") or 0):
            kinds.add("signed")
        if pipeline.number_of_frames(ds) > 1:
            kinds.add("multi-frame")
    for kind in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL_422", "PALETTE COLOR", "signed", "multi-frame"):
        assert kind in kinds
    for syntax in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80"):
        assert syntax in kinds


def test_big_endian_renders_like_its_little_endian_copy() -> None:
    little, big = read(TEST_FILES / "rtdose.dcm"), read(TEST_FILES / "rtdose_expb.dcm")
    assert little is not None and big is not None
    window = pipeline.Window(1024500.5, 459001.0)
    assert np.array_equal(ours(little, window), ours(big, window))


def test_window_functions_follow_ps3_3() -> None:
    x = np.array([-1000.0, 39.5, 40.0, 239.0, 240.0, 1000.0], dtype=np.float32)
    linear = pipeline.window_values(x, pipeline.Window(40, 400, "LINEAR"))
    # C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clamped
    expected = np.clip((x - 39.5) / 399 + 0.5, 0, 1)
    assert np.allclose(linear, expected)
    exact = pipeline.window_values(x, pipeline.Window(40, 400, "LINEAR_EXACT"))
    assert np.allclose(exact, np.clip((x - 40) / 400 + 0.5, 0, 1))
    sigmoid = pipeline.window_values(x, pipeline.Window(40, 400, "SIGMOID"))
    assert np.allclose(sigmoid, 1 / (1 + np.exp(-4 * (x - 40) / 400)))
    # worked by hand: W400/C40, HU -140 → 0.050, 0 → 0.401, 100 → 0.652 → 13, 102, 166 of 255
    hu = np.array([-140.0, 0.0, 100.0], dtype=np.float32)
    assert list(pipeline.to_8bit(pipeline.window_values(hu, pipeline.Window(40, 400)))) == [13, 102, 166]
    with pytest.raises(InvalidRequest):
        pipeline.Window(40, 0, "LINEAR")
    with pytest.raises(InvalidRequest):
        pipeline.Window(40, 400, "CUBIC")


def test_monochrome1_inverts_after_the_window() -> None:
    [ds] = ct_series(1, rows=8, cols=8)
    ds.PixelData = np.arange(64, dtype=np.int16).reshape(8, 8).tobytes()
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    window = pipeline.Window(31.5, 64)
    grey = pipeline.render(ds, 1, window)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = pipeline.render(ds, 1, window)
    assert np.abs(inverted.astype(int) - (255 - grey.astype(int))).max() <= 1  # rounding of exact halves
    assert inverted[0, 0] > inverted[-1, -1]  # low values are light in MONOCHROME1
    ds.PresentationLUTShape = "INVERSE"  # inverts once more
    assert np.array_equal(pipeline.render(ds, 1, window), grey)


def test_default_window_is_the_first_then_automatic() -> None:
    [ds] = ct_series(1, rows=8, cols=8)
    ds.PixelData = np.linspace(0, 2000, 64).astype(np.int16).reshape(8, 8).tobytes()
    ds.WindowCenter, ds.WindowWidth = [40, 500], [400, 2000]
    first = pipeline.render(ds, 1)
    assert np.array_equal(first, pipeline.render(ds, 1, pipeline.Window(40, 400)))
    del ds.WindowCenter, ds.WindowWidth
    automatic = pipeline.render(ds, 1)
    assert automatic.min() == 0 and automatic.max() == 255  # spans the image's own range


def test_guards_against_absurd_sizes() -> None:
    [ds] = ct_series(1, rows=8, cols=8)
    ds.Rows, ds.Columns = 100_000, 100_000
    with pytest.raises(NotAcceptable, match="larger than"):
        pipeline.decode(ds, 1)
    [ds] = ct_series(1, rows=8, cols=8)
    item = Dataset()
    item.LUTDescriptor = [60000, 0, 16]  # entries, first mapped value, bits
    item.LUTData = [0] * 4
    ds.ModalityLUTSequence = [item]
    pipeline.MAX_LUT_ENTRIES, saved = 1000, pipeline.MAX_LUT_ENTRIES
    try:
        with pytest.raises(InvalidInstance, match="entries"):
            pipeline.modality(ds, np.zeros((8, 8), dtype=np.int16))
    finally:
        pipeline.MAX_LUT_ENTRIES = saved


PLAIN = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "emri_small.dcm", "liver.dcm", "OBXXXX1A.dcm"]


@pytest.mark.parametrize(
    "request_",
    [
        render.RenderRequest("image/png"),
        render.RenderRequest("image/png", window=pipeline.Window(100, 500)),
        render.RenderRequest(
            "image/png", window=pipeline.Window(100, 500, "SIGMOID"), viewport=render.Viewport(40, 30)
        ),
    ],
    ids=["stored window", "request window", "sigmoid + viewport"],
)
def test_the_plain_fast_path_renders_like_the_general_path(request_: render.RenderRequest, tmp_path: Path) -> None:
    """Plain grey images skip pydicom (render._render_plain); the pixels must not change."""
    paths = [p for p in FILES if p.name in PLAIN or p.name.startswith("generated_")]
    mono1 = tmp_path / "mono1_inverse.dcm"  # MONOCHROME1 with Presentation LUT Shape INVERSE: two inversions
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.PhotometricInterpretation, ds.PresentationLUTShape = "MONOCHROME1", "INVERSE"
    ds.save_as(mono1)
    taken = 0
    for path in [*paths, mono1]:
        ds = read(path)
        if ds is None:
            continue
        found = render._scan_native(path)
        plain = pixel_header.plain_image(found) if found is not None else None
        fast = render._render_plain(path, request_, plain) if plain is not None else None
        if fast is None:
            continue
        taken += 1
        general = render.encode(render.render_array(ds, pipeline.decode(ds, 1), request_), request_)
        pixels = [np.asarray(Image.open(io.BytesIO(data))) for data in (fast, general)]
        assert np.array_equal(*pixels), path
    assert taken >= 3  # the test is only worth something if the fast path was taken


def test_the_render_summary_kept_at_ingest_renders_like_the_general_path() -> None:
    """Ingest keeps a summary of each plain grey image (``instances.render``, core/pixel_header.py); a render
    from it gives the general path's pixels, with the stored window and with a requested one. Colour,
    compressed, big-endian and overlay images get none (they render from their file)."""
    jobs = [render.RenderRequest("image/png"), render.RenderRequest("image/png", window=pipeline.Window(100, 500))]
    taken, refused = 0, set()
    for path in FILES:
        try:
            header = parse.parse_file(path).record.instance.get("render")
        except DcmnodeError:
            continue
        if header is None:
            refused.add(path.name)
            continue
        ds = read(path)
        assert ds is not None, path
        for job in jobs:
            if job.window is None and "WindowCenter" not in ds:
                continue
            from_summary = render.render_file(path, job, header)
            general = render.encode(render.render_array(ds, pipeline.decode(ds, 1), job), job)
            pixels = [np.asarray(Image.open(io.BytesIO(data))) for data in (from_summary, general)]
            assert np.array_equal(*pixels), path
        taken += 1
    assert taken >= 5
    assert {"SC_rgb_small_odd.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "examples_overlay.dcm"} <= refused
