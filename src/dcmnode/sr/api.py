"""Entry points of the super-resolution core: numpy in (modality-LUT values, e.g. HU), numpy out, same units.

``super_resolve(images, factor)`` returns ``(upscaled, uncertainty)``; ``super_resolve_report`` also returns the
numbers a job records (timings, parameters, self-consistency, uncertainty summary). Methods:

* ``learned`` (default): a small CNN trained on this series only (see ``model``); uncertainty = per-pixel std of the
  dihedral test-time ensemble. With ``fallback=True`` (default) a slice whose self-check (decided from the input
  alone, see ``_self_check``) says the network does worse than the classical path gets the classical output.
* ``classical``: Lanczos3 + edge-gated unsharp mask + back-projection; uncertainty = spread of three
  interpolation models (a cheap proxy, see ``classical``).
* ``bicubic`` / ``lanczos3``: plain interpolation, uncertainty all zeros (no model of it).

``Upscaler`` is the same run a slice at a time (fit once, then upscale each slice), for callers that write each
output as it is made instead of holding whole output stacks (the job runner).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from dcmnode.errors import Cancelled
from dcmnode.sr import FACTORS, METHODS, classical, model, resample

__all__ = ["FACTORS", "METHODS", "Cancelled", "SRResult", "Upscaler", "super_resolve", "super_resolve_report"]
CT_OFFSET, CT_SCALE = -1024.0, 4096.0
# The held-out-stripe gain (one scale down) over-states the gain at the target scale: on the dev images of
# bench/sr_eval.py it was +0.3..+0.9 dB where the target-scale gain was -3.7..+0.4 dB, so the network must win
# the self-check by at least 1 dB before its output is used.
FALLBACK_MARGIN_DB = 1.0
UNCERTAINTY_SAMPLE = 65_536  # values per slice kept for the 95th percentile


@dataclass
class SRResult:
    upscaled: np.ndarray
    uncertainty: np.ndarray
    report: dict[str, Any]


@dataclass
class _Norm:
    offset: float
    scale: float

    def fwd(self, v: np.ndarray) -> np.ndarray:
        return ((v - self.offset) / self.scale).astype(np.float32)

    def back(self, t: torch.Tensor) -> np.ndarray:
        return t[:, 0].cpu().numpy().astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)


def normaliser(stack: np.ndarray, modality: str | None) -> _Norm:
    """CT: (HU + 1024) / 4096; others: p0.5 → 0, p99.5 → 1 over the whole series."""
    if (modality or "").upper() == "CT":
        return _Norm(CT_OFFSET, CT_SCALE)
    lo, hi = np.percentile(stack, [0.5, 99.5])
    return _Norm(float(lo), float(hi - lo) if hi > lo else 1.0)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _set_threads() -> None:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)


def _split_params(params: dict[str, Any]) -> tuple[model.TrainConfig, model.InferConfig, dict[str, Any]]:
    train_keys = {f.name for f in fields(model.TrainConfig)}
    infer_keys = {f.name for f in fields(model.InferConfig)}
    own = {"fallback", "fallback_margin_db"}
    unknown = set(params) - train_keys - infer_keys - own
    if unknown:
        raise ValueError(f"unknown super-resolution parameter(s): {', '.join(sorted(unknown))}")
    train = model.TrainConfig(**{k: v for k, v in params.items() if k in train_keys})
    infer = model.InferConfig(**{k: v for k, v in params.items() if k in infer_keys})
    rest = {"fallback": True, "fallback_margin_db": FALLBACK_MARGIN_DB} | {k: v for k, v in params.items() if k in own}
    return train, infer, rest


def _psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    mse = float(torch.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def super_resolve(
    images: np.ndarray,
    factor: int,
    *,
    method: str = "learned",
    value_range: tuple[float, float] | None = None,
    modality: str | None = None,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Upscale (N, H, W) or (H, W) modality values by ``factor``; returns (upscaled, uncertainty), float32."""
    res = super_resolve_report(
        images,
        factor,
        method=method,
        value_range=value_range,
        modality=modality,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
        **params,
    )
    return res.upscaled, res.uncertainty


def super_resolve_report(
    images: np.ndarray,
    factor: int,
    *,
    method: str = "learned",
    value_range: tuple[float, float] | None = None,
    modality: str | None = None,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **params: Any,
) -> SRResult:
    """As ``super_resolve``, plus a report dict (see the module docstring of ``dcmnode.sr``)."""
    run = Upscaler(
        images,
        factor,
        method=method,
        value_range=value_range,
        modality=modality,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
        **params,
    )
    run.fit()
    n, h, w = run.x.shape[0], run.x.shape[-2] * factor, run.x.shape[-1] * factor
    up, unc = np.empty((n, h, w), np.float32), np.empty((n, h, w), np.float32)
    for i in range(n):
        up[i], unc[i] = run.upscale(i)
    report = run.report()
    if np.ndim(images) == 2:
        up, unc = up[0], unc[0]
    return SRResult(up, unc, report)


def _validated(images: np.ndarray, factor: int, method: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 4:
        raise ValueError(f"images must be (H, W) or (N, H, W) with H, W >= 4, got shape {arr.shape}")
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    stack = arr.astype(np.float32, copy=False)
    stack = stack[None] if stack.ndim == 2 else stack
    if not np.isfinite(stack).all():
        raise ValueError("images contain NaN or infinite values")
    return stack


class Upscaler:
    """One stack's super-resolution, a slice at a time: ``fit()`` once (the learned path trains its network on the
    whole stack there), then ``upscale(i)`` for each slice in any order, then ``report()``.

    Only the normalised input and the slice being made are held, so a job's memory does not grow with the number
    of output slices (a 40-slice 512x512 CT at x4 peaked at 4 GiB when whole output stacks were built at once).
    ``upscale`` returns modality values clipped to ``value_range``; the uncertainty statistics of the report are
    taken inside the body mask (CT: > -500 HU, otherwise Otsu's threshold of the input stack).
    """

    def __init__(
        self,
        images: np.ndarray,
        factor: int,
        *,
        method: str = "learned",
        value_range: tuple[float, float] | None = None,
        modality: str | None = None,
        seed: int = 0,
        progress: Callable[[float, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        **params: Any,
    ) -> None:
        stack = _validated(images, factor, method)
        self.factor, self.method, self.seed = factor, method, seed
        self.value_range = value_range
        self.progress = progress or (lambda fraction, stage: None)
        self.should_stop = should_stop or (lambda: False)
        self.train_cfg, self.infer_cfg, self.opts = _split_params(params)
        _set_threads()
        self.device = pick_device()
        self.norm = normaliser(stack, modality)
        self.body_threshold = _body_threshold(stack, modality)
        self.x = resample.to_tensor(self.norm.fwd(stack), self.device)
        self._models: list[model.ResidualESPCN] | None = None
        self._extra: dict[str, Any] = {}
        self._consistency: list[float] = []
        self._unc_sum, self._unc_count = 0.0, 0
        self._unc_sample: list[np.ndarray] = []
        self._infer_seconds = 0.0

    def check(self, fraction: float | None = None, stage: str = "") -> None:
        if self.should_stop():
            raise Cancelled("super-resolution cancelled")
        if fraction is not None:
            self.progress(float(min(1.0, max(0.0, fraction))), stage)

    def fit(self) -> None:
        """Train the learned path's network (progress 0 to 0.6); nothing to do for the other methods."""
        self.check(0.0, "start")
        if self.method != "learned":
            return
        tc, ic = self.train_cfg, self.infer_cfg
        with torch.inference_mode(False):
            sel = model.train(
                self.x, 2, tc, ic, seed=self.seed, device=self.device, check=lambda f, s: self.check(0.6 * f, s)
            )
        best_gain = sel.val_gains_db[sel.chosen]
        use_classical = self.opts["fallback"] and not best_gain >= self.opts["fallback_margin_db"]  # NaN → classical
        self._models = None if use_classical else [sel.model] * (self.factor // 2)
        params = {k: v for k, v in asdict(tc).items() if k not in ("kernels",)} | asdict(ic)
        params |= {"n_params": model.count_params(sel.model), "fallback": self.opts["fallback"]}
        self._extra = {
            "params": params,
            "train_seconds": sel.stats.seconds,
            "steps_run": sel.stats.steps_run,
            "final_train_loss": sel.stats.final_loss,
            "validation_gain_db": sel.val_gains_db,
            "chosen_candidate": sel.chosen,
            "used_classical": use_classical,
            "fallback_slices": list(range(len(self.x))) if use_classical else [],
        }

    def upscale(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``i`` upscaled (modality values) and its uncertainty map, both (H * factor, W * factor)."""
        learned = self.method == "learned"
        if learned and not self._extra:
            raise RuntimeError("Upscaler.fit() must run before upscale() for the learned method")
        self.check((0.6 + 0.4 * i / len(self.x)) if learned else i / len(self.x), "inference")
        t0 = time.perf_counter()
        xi = self.x[i : i + 1]
        ic = self.infer_cfg
        with torch.inference_mode():
            if self._models is not None:
                y, u = model.upscale_learned(self._models, xi, self.factor, ic, self.check)
            elif learned or self.method == "classical":  # learned + fallback: the classical spread proxy
                y, u = classical.upscale_with_spread(xi, self.factor, bp_iterations=ic.bp_iterations, down=ic.bp_kernel)
            else:
                y, u = resample.upsample(xi, self.factor, self.method), None
            self._consistency.append(_psnr(resample.downsample(y, self.factor, ic.bp_kernel), xi))
        up = self.norm.back(y)[0]
        unc = np.zeros_like(up) if u is None else self.norm.back(u)[0] - np.float32(self.norm.offset)
        if self.value_range is not None:
            np.clip(up, self.value_range[0], self.value_range[1], out=up)
        body = unc[up > self.body_threshold] if self.body_threshold is not None else unc.ravel()
        self._add_uncertainty(body if body.size else unc.ravel())  # a slice without body: all of its pixels
        self._infer_seconds += time.perf_counter() - t0
        return up, unc

    def _add_uncertainty(self, values: np.ndarray) -> None:
        self._unc_sum += float(values.sum(dtype=np.float64))
        self._unc_count += values.size
        step = max(1, values.size // UNCERTAINTY_SAMPLE)  # exact up to that size
        self._unc_sample.append(values[::step].copy())  # a copy: a strided view would keep the whole slice alive

    def report(self) -> dict[str, Any]:
        """The numbers a job records; call after ``upscale`` has run for every slice."""
        report: dict[str, Any] = {"method": self.method, "factor": self.factor, "device": str(self.device)}
        report |= {"seed": self.seed, "normalisation": {"offset": self.norm.offset, "scale": self.norm.scale}}
        report |= self._extra or self._plain_extra()
        report["infer_seconds"] = self._infer_seconds
        report["self_consistency_psnr_db"] = float(np.median(self._consistency))
        report["uncertainty_mean"] = self._unc_sum / max(1, self._unc_count)
        report["uncertainty_p95"] = float(np.percentile(np.concatenate(self._unc_sample), 95))
        self.check(1.0, "done")
        return report

    def _plain_extra(self) -> dict[str, Any]:
        ic = self.infer_cfg
        params: dict[str, Any] = {}
        if self.method == "classical":
            params = {"bp_iterations": ic.bp_iterations, "bp_kernel": ic.bp_kernel}
            params |= {"usm_sigma": classical.USM_SIGMA, "usm_amount": classical.USM_AMOUNT, "edge_k": classical.EDGE_K}
        return {"params": params, "train_seconds": 0.0, "steps_run": 0}


def _body_threshold(stack: np.ndarray, modality: str | None) -> float | None:
    """Body mask of the outputs is ``value > threshold``: -500 HU for CT, Otsu's threshold of the input otherwise
    (None, i.e. every pixel, for a constant stack)."""
    if (modality or "").upper() == "CT":
        return -500.0
    from skimage.filters import threshold_otsu

    if float(stack.max()) <= float(stack.min()):
        return None
    return float(threshold_otsu(stack))
