"""One super-resolution job, from a stored series to stored derived series (torch only through
``dcmnode.sr.Upscaler``, loaded when a job runs).

Steps: ``load`` reads the series' images on the modality scale (HU for CT) grouped by grid (rows, columns, pixel
spacing: one model per acquisition geometry, as the notes advise); ``upscale_group`` super-resolves each group a
slice at a time, storing each output as it is made so that memory does not grow with the series; ``store_report``
stores the SR document. Three derived series go through the one
ingest path: the super-resolved images, their uncertainty map, and an SR document recording the run. A job that
is cancelled or fails removes what it had stored. UIDs depend only on the job and the source instance, so a job
retried after a crash (which cannot clean up) rewrites the same instances (kept as duplicates) instead of
leaving a second, partial series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

import dcmnode
from dcmnode.core import query as q
from dcmnode.core.catalog import Catalog
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs import derive, report
from dcmnode.core.jobs.queue import Job
from dcmnode.core.retrieve import StoredFile
from dcmnode.errors import Cancelled, NotAcceptable, NotFound
from dcmnode.imaging import pipeline
from dcmnode.model import Source, SourceKind

log = logging.getLogger(__name__)
VERSION = f"dcmnode {dcmnode.__version__}"
METHOD_TEXT = {
    "learned": "self-supervised CNN trained on this series, test-time augmentation and back-projection",
    "classical": "Lanczos3, edge-gated unsharp mask and back-projection",
}
Progress = Callable[[float, str], None]


@dataclass
class Slice:
    item: StoredFile
    header: Dataset
    values: np.ndarray  # modality scale, float32
    padding: np.ndarray | None  # where the stored value is Pixel Padding Value


@dataclass
class Outcome:
    series: dict[str, str] = field(default_factory=dict)  # kind -> Series Instance UID
    instances: dict[str, int] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)


def load(catalog: Catalog, series: str, max_output_side: int, factor: int) -> list[list[Slice]]:
    """The series' images in groups of one grid, each ordered along the slice normal (else Instance Number)."""
    items = catalog.select({"SeriesInstanceUID": series}, level=q.Level.IMAGE)
    if not items:
        raise NotFound(f"series {series} is not stored here")
    groups: dict[tuple[Any, ...], list[Slice]] = {}
    for item in items:
        ds = pydicom.dcmread(item.path)
        derive.check_source(ds)
        if max(int(ds.Rows), int(ds.Columns)) * factor > max_output_side:
            raise NotAcceptable(
                f"{ds.Rows}x{ds.Columns} x{factor} exceeds sr.max_output_side ({max_output_side} pixels)"
            )
        stored = pipeline.decode(ds, 1)
        padding = stored == int(ds.PixelPaddingValue) if "PixelPaddingValue" in ds else None
        values = pipeline.modality(ds, stored).astype(np.float32)
        del ds.PixelData
        key = (int(ds.Rows), int(ds.Columns), tuple(float(v) for v in ds.get("PixelSpacing") or ()))
        padding = padding if padding is not None and padding.any() else None
        groups.setdefault(key, []).append(Slice(item, ds, values, padding))
    return [sorted(group, key=_slice_order) for group in groups.values()]


def _slice_order(s: Slice) -> tuple[float, int]:
    ds = s.header
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    depth = 0.0
    if position and orientation and len(orientation) == 6:
        normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
        depth = float(np.dot(normal, np.array(position, float)))
    number = ds.get("InstanceNumber")
    return depth, int(number) if number not in (None, "") else 0


def run(
    job: Job,
    catalog: Catalog,
    ingest: Ingest,
    progress: Progress,
    should_stop: Callable[[], bool],
    *,
    seed: int = 0,
    max_output_side: int = 8192,
    params: dict[str, Any] | None = None,
) -> Outcome:
    progress(0.0, "reading the series")
    groups = load(catalog, job.series, max_output_side, job.factor)
    output = _Output(job, groups[0][0].header, ingest)
    try:
        return _derive(output, groups, progress, should_stop, seed, params or {})
    except BaseException:  # cancelled or failed: take back what this attempt wrote, so no partial series is left
        try:
            ingest.remove(output.written)
        except Exception:
            log.exception("SR job %d: could not remove its partial output", job.id)
        raise


class _Output:
    """Where one job's derived instances go: their series UIDs and numbers, and what this attempt stored."""

    def __init__(self, job: Job, first: Dataset, ingest: Ingest) -> None:
        self.job, self.ingest = job, ingest
        self.numbers = derive.series_numbers(first.get("SeriesNumber"))
        self.uids = {k: derive.uid_for("dcmnode-sr", str(job.id), job.series, k) for k in ("sr", "unc", "report")}
        self.derivation = derive.Derivation(job.factor, job.method, _description(job), VERSION)
        self.source_desc = str(first.get("SeriesDescription", "") or f"series {first.get('SeriesNumber', '')}").strip()
        self.modality = str(first.get("Modality", ""))
        self.written: list[str] = []  # SOP Instance UIDs this attempt stored
        self.sources: list[Dataset] = []  # headers of the source slices, in the order they were made
        self.made: list[Dataset] = []  # headers of the derived instances

    def store(self, ds: Dataset, encoded: bytes) -> None:
        self.written.append(str(ds.SOPInstanceUID))
        self.ingest.store_bytes(encoded, Source(SourceKind.DERIVED))


def _derive(
    output: _Output,
    groups: list[list[Slice]],
    progress: Progress,
    should_stop: Callable[[], bool],
    seed: int,
    params: dict[str, Any],
) -> Outcome:
    total, done, runs = sum(len(g) for g in groups), 0, []
    for group in groups:
        span, base = len(group) / total, done / total

        def group_progress(fraction: float, stage: str, base: float = base, span: float = span) -> None:
            progress(0.05 + 0.8 * (base + span * fraction), stage)

        runs.append(upscale_group(output, group, group_progress, should_stop, seed, params))
        done += len(group)
    outcome = Outcome(series=dict(output.uids), run=_summary(output.job, runs))
    store_report(output, outcome.run)
    outcome.instances = {"sr": len(output.sources), "unc": len(output.sources), "report": 1}
    progress(0.95, "derived series stored")
    return outcome


def upscale_group(
    output: _Output,
    group: list[Slice],
    progress: Progress,
    should_stop: Callable[[], bool],
    seed: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Fit one grid's model, then make and store its slices one at a time (memory stays flat); the run's report."""
    from dcmnode.sr import Upscaler

    job = output.job
    upscaler = Upscaler(
        np.stack([s.values for s in group]),
        job.factor,
        method=job.method,
        value_range=derive.value_range(group[0].header),
        modality=output.modality or None,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
        **params,
    )
    upscaler.fit()
    for index, s in enumerate(group):
        up, unc = upscaler.upscale(index)
        if should_stop():
            raise Cancelled(f"job {job.id} cancelled")
        for ds in _slice_datasets(output, s, up, unc):
            output.store(ds, derive.part10(ds, VERSION.replace(" ", "_")))
            del ds.PixelData  # the SR document needs headers only
            output.made.append(ds)
        output.sources.append(s.header)
    return upscaler.report()


def _slice_datasets(output: _Output, s: Slice, up: np.ndarray, unc: np.ndarray) -> tuple[Dataset, Dataset]:
    """The super-resolved image of one source slice and its uncertainty map."""
    job, numbers, uids = output.job, output.numbers, output.uids
    sr_ds = derive.derived(
        s.header, up, output.derivation, uids["sr"], _uid(job, s, "sr"), numbers[0],
        f"SR x{job.factor} of {output.source_desc}", padding=_finer(s.padding, job.factor),
    )  # fmt: skip
    unc_ds = derive.derived(
        s.header, unc, output.derivation, uids["unc"], _uid(job, s, "unc"), numbers[1],
        f"SR x{job.factor} uncertainty of {output.source_desc}", kind=derive.UNCERTAINTY,
    )  # fmt: skip
    return sr_ds, unc_ds


def store_report(output: _Output, run: dict[str, Any]) -> None:
    """The SR document that records the run, referencing every source and derived instance."""
    job = output.job
    doc = report.document(
        output.sources, output.made, run, output.uids["report"],
        derive.uid_for("dcmnode-sr", str(job.id), "report-sop"), output.numbers[2], VERSION,
        "HU" if output.modality == "CT" else "1",
    )  # fmt: skip
    output.store(doc, derive.encoded(doc))


def _uid(job: Job, s: Slice, kind: str) -> str:
    return derive.uid_for("dcmnode-sr", str(job.id), s.item.sop, kind)


def _finer(mask: np.ndarray | None, factor: int) -> np.ndarray | None:
    if mask is None:
        return None
    return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)


def _description(job: Job) -> str:
    return (
        f"In-plane x{job.factor} super-resolution by dcmnode ({VERSION}): {METHOD_TEXT[job.method]}. "
        "Derived image, not for primary diagnosis; see the uncertainty series and the SR report."
    )


def _summary(job: Job, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return float(np.median(values)) if values else None

    return {
        "factor": job.factor,
        "method": job.method,
        "params": runs[0].get("params", {}) if runs else {},
        "train_seconds": sum(float(r.get("train_seconds") or 0) for r in runs),
        "infer_seconds": sum(float(r.get("infer_seconds") or 0) for r in runs),
        "self_consistency_psnr_db": median("self_consistency_psnr_db"),
        "uncertainty_mean": median("uncertainty_mean"),
        "uncertainty_p95": median("uncertainty_p95"),
        "groups": len(runs),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
