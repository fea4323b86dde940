"""Series export (ZIP of DICOM + PNG, NIfTI with the right geometry) over HTTP and the CLI, and `dcmnode render`."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import nibabel
import numpy as np
import pydicom
from PIL import Image

from dcmnode.imaging import pipeline
from dcmnode.model import Source, SourceKind
from tests.conftest import LiveServer, run_cli
from tests.factories import ct_series, part10, write_series


def shuffled_series() -> list[pydicom.Dataset]:
    """Five slices whose Instance Numbers run against their positions (z descends as the number rises)."""
    series = ct_series(5, rows=16, cols=12, phantom=True)
    for n, ds in enumerate(series):
        ds.InstanceNumber = 5 - n  # slice k sits at z = 2.5 k, but is numbered backwards
        ds.PixelSpacing = [0.5, 0.8]  # row spacing 0.5 mm, column spacing 0.8 mm
    return series


def test_zip_and_nifti_over_http(live_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    live = live_factory()
    series = shuffled_series()
    for ds in series:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    base = f"{live.url}/dicom-web/studies/{series[0].StudyInstanceUID}/series/{series[0].SeriesInstanceUID}/export"
    response = httpx.get(base, params={"format": "zip"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = set(archive.namelist())
    for ds in series:
        assert f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm" in names
        png = np.asarray(Image.open(archive.open(f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.png")))
        assert np.array_equal(png, pipeline.render(ds, 1))

    nifti = httpx.get(base, params={"format": "nifti"})
    assert nifti.status_code == 200
    path = tmp_path / "volume.nii.gz"
    path.write_bytes(nifti.content)
    volume = nibabel.load(str(path))
    data = np.asarray(volume.dataobj)
    assert data.shape == (12, 16, 5)  # columns, rows, slices
    for k, ds in enumerate(series):  # sorted by position, not by Instance Number
        assert np.allclose(data[:, :, k].T, pipeline.modality(ds, ds.pixel_array))
    affine = volume.affine
    assert np.allclose(np.abs(np.diag(affine)[:3]), [0.8, 0.5, 2.5])  # column spacing, row spacing, slice spacing
    first = np.array(series[0].ImagePositionPatient, dtype=float)
    assert np.allclose(affine[:3, 3], [-first[0], -first[1], first[2]])  # LPS → RAS
    assert httpx.get(base, params={"format": "tiff"}).status_code == 400


def test_cli_export_and_render(tmp_path: Path) -> None:
    series = shuffled_series()
    write_series(tmp_path / "in", series)
    data = tmp_path / "data"
    assert run_cli("import", str(tmp_path / "in"), "--data", str(data), "--no-progress").returncode == 0
    out = tmp_path / "series.nii.gz"
    result = run_cli("export", series[0].SeriesInstanceUID, "--format", "nifti", "-o", str(out), "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert nibabel.load(str(out)).shape == (12, 16, 5)

    png = tmp_path / "slice.png"
    result = run_cli("render", series[2].SOPInstanceUID, "-o", str(png), "--window=-600,1500", "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.asarray(Image.open(png)), pipeline.render(series[2], 1, pipeline.Window(-600, 1500)))
    enhanced = tmp_path / "clahe.png"
    source = tmp_path / "in" / "IM00002.dcm"  # a file path works as well as a stored UID
    result = run_cli("render", str(source), "-o", str(enhanced), "--enhance", "clahe:0.03,zoom:2")
    assert result.returncode == 0, result.stderr
    assert np.asarray(Image.open(enhanced)).shape == (32, 24)
    bad = run_cli("render", str(source), "-o", str(enhanced), "--enhance", "sharpen")
    assert bad.returncode == 2 and "unknown operator" in bad.stderr
