#!/usr/bin/env python3
"""Hold-out evaluation of dcmnode's super-resolution core (notes/super-resolution.md, section 3).

For every image: y = the original on the modality scale (HU for CT), x = D(y) (the degradations are below), then
bicubic (Keys a=-0.5), Lanczos3, the classical path and the learned path run on x ALONE (y is used only for
scoring). Scores against y, inside a body mask (CT: y > -500 HU, others: Otsu on y), with a 2*factor border
shaved, on a fixed stated data range (CT 4096 HU; MR p99.9-p0.1 of y; X-ray/8-bit 2^bits-1):
PSNR, SSIM (Gaussian sigma 1.5, K1 0.01, K2 0.03), mean bias in uniform regions, training and inference seconds;
per degradation the median [IQR] of the paired gains and a Wilcoxon signed-rank p (with n = 5, p >= 0.0625).
Degradations: x2 area average, a Gaussian PSF (sigma 1 high-resolution px) then decimation, and the central
quarter of k-space (how MR is acquired at half the matrix; mismatched for both paths, which back-project with
the area kernel).

    nice -n 19 python bench/sr_eval.py                     # test set → bench/results/2026-11-22-sr/
    nice -n 19 python bench/sr_eval.py --set dev --out /tmp/sr-dev   # the images the design was tuned on

Test set: pydicom's CT_small and MR_small, deid-data humans/ctbrain1.dcm (CT exported as 8-bit YBR, scored as
8-bit grey) and animals/cat.dcm (DX, 12 bit, full 2614x3072), a 512x512 Shepp-Logan CT phantom in HU with noise.
Dev set (the only images the design was tuned on): pydicom's J2K_pixelrep_mismatch.dcm (CT head 512) and a
128x128 crop at (128, 128) of 693_J2KI.dcm (CT), examples_overlay.dcm (MR 300x484) and a 64x64 crop of it, deid-data
ultrasounds/GREYSCALE_IMAGE.dcm (512 crop), a 768x768 crop of cat.dcm (overlaps the test image) and a different
384x384 phantom. humans/ctbrain2.dcm is not used: its pixels are identical to ctbrain1.dcm.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.metrics import structural_similarity

from dcmnode.sr import api, resample

FACTOR = 2
DEID = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
DEID = DEID / "deid_data" / "data"
METHODS = ("bicubic", "lanczos3", "classical", "learned")
# Gaussian PSF sigma 0.5 LR px = 1 HR px; "kspace" = the central quarter of the Fourier spectrum (an MR acquired
# at half the matrix; notes section 3), not a kernel of the super-resolution core
DEGRADATIONS = {"area": ("area", 0.5), "gauss": ("gauss", 0.5), "kspace": ("kspace", 0.0)}


@dataclass
class Case:
    name: str
    modality: str  # passed to super_resolve: "CT" selects the fixed HU normalisation
    y: np.ndarray
    data_range: float
    source: str


def _modality_values(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array.astype(np.float32)
    return arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)


def _even(a: np.ndarray) -> np.ndarray:
    return a[: a.shape[0] - a.shape[0] % 2, : a.shape[1] - a.shape[1] % 2]


def _grey8(ds: pydicom.Dataset) -> np.ndarray:
    """An 8-bit colour export (pydicom gives RGB): luma, still on the 0..255 stored scale."""
    rgb = ds.pixel_array.astype(np.float32)
    return rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32) if rgb.ndim == 3 else rgb


def _centre_crop(a: np.ndarray, size: int, corner: tuple[int, int] | None = None) -> np.ndarray:
    r0, c0 = corner if corner else ((a.shape[0] - size) // 2, (a.shape[1] - size) // 2)
    return a[r0 : r0 + size, c0 : c0 + size]


def phantom(size: int, seed: int, rotate: float = 0.0) -> np.ndarray:
    """Modified Shepp-Logan head in HU (air -1000, skull +800, brain 40, ventricles 10, lesions 80), 4x
    supersampled (partial volume), a Gaussian PSF of 0.6 px, white noise of 8 HU and a few small calcifications."""
    ellipses = [  # (HU added, a, b, x0, y0, degrees)
        (1800, 0.69, 0.92, 0, 0, 0),
        (-760, 0.6624, 0.874, 0, -0.0184, 0),
        (-30, 0.11, 0.31, 0.22, 0, -18),
        (-30, 0.16, 0.41, -0.22, 0, 18),
        (30, 0.21, 0.25, 0, 0.35, 0),
        (40, 0.046, 0.046, 0, 0.1, 0),
        (40, 0.046, 0.046, 0, -0.1, 0),
        (40, 0.046, 0.023, -0.08, -0.605, 0),
        (40, 0.023, 0.023, 0, -0.606, 0),
        (40, 0.023, 0.046, 0.06, -0.605, 0),
        (400, 0.012, 0.012, 0.3, -0.3, 0),
        (400, 0.008, 0.008, -0.35, 0.3, 0),
        (300, 0.02, 0.006, -0.1, 0.5, 30),
    ]
    ss = 4
    n = size * ss
    c = (np.arange(n) + 0.5) / n * 2 - 1
    yy, xx = np.meshgrid(-c, c, indexing="ij")
    img = np.full((n, n), -1000.0)
    for value, a, b, x0, y0, deg in ellipses:
        t = np.deg2rad(deg + rotate)
        xr = (xx - x0) * np.cos(t) + (yy - y0) * np.sin(t)
        yr = -(xx - x0) * np.sin(t) + (yy - y0) * np.cos(t)
        img[(xr / a) ** 2 + (yr / b) ** 2 <= 1] += value
    img = img.reshape(size, ss, size, ss).mean(axis=(1, 3))
    img = ndimage.gaussian_filter(img, 0.6, mode="nearest")
    return (img + np.random.default_rng(seed).normal(0, 8, img.shape)).astype(np.float32)


def load_cases(which: str) -> list[Case]:
    if which == "dev":
        return _dev_cases()
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mr_y = _modality_values(mr)
    brain = pydicom.dcmread(DEID / "humans" / "ctbrain1.dcm")
    cat = pydicom.dcmread(DEID / "animals" / "cat.dcm")
    return [
        Case("CT_small", "CT", _even(_modality_values(ct)), 4096.0, "pydicom CT_small.dcm 128x128 HU"),
        Case("MR_small", "MR", _even(mr_y), float(np.ptp(np.percentile(mr_y, [0.1, 99.9]))), "pydicom MR_small.dcm"),
        Case("ctbrain1", "OT", _even(_grey8(brain)), 255.0, "deid-data humans/ctbrain1.dcm, 8-bit YBR → luma"),
        Case("cat_DX", "DX", _even(_modality_values(cat)), 2.0 ** int(cat.BitsStored) - 1, "deid animals/cat.dcm"),
        Case("phantom", "CT", phantom(512, seed=0), 4096.0, "Shepp-Logan 512 HU, PSF 0.6 px, noise 8 HU"),
    ]


def _dev_cases() -> list[Case]:
    head = pydicom.dcmread(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    ct693 = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    mr = _modality_values(pydicom.dcmread(get_testdata_file("examples_overlay.dcm")))
    mr64 = _centre_crop(mr, 64)
    us = pydicom.dcmread(DEID / "ultrasounds" / "GREYSCALE_IMAGE.dcm")
    cat = pydicom.dcmread(DEID / "animals" / "cat.dcm")

    def mr_range(a: np.ndarray) -> float:
        return float(np.ptp(np.percentile(a, [0.1, 99.9])))

    return [
        Case("CT_head", "CT", _modality_values(head), 4096.0, "pydicom J2K_pixelrep_mismatch.dcm 512 HU"),
        Case("CT_693_128", "CT", _centre_crop(_modality_values(ct693), 128, (128, 128)), 4096.0, "693_J2KI 128 crop"),
        Case("MR_abd", "MR", _even(mr), mr_range(mr), "pydicom examples_overlay.dcm 300x484"),
        Case("MR_abd_64", "MR", mr64, mr_range(mr64), "pydicom examples_overlay.dcm centre 64 crop"),
        Case("US_grey", "US", _centre_crop(_modality_values(us), 512), 255.0, "deid ultrasounds GREYSCALE 512 crop"),
        Case("cat_DX_crop", "DX", _centre_crop(_modality_values(cat), 768), 4095.0, "deid cat.dcm centre 768 crop"),
        Case("phantom_dev", "CT", phantom(384, seed=7, rotate=12.0), 4096.0, "Shepp-Logan 384 rotated 12 deg"),
    ]


# ---- metrics ----------------------------------------------------------------------------------------------------


def body_mask(case: Case) -> np.ndarray:
    mask = case.y > -500 if case.modality == "CT" else case.y > threshold_otsu(case.y)
    shave = 2 * FACTOR
    mask[:shave], mask[-shave:], mask[:, :shave], mask[:, -shave:] = False, False, False, False
    return mask


def uniform_mask(case: Case, mask: np.ndarray) -> np.ndarray:
    """Flat regions of y: inside the body, at least 4 px from the mask edge, local (7x7) std in the lowest 25 %."""
    y = case.y.astype(np.float64)
    mean = ndimage.uniform_filter(y, 7)
    std = np.sqrt(np.maximum(ndimage.uniform_filter(y * y, 7) - mean * mean, 0))
    inner = ndimage.binary_erosion(mask, iterations=4)
    if not inner.any():
        return inner
    return inner & (std <= np.percentile(std[inner], 25))


def psnr(case: Case, out: np.ndarray, mask: np.ndarray) -> float:
    err = out.astype(np.float64) - case.y
    return float(10 * np.log10(case.data_range**2 / np.mean(err[mask] ** 2)))


def score(case: Case, out: np.ndarray, mask: np.ndarray, flat: np.ndarray) -> dict[str, float]:
    err = out.astype(np.float64) - case.y
    mse = float(np.mean(err[mask] ** 2))
    _, ssim_map = structural_similarity(
        case.y.astype(np.float64),
        out.astype(np.float64),
        data_range=case.data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        K1=0.01,
        K2=0.03,
        full=True,
    )
    return {
        "psnr": psnr(case, out, mask),
        "ssim": float(ssim_map[mask].mean()),
        "bias": float(err[flat].mean()) if flat.any() else float("nan"),
        "rmse": float(np.sqrt(mse)),
    }


# ---- runs -------------------------------------------------------------------------------------------------------


def kspace_downsample(y: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """Keep the central 1/factor of the spectrum along each axis (Gibbs ringing included, as in a smaller MR
    matrix), on the pixel-centre grid of the other kernels: the spectrum is first shifted by half a
    high-resolution pixel, so low-resolution pixel j sits at high-resolution position factor*j + (factor-1)/2."""
    h, w = y.shape
    spec = np.fft.fft2(y.astype(np.float64))
    shift = (factor - 1) / 2
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    spec = spec * np.exp(2j * np.pi * shift * (ky + kx))
    ch, cw = h // factor, w // factor
    r0, c0 = h // 2 - ch // 2, w // 2 - cw // 2  # the zero frequency lands where ifftshift expects it, odd or even
    centred = np.fft.fftshift(spec)[r0 : r0 + ch, c0 : c0 + cw]
    return (np.real(np.fft.ifft2(np.fft.ifftshift(centred))) / factor**2).astype(np.float32)


def degrade(y: np.ndarray, degradation: str) -> np.ndarray:
    kernel, sigma = DEGRADATIONS[degradation]
    if kernel == "kspace":
        return kspace_downsample(y)
    return resample.np_downsample(y, FACTOR, kernel, sigma)


def run_case(case: Case, degradation: str, seed: int) -> dict[str, object]:
    x = degrade(case.y, degradation)
    mask, flat = body_mask(case), None
    flat = uniform_mask(case, mask)
    row: dict[str, object] = {"image": case.name, "degradation": degradation, "modality": case.modality}
    row |= {"shape": f"{case.y.shape[0]}x{case.y.shape[1]}", "data_range": case.data_range, "source": case.source}
    for method in METHODS:
        t0 = time.perf_counter()
        res = api.super_resolve_report(x, FACTOR, method=method, modality=case.modality, seed=seed)
        wall = time.perf_counter() - t0
        for key, value in score(case, res.upscaled, mask, flat).items():
            row[f"{method}_{key}"] = round(value, 4)
        if method == "learned":
            rep = res.report
            row |= {
                "train_s": round(rep["train_seconds"], 2),
                "infer_s": round(rep["infer_seconds"], 2),
                "wall_s": round(wall, 2),
                "steps": rep["steps_run"],
                "fallback": len(rep["fallback_slices"]) > 0,
                "self_consistency_db": round(rep["self_consistency_psnr_db"], 2),
                "unc_mean": round(rep["uncertainty_mean"], 3),
                "unc_p95": round(rep["uncertainty_p95"], 3),
            }
    for base in ("bicubic", "lanczos3", "classical"):
        row[f"gain_vs_{base}"] = round(float(row["learned_psnr"]) - float(row[f"{base}_psnr"]), 3)
    row["classical_gain_vs_bicubic"] = round(float(row["classical_psnr"]) - float(row["bicubic_psnr"]), 3)
    return row


def time_inference(seed: int, repeats: int = 2) -> dict[str, float]:
    """Inference seconds for one 512x512 input slice (→ 1024x1024), TTA, back-projection and self-check included."""
    y = phantom(1024, seed=3)
    x = resample.np_downsample(y, FACTOR, "area")
    times = []
    for _ in range(repeats):
        res = api.super_resolve_report(x, FACTOR, method="learned", modality="CT", seed=seed)
        times.append(res.report["infer_seconds"])
        train = res.report["train_seconds"]
    t0 = time.perf_counter()
    api.super_resolve_report(x, FACTOR, method="classical", modality="CT")
    return {
        "infer_512_s": min(times),
        "infer_512_s_all": times,
        "train_s_512": train,
        "classical_512_s": time.perf_counter() - t0,
    }


def _iqr(values: list[float]) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(values, [25, 75])]


def _wilcoxon_p(differences: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences (NaN when all are zero: no test)."""
    from scipy.stats import wilcoxon

    if not any(differences):
        return float("nan")
    return round(float(wilcoxon(differences).pvalue), 4)


def summary(rows: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    out = {}
    for deg in DEGRADATIONS:
        sel = [r for r in rows if r["degradation"] == deg]
        if not sel:
            continue

        def med(key: str, rows_: list = sel) -> float:
            return round(statistics.median(float(r[key]) for r in rows_), 3)

        out[deg] = {
            "n": len(sel),
            "iqr_gain_vs_classical": _iqr([float(r["gain_vs_classical"]) for r in sel]),
            "wilcoxon_p_vs_lanczos3": _wilcoxon_p([float(r["gain_vs_lanczos3"]) for r in sel]),
            "wilcoxon_p_vs_classical": _wilcoxon_p([float(r["gain_vs_classical"]) for r in sel]),
            "median_gain_vs_bicubic": med("gain_vs_bicubic"),
            "median_gain_vs_lanczos3": med("gain_vs_lanczos3"),
            "median_gain_vs_classical": med("gain_vs_classical"),
            "median_classical_gain_vs_bicubic": med("classical_gain_vs_bicubic"),
            "frac_worse_than_classical_0.1db": round(
                sum(float(r["gain_vs_classical"]) < -0.1 for r in sel) / len(sel), 3
            ),
            "max_abs_bias_learned": round(max(abs(float(r["learned_bias"])) for r in sel), 3),
            "max_train_s": max(float(r["train_s"]) for r in sel),
        }
    return out


def markdown(rows: list[dict[str, object]], summ: dict, timing: dict, command: str) -> str:
    lines = [
        "## Super-resolution x2 hold-out (notes/super-resolution.md section 3)",
        "",
        f"Command: `{command}`",
        "",
        "PSNR dB in the body mask (border 4 px shaved) on the stated data range; bias = mean(out - y) in flat regions"
        " (HU for CT, stored units otherwise).",
        "",
        "| image | degr. | bicubic | lanczos3 | classical | learned | Δ bicubic | Δ lanczos | Δ classical | SSIM bic"
        " / learned | bias learned | train s | infer s | fallback |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} ({r['shape']}) | {r['degradation']} | {r['bicubic_psnr']:.2f} | {r['lanczos3_psnr']:.2f} |"
            f" {r['classical_psnr']:.2f} | {r['learned_psnr']:.2f} | {r['gain_vs_bicubic']:+.2f} |"
            f" {r['gain_vs_lanczos3']:+.2f} | {r['gain_vs_classical']:+.2f} |"
            f" {r['bicubic_ssim']:.4f} / {r['learned_ssim']:.4f} | {r['learned_bias']:+.2f} | {r['train_s']:.1f} |"
            f" {r['infer_s']:.2f} | {'yes' if r['fallback'] else 'no'} |"
        )
    lines += [
        "",
        "| degradation | median Δ bicubic | median Δ lanczos3 | median Δ classical [IQR] | Wilcoxon p vs lanczos3"
        " / classical | classical Δ bicubic | worse than classical by > 0.1 dB | max abs bias | max train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for deg, s in summ.items():
        q1, q3 = s["iqr_gain_vs_classical"]
        lines.append(
            f"| {deg} (n={s['n']}) | {s['median_gain_vs_bicubic']:+.2f} | {s['median_gain_vs_lanczos3']:+.2f} |"
            f" {s['median_gain_vs_classical']:+.2f} [{q1:+.2f}, {q3:+.2f}] |"
            f" {s['wilcoxon_p_vs_lanczos3']:.3f} / {s['wilcoxon_p_vs_classical']:.3f} |"
            f" {s['median_classical_gain_vs_bicubic']:+.2f} |"
            f" {s['frac_worse_than_classical_0.1db']:.0%} | {s['max_abs_bias_learned']:.2f} | {s['max_train_s']:.1f} |"
        )
    lines += [
        "",
        f"Inference of one 512x512 input slice (→ 1024x1024, 4-pass TTA + 5 back-projection iterations):"
        f" {timing['infer_512_s']:.2f} s (runs: {', '.join(f'{t:.2f}' for t in timing['infer_512_s_all'])});"
        f" training on that slice {timing['train_s_512']:.1f} s; classical path {timing['classical_512_s']:.2f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("test", "dev"), default="test")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "2026-11-22-sr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="image names to run (default: all)")
    ap.add_argument("--degradations", nargs="*", default=list(DEGRADATIONS))
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    cases = [c for c in load_cases(args.set) if not args.only or c.name in args.only]
    rows = []
    for deg in args.degradations:
        for case in cases:
            row = run_case(case, deg, args.seed)
            rows.append(row)
            print(json.dumps({k: row[k] for k in row if k not in ("source",)}), flush=True)
    timing = {"infer_512_s": float("nan"), "infer_512_s_all": [], "train_s_512": float("nan"), "classical_512_s": 0.0}
    if not args.no_timing:
        timing = time_inference(args.seed)
        print(json.dumps(timing), flush=True)
    summ = summary(rows)
    command = "nice -n 19 python bench/sr_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / f"sr_eval_{args.set}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"summary": summ, "timing": timing, "command": command, "python": platform.python_version()}
    (args.out / f"sr_eval_{args.set}.json").write_text(json.dumps(meta, indent=2))
    (args.out / f"sr_eval_{args.set}.md").write_text(markdown(rows, summ, timing, command.strip()))
    print(json.dumps(summ, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
