#!/usr/bin/env python3
"""Would a prior learned from *other* real images beat the classical path? Leave-groups-out, true pairs.

The issue allows an optional local warm-start file. The only local images that could train one are pydicom's
test files: the bundled ones and the larger set of the ``pydicom-data`` package (``pip install pydicom-data``;
pydicom's ``get_testdata_file`` then finds them). None of them is a test image of ``sr_eval.py``, and the phantom
is left out. This probe trains the learned path's network (``model.ResidualESPCN``, 32 channels x 4, LeakyReLU
0.1) *supervised* on true pairs (x = area-downsampled y, y) of 64 px crops of every image group but the held-out
ones (each image standardised to zero mean and unit std; L1; Adam 1e-3 with a cosine decay; batch 16; random
dihedral transform), then scores it on crops of the held-out groups like the learned path would run
(standardised on the input, 4-pass TTA, 5 back-projection iterations), against the classical path, with
sr_eval's scoring. Four folds; image groups are images of one acquisition (693_J2KI and 693_UNCR are one).

    pip install pydicom-data && nice -n 19 python bench/sr_prior_probe.py   # → results/2026-11-22-sr/prior/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).parent))
import sr_eval  # noqa: E402  (a sibling script, not a package)

from dcmnode.sr import api, model, resample  # noqa: E402

FACTOR, CROP, BATCH = 2, 64, 16
FOLDS = [["693", "emri", "RG3"], ["eCT", "MR2", "NM", "US"], ["badseq", "MRov"], ["CThead", "RG1"]]


def values(name: str, frame: int | None = None) -> np.ndarray:
    """Modality values (MONOCHROME1 inverted) of one pydicom test file, or of one frame of it."""
    ds = pydicom.dcmread(get_testdata_file(name))
    a = sr_eval._modality_values(ds)
    a = a[frame] if frame is not None else a
    return a.max() - a if ds.get("PhotometricInterpretation") == "MONOCHROME1" else a


def crop(a: np.ndarray, size: int, corner: tuple[int, int] | None = None) -> np.ndarray:
    return sr_eval._centre_crop(a, size, corner)


Group = tuple[list[np.ndarray], list[sr_eval.Case]]


def groups() -> dict[str, Group]:
    """Training images and scored crops of each group (crops of 64 and 128 px stand in for MR_small / CT_small)."""
    ct693, head = values("693_UNCR.dcm"), values("J2K_pixelrep_mismatch.dcm")
    ect = [values("eCT_Supplemental.dcm", i) - 1024 for i in (0, 1)]  # stored 0..; HU = stored - 1024
    bad, mr2, mrov = values("bad_sequence.dcm"), values("MR2_UNCR.dcm"), values("examples_overlay.dcm")
    emri = [values("emri_small.dcm", i) for i in range(10)]
    rg1, rg3, nm = values("RG1_UNCR.dcm"), values("RG3_UNCR.dcm"), values("JPEG2000_UNC.dcm")
    us = sr_eval._modality_values(pydicom.dcmread(sr_eval.DEID / "ultrasounds" / "GREYSCALE_IMAGE.dcm"))

    def ct(name: str, a: np.ndarray) -> sr_eval.Case:
        return sr_eval.Case(name, "CT", sr_eval._even(a), 4096.0, name)

    def other(name: str, modality: str, a: np.ndarray, data_range: float | None = None) -> sr_eval.Case:
        a = sr_eval._even(a)
        return sr_eval.Case(name, modality, a, data_range or float(np.ptp(np.percentile(a, [0.1, 99.9]))), name)

    return {
        "693": ([ct693], [ct("693_UNCR 128", crop(ct693, 128, (128, 128))), ct("693_UNCR 256", crop(ct693, 256))]),
        "eCT": (ect, [ct("eCT frame 1 128", crop(ect[0], 128)), ct("eCT frame 2 256", crop(ect[1], 256))]),
        "badseq": ([bad], [ct("bad_sequence 128", crop(bad, 128)), ct("bad_sequence 256", crop(bad, 256))]),
        "CThead": ([head], [ct("CT head 128", crop(head, 128, (192, 192))), ct("CT head 512", head)]),
        "MR2": ([mr2], [other("MR2_UNCR 256", "MR", crop(mr2, 256)), other("MR2_UNCR 64", "MR", crop(mr2, 64))]),
        "MRov": ([mrov], [other("examples_overlay", "MR", mrov), other("examples_overlay 64", "MR", crop(mrov, 64))]),
        "emri": (emri[:5], [other("emri_small frame 8", "MR", emri[7]), other("emri_small frame 10", "MR", emri[9])]),
        "RG1": ([rg1], [other("RG1_UNCR 768", "DX", crop(rg1, 768), 32767.0)]),
        "RG3": ([rg3], [other("RG3_UNCR 768", "DX", crop(rg3, 768), 1023.0)]),
        "NM": ([nm], []),
        "US": ([us], [other("US grey 512", "US", crop(us, 512), 255.0)]),
    }


def standardised(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((a - a.mean()) / (a.std() + 1e-6)).astype(np.float32))[None, None]


def train_prior(images: list[np.ndarray], steps: int, seed: int) -> model.ResidualESPCN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tensors = [standardised(a) for a in images]
    weights = np.array([t.numel() ** 0.5 for t in tensors])
    net = model.ResidualESPCN(32, 4, FACTOR, "bicubic", 0.0, 0.1)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * s / steps)))
    for _ in range(steps):
        batch = []
        for _ in range(BATCH):
            t = tensors[rng.choice(len(tensors), p=weights / weights.sum())]
            r, c = rng.integers(0, t.shape[-2] - CROP + 1), rng.integers(0, t.shape[-1] - CROP + 1)
            batch.append(model.dihedral(t[..., r : r + CROP, c : c + CROP], int(rng.integers(8))))
        y = torch.cat(batch)
        loss = F.l1_loss(net(resample.downsample(y, FACTOR, "area")), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def gain_over_classical(net: model.ResidualESPCN, case: sr_eval.Case) -> float:
    mask = sr_eval.body_mask(case)
    x = resample.np_downsample(case.y, FACTOR, "area")
    classical = api.super_resolve(x, FACTOR, method="classical", modality=case.modality)[0]
    norm = api.normaliser(x[None], case.modality)
    xt = resample.to_tensor(norm.fwd(x))
    net.standardise_on(xt)
    with torch.inference_mode():
        learned, _ = model.upscale_learned([net], xt, FACTOR, model.InferConfig(), lambda: None)
    return sr_eval.psnr(case, norm.back(learned)[0], mask) - sr_eval.psnr(case, classical, mask)


def markdown(rows: list[dict], steps: int, command: str) -> str:
    gains = [r["gain_db"] for r in rows]
    lines = [
        "## A prior from other real images (supervised, true pairs), scored on held-out groups, x2 area",
        "",
        f"Command: `{command}` ({steps} steps per fold)",
        "",
        "| fold | held-out image | modality | size | learned (prior) Δ over classical dB |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['fold']} | {r['image']} | {r['modality']} | {r['shape']} | {r['gain_db']:+.2f} |" for r in rows]
    lines += [
        "",
        f"Median {np.median(gains):+.2f} dB, worst {min(gains):+.2f} dB, best {max(gains):+.2f} dB (n={len(gains)}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "2026-11-22-sr" / "prior")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    all_groups, rows = groups(), []
    for fold, held in enumerate(FOLDS):
        t0 = time.perf_counter()
        train = [a for name, (images, _) in all_groups.items() if name not in held for a in images]
        net = train_prior(train, args.steps, seed=fold)
        print(f"fold {fold}: trained on {len(train)} images in {time.perf_counter() - t0:.0f} s", flush=True)
        for name in held:
            for case in all_groups[name][1]:
                rows.append({"fold": fold, "image": case.name, "modality": case.modality,
                             "shape": f"{case.y.shape[0]}x{case.y.shape[1]}",
                             "gain_db": round(gain_over_classical(net, case), 3)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    command = "nice -n 19 python bench/sr_prior_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sr_prior.json").write_text(json.dumps(rows, indent=2))
    (args.out / "sr_prior.md").write_text(markdown(rows, args.steps, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
