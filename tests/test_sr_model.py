"""The super-resolution core on real and synthetic images: quality against baselines, shapes, determinism,
tiling, clipping, uncertainty, cancellation. Small images and few training steps keep the file fast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

torch = pytest.importorskip("torch")

from dcmnode.sr import api, classical, model, resample  # noqa: E402

FAST = {"steps": 40, "candidates": 1, "batch": 8, "crop": 32, "tta": 2}


@pytest.fixture(scope="module")
def ct_small() -> np.ndarray:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 4096.0, shave: int = 4) -> float:
    d = (a - b)[shave:-shave, shave:-shave].astype(np.float64)
    return 10 * np.log10(data_range**2 / np.mean(d * d))


def blocks(size: int = 48, seed: int = 0) -> np.ndarray:
    """A HU test card: water with a bright square and a dark disc, 5 HU noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.full((size, size), 40.0, dtype=np.float32)
    img[8:20, 8:20] = 700.0
    img[(yy - 32) ** 2 + (xx - 30) ** 2 < 40] = -300.0
    return img + np.random.default_rng(seed).normal(0, 5, img.shape).astype(np.float32)


def test_package_import_does_not_load_torch() -> None:
    code = "import sys, dcmnode.sr; assert 'torch' not in sys.modules; assert callable(dcmnode.sr.super_resolve)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resampling_kernels_keep_ramps_and_back_projection_is_consistent() -> None:
    ramp = np.add.outer(np.arange(32.0), 2 * np.arange(40.0)).astype(np.float32)
    for kernel in resample.DOWN_KERNELS:
        low = resample.np_downsample(ramp, 2, kernel)
        assert low.shape == (16, 20)
        np.testing.assert_allclose(low[3:-3, 3:-3], ramp[::2, ::2][3:-3, 3:-3] + 1.5, atol=1e-3)
    up = resample.np_upsample(resample.np_downsample(ramp, 2), 2, "bicubic")
    np.testing.assert_allclose(up[4:-4, 4:-4], ramp[4:-4, 4:-4], atol=1e-3)
    x = resample.to_tensor(blocks())
    y = resample.back_project(resample.upsample(x, 2, "lanczos3"), x, 2, iterations=10)
    assert float((resample.downsample(y, 2) - x).abs().max()) < 1.0  # HU, from ~100 HU before


def test_classical_beats_bicubic_on_real_ct(ct_small: np.ndarray) -> None:
    x = resample.np_downsample(ct_small, 2, "area")
    bicubic = api.super_resolve(x, 2, method="bicubic", modality="CT")[0]
    out, spread = api.super_resolve(x, 2, method="classical", modality="CT")
    assert psnr(out, ct_small) > psnr(bicubic, ct_small) + 0.5
    assert spread.min() >= 0 and spread.max() > 0


@pytest.mark.learned_sr
def test_learned_beats_bicubic_and_reports(ct_small: np.ndarray) -> None:
    x = resample.np_downsample(ct_small, 2, "area")
    bicubic = api.super_resolve(x, 2, method="bicubic", modality="CT")[0]
    res = api.super_resolve_report(x, 2, modality="CT", fallback=False, steps=120, candidates=1, tta=4)
    assert psnr(res.upscaled, ct_small) > psnr(bicubic, ct_small) + 0.5
    assert res.uncertainty.shape == res.upscaled.shape == ct_small.shape
    assert res.uncertainty.min() >= 0 and res.report["uncertainty_mean"] > 0
    rep = res.report
    assert rep["method"] == "learned" and rep["factor"] == 2 and rep["steps_run"] == 120
    assert rep["train_seconds"] > 0 and rep["infer_seconds"] > 0 and rep["device"] == "cpu"
    assert rep["self_consistency_psnr_db"] > 50  # back-projection: D(SR(x)) reproduces x
    assert {"channels", "depth", "tta", "bp_iterations", "lr", "steps"} <= set(rep["params"])


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("method", [pytest.param("learned", marks=pytest.mark.learned_sr), "classical"])
def test_shapes_stack_and_single_image(method: str, factor: int) -> None:
    stack = np.stack([blocks(24, seed=s)[:, :20] for s in range(2)])
    up, unc = api.super_resolve(stack, factor, method=method, modality="CT", fallback=False, **FAST)
    assert up.shape == unc.shape == (2, 24 * factor, 20 * factor)
    assert up.dtype == unc.dtype == np.float32
    single, single_unc = api.super_resolve(stack[0], factor, method=method, modality="CT", fallback=False, **FAST)
    assert single.shape == single_unc.shape == (24 * factor, 20 * factor)


@pytest.mark.learned_sr
def test_deterministic_for_a_seed() -> None:
    img = blocks()
    a = api.super_resolve(img, 2, modality="CT", seed=3, fallback=False, **FAST)
    b = api.super_resolve(img, 2, modality="CT", seed=3, fallback=False, **FAST)
    c = api.super_resolve(img, 2, modality="CT", seed=4, fallback=False, **FAST)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_tiled_inference_matches_whole_image() -> None:
    torch.manual_seed(0)
    net = model.ResidualESPCN(8, 2).eval()
    torch.nn.init.normal_(net.body[-1].weight, std=0.1)
    x = torch.rand(1, 1, 70, 53)
    whole = model.predict_tiled(net, x, model.InferConfig(tile=512))
    tiled = model.predict_tiled(net, x, model.InferConfig(tile=24, overlap=6))
    assert whole.shape == tiled.shape == (1, 1, 140, 106)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.learned_sr
def test_output_clipped_to_value_range() -> None:
    img = blocks()
    for method in ("learned", "classical", "lanczos3"):
        up, _ = api.super_resolve(img, 2, method=method, modality="CT", value_range=(-100, 500), **FAST)
        assert up.min() >= -100 and up.max() <= 500


@pytest.mark.learned_sr
def test_should_stop_cancels_promptly() -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(api.Cancelled):
        api.super_resolve(blocks(), 2, modality="CT", should_stop=stop, steps=10_000, candidates=1)
    assert calls["n"] == 6


@pytest.mark.learned_sr
def test_progress_reports_training_and_inference() -> None:
    seen: list[tuple[float, str]] = []
    api.super_resolve(blocks(), 2, modality="CT", progress=lambda f, s: seen.append((f, s)), **FAST)
    fractions = [f for f, _ in seen]
    assert all(0.0 <= f <= 1.0 for f in fractions) and fractions[-1] == 1.0
    assert {"training", "inference"} <= {s for _, s in seen}


@pytest.mark.learned_sr
def test_flat_region_bias_under_one_hu() -> None:
    truth = blocks(64, seed=1)
    x = resample.np_downsample(truth, 2)
    up, _ = api.super_resolve(x, 2, modality="CT", fallback=False, steps=80, candidates=1, crop=32)
    flat = np.zeros_like(truth, dtype=bool)
    flat[30:60, 4:14] = True  # water, away from both objects
    assert abs(float(np.mean(up[flat] - truth[flat]))) < 1.0


def test_noise_estimate_and_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    noisy = resample.to_tensor(rng.normal(0, 10, (128, 128)).astype(np.float32))
    assert 9.0 < float(classical.noise_sigma(noisy)[0]) < 11.0
    with pytest.raises(ValueError, match="factor"):
        api.super_resolve(blocks(), 3)
    with pytest.raises(ValueError, match="unknown"):
        api.super_resolve(blocks(), 2, nonsense=1)
    with pytest.raises(RuntimeError, match="fit"):
        api.Upscaler(blocks(), 2, modality="CT").upscale(0)  # the learned path without its training
