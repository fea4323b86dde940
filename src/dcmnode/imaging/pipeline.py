"""The pixel pipeline: stored pixels to display pixels. Pure functions over numpy arrays and pydicom data sets; no
files, no network.

Order (PS3.3 C.11 / PS3.4 N.2, the grayscale standard display pipeline):
  decode (pydicom + pylibjpeg plugins; colour YBR → RGB, palette colour through its LUTs)
  → Modality LUT (Rescale Slope/Intercept, or the Modality LUT Sequence)      float "modality values"
  → [enhancement operators on modality values]
  → VOI (window LINEAR / LINEAR_EXACT / SIGMOID per C.11.2.1.2, or the VOI LUT Sequence, or an automatic window)
  → Presentation LUT (MONOCHROME1 and Presentation LUT Shape INVERSE invert, *after* VOI)
  → 8 bits.
Guards: frames over ``MAX_PIXELS`` and LUTs over ``MAX_LUT_ENTRIES`` are refused with a reason instead of
allocating gigabytes (dcm4che#1499).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

# the defining modules: pydicom.pixels re-exports these without __all__, which a type checker does not count
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from dcmnode.errors import InvalidInstance, InvalidRequest, NotAcceptable

MAX_PIXELS = 64 * 1024 * 1024  # per frame (e.g. 8192 x 8192)
MAX_LUT_ENTRIES = 1 << 20
WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True, slots=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if not np.isfinite(self.center) or not np.isfinite(self.width):
            raise InvalidRequest("window center and width must be numbers")
        if self.function not in WINDOW_FUNCTIONS:
            raise InvalidRequest(f"window function {self.function!r}: one of {', '.join(WINDOW_FUNCTIONS)}")
        minimum = 0.0 if self.function == "LINEAR_EXACT" else 1.0
        if self.width < minimum or (self.function != "LINEAR" and self.width <= 0):
            raise InvalidRequest(f"window width {self.width} is too small for {self.function}")


def number_of_frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise InvalidInstance(f"NumberOfFrames is not a number: {exc}") from exc


def is_color(ds: Dataset) -> bool:
    return int(ds.get("SamplesPerPixel") or 1) > 1 or str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR"


def check_size(ds: Dataset) -> None:
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (TypeError, ValueError) as exc:
        raise InvalidInstance(f"Rows/Columns are not numbers: {exc}") from exc
    if rows <= 0 or cols <= 0:
        raise NotAcceptable("this instance has no image to render")
    if rows * cols > MAX_PIXELS:
        raise NotAcceptable(f"frame of {rows}x{cols} is larger than {MAX_PIXELS} pixels")


def decode(ds: Dataset, frame: int = 1) -> np.ndarray:
    """Frame ``frame`` (1-based) as stored values; colour as RGB (YBR converted, palette looked up)."""
    check_size(ds)
    frames = number_of_frames(ds)
    if not 1 <= frame <= frames:
        raise InvalidRequest(f"frame {frame} does not exist: the instance has {frames} frame(s)")
    try:
        array = decode_frame(ds, frame - 1 if frames > 1 else None)
    except Exception as exc:
        syntax = UID(ds.file_meta.get("TransferSyntaxUID", "")) if "file_meta" in dir(ds) else ""
        raise NotAcceptable(f"cannot decode the pixel data ({getattr(syntax, 'name', syntax)}): {exc}") from exc
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        _check_lut_size(ds)
        array = apply_color_lut(array, ds)
    return array


# JPEG baseline/extended 8-bit: Pillow's libjpeg-turbo decodes as dcmtk's IJG libjpeg does (to the grey level);
# pylibjpeg differs by up to 3 levels in chroma upsampling. It stays the fallback, and decodes everything else.
PREFERRED_PLUGIN = {"1.2.840.10008.1.2.4.50": "pillow", "1.2.840.10008.1.2.4.51": "pillow"}


def decode_frame(src: Dataset | str, index: int | None, syntax: str = "") -> np.ndarray:
    """pydicom's decoders, preferring the plugin that decodes each syntax like the reference does."""
    if isinstance(src, Dataset):
        syntax = str(src.file_meta.get("TransferSyntaxUID", "")) if hasattr(src, "file_meta") else ""
    plugin = PREFERRED_PLUGIN.get(syntax)
    if plugin:
        try:
            return pixel_array(src, index=index, as_rgb=True, decoding_plugin=plugin)
        except Exception:
            pass  # e.g. 12-bit JPEG, which Pillow does not decode
    return pixel_array(src, index=index, as_rgb=True)


def _check_lut_size(ds: Dataset) -> None:
    for keyword in ("RedPaletteColorLookupTableDescriptor", "ModalityLUTSequence", "VOILUTSequence"):
        item = ds.get(keyword)
        if item is None:
            continue
        descriptors = [item] if keyword.endswith("Descriptor") else [getattr(i, "LUTDescriptor", None) for i in item]
        for descriptor in descriptors:
            if descriptor is not None and int(descriptor[0] or 65536) > MAX_LUT_ENTRIES:
                raise InvalidInstance(f"{keyword} has {descriptor[0]} entries (over {MAX_LUT_ENTRIES})")


def modality(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT: float modality values (e.g. HU)."""
    if is_color(ds):
        return stored.astype(np.float32)
    _check_lut_size(ds)
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    slope = float(ds.get("RescaleSlope") or 1.0)
    intercept = float(ds.get("RescaleIntercept") or 0.0)
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def stored_window(ds: Dataset, which: int = 0) -> Window | None:
    """The data set's window ``which`` (the first by default), if it has one."""
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is None or widths is None:
        return None
    centers = list(centers) if isinstance(centers, (list, tuple)) or hasattr(centers, "__iter__") else [centers]
    widths = list(widths) if isinstance(widths, (list, tuple)) or hasattr(widths, "__iter__") else [widths]
    if not centers or not widths:
        return None
    index = min(which, len(centers) - 1, len(widths) - 1)
    function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    try:
        return Window(
            float(centers[index]), float(widths[index]), function if function in WINDOW_FUNCTIONS else "LINEAR"
        )
    except (InvalidRequest, TypeError, ValueError):
        return None


def auto_window(values: np.ndarray) -> Window:
    """A window over the image's own range (the 0.5th to 99.5th percentile, so a few outliers do not flatten it)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Window(0.0, 1.0)
    low, high = np.percentile(finite, [0.5, 99.5]) if finite.size > 1000 else (finite.min(), finite.max())
    if high <= low:
        low, high = float(finite.min()), float(finite.max()) + 1.0
    return Window((float(low) + float(high)) / 2 + 0.5, float(high) - float(low) + 1, "LINEAR")


def window_values(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2: modality values to [0, 1]."""
    c, w = window.center, window.width
    if window.function == "LINEAR_EXACT":
        out = (values - c) / w + 0.5
    elif window.function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))).astype(np.float32)
    else:  # LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped below c - 0.5 - (w-1)/2 and above
        out = (values - (c - 0.5)) / max(w - 1.0, 1e-6) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def voi(ds: Dataset, values: np.ndarray, window: Window | None = None, stored: np.ndarray | None = None) -> np.ndarray:
    """VOI: an explicit window, else the data set's first window, else its VOI LUT Sequence, else automatic."""
    if window is None and "VOILUTSequence" in ds and stored is not None and "ModalityLUTSequence" not in ds:
        _check_lut_size(ds)
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = np.asarray(apply_voi_lut(stored, ds, index=0, prefer_lut=True), dtype=np.float32)
        return (out / float((1 << bits) - 1)).clip(0.0, 1.0)
    window = window or stored_window(ds) or auto_window(values)
    return window_values(values, window)


def inverted(ds: Dataset) -> bool:
    """MONOCHROME1 displays inverted; a Presentation LUT Shape of INVERSE inverts (again)."""
    monochrome1 = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    inverse = str(ds.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
    return monochrome1 != inverse


def to_8bit(unit: np.ndarray) -> np.ndarray:
    return np.rint(unit.clip(0.0, 1.0) * 255.0).astype(np.uint8)


def color_maximum(ds: Dataset, rgb: np.ndarray) -> float:
    """The full-scale value of a colour image's samples (8 bits; palette LUT output; BitsStored otherwise)."""
    if rgb.dtype.itemsize == 1:
        return 255.0
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        return 65535.0 if rgb.max(initial=0) > 255 else 255.0
    return float((1 << int(ds.get("BitsStored") or 8 * rgb.dtype.itemsize)) - 1)


def overlays(ds: Dataset, image: np.ndarray, frame: int = 1) -> np.ndarray:
    """Burn graphic overlay planes (60xx) into a uint8 grey image, foreground white ("Replace", PS3.3 C.9.2)."""
    if image.ndim != 2:
        return image
    out = None
    for group in range(0x6000, 0x6020, 2):
        if (group, 0x3000) not in ds or str(
            ds.get((group, 0x0040), "G").value if (group, 0x0040) in ds else "G"
        ) != "G":
            continue
        if int(ds.get((group, 0x0015)).value if (group, 0x0015) in ds else 1) != 1 or frame != 1:
            continue  # multi-frame overlays are left out
        try:
            plane = ds.overlay_array(group).astype(bool)
        except Exception:
            continue
        origin = ds.get((group, 0x0050))
        top, left = (int(origin.value[0]) - 1, int(origin.value[1]) - 1) if origin is not None else (0, 0)
        h, w = image.shape
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + plane.shape[0], h), min(left + plane.shape[1], w)
        if y1 <= y0 or x1 <= x0:
            continue
        out = image.copy() if out is None else out
        region = plane[y0 - top : y1 - top, x0 - left : x1 - left]
        out[y0:y1, x0:x1][region] = 255
    return image if out is None else out


def color_to_8bit(ds: Dataset, rgb: np.ndarray, window: Window | None) -> np.ndarray:
    """Colour images: windowed only on request; 16-bit palette/RGB output scaled to 8 bits."""
    values = rgb.astype(np.float32)
    if window is not None:
        return to_8bit(window_values(values, window))
    return to_8bit(values / color_maximum(ds, rgb))


def render(ds: Dataset, frame: int = 1, window: Window | None = None) -> np.ndarray:
    """The whole pipeline without enhancement: uint8, (rows, cols) grey or (rows, cols, 3) RGB."""
    stored = decode(ds, frame)
    if is_color(ds):
        return color_to_8bit(ds, stored, window)
    values = modality(ds, stored)
    unit = voi(ds, values, window, stored)
    if inverted(ds):
        unit = 1.0 - unit
    return overlays(ds, to_8bit(unit), frame)
