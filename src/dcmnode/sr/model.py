"""Learned path: a small residual ESPCN trained zero-shot on the series itself ("series-shared ZSSR-lite").

* Network: ``bicubic(x) + PixelShuffle(conv(C→f²) ∘ [conv(C→C) + ReLU]×depth ∘ (conv(1→C) + ReLU))(x)``, all 3x3,
  in low-resolution space; the last conv is zero-initialised, so training starts exactly at bicubic.
* Training pairs come only from the input: "fathers" are crops of the (normalised) input slices and of their
  0.75x / 0.5x downscales, sampled 80 % by local gradient energy and 20 % uniformly; "sons" are the fathers
  downsampled x2 with a kernel drawn per batch (area, Gaussian, Lanczos3), plus Gaussian noise that brings the
  son's noise back to the level estimated on the input. Dihedral augmentation, L1 loss, Adam with a cosine decay,
  a fixed step budget (deterministic for a seed) and a wall-clock cap as a safety net.
* Inference: overlapping tiles with a halo and linear blending (so a 3000x3000 X-ray fits in memory), a dihedral
  test-time ensemble whose per-pixel standard deviation is the uncertainty, then back-projection to the input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dcmnode.sr import classical, resample

Check = Callable[[float, str], None]


@dataclass
class TrainConfig:
    channels: int = 32
    depth: int = 4
    steps: int = 300  # per candidate
    batch: int = 16
    crop: int = 64  # father (high-resolution) crop size, in input pixels
    lr: float = 1e-3
    lr_min: float = 1e-5
    max_train_seconds: float = 55.0
    max_train_slices: int = 24
    scales: tuple[float, ...] = (1.0, 0.75, 0.5)
    kernels: tuple[tuple[str, float, float], ...] = (("area", 0.5, 0.0), ("gauss", 0.3, 0.45), ("lanczos3", 0.2, 0.0))
    gauss_sigma: tuple[float, float] = (0.35, 0.6)  # in low-resolution pixels
    uniform_fraction: float = 0.2
    noise_match: bool = True
    noise_scale: tuple[float, float] = (0.5, 1.0)
    loss: str = "l1"  # l1 | l2
    bp_in_loss: int = 0  # back-projection iterations applied (with the inference kernel) before the loss
    bp_kernel: str = "area"
    base: str = "bicubic"
    highpass: float = 0.0
    slope: float = 0.1  # LeakyReLU negative slope (0 = ReLU, which collapsed to bicubic on some seeds)
    warmup: int = 0
    candidates: int = 2  # models trained with consecutive seeds; the best on the held-out stripe is kept
    holdout: float = 0.25  # fraction of rows (a central stripe of every slice) kept out of training
    ema: float = 0.98  # exponential moving average of the weights (0 = off); the average is the returned model
    init_weights: str | None = None


@dataclass
class InferConfig:
    tta: int = 4
    tile: int = 256  # low-resolution tile size
    overlap: int = 16
    bp_iterations: int = 5
    bp_kernel: str = "area"
    channels_last: bool = True


@dataclass
class TrainStats:
    steps_run: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)


class ResidualESPCN(nn.Module):
    """``base(x) + PixelShuffle(net(x))``. With ``highpass`` > 0 the net sees ``x - gauss(x, highpass)`` and has no
    biases: it is then positively homogeneous, so a flat region gets exactly zero residual (no sub-pixel pattern,
    which back-projection cannot remove, and no bias in uniform regions)."""

    shift: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    def __init__(
        self,
        channels: int = 32,
        depth: int = 4,
        factor: int = 2,
        base: str = "bicubic",
        highpass: float = 0.0,
        slope: float = 0.0,
    ) -> None:
        super().__init__()
        self.factor, self.base, self.highpass = factor, base, highpass
        bias = highpass <= 0

        def act() -> nn.Module:
            return nn.LeakyReLU(slope, inplace=True) if slope > 0 else nn.ReLU(inplace=True)

        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1, bias=bias), act()]
        for _ in range(depth):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=bias), act()]
        tail = nn.Conv2d(channels, factor * factor, 3, padding=1, bias=bias)
        nn.init.zeros_(tail.weight)
        if tail.bias is not None:
            nn.init.zeros_(tail.bias)
        self.body = nn.Sequential(*layers, tail)
        # the input is standardised inside the net (set from the training data): CT's fixed normalisation leaves
        # soft-tissue contrast at ~1e-3, where a zero-initialised residual net barely moves from bicubic
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    @property
    def halo(self) -> int:
        """Receptive-field radius in input pixels."""
        convs = sum(1 for m in self.body if isinstance(m, nn.Conv2d))
        return convs + (math.ceil(3 * self.highpass) if self.highpass > 0 else 0)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.highpass > 0:
            return x - classical.gaussian_blur(x, self.highpass)
        return x - self.shift

    def standardise_on(self, x: torch.Tensor) -> None:
        self.shift.fill_(float(x.mean()))
        self.scale.fill_(max(float(self.prepare(x).std()), 1e-6))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.body(self.prepare(x) / self.scale), self.factor) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resample.upsample(x, self.factor, self.base) + self.residual(x)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- training -------------------------------------------------------------------------------------------------


def _window_sums(a: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``a`` over every size x size window (top-left indexed), via an integral image."""
    c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums: np.ndarray = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    return sums


class CropSampler:
    """Gradient-weighted random crops from a pyramid of the normalised training parts (each (N, 1, h, w))."""

    def __init__(
        self, parts: list[torch.Tensor], crop: int, scales: tuple[float, ...], uniform: float, rng: np.random.Generator
    ) -> None:
        self.rng = rng
        self.images: list[np.ndarray] = []
        self.cdfs: list[np.ndarray] = []
        self.widths: list[int] = []
        usable = [p for p in parts if min(p.shape[-2:]) >= 16] or parts
        crop = min(crop, *(min(p.shape[-2:]) for p in usable))
        self.crop = crop - crop % 2
        areas = []
        for part in usable:
            for scale in scales:
                level = part if scale == 1.0 else resample.resize_by(part, scale)
                if min(level.shape[-2:]) < self.crop:
                    continue
                areas += self._add(level, uniform)
        self.pick = np.asarray(areas, dtype=np.float64) / np.sum(areas)

    def _add(self, level: torch.Tensor, uniform: float) -> list[int]:
        grad = classical.gradient_magnitude(level)[:, 0].numpy()
        areas = []
        for img, g in zip(level[:, 0].numpy(), grad, strict=True):
            w = _window_sums(g.astype(np.float64), self.crop)
            w = w / w.sum() if w.sum() > 0 else np.full_like(w, 1.0 / w.size)
            p = (1 - uniform) * w + uniform / w.size
            self.images.append(img)
            self.cdfs.append(np.cumsum(p.ravel()))
            self.widths.append(w.shape[1])
            areas.append(w.size)
        return areas

    def batch(self, n: int) -> np.ndarray:
        which = self.rng.choice(len(self.images), size=n, p=self.pick)
        out = np.empty((n, 1, self.crop, self.crop), dtype=np.float32)
        for i, k in enumerate(which):
            cdf = self.cdfs[k]
            pos = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1])), cdf.size - 1)
            r, c = divmod(pos, self.widths[k])
            out[i, 0] = self.images[k][r : r + self.crop, c : c + self.crop]
        return out


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms (k in 0..7) of the last two axes."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def _kernel_noise_gain(factor: int, kernel: str, sigma: float) -> float:
    """How much the downsampling kernel reduces white-noise std (the l2 norm of its 2-D taps)."""
    taps = resample._down_taps(factor, kernel, sigma)
    return float(np.sum(taps**2))  # ||outer(w, w)||_2 = ||w||_2 ** 2


def _draw_kernel(cfg: TrainConfig, rng: np.random.Generator) -> tuple[str, float]:
    names = [k[0] for k in cfg.kernels]
    probs = np.asarray([k[1] for k in cfg.kernels])
    name = names[rng.choice(len(names), p=probs / probs.sum())]
    return name, float(rng.uniform(*cfg.gauss_sigma))


def make_pairs(
    fathers: torch.Tensor, factor: int, cfg: TrainConfig, noise: float, rng: np.random.Generator, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    kernel, sigma = _draw_kernel(cfg, rng)
    k = int(rng.integers(8))
    fathers = dihedral(fathers, k).contiguous()
    sons = resample.downsample(fathers, factor, kernel, sigma)
    if cfg.noise_match and noise > 0:
        gain = _kernel_noise_gain(factor, kernel, sigma)
        extra = noise * math.sqrt(max(0.0, 1.0 - gain * gain)) * float(rng.uniform(*cfg.noise_scale))
        sons = sons + extra * torch.randn(sons.shape, generator=gen, dtype=sons.dtype).to(sons.device)
    return sons, fathers


def split_holdout(pool: torch.Tensor, fraction: float) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Training parts and a held-out validation stripe (the central rows of every slice), never trained on."""
    h = pool.shape[-2]
    rows = int(round(h * fraction / 2)) * 2
    if fraction <= 0 or rows < 8 or h - rows < 16:
        return [pool], None
    top = (h - rows) // 2
    parts = [p for p in (pool[..., :top, :], pool[..., top + rows :, :]) if p.shape[-2] >= 4]
    return parts, pool[..., top : top + rows, : pool.shape[-1] - pool.shape[-1] % 2]


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    floor = cfg.lr_min / cfg.lr

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
        return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)))

    return factor


def fit(
    parts: list[torch.Tensor], factor: int, cfg: TrainConfig, *, seed: int, device: torch.device, check: Check
) -> tuple[ResidualESPCN, TrainStats]:
    """Train one x``factor`` model on normalised training parts of the series."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ResidualESPCN(cfg.channels, cfg.depth, factor, cfg.base, cfg.highpass, cfg.slope).to(device)
    if cfg.init_weights:
        model.load_state_dict(torch.load(cfg.init_weights, map_location=device, weights_only=True))
    else:
        model.standardise_on(torch.cat([p.flatten() for p in parts]).view(1, 1, 1, -1).to(device))
    cpu_parts = [p.cpu() for p in parts]
    sampler = CropSampler(cpu_parts, cfg.crop - cfg.crop % factor, cfg.scales, cfg.uniform_fraction, rng)
    noise = float(torch.cat([classical.noise_sigma(p) for p in cpu_parts if min(p.shape[-2:]) >= 3]).median())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    stats = TrainStats()
    start = time.perf_counter()
    model.train()
    averaged = [p.detach().clone() for p in model.parameters()] if cfg.ema else None
    for step in range(cfg.steps):
        check(step / cfg.steps, "training")
        fathers = torch.from_numpy(sampler.batch(cfg.batch)).to(device)
        sons, fathers = make_pairs(fathers, factor, cfg, noise, rng, gen)
        pred = model(sons)
        if cfg.bp_in_loss:
            pred = resample.back_project(pred, sons, factor, cfg.bp_in_loss, cfg.bp_kernel)
        loss = F.l1_loss(pred, fathers) if cfg.loss == "l1" else F.mse_loss(pred, fathers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if averaged is not None:
            _ema_update(averaged, model, min(cfg.ema, (1 + step) / (10 + step)))
        stats.losses.append(float(loss.detach()))
        stats.steps_run = step + 1
        if time.perf_counter() - start > cfg.max_train_seconds:
            break
    if averaged is not None:
        _ema_update(averaged, model, 0.0, into_model=True)
    stats.seconds = time.perf_counter() - start
    stats.final_loss = float(np.mean(stats.losses[-20:])) if stats.losses else float("nan")
    model.eval()
    return model, stats


@torch.no_grad()
def _ema_update(averaged: list[torch.Tensor], model: nn.Module, decay: float, into_model: bool = False) -> None:
    for avg, p in zip(averaged, model.parameters(), strict=True):
        if into_model:
            p.copy_(avg)
        else:
            avg.lerp_(p.detach(), 1 - decay)


@dataclass
class Selection:
    model: ResidualESPCN
    stats: TrainStats
    val_gains_db: list[float]  # per candidate: learned minus classical PSNR on the held-out stripe (x only)
    chosen: int


def train(
    slices: torch.Tensor,
    factor: int,
    cfg: TrainConfig,
    infer: InferConfig,
    *,
    seed: int,
    device: torch.device,
    check: Check,
) -> Selection:
    """Train ``cfg.candidates`` models (seeds seed, seed+1, ...) on the series minus a held-out stripe and keep the
    one that does best there against the classical path, one scale down (the stripe downsampled → the stripe)."""
    pool = slices if slices.shape[0] <= cfg.max_train_slices else slices[_even_pick(slices.shape[0], cfg)]
    parts, val = split_holdout(pool, cfg.holdout)
    n = max(1, cfg.candidates)
    best: Selection | None = None
    gains: list[float] = []
    total = TrainStats()
    for k in range(n):
        sub = cfg if n == 1 else TrainConfig(**(asdict(cfg) | {"max_train_seconds": cfg.max_train_seconds / n}))
        net, stats = fit(parts, factor, sub, seed=seed + k, device=device, check=_sub(check, k, n))
        total.steps_run += stats.steps_run
        total.seconds += stats.seconds
        total.losses += stats.losses
        gains.append(validation_gain(net, val, factor, infer, check) if val is not None else float("nan"))
        if best is None or (gains[-1] > gains[best.chosen]):
            best = Selection(net, stats, gains, k)
    assert best is not None
    total.final_loss = best.stats.final_loss
    return Selection(best.model, total, gains, best.chosen)


def _sub(check: Check, k: int, n: int) -> Check:
    return lambda fraction, stage: check((k + fraction) / n, stage)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a - b) ** 2))
    return float("inf") if mse == 0 else -10 * math.log10(mse)


@torch.inference_mode()
def validation_gain(net: ResidualESPCN, val: torch.Tensor, factor: int, cfg: InferConfig, check: Check) -> float:
    """PSNR(learned) - PSNR(classical) for reconstructing the held-out stripe from its own downscale."""
    lr = resample.downsample(val, factor, cfg.bp_kernel)
    learned, plain = [], []
    for i in range(len(val)):
        check(1.0, "validation")
        y, _ = upscale_learned([net], lr[i : i + 1], factor, cfg, lambda: None)
        learned.append(y)
        plain.append(classical.upscale(lr[i : i + 1], factor, bp_iterations=cfg.bp_iterations, down=cfg.bp_kernel))
    return _psnr(torch.cat(learned), val) - _psnr(torch.cat(plain), val)


def _even_pick(n: int, cfg: TrainConfig) -> list[int]:
    return sorted({round(i) for i in np.linspace(0, n - 1, cfg.max_train_slices)})


# ---- inference ------------------------------------------------------------------------------------------------


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    out = list(range(0, size - tile, step))
    return [*out, size - tile]


def _ramp(length: int, left: int, right: int) -> torch.Tensor:
    """1-D blend weights: linear ramps of the given widths at each end, (0, 1] everywhere."""
    w = torch.ones(length)
    if left:
        w[:left] = (torch.arange(left) + 1) / (left + 1)
    if right:
        w[length - right :] = torch.minimum(w[length - right :], (torch.arange(right, 0, -1)) / (right + 1))
    return w


def _tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[slice, slice, tuple[int, ...]]]:
    """Row range, column range and overlaps (above, below, before, after) of every tile."""
    rows, cols = _starts(h, tile, overlap), _starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)

    def overlaps(starts: list[int], i: int, size: int) -> tuple[int, int]:
        first = starts[i - 1] + size - starts[i] if i else 0
        last = starts[i] + size - starts[i + 1] if i + 1 < len(starts) else 0
        return first, last

    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            yield slice(top, top + th), slice(left, left + tw), (*overlaps(rows, i, th), *overlaps(cols, j, tw))


def predict_tiled(
    model: ResidualESPCN, x: torch.Tensor, cfg: InferConfig, check: Callable[[], None] = lambda: None
) -> torch.Tensor:
    """model(x) for one (1, 1, h, w) image, tile by tile with a halo of context and linear blending."""
    f, halo = model.factor, model.halo
    h, w = x.shape[-2:]
    if h <= cfg.tile and w <= cfg.tile:
        return _forward(model, x, cfg)
    out = torch.zeros(1, 1, h * f, w * f, device=x.device)
    weight = torch.zeros(1, 1, h * f, w * f, device=x.device)
    for rs, cs, (above, below, before, after) in _tiles(h, w, cfg.tile, cfg.overlap):
        check()
        t0, l0 = max(0, rs.start - halo), max(0, cs.start - halo)
        t1, l1 = min(h, rs.stop + halo), min(w, cs.stop + halo)
        pred = _forward(model, x[..., t0:t1, l0:l1], cfg)
        pred = pred[..., (rs.start - t0) * f : (rs.stop - t0) * f, (cs.start - l0) * f : (cs.stop - l0) * f]
        wy = _ramp(pred.shape[-2], above * f, below * f).to(x.device)
        wx = _ramp(pred.shape[-1], before * f, after * f).to(x.device)
        blend = wy[:, None] * wx[None, :]
        hr = (..., slice(rs.start * f, rs.stop * f), slice(cs.start * f, cs.stop * f))
        out[hr] += pred * blend
        weight[hr] += blend
    return out / weight


def _forward(model: ResidualESPCN, x: torch.Tensor, cfg: InferConfig) -> torch.Tensor:
    base = resample.upsample(x, model.factor, model.base)
    res = model.residual(x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x)
    return base + res.contiguous()


TTA_ORDER = (0, 5, 2, 7, 1, 4, 3, 6)  # the first four mix rotations and flips


def predict_tta(
    model: ResidualESPCN, x: torch.Tensor, cfg: InferConfig, check: Callable[[], None] = lambda: None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-pixel population std of the dihedral test-time ensemble, for one (1, 1, h, w) image."""

    def predicted(k: int) -> torch.Tensor:
        return undo_dihedral(predict_tiled(model, dihedral(x, k).contiguous(), cfg, check), k)

    n = max(1, min(8, cfg.tta))
    first = predicted(TTA_ORDER[0])
    mean, m2 = first.clone(), torch.zeros_like(first)
    for i, k in enumerate(TTA_ORDER[1:n], start=1):
        pred = predicted(k)
        delta = pred - mean
        mean += delta / (i + 1)
        m2 += delta * (pred - mean)
    return mean, torch.sqrt(m2 / n)


def upscale_learned(
    models: list[ResidualESPCN], x: torch.Tensor, factor: int, cfg: InferConfig, check: Callable[[], None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """x``factor`` via repeated x2 (or one x``factor``) model steps, then back-projection to ``x``."""
    y, done = x, 1
    spread: torch.Tensor | None = None
    for model in models:
        y, s = predict_tta(model, y, cfg, check)
        spread = s if spread is None else torch.sqrt(resample.upsample(spread, model.factor) ** 2 + s * s)
        done *= model.factor
        y = resample.back_project(y, x, done, cfg.bp_iterations, cfg.bp_kernel)
    assert spread is not None, "no model step"  # callers pass one model, or factor // 2 >= 1 (api.FACTORS)
    return y, spread
