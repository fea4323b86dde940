"""Integer-factor resampling on (N, 1, H, W) float tensors, pixel-centre aligned (``align_corners=False``).

Downsampling is anti-aliased (the kernel is stretched by the factor): ``area`` (box, exact block mean),
``gauss`` (Gaussian PSF, sigma in low-resolution pixels) and ``lanczos3``. Upsampling is polyphase: bicubic
(Keys, a = -0.5) and Lanczos3, edge pixels replicated. ``back_project`` enforces ``D(y) == x``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DOWN_KERNELS = ("area", "gauss", "lanczos3")
UP_KERNELS = ("bicubic", "lanczos3")


def cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def lanczos(t: np.ndarray, lobes: int = 3) -> np.ndarray:
    return np.where(np.abs(t) < lobes, np.sinc(t) * np.sinc(t / lobes), 0.0)


def _up_taps(factor: int, kernel: str) -> tuple[np.ndarray, int]:
    """(factor, taps) weights: output phase p of input pixel j sits at j + (p + 0.5) / factor - 0.5."""
    support = 2 if kernel == "bicubic" else 3
    fn = cubic if kernel == "bicubic" else lanczos
    offsets = np.arange(-support, support + 1)
    rows = []
    for p in range(factor):
        shift = (p + 0.5) / factor - 0.5
        w = fn(offsets - shift)
        rows.append(w / w.sum())
    return np.asarray(rows), support


def _down_taps(factor: int, kernel: str, sigma: float) -> np.ndarray:
    """1-D taps for one low-resolution pixel, centred between the high-resolution pixels it covers."""
    if kernel == "area":
        return np.full(factor, 1.0 / factor)
    half = 3 * factor if kernel == "lanczos3" else max(1, math.ceil(3 * sigma * factor))
    pos = np.arange(-half, half + factor) - (factor - 1) / 2  # an even-length window for even factors
    w = lanczos(pos / factor) if kernel == "lanczos3" else np.exp(-0.5 * (pos / (sigma * factor)) ** 2)
    taps: np.ndarray = w / w.sum()
    return taps


def separable_filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Same-size correlation of (N, 1, H, W) with an odd-length 1-D kernel along both axes, edges replicated."""
    r = taps.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), taps.view(1, 1, -1, 1))


def upsample(x: torch.Tensor, factor: int, kernel: str = "bicubic") -> torch.Tensor:
    """One 2-D convolution with factor**2 separable phase kernels, then a pixel shuffle."""
    if factor == 1:
        return x
    if kernel not in UP_KERNELS:
        raise ValueError(f"upsample kernel {kernel!r}; known: {', '.join(UP_KERNELS)}")
    rows, support = _up_taps(factor, kernel)
    phases = np.einsum("pi,qj->pqij", rows, rows).reshape(factor * factor, 1, len(rows[0]), len(rows[0]))
    weight = torch.as_tensor(phases, dtype=x.dtype, device=x.device)
    y = F.conv2d(F.pad(x, (support,) * 4, mode="replicate"), weight)
    return F.pixel_shuffle(y, factor)


def downsample(x: torch.Tensor, factor: int, kernel: str = "area", sigma: float = 0.5) -> torch.Tensor:
    """Anti-aliased x``factor`` reduction; the size must be a multiple of the factor."""
    if factor == 1:
        return x
    if kernel == "area":
        return F.avg_pool2d(x, factor)
    if kernel not in DOWN_KERNELS:
        raise ValueError(f"downsample kernel {kernel!r}; known: {', '.join(DOWN_KERNELS)}")
    w = _down_taps(factor, kernel, sigma)
    extra = (len(w) - factor) // 2
    weight = torch.as_tensor(np.outer(w, w), dtype=x.dtype, device=x.device)[None, None]
    return F.conv2d(F.pad(x, (extra,) * 4, mode="replicate"), weight, stride=factor)


def back_project(
    y: torch.Tensor, x: torch.Tensor, factor: int, iterations: int = 5, down: str = "area", sigma: float = 0.5
) -> torch.Tensor:
    """Iterate ``y <- y + U(x - D(y))`` (U bicubic) so that the estimate downsamples back to the input."""
    for _ in range(iterations):
        y = y + upsample(x - downsample(y, factor, down, sigma), factor, "bicubic")
    return y


def resize_by(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Anti-aliased bicubic resize by a non-integer ``scale`` < 1 (training "fathers" at coarser scales)."""
    size = (max(4, round(x.shape[-2] * scale)), max(4, round(x.shape[-1] * scale)))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(H, W) or (N, H, W) → float32 (N, 1, H, W)."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    return torch.from_numpy(np.ascontiguousarray(arr))[:, None].to(device)


def np_downsample(images: np.ndarray, factor: int, kernel: str = "area", sigma: float = 0.5) -> np.ndarray:
    out = downsample(to_tensor(images), factor, kernel, sigma)[:, 0].numpy()
    return out[0] if np.ndim(images) == 2 else out


def np_upsample(images: np.ndarray, factor: int, kernel: str = "bicubic") -> np.ndarray:
    out = upsample(to_tensor(images), factor, kernel)[:, 0].numpy()
    return out[0] if np.ndim(images) == 2 else out
