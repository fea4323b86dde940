"""The Structured Report that records a super-resolution run: a Comprehensive 3D SR document holding a TID 1500
Measurement Report, built with highdicom.

One measurement group (TID 1501) names the algorithm (TID 4019: name, version, parameters), references the
source and derived images, and holds the run's figures: self-consistency PSNR (the derived image, brought back
to the source grid, against the source), uncertainty statistics, timings. The codes for those figures are ours
(coding scheme ``99DCMNODE``, PS3.16 §8.2 private scheme); units are UCUM. The document records provenance
and QA; the derived images carry their own (Derivation*, Source Image Sequence), as is customary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset

# highdicom and pydicom.sr (its code dictionaries: ~20 MiB) are imported where a report is made, in the SR
# worker: the HTTP and DIMSE processes import this module's package but never make a report (issue 19: memory).
SCHEME = "99DCMNODE"
UNITS = {  # (code value, scheme, meaning): pydicom Codes when a report is made
    "dB": ("dB", "UCUM", "decibel"),
    "s": ("s", "UCUM", "second"),
    "HU": ("[hnsf'U]", "UCUM", "Hounsfield unit"),
    "1": ("1", "UCUM", "no units"),
}
# (key in the run report, code value, meaning, unit)
FIGURES = (
    ("self_consistency_psnr_db", "SRSELFPSNR", "Self-consistency PSNR of the super-resolved image", "dB"),
    ("uncertainty_mean", "SRUNCMEAN", "Mean super-resolution uncertainty", None),
    ("uncertainty_p95", "SRUNCP95", "95th percentile of super-resolution uncertainty", None),
    ("train_seconds", "SRTRAIN", "Super-resolution training time", "s"),
    ("infer_seconds", "SRINFER", "Super-resolution inference time", "s"),
    ("factor", "SRFACTOR", "Super-resolution factor", "1"),
)


def document(
    sources: Sequence[Dataset],
    derived: Sequence[Dataset],
    run: Mapping[str, Any],
    series_uid: str,
    sop_uid: str,
    series_number: int,
    software_version: str,
    modality_unit: str = "1",
) -> Dataset:
    """The SR document for one run over ``sources`` (headers are enough) giving ``derived``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    algorithm = hd.sr.AlgorithmIdentification(
        name="dcmnode-sr", version=software_version, parameters=_parameters(run), manufacturer="dcmnode"
    )
    measurements = []
    for key, value_code, meaning, unit in FIGURES:
        value = run.get(key)
        if value is None:
            continue
        unit_code = Code(*UNITS[unit or ("HU" if modality_unit == "HU" else "1")])
        measurements.append(
            hd.sr.Measurement(name=Code(value_code, SCHEME, meaning), value=float(value), unit=unit_code)
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"super-resolution x{run.get('factor')} ({run.get('method')})"
        ),
        algorithm_id=algorithm,
        measurements=measurements,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in [*sources, *derived]
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="dcmnode", manufacturer_name="dcmnode", model_name="sr-worker"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=Code("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=[group],
    )
    first = sources[0]
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, *derived],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="dcmnode",
        is_complete=True,
        institution_name=first.get("InstitutionName") or None,
        series_description=f"SR x{run.get('factor')} report"[:64],
    )


def _parameters(run: Mapping[str, Any]) -> list[str]:
    params = dict(run.get("params") or {})
    params.setdefault("method", run.get("method"))
    params.setdefault("factor", run.get("factor"))
    return [f"{k}={v}"[:64] for k, v in sorted(params.items())]
