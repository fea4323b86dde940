#!/usr/bin/env python3
"""Is the degradation kernel worth knowing, and can it be estimated from the input alone?

The oracle (``bench/sr_oracle.py``) found most of the headroom over the classical path in sr_eval's ``gauss`` row,
where the classical and learned paths back-project with the area kernel while the input was made with a Gaussian
PSF. This probe measures, per image and degradation of sr_eval:

* ``known``: the classical path (Lanczos3 + edge-gated unsharp) back-projected with each candidate kernel (area,
  Gaussian sigma 0.3 / 0.4 / 0.5 / 0.6 low-resolution px), PSNR against y minus the area kernel's: what the
  kernel is worth when it is given;
* ``blind``: the kernel picked from x alone by cross-scale patch recurrence (Michaeli & Irani, ICCV 2013, the
  estimator ZSSR used for its non-ideal kernels), parametric: for each candidate k (area, Gaussian sigma 0.2 to 0.8
  in 0.05 steps, the true sigma 0.5 included), the mean squared distance of x's textured 5x5 patches (mean removed,
  std above 3x the noise level) to their nearest neighbour among the patches of D_k(x), relative to their energy;
  the candidate with the smallest distance wins. Then the classical path back-projected with it, scored as above.

Scoring is sr_eval's (body mask, shaved border, stated data range). Nothing is trained; y is used only to score.

    nice -n 19 python bench/sr_kernel_probe.py --set dev      # → bench/results/2026-11-22-sr/kernel/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import sr_eval  # noqa: E402  (a sibling script, not a package)

from dcmnode.sr import api, classical, resample  # noqa: E402

FACTOR = 2
KNOWN = [("area", 0.5)] + [("gauss", s) for s in (0.3, 0.4, 0.5, 0.6)]
BLIND = [("area", 0.5)] + [("gauss", round(s, 2)) for s in np.arange(0.2, 0.801, 0.05)]
PATCH, MAX_QUERIES, MAX_REFS = 5, 3000, 20000


def label(kernel: tuple[str, float]) -> str:
    return "area" if kernel[0] == "area" else f"gauss {kernel[1]:.2f}"


def classical_with(xt: torch.Tensor, kernel: tuple[str, float]) -> torch.Tensor:
    y = classical.upscale(xt, FACTOR, bp_iterations=0)
    return resample.back_project(y, xt, FACTOR, classical.BP_ITERATIONS, kernel[0], kernel[1])


def _patches(t: torch.Tensor) -> torch.Tensor:
    p = F.unfold(t, PATCH)[0].T
    return p - p.mean(1, keepdim=True)


def recurrence_distance(xt: torch.Tensor, kernel: tuple[str, float], seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    even = xt[..., : xt.shape[-2] // FACTOR * FACTOR, : xt.shape[-1] // FACTOR * FACTOR]
    queries, refs = _patches(xt), _patches(resample.downsample(even, FACTOR, kernel[0], kernel[1]))
    queries = queries[queries.std(1) > 3 * classical.noise_sigma(xt)[0]]
    if len(queries) > MAX_QUERIES:
        queries = queries[torch.randperm(len(queries), generator=g)[:MAX_QUERIES]]
    if len(refs) > MAX_REFS:
        refs = refs[torch.randperm(len(refs), generator=g)[:MAX_REFS]]
    nearest = torch.cat([torch.cdist(chunk, refs).min(1).values for chunk in queries.split(500)])
    return float((nearest**2).mean() / (queries**2).sum(1).mean())


def run(case: sr_eval.Case, degradation: str, seed: int) -> dict[str, object]:
    kernel, sigma = sr_eval.DEGRADATIONS[degradation]
    x = sr_eval.degrade(case.y, degradation)
    norm = api.normaliser(x[None], case.modality)
    xt = resample.to_tensor(norm.fwd(x))
    mask = sr_eval.body_mask(case)

    def psnr(k: tuple[str, float]) -> float:
        return sr_eval.psnr(case, norm.back(classical_with(xt, k))[0], mask)

    base = psnr(KNOWN[0])
    distances = {label(k): recurrence_distance(xt, k, seed) for k in BLIND}
    picked = min(BLIND, key=lambda k: distances[label(k)])
    return {
        "image": case.name,
        "degradation": degradation,
        "true_kernel": "k-space crop" if kernel == "kspace" else label((kernel, sigma)),
        "classical_area_psnr": round(base, 3),
        "known_delta_db": {label(k): round(psnr(k) - base, 3) for k in KNOWN[1:]},
        "blind_pick": label(picked),
        "blind_delta_db": round(psnr(picked) - base, 3),
        "recurrence_distance": {k: round(v, 4) for k, v in distances.items()},
    }


def markdown(rows: list[dict], command: str) -> str:
    known = [label(k) for k in KNOWN[1:]]
    lines = [
        "## Degradation kernel: worth knowing, and estimated blind (classical path, x2)",
        "",
        f"Command: `{command}`",
        "",
        "Δ dB = PSNR of the classical path back-projected with that kernel minus with the area kernel (sr_eval's"
        " scoring). Blind = the cross-scale patch-recurrence pick from x alone (see the script's docstring).",
        "",
        "| image | degr. (true kernel) | classical (area) dB | "
        + " | ".join(f"known {k}" for k in known)
        + " | blind pick | blind Δ |",
        "| --- | --- | --- | " + " | ".join("---" for _ in known) + " | --- | --- |",
    ]
    for r in rows:
        cells = " | ".join(f"{r['known_delta_db'][k]:+.2f}" for k in known)
        lines.append(
            f"| {r['image']} | {r['degradation']} ({r['true_kernel']}) | {r['classical_area_psnr']:.2f} | {cells} |"
            f" {r['blind_pick']} | {r['blind_delta_db']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("test", "dev"), default="dev")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "2026-11-22-sr" / "kernel")
    ap.add_argument("--degradations", nargs="*", default=["area", "gauss"], choices=list(sr_eval.DEGRADATIONS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    for case in sr_eval.load_cases(args.set):
        for deg in args.degradations:
            rows.append(run(case, deg, args.seed))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "recurrence_distance"}), flush=True)
    command = "nice -n 19 python bench/sr_kernel_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"sr_kernel_{args.set}.json").write_text(json.dumps(rows, indent=2))
    (args.out / f"sr_kernel_{args.set}.md").write_text(markdown(rows, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
