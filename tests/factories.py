"""Real DICOM inputs for tests: pydicom's bundled files, deid-data's files, and generated CT series."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import deid_data
import numpy as np
import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
DEID_FILES = Path(deid_data.__file__).parent / "data"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

# (file, storescu option proposing its transfer syntax): one per transfer syntax the node must accept.
TRANSFER_SYNTAX_FILES = [
    ("CT_small.dcm", "-xe"),  # explicit VR little endian
    ("MR_small_implicit.dcm", "-xi"),  # implicit VR little endian
    ("MR_small_bigendian.dcm", "-xb"),  # explicit VR big endian
    ("image_dfl.dcm", "-xd"),  # deflated explicit VR little endian
    ("SC_rgb_dcmtk_+eb+cr.dcm", "-xy"),  # JPEG baseline
    ("JPEG-lossy.dcm", "-xx"),  # JPEG extended
    ("SC_rgb_jpeg_gdcm.dcm", "-xs"),  # JPEG lossless SV1
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
    ("MR_small_jp2klossless.dcm", "-xv"),  # JPEG 2000 lossless
    ("JPEG2000.dcm", "-xw"),  # JPEG 2000
    ("MR_small_RLE.dcm", "-xr"),  # RLE lossless
]


def bundled(name: str) -> Path:
    path = TEST_FILES / name
    assert path.is_file(), f"pydicom test file {name} is not bundled"
    return path


def deid_files() -> list[Path]:
    return sorted(p for p in DEID_FILES.rglob("*.dcm"))


def ct_series(
    n: int,
    rows: int = 64,
    cols: int = 64,
    study: str | None = None,
    patient_id: str = "GEN-0001",
    patient_name: str = "Generated^Patient",
    seed: int = 0,
    phantom: bool = False,
) -> list[Dataset]:
    """A CT series of n slices with real geometry, signed 16-bit pixels (stored values; HU = value - 1024)
    and fresh UIDs. ``phantom``: a body with lungs and a spine instead of noise, changing along the series."""
    rng = np.random.default_rng(seed)
    study = study or generate_uid()
    series = generate_uid()
    frame_of_reference = generate_uid()
    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20240305"
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC" + patient_id[-4:]
        ds.StudyID = "1"
        ds.StudyDescription = "Generated CT"
        ds.ReferringPhysicianName = "Ref^Doctor"
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Axial"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-100.0, -100.0, float(i * 2.5)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 2.5
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        if phantom:
            pixels = _phantom(rows, cols, i / max(n - 1, 1), rng)
        else:
            pixels = rng.integers(0, 2000, size=(rows, cols), dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        out.append(ds)
    return out


def ct_small_series(n: int, patient_id: str = "SR-0001", shift: int = 3) -> list[Dataset]:
    """A valid CT series (dciodvfy finds no error in it) of n slices made from pydicom's CT_small: its header,
    its pixels moved by ``shift`` pixels per slice, fresh UIDs, positions 5 mm apart."""
    source = pydicom.dcmread(bundled("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    pixels = source.pixel_array
    out = []
    for i in range(n):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = patient_id
        ds.SeriesNumber, ds.InstanceNumber = 7, i + 1
        ds.SeriesDescription = "Axial CT_small"
        x, y, z = source.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, f"{float(z) + 5.0 * i:.3f}"]
        ds.SliceLocation = f"{float(z) + 5.0 * i:.3f}"
        ds.PixelData = np.roll(pixels, shift * i, axis=1).astype(pixels.dtype).tobytes()
        out.append(ds)
    return out


def _phantom(rows: int, cols: int, z: float, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
    hu = np.full((rows, cols), -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.65) ** 2 < 1] = 40  # soft tissue
    lung = 0.22 + 0.06 * np.sin(np.pi * z)
    for side in (-0.38, 0.38):
        hu[((x - side) / lung) ** 2 + ((y + 0.05) / 0.4) ** 2 < 1] = -820
    hu[(x**2 + (y - 0.45) ** 2) < 0.012] = 700  # spine
    hu += rng.normal(0, 12, size=hu.shape)
    return (hu + 1024).clip(0, 4095).astype(np.int16)


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def part10_as_is(ds: Dataset) -> bytes:
    """Part 10 bytes with the File Meta Information exactly as set (pydicom would otherwise correct it)."""
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    return buffer.getvalue()


def sop_class_mismatch() -> bytes:
    """File meta says CT Image Storage, the data set says MR Image Storage."""
    ds = ct_series(1)[0]
    ds.SOPClassUID = MR_IMAGE_STORAGE
    return part10_as_is(ds)


def write_series(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"IM{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, the bytes after the File Meta Information): what 'stored as received' preserves."""
    raw = path.read_bytes()
    meta = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta
    end = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return str(meta.TransferSyntaxUID), raw[end:]


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)


# A small corpus for matching tests: (patient name, patient id, study date, study time, accession, modalities,
# description). Names mix case, components and a non-ASCII one; dates span a range edge.
CORPUS = [
    ("Doe^John", "P001", "20200101", "083000", "ACC-1", ("CT",), "Chest CT"),
    ("DOE^JANE", "P002", "20200615", "120000", "ACC-2", ("MR",), "Brain MR"),
    ("Smith^Anna^M", "P003", "20211231", "235959", "ACC-3", ("CT", "SR"), "Abdomen [contrast]"),
    ("Müller^Jürgen", "P004", "20190310", "101500.5", "ACC_4", ("CT",), "Knee 100%"),
    ("O'Brien^Liam", "P005", "20230704", "0930", "ACC-5", ("MR", "CT"), "Spine"),
    ("Doe^Johnny", "P006", "", "", "", ("US",), ""),
]


def query_corpus() -> list[Dataset]:
    """Two instances per series, one series per modality, one study per CORPUS row."""
    out = []
    for n, (name, pid, date, time, accession, modalities, description) in enumerate(CORPUS):
        study = generate_uid()
        for m, modality in enumerate(modalities):
            for ds in ct_series(2, rows=8, cols=8, study=study, patient_id=pid, patient_name=name, seed=n):
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.StudyDate, ds.StudyTime, ds.AccessionNumber = date, time, accession
                ds.StudyDescription, ds.Modality, ds.SeriesNumber = description, modality, m + 1
                if modality == "MR":
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
                out.append(ds)
    return out
