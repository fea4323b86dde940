"""Series export: a ZIP of the DICOM files with a PNG rendering of each, or a NIfTI volume.

NIfTI: slices are sorted by their position along the slice normal (Image Position (Patient) · the normal from
Image Orientation (Patient)), not by Instance Number; the affine maps voxel (i, j, k) to RAS millimetres from
Pixel Spacing, the orientation cosines, the first slice's position and the slice spacing measured between
positions (DICOM's LPS flipped to NIfTI's RAS). Voxels hold modality values (Rescale applied).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom

from dcmnode.core import render
from dcmnode.core.retrieve import StoredFile
from dcmnode.errors import InvalidRequest, NotAcceptable
from dcmnode.imaging import pipeline

FORMATS = ("zip", "nifti")


def write_zip(items: list[StoredFile], out: Path) -> None:
    """``{series}/{sop}.dcm`` as stored, and ``{series}/{sop}.png`` rendered (first frame, default window)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for item in items:
            archive.write(item.path, f"{item.series}/{item.sop}.dcm")
            try:
                png = render.render_file(item.path, render.RenderRequest("image/png"))
            except NotAcceptable:
                continue  # not an image (SR, PDF): the DICOM file alone
            archive.writestr(f"{item.series}/{item.sop}.png", png)


def volume(items: list[StoredFile]) -> tuple[np.ndarray, np.ndarray]:
    """(voxels as (columns, rows, slices) float32, 4x4 RAS affine) of a single-frame image series."""
    slices = []
    for item in items:
        ds = pydicom.dcmread(item.path)
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            raise InvalidRequest(f"instance {item.sop} lacks Image Position/Orientation (Patient) or Pixel Spacing")
        if pipeline.is_color(ds) or pipeline.number_of_frames(ds) != 1:
            raise InvalidRequest("NIfTI export takes a series of single-frame grey images")
        slices.append(ds)
    if not slices:
        raise InvalidRequest("the series holds no image")
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=float)
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    slices.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    shape = (int(slices[0].Rows), int(slices[0].Columns))
    if any((int(d.Rows), int(d.Columns)) != shape for d in slices):
        raise InvalidRequest("slices of different sizes cannot make one volume")
    positions = np.array([d.ImagePositionPatient for d in slices], dtype=float)
    spacing = (
        float(np.median(np.diff(positions @ normal)))
        if len(slices) > 1
        else float(slices[0].get("SliceThickness") or 1)
    )
    dr, dc = (float(v) for v in slices[0].PixelSpacing)  # row spacing (between rows), column spacing
    data = np.stack([pipeline.modality(d, pipeline.decode(d, 1)) for d in slices], axis=-1)  # (rows, cols, k)
    data = np.transpose(data, (1, 0, 2))  # NIfTI i runs along a row (columns), j down the rows
    affine = np.eye(4)
    affine[:3, 0] = row * dc
    affine[:3, 1] = column * dr
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[0]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return data.astype(np.float32), lps_to_ras @ affine


def write_nifti(items: list[StoredFile], out: Path) -> None:
    import nibabel  # here, not at the top: it brings scipy, which no other request needs (issue 19: memory)

    data, affine = volume(items)
    image = nibabel.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    nibabel.save(image, str(out))
