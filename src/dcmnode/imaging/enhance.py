"""Enhancement operators: a documented vendor extension of /rendered (``enhance=op:arg:arg,op...``), also used
by the CLI.

Each operator says on which image it works: ``before`` the window (float modality values, e.g. HU: smoothing,
segmentation) or ``after`` it (the [0, 1] display image: equalisation, contrast, edges, zoom). Each checks its
arguments and raises ``InvalidRequest`` naming the bad one. A pipeline keeps the written order within each
stage; ``before`` operators all run before the window, ``after`` ones after it. ``describe()`` gives the table
(``SPECS``: names, defaults, limits, the step a control offers) as JSON, served at ``GET /api/enhance``.

| operator | arguments (defaults) | what it does |
| --- | --- | --- |
| ``clahe`` | clip 0.01 (0-1), tiles 8 (2-64) | adaptive histogram equalisation ("density enhancement") |
| ``equalize`` | - | global histogram equalisation |
| ``density`` | strength 1.0 (0-5) | multi-scale density differentiation: adds back the detail at sigma 1, 4, 16 |
| ``contrast`` | factor 1.5 (0.1-10) | contrast boost about mid-grey |
| ``gamma`` | gamma 0.8 (0.1-10) | gamma curve |
| ``smooth`` | sigma 1.0 (0.1-20) | Gaussian smoothing (before the window) |
| ``unsharp`` | radius 1.0 (0.1-50), amount 0.5 (0-10) | unsharp masking |
| ``denoise`` | method bilateral or nlm, strength 0.05 (0-1) | edge-preserving denoise |
| ``edges`` | sigma 1.5 (0.1-20), mode overlay or alone | Canny edges, drawn over the image (red) or alone |
| ``segment`` | min_size 64 (0-1e6) | Otsu threshold on modality values, connected components as a coloured overlay |
| ``zoom`` | factor 2 (1-4), method lanczos or cubic | resolution enhancement by interpolation |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcmnode.errors import InvalidRequest

BEFORE, AFTER = "before", "after"


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Param:
    """One positional argument: a number within ``limits`` (low, high), or one of ``limits`` (the choices) when the
    default is text. ``step`` is the increment a control offers; any number within the limits is taken."""

    name: str
    default: float | str
    limits: tuple[float, float] | tuple[str, ...]
    step: float | None = None

    def bounds(self) -> tuple[float, float]:
        low, high = self.limits
        return float(low), float(high)


@dataclass(frozen=True, slots=True)
class _Spec:
    stage: str
    params: tuple[Param, ...]
    apply: Callable[..., np.ndarray]


def parse(text: str | None) -> list[Operator]:
    """``clahe:0.03,unsharp:1.0:0.5`` → operators, every argument checked (InvalidRequest naming it)."""
    if not text:
        return []
    out = []
    for part in text.split(","):
        name, *args = [p.strip() for p in part.strip().split(":")]
        spec = SPECS.get(name.lower())
        if spec is None:
            raise InvalidRequest(f"enhance: unknown operator {name!r}; known: {', '.join(sorted(SPECS))}")
        if len(args) > len(spec.params):
            raise InvalidRequest(f"enhance: {name} takes at most {len(spec.params)} argument(s)")
        _arguments(name.lower(), spec, tuple(args))
        out.append(Operator(name.lower(), tuple(args)))
    return out


def _arguments(name: str, spec: _Spec, given: tuple[str, ...]) -> list[float | str]:
    values: list[float | str] = []
    for i, param in enumerate(spec.params):
        default, limit = param.default, param.limits
        if i >= len(given) or given[i] == "":
            values.append(default)
            continue
        if isinstance(default, str):
            if given[i] not in limit:
                raise InvalidRequest(f"enhance: {name} argument {i + 1} must be one of {', '.join(map(str, limit))}")
            values.append(given[i])
            continue
        try:
            number = float(given[i])
        except ValueError as exc:
            raise InvalidRequest(f"enhance: {name} argument {i + 1} ({given[i]!r}) is not a number") from exc
        low, high = param.bounds()
        if not (low <= number <= high) or not np.isfinite(number):
            raise InvalidRequest(f"enhance: {name} argument {i + 1} must be within {low}-{high}, not {number}")
        values.append(number)
    return values


def stage(operators: list[Operator], which: str) -> list[Operator]:
    return [op for op in operators if SPECS[op.name].stage == which]


def apply(image: np.ndarray, operators: list[Operator], modality: np.ndarray | None = None) -> np.ndarray:
    """Apply operators of one stage in order. ``after`` images are [0, 1] floats, grey (H, W) or RGB (H, W, 3);
    ``modality`` (the modality values) is what ``segment`` thresholds."""
    for op in operators:
        spec = SPECS[op.name]
        args = _arguments(op.name, spec, op.args)
        if op.name == "segment":
            image = spec.apply(image, modality if modality is not None else image, *args)
        else:
            image = spec.apply(image, *args)
    return image


# -- operators -----------------------------------------------------------------------------------------------------
def _grey(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if image.ndim == 3:
        return np.stack([fn(image[..., c]) for c in range(image.shape[2])], axis=-1)
    return fn(image)


def _clahe(image: np.ndarray, clip: float, tiles: float) -> np.ndarray:
    from skimage.exposure import equalize_adapthist

    size = max(8, int(min(image.shape[:2]) // max(int(tiles), 1)))
    return _grey(image, lambda g: equalize_adapthist(np.clip(g, 0, 1), kernel_size=size, clip_limit=clip))


def _equalize(image: np.ndarray) -> np.ndarray:
    from skimage.exposure import equalize_hist

    return _grey(image, lambda g: equalize_hist(g, nbins=256))


def _density(image: np.ndarray, strength: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    def one(g: np.ndarray) -> np.ndarray:
        out = g.copy()
        for sigma, weight in ((1.0, 0.5), (4.0, 0.3), (16.0, 0.2)):
            out += strength * weight * (g - gaussian_filter(g, sigma))
        return out.clip(0, 1)

    return _grey(image, one)


def _contrast(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip((image - 0.5) * factor + 0.5, 0, 1)


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    curved: np.ndarray = np.power(image.clip(0, 1), gamma)
    return curved


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return _grey(values, lambda g: gaussian_filter(g, sigma))


def _unsharp(image: np.ndarray, radius: float, amount: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return _grey(image, lambda g: np.clip(g + amount * (g - gaussian_filter(g, radius)), 0, 1))


def _denoise(image: np.ndarray, method: str, strength: float) -> np.ndarray:
    from skimage.restoration import denoise_bilateral, denoise_nl_means

    if method == "nlm":
        return _grey(image, lambda g: denoise_nl_means(g, h=max(strength, 1e-3), fast_mode=True))
    return _grey(image, lambda g: denoise_bilateral(g, sigma_color=max(strength, 1e-3), sigma_spatial=2))


def _edges(image: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    from skimage.feature import canny

    grey = image.mean(axis=2) if image.ndim == 3 else image
    mask: np.ndarray = canny(grey, sigma=sigma)
    if mode == "alone":
        return mask.astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2) if image.ndim == 2 else image.copy()
    rgb[mask] = (1.0, 0.1, 0.1)
    return rgb


_LABEL_COLOURS = np.array(
    [(0.9, 0.2, 0.2), (0.2, 0.8, 0.2), (0.2, 0.4, 0.95), (0.95, 0.8, 0.1), (0.8, 0.3, 0.9), (0.1, 0.85, 0.85)]
)


def _segment(image: np.ndarray, values: np.ndarray, min_size: float) -> np.ndarray:
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.morphology import remove_small_objects

    grey = values.mean(axis=2) if values.ndim == 3 else values
    flat = float(grey.max()) == float(grey.min())
    mask = np.zeros(grey.shape, dtype=bool) if flat else grey > threshold_otsu(grey)
    if min_size > 0:
        mask = remove_small_objects(mask, max_size=int(min_size) - 1)  # removes objects of <= max_size pixels
    labels = label(mask)
    base = image.mean(axis=2) if image.ndim == 3 else image
    rgb = np.repeat(base[..., None], 3, axis=2)
    for n in range(1, int(labels.max()) + 1):
        colour = _LABEL_COLOURS[(n - 1) % len(_LABEL_COLOURS)]
        region = labels == n
        rgb[region] = 0.55 * rgb[region] + 0.45 * colour
    return rgb


def _zoom(image: np.ndarray, factor: float, method: str) -> np.ndarray:
    from PIL import Image

    if factor == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    resample = Image.Resampling.LANCZOS if method == "lanczos" else Image.Resampling.BICUBIC

    def one(g: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(g.astype(np.float32), mode="F").resize(size, resample), dtype=np.float32)

    return _grey(image, one).clip(0, 1)


def _number(name: str, default: float, low: float, high: float, step: float) -> Param:
    return Param(name, default, (low, high), step)


def _choice(name: str, *choices: str) -> Param:
    return Param(name, choices[0], choices)


SPECS: dict[str, _Spec] = {
    "clahe": _Spec(AFTER, (_number("clip", 0.01, 0.0, 1.0, 0.001), _number("tiles", 8.0, 2.0, 64.0, 1)), _clahe),
    "equalize": _Spec(AFTER, (), _equalize),
    "density": _Spec(AFTER, (_number("strength", 1.0, 0.0, 5.0, 0.1),), _density),
    "contrast": _Spec(AFTER, (_number("factor", 1.5, 0.1, 10.0, 0.1),), _contrast),
    "gamma": _Spec(AFTER, (_number("gamma", 0.8, 0.1, 10.0, 0.05),), _gamma),
    "smooth": _Spec(BEFORE, (_number("sigma", 1.0, 0.1, 20.0, 0.1),), _smooth),
    "unsharp": _Spec(AFTER, (_number("radius", 1.0, 0.1, 50.0, 0.1), _number("amount", 0.5, 0.0, 10.0, 0.1)), _unsharp),
    "denoise": _Spec(
        AFTER, (_choice("method", "bilateral", "nlm"), _number("strength", 0.05, 0.0, 1.0, 0.01)), _denoise
    ),
    "edges": _Spec(AFTER, (_number("sigma", 1.5, 0.1, 20.0, 0.1), _choice("mode", "overlay", "alone")), _edges),
    "segment": _Spec(AFTER, (_number("min_size", 64.0, 0.0, 1e6, 16),), _segment),
    "zoom": _Spec(AFTER, (_number("factor", 2.0, 1.0, 4.0, 0.5), _choice("method", "lanczos", "cubic")), _zoom),
}


def describe() -> list[dict[str, Any]]:
    """The table above as JSON (``GET /api/enhance``, from which the viewer builds its controls), in table order:
    each operator's name, stage (``before`` or ``after`` the window) and parameters, each with its name and
    default, and either min, max and step or its choices."""
    return [
        {"name": name, "stage": spec.stage, "params": [_param_json(p) for p in spec.params]}
        for name, spec in SPECS.items()
    ]


def _param_json(param: Param) -> dict[str, Any]:
    if isinstance(param.default, str):
        return {"name": param.name, "default": param.default, "choices": list(param.limits)}
    low, high = param.bounds()
    return {"name": param.name, "default": param.default, "min": low, "max": high, "step": param.step}
