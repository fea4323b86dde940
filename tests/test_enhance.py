"""Each enhancement operator changes a known image in the expected direction, and refuses bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from dcmnode.errors import InvalidRequest
from dcmnode.imaging import enhance


def run(image: np.ndarray, text: str, modality: np.ndarray | None = None) -> np.ndarray:
    ops = enhance.parse(text)
    out = enhance.apply(image.astype(np.float32), enhance.stage(ops, enhance.BEFORE))
    return enhance.apply(out, enhance.stage(ops, enhance.AFTER), modality if modality is not None else image)


def low_contrast(seed: int = 0) -> np.ndarray:
    """A dim, low-contrast image: a faint square on a grey background, with a gradient."""
    y, x = np.mgrid[0:128, 0:128]
    image = 0.45 + 0.05 * (x / 128)
    image[40:88, 40:88] += 0.04
    return image + np.random.default_rng(seed).normal(0, 0.005, image.shape)


def noisy_square(sigma: float = 0.1, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    clean = np.full((96, 96), 0.2)
    clean[24:72, 24:72] = 0.8
    return clean, np.clip(clean + np.random.default_rng(seed).normal(0, sigma, clean.shape), 0, 1)


def detail(image: np.ndarray) -> float:
    """High-frequency energy: mean absolute Laplacian."""
    centre = 4 * image[1:-1, 1:-1]
    return float(np.abs(centre - image[:-2, 1:-1] - image[2:, 1:-1] - image[1:-1, :-2] - image[1:-1, 2:]).mean())


def test_clahe_raises_local_contrast() -> None:
    image = low_contrast()
    out = run(image, "clahe:0.02")
    assert out.std() > 3 * image.std()
    square, background = out[50:78, 50:78].mean(), out[5:30, 5:30].mean()
    assert square - background > 2 * (image[50:78, 50:78].mean() - image[5:30, 5:30].mean())


def test_equalize_spreads_the_histogram() -> None:
    image = low_contrast()
    out = run(image, "equalize")
    assert out.min() < 0.05 and out.max() > 0.95 and np.histogram(out, 10)[0].min() > 0


def test_density_differentiation_adds_detail_at_every_scale() -> None:
    _, noisy = noisy_square(0.02)
    out = run(noisy, "density:2")
    assert detail(out) > 1.5 * detail(noisy)
    assert abs(out.mean() - noisy.mean()) < 0.02  # detail is added, brightness kept


def test_contrast_and_gamma() -> None:
    image = low_contrast()
    assert run(image, "contrast:3").std() > 2.5 * image.std()
    assert run(image, "gamma:0.5").mean() > image.mean() + 0.1  # gamma < 1 brightens
    assert run(image, "gamma:2").mean() < image.mean() - 0.1


def test_smoothing_and_denoising_reduce_noise() -> None:
    clean, noisy = noisy_square(0.1)
    for text in ("smooth:1.5", "denoise:bilateral:0.1", "denoise:nlm:0.08"):
        out = run(noisy, text)
        assert np.abs(out - clean).mean() < 0.6 * np.abs(noisy - clean).mean(), text


def test_unsharp_sharpens_an_edge() -> None:
    clean, _ = noisy_square(0.0)
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(clean, 2)
    out = run(blurred, "unsharp:2:1.5")
    edge = slice(20, 28)
    assert np.abs(np.diff(out[48, edge])).max() > 1.3 * np.abs(np.diff(blurred[48, edge])).max()


def test_edges_alone_and_as_an_overlay() -> None:
    clean, _ = noisy_square(0.0)
    alone = run(clean, "edges:1:alone")
    assert alone.ndim == 2 and alone[24:72, 23:25].any() and not alone[40:56, 40:56].any()
    overlay = run(clean, "edges")
    assert overlay.shape == (96, 96, 3)
    red = (overlay[..., 0] > 0.9) & (overlay[..., 1] < 0.2)
    assert red[24:72, 22:26].any() and not red[40:56, 40:56].any()


def test_segment_labels_each_blob_in_its_own_colour() -> None:
    image = np.zeros((64, 64))
    image[5:20, 5:20] = 1.0
    image[40:60, 35:60] = 1.0
    out = run(image * 0.5, "segment:10", modality=image * 1000)
    assert out.shape == (64, 64, 3)
    first, second = out[10, 10], out[50, 50]
    assert not np.allclose(first, second) and not np.allclose(first, out[30, 30])
    assert np.allclose(out[30, 30], out[30, 30].mean())  # background stays grey


def test_zoom_enlarges_and_interpolates() -> None:
    image = np.zeros((16, 16))
    image[:, 8:] = 1.0
    out = run(image, "zoom:4")
    assert out.shape == (64, 64)
    assert 0.0 < out[32, 31] < 1.0 or 0.0 < out[32, 32] < 1.0  # an interpolated transition, not a hard step
    assert run(image, "zoom:2:cubic").shape == (32, 32)


def test_operators_run_in_their_stage_and_in_order() -> None:
    ops = enhance.parse("zoom:2,smooth:1,contrast:2")
    assert [o.name for o in enhance.stage(ops, enhance.BEFORE)] == ["smooth"]
    assert [o.name for o in enhance.stage(ops, enhance.AFTER)] == ["zoom", "contrast"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sharpen", "unknown operator"),
        ("clahe:2", "within 0.0-1.0"),
        ("clahe:abc", "not a number"),
        ("zoom:5", "within 1.0-4.0"),
        ("zoom:2:nearest", "one of lanczos, cubic"),
        ("gamma:1:2", "at most 1"),
        ("denoise:median", "one of bilateral, nlm"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        enhance.parse(text)
