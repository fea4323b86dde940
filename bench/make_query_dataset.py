#!/usr/bin/env python3
"""Deterministic query/retrieve benchmark data set: ~100,000 instances in 1,000 studies.

Run on purpose, never in the test suite (see bench/README.md)::

    /tmp/benchvenv/bin/python bench/make_query_dataset.py --out /tmp/qbench-ds

Contents (defaults):

* 999 "small" studies x 2 series x 50 instances, 64x64 or 128x128 pixels (chosen per study), signed 16-bit;
  about 90 % CT studies (CT Image Storage, header from pydicom's bundled ``CT_small.dcm``, a real GE HiSpeed
  CT/i header with its private groups) and about 10 % MR studies (MR Image Storage, header from ``MR_small.dcm``).
* ONE "big" CT study with a single 500-instance series of 512x512 int16 slices (1 mm apart).
* ~800 patients (some with 2-3 studies), varied ``Family^Given`` names (a few with Latin-1 accents, an apostrophe,
  a space or a hyphen, never in the first letter), PatientIDs ``QBENCH-P00001``..., study dates spread over
  2015-2023, accession numbers, study/series descriptions, referring physicians.
* Uncompressed Explicit VR Little Endian; UIDs are ``generate_uid`` with entropy from the tag and indices (one
  "/"-joined string, so that index tuples cannot collide); the same arguments give byte-identical files.

Layout under --out::

    manifest.json                          studies (patient, date, accession, series, SOP UIDs), the big series'
                                           instances with the SHA-1 of their PixelData, files, sizes
    g0/ g1/ g2/ g3/                        study k is in group g<k mod 4>: one storescu per group loads in parallel
    g<g>/st<NNNN>/se<K>/im<MMM>.dcm

Generation uses a process pool (--workers, default 2); the manifest is assembled in the parent.
"""

from __future__ import annotations

import argparse
import copy as copymod
import datetime as dt
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import struct
import sys
import time

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root, used with deterministic entropy
FORMAT = 1
IMPL_UID = UID_PREFIX + "2"
IMPL_NAME = "QBENCH_MKDS_1"

SURNAMES = [
    "ABBOTT",
    "ADAMS",
    "AHMED",
    "ALVAREZ",
    "ANDERSEN",
    "ANDERSSON",
    "BAKER",
    "BARNES",
    "BECKER",
    "BERG",
    "BERNARD",
    "BIANCHI",
    "BLANC",
    "BROWN",
    "BRUNO",
    "CAMPBELL",
    "CARTER",
    "CASTRO",
    "CHEN",
    "CLARK",
    "COLLINS",
    "COSTA",
    "CRUZ",
    "DAVIES",
    "DAVIS",
    "DIAZ",
    "DUBOIS",
    "DUPONT",
    "EDWARDS",
    "EKLUND",
    "ELLIS",
    "EVANS",
    "FABER",
    "FERRARI",
    "FERREIRA",
    "FISCHER",
    "FISHER",
    "FONTAINE",
    "FOSTER",
    "GALLO",
    "GARCIA",
    "GIRARD",
    "GOMES",
    "GONZALEZ",
    "GRAY",
    "GREEN",
    "HALL",
    "HANSEN",
    "HARRIS",
    "HERNANDEZ",
    "HOFFMANN",
    "HUGHES",
    "IBRAHIM",
    "INGRAM",
    "ITO",
    "IVANOV",
    "JACKSON",
    "JANSEN",
    "JENSEN",
    "JOHNSON",
    "JONES",
    "KELLER",
    "KIM",
    "KING",
    "KOHLER",
    "KOWALSKI",
    "KRAUSE",
    "LAMBERT",
    "LANGE",
    "LAURENT",
    "LEE",
    "LEROY",
    "LOPEZ",
    "LUND",
    "MARTIN",
    "MARTINEZ",
    "MEYER",
    "MILLER",
    "MOREAU",
    "MORENO",
    "MULLER",
    "NAKAMURA",
    "NELSON",
    "NGUYEN",
    "NIELSEN",
    "NOVAK",
    "OLSEN",
    "OLIVEIRA",
    "ORTEGA",
    "OWENS",
    "PARK",
    "PATEL",
    "PEREIRA",
    "PEREZ",
    "PETERSEN",
    "QUINN",
    "RAMOS",
    "REYES",
    "RICHTER",
    "ROBERTS",
    "RODRIGUEZ",
    "ROSSI",
    "RUSSO",
    "SANCHEZ",
    "SANTOS",
    "SATO",
    "SCHMIDT",
    "SCHNEIDER",
    "SILVA",
    "SMITH",
    "SUZUKI",
    "TANAKA",
    "TAYLOR",
    "THOMAS",
    "TORRES",
    "TRAN",
    "UDDIN",
    "URBAN",
    "VARGA",
    "VASQUEZ",
    "VOGEL",
    "WAGNER",
    "WALKER",
    "WATANABE",
    "WEBER",
    "WHITE",
    "WILSON",
    "WOLF",
    "WRIGHT",
    "XU",
    "YAMAMOTO",
    "YILMAZ",
    "YOUNG",
    "ZHANG",
    "ZIMMERMANN",
    # realistic awkward ones (Latin-1 letters, apostrophe, space, hyphen), never in the first letter
    "MÜLLER",
    "GONZÁLEZ",
    "LEFÈVRE",
    "JÖNSSON",
    "NUÑEZ",
    "O'BRIEN",
    "VAN DER BERG",
    "GARCIA-LOPEZ",
]
GIVEN_M = [
    "JOHN",
    "PAUL",
    "PIERRE",
    "HANS",
    "MARCO",
    "JAN",
    "LUC",
    "KENJI",
    "MIN",
    "ANDRE",
    "DAVID",
    "PETER",
    "LUCAS",
    "TOMAS",
    "ERIK",
    "AHMED",
    "CARLOS",
    "DIEGO",
    "FRANCOIS",
    "GEORGE",
    "HIROSHI",
    "IVAN",
    "JAMES",
    "KARL",
    "LIAM",
    "MATEO",
    "NOAH",
    "OLIVER",
    "RAFAEL",
    "SVEN",
    "THEO",
    "VICTOR",
    "WEI",
    "YUSUF",
    "JOSÉ",
    "JÖRG",
]
GIVEN_F = [
    "MARY",
    "ANNA",
    "MARIE",
    "SOPHIE",
    "GIULIA",
    "EVA",
    "LAURA",
    "YUKI",
    "JI",
    "CLAIRE",
    "EMMA",
    "JULIA",
    "SARA",
    "HELENA",
    "INES",
    "AMELIA",
    "BEATRIZ",
    "CHLOE",
    "DIANA",
    "ELENA",
    "FATIMA",
    "GRACE",
    "HANNA",
    "IRIS",
    "KAREN",
    "LENA",
    "MAYA",
    "NORA",
    "OLIVIA",
    "PRIYA",
    "ROSA",
    "SOFIA",
    "VERA",
    "ZOE",
    "HÉLÈNE",
    "ZOË",
]
REFERRING = [
    "HOUSE^GREGORY",
    "GREY^MEREDITH",
    "ROSS^DOUG",
    "CARTER^JOHN",
    "QUINN^MICHAELA",
    "SHEPHERD^DEREK",
    "YANG^CRISTINA",
    "KOVAC^LUKA",
    "WEAVER^KERRY",
    "",
]
INSTITUTIONS = ["JFK IMAGING CENTER", "ST MARY HOSPITAL", "CITY GENERAL", "UNIVERSITY CLINIC", "WESTSIDE RADIOLOGY"]
CT_STUDY_DESCS = [
    "CT CHEST W CONTRAST",
    "CT ABDOMEN PELVIS",
    "CT CHEST WO CONTRAST",
    "CT THORAX ABDOMEN",
    "CT HEAD WO CONTRAST",
    "CT ANGIO CHEST",
    "CT LOW DOSE LUNG SCREENING",
    "CT SINUS",
    "CT CERVICAL SPINE",
    "CT KIDNEY STONE PROTOCOL",
]
MR_STUDY_DESCS = [
    "MR BRAIN WO CONTRAST",
    "MR BRAIN W WO CONTRAST",
    "MR KNEE LEFT",
    "MR LUMBAR SPINE",
    "MR SHOULDER RIGHT",
    "MR PROSTATE",
    "MR LIVER",
]
# CT series kinds: (description, kernel, slice thickness mm, window center, window width, body part)
CT_HEAD_SERIES = [
    ("AXIAL 2.0 BRAIN", "SOFT", 2.0, 40, 80, "HEAD"),
    ("AXIAL 1.0 BONE", "BONE", 1.0, 500, 2500, "HEAD"),
    ("CORONAL 2.0 BONE", "BONE", 2.0, 500, 2500, "HEAD"),
]
CT_HEAD_DESCS = {"CT HEAD WO CONTRAST", "CT SINUS", "CT CERVICAL SPINE"}
CT_SERIES = [
    ("AXIAL 5.0 SOFT TISSUE", "STANDARD", 5.0, 40, 400, "CHEST"),
    ("AXIAL 1.25 LUNG", "LUNG", 1.25, -600, 1500, "CHEST"),
    ("AXIAL 2.5 BONE", "BONE", 2.5, 300, 1500, "CHEST"),
    ("AXIAL 3.0 MEDIASTINUM", "STANDARD", 3.0, 50, 350, "CHEST"),
    ("AXIAL 5.0 ABDOMEN", "STANDARD", 5.0, 60, 360, "ABDOMEN"),
]
MR_BODY_PARTS = {
    "MR BRAIN WO CONTRAST": "HEAD",
    "MR BRAIN W WO CONTRAST": "HEAD",
    "MR KNEE LEFT": "KNEE",
    "MR LUMBAR SPINE": "LSPINE",
    "MR SHOULDER RIGHT": "SHOULDER",
    "MR PROSTATE": "PROSTATE",
    "MR LIVER": "ABDOMEN",
}
# MR series kinds: (description, scanning sequence, TR, TE, slice thickness, window center, width)
MR_SERIES = [
    ("AX T2 FSE", "SE", 4000.0, 100.0, 4.0, 600, 1600),
    ("SAG T1", "SE", 500.0, 12.0, 3.0, 500, 1200),
    ("AX FLAIR", "IR", 9000.0, 120.0, 5.0, 700, 1800),
    ("COR STIR", "IR", 5000.0, 40.0, 3.5, 400, 1000),
    ("AX DWI B1000", "EP", 6000.0, 80.0, 5.0, 300, 900),
]
BIG_SERIES_DESC = ("AXIAL 1.0 STANDARD", "STANDARD", 1.0, 40, 400, "CHEST")
BIG_STUDY_DESC = "CT CHEST ABDOMEN PELVIS W CONTRAST"


def det_uid(*parts) -> str:
    """Deterministic DICOM UID (<= 64 chars) from the given parts ("/"-joined: (1, 11) and (11, 1) differ)."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["/".join(str(p) for p in parts)])


# --------------------------------------------------------------------------- pixels
def bilinear_resize(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    r0, c0 = img.shape
    y = np.clip((np.arange(rows) + 0.5) * (r0 / rows) - 0.5, 0, r0 - 1)
    x = np.clip((np.arange(cols) + 0.5) * (c0 / cols) - 0.5, 0, c0 - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, r0 - 1), np.minimum(x0 + 1, c0 - 1)
    wy, wx = (y - y0)[:, None], (x - x0)[None, :]
    a = img.astype(np.float32)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bot = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


class CTPixels:
    """HU images: the template's real texture on a body/lung/spine/lesion phantom that changes along z, + noise
    (the idea of ../shared/bench/make_dataset.py)."""

    def __init__(self, template: Dataset, size: int, seed: int):
        self.n, self.seed = size, seed
        hu = template.pixel_array.astype(np.float32) * float(template.RescaleSlope) + float(template.RescaleIntercept)
        self.texture = bilinear_resize(hu - float(np.median(hu)), size, size)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.u = (xx - size / 2) / (size / 2)
        self.v = (yy - size / 2) / (size / 2)
        self.fov = (self.u**2 + self.v**2) <= 1.0

    def stored(self, z_frac: float, study: int, series: int, slice_: int) -> np.ndarray:
        u, v, tex = self.u, self.v, self.texture
        rng = np.random.default_rng([self.seed, study, series, slice_])
        img = np.full((self.n, self.n), -1000.0, dtype=np.float32)
        ax = 0.80 + 0.06 * math.sin(math.pi * z_frac) + 0.02 * ((study % 5) - 2)
        ay = 0.55 + 0.05 * math.sin(math.pi * z_frac)
        body = (u / ax) ** 2 + ((v + 0.05) / ay) ** 2 <= 1.0
        img[body] = 40.0 + 0.6 * tex[body]
        lr = 0.22 + 0.10 * math.sin(math.pi * z_frac)
        for cx in (-0.38, 0.38):
            lung = (((u - cx) / lr) ** 2 + ((v + 0.05) / (lr * 1.5)) ** 2 <= 1.0) & body
            img[lung] = -850.0 + 0.3 * tex[lung]
        spine = (u / 0.08) ** 2 + ((v - 0.38) / 0.08) ** 2 <= 1.0
        img[spine] = 700.0 + 0.5 * tex[spine]
        lx = -0.3 + 0.6 * ((study * 37) % 11) / 10.0
        lz = 0.1 + 0.08 * math.cos(2 * math.pi * z_frac)
        lesion = (((u - lx) ** 2 + (v - 0.05) ** 2) <= lz**2) & body
        img[lesion] = 60.0 + 25.0 * series
        img += rng.normal(0.0, 12.0, size=img.shape).astype(np.float32)
        out = np.round(img + 1024.0)  # RescaleIntercept -1024, slope 1
        out[~self.fov] = -2000  # Pixel Padding Value outside the reconstruction FOV
        return np.clip(out, -2000, 4095).astype("<i2")


class MRPixels:
    """MR-like images: the MR template's texture on a head-like phantom whose size changes along z, + noise."""

    def __init__(self, template: Dataset, size: int, seed: int):
        self.n, self.seed = size, seed
        self.texture = bilinear_resize(template.pixel_array.astype(np.float32), size, size)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.u = (xx - size / 2) / (size / 2)
        self.v = (yy - size / 2) / (size / 2)

    def stored(self, z_frac: float, study: int, series: int, slice_: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, study, series, slice_, 7])
        r = 0.55 + 0.3 * math.sin(math.pi * z_frac)
        head = (self.u / r) ** 2 + (self.v / (r * 1.2)) ** 2 <= 1.0
        img = np.zeros((self.n, self.n), dtype=np.float32)
        img[head] = 400.0 + 150.0 * series + 0.5 * self.texture[head]
        ventr = (self.u / (0.25 * r)) ** 2 + (self.v / (0.4 * r)) ** 2 <= 1.0
        img[ventr] = 1200.0 if series % 2 == 0 else 200.0
        img += np.abs(rng.normal(0.0, 20.0, size=img.shape)).astype(np.float32)
        return np.clip(np.round(img), 0, 4000).astype("<i2")


# --------------------------------------------------------------------------- worker side
_W: dict = {}


def _templates(seed: int) -> dict:
    if not _W:
        for name in ("CT_small.dcm", "MR_small.dcm"):
            path = get_testdata_file(name)
            if path is None:
                raise SystemExit(f"pydicom's bundled {name} not found")
            ds = pydicom.dcmread(path)
            base = copymod.deepcopy(ds)
            for kw in (
                "DataSetTrailingPadding",
                "OtherPatientIDsSequence",
                "ImageComments",
                "PixelData",
                "SmallestImagePixelValue",
                "LargestImagePixelValue",
            ):
                if kw in base:
                    delattr(base, kw)
            if (0xFFFC, 0xFFFC) in base:
                del base[0xFFFC, 0xFFFC]
            base.preamble = b"\0" * 128  # the template's preamble is not zeros
            _W[name] = (ds, base)
        _W["pix"] = {}
    return _W


def _pixels(kind: str, size: int, seed: int):
    t = _templates(seed)
    key = (kind, size)
    if key not in t["pix"]:
        tmpl = t["CT_small.dcm" if kind == "CT" else "MR_small.dcm"][0]
        t["pix"][key] = (CTPixels if kind == "CT" else MRPixels)(tmpl, size, seed)
    return t["pix"][key]


# Fast writer: pydicom encodes each series' header once (without the per-instance elements); every file is then
# that header spliced with the five per-instance elements, encoded here. The first file of every task is also
# written with pydicom's save_as and must come out byte-identical.
VARYING = (0x00080018, 0x00200013, 0x00200032, 0x00201041, 0x7FE00010)  # SOP UID, InstanceNumber, IPP, SliceLoc, Pixels
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _el(tag: int, vr: str, value: bytes) -> bytes:
    g, e = tag >> 16, tag & 0xFFFF
    if vr.encode() in LONG_VRS:
        return struct.pack("<HH2s2xI", g, e, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", g, e, vr.encode(), len(value)) + value


def _pad(s: str, pad: bytes) -> bytes:
    b = s.encode("ascii")
    return b + pad if len(b) % 2 else b


def _file_meta(sop_class: str, sop_uid: str) -> bytes:
    els = (
        _el(0x00020001, "OB", b"\x00\x01")
        + _el(0x00020002, "UI", _pad(sop_class, b"\0"))
        + _el(0x00020003, "UI", _pad(sop_uid, b"\0"))
        + _el(0x00020010, "UI", _pad(ExplicitVRLittleEndian, b"\0"))
        + _el(0x00020012, "UI", _pad(IMPL_UID, b"\0"))
        + _el(0x00020013, "SH", _pad(IMPL_NAME, b" "))
    )
    return b"\0" * 128 + b"DICM" + _el(0x00020000, "UL", struct.pack("<I", len(els))) + els


def _header_runs(ds: Dataset) -> list[bytes]:
    """Encode ds (explicit VR LE) and cut it into the runs of elements between the VARYING tags."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    body = fp.getvalue()
    runs = [bytearray() for _ in range(len(VARYING) + 1)]
    i = 0
    while i < len(body):
        g, e = struct.unpack_from("<HH", body, i)
        vr = body[i + 4 : i + 6]
        if vr in LONG_VRS:
            n, hdr = struct.unpack_from("<I", body, i + 8)[0], 12
        else:
            n, hdr = struct.unpack_from("<H", body, i + 6)[0], 8
        if n == 0xFFFFFFFF:
            raise RuntimeError(f"undefined length element ({g:04X},{e:04X}) in the template")
        tag = (g << 16) | e
        if tag in VARYING:
            raise RuntimeError(f"per-instance element ({g:04X},{e:04X}) left in the series header")
        runs[sum(1 for v in VARYING if v < tag)] += body[i : i + hdr + n]
        i += hdr + n
    return [bytes(r) for r in runs]


def _instance_bytes(
    runs: list[bytes], meta: bytes, sop_uid: str, number: int, ipp: list[str], sl: str, pixels: bytes
) -> bytes:
    var = (
        _el(0x00080018, "UI", _pad(sop_uid, b"\0")),
        _el(0x00200013, "IS", _pad(str(number), b" ")),
        _el(0x00200032, "DS", _pad("\\".join(ipp), b" ")),
        _el(0x00201041, "DS", _pad(sl, b" ")),
        _el(0x7FE00010, "OW", pixels),
    )
    parts = [meta]
    for j, v in enumerate(var):
        parts += [runs[j], v]
    parts.append(runs[-1])
    return b"".join(parts)


def gen_task(task: dict) -> dict:
    """Write the instances [m0, m1) of every series of one study; return per-instance records."""
    seed, out = task["seed"], task["out"]
    st = task["study"]
    t = _templates(seed)
    kind = st["kind"]
    base = t["CT_small.dcm" if kind == "CT" else "MR_small.dcm"][1]
    sop_class = CTImageStorage if kind == "CT" else MRImageStorage
    records = []
    nbytes = 0
    checked = False
    for k, se in enumerate(st["series"]):
        ds = copymod.deepcopy(base)  # no pixel data: cheap
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = IMPL_UID
        ds.file_meta.ImplementationVersionName = IMPL_NAME
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if kind == "CT" else ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID = sop_class
        ds.Modality = kind
        ds.StudyInstanceUID = st["study_uid"]
        ds.SeriesInstanceUID = se["series_uid"]
        ds.FrameOfReferenceUID = st["for_uid"]
        for kw in ("InstanceCreationDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            setattr(ds, kw, st["study_date"])
        ds.StudyTime = ds.InstanceCreationTime = st["study_time"]
        ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = se["series_time"]
        ds.AccessionNumber = st["accession"]
        ds.ReferringPhysicianName = st["referring"]
        ds.InstitutionName = st["institution"]
        ds.StudyDescription = st["description"]
        ds.SeriesDescription = se["description"]
        ds.ProtocolName = st["description"]
        ds.PatientName = st["patient_name"]
        ds.PatientID = st["patient_id"]
        ds.PatientBirthDate = st["birth_date"]
        ds.PatientSex = st["sex"]
        ds.PatientAge = st["age"]
        ds.PatientWeight = st["weight"]
        ds.StudyID = st["study_id"]
        ds.SeriesNumber = se["number"]
        ds.AcquisitionNumber = 1
        thick = se["thickness"]
        ds.SliceThickness = f"{thick:g}"
        ds.SpacingBetweenSlices = f"{thick:g}"
        n = se["rows"]
        fov = 338.6716 if kind == "CT" else 240.0
        spacing = fov / n
        ds.Rows = n
        ds.Columns = n
        ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = str(se["window"][0])
        ds.WindowWidth = str(se["window"][1])
        ds.BodyPartExamined = se["body_part"]
        if kind == "CT":
            ds.ConvolutionKernel = se["kernel"]
            ds.PixelPaddingValue = -2000
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
        else:
            ds.ScanningSequence = se["sequence"]
            ds.RepetitionTime = f"{se['tr']:g}"
            ds.EchoTime = f"{se['te']:g}"
            ds.MagneticFieldStrength = "1.5"
            ds.PatientSize = "1.72"
            ds.EchoTrainLength = "8"
        for tag in VARYING:
            if tag in ds:
                del ds[tag]
        runs = _header_runs(ds)
        pix = _pixels(kind, n, seed)
        M = se["instances"]
        for m in range(task["m0"], min(task["m1"], M)):
            sop_uid = se["sop_uids"][m]
            z = -75.0 - m * thick if kind == "CT" else -40.0 + m * thick
            pbytes = pix.stored((m + 0.5) / M, st["index"], k, m).tobytes()
            ipp = [f"{-fov / 2:.4f}", f"{-fov / 2 - 10:.4f}", f"{z:.4f}"]
            data = _instance_bytes(runs, _file_meta(sop_class, sop_uid), sop_uid, m + 1, ipp, f"{z:.4f}", pbytes)
            if not checked:  # the fast path must equal pydicom's own encoding
                ref = copymod.deepcopy(ds)
                ref.file_meta.MediaStorageSOPInstanceUID = sop_uid
                ref.SOPInstanceUID = sop_uid
                ref.InstanceNumber = m + 1
                ref.ImagePositionPatient = ipp
                ref.SliceLocation = f"{z:.4f}"
                ref.PixelData = pbytes
                ref["PixelData"].VR = "OW"
                buf = io.BytesIO()
                ref.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
                if buf.getvalue() != data:
                    raise RuntimeError(f"fast encoder differs from pydicom for study {st['index']} series {k}")
                checked = True
            rel = os.path.join(se["dir"], f"im{m:03d}.dcm")
            with open(os.path.join(out, rel), "wb") as f:
                f.write(data)
            nbytes += len(data)
            rec = {"series": k, "m": m, "bytes": len(data)}
            if st["big"]:
                rec["pixel_sha1"] = hashlib.sha1(pbytes).hexdigest()
            records.append(rec)
    return {"study": st["index"], "records": records, "bytes": nbytes}


# --------------------------------------------------------------------------- plan (parent side)
def plan(args) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng([args.seed, 1])
    n_small, n_pat = args.small_studies, args.patients
    n_studies = n_small + 1
    if n_pat > n_studies:
        raise SystemExit("--patients must not exceed the number of studies")
    # patients: unique Family^Given names
    names: set[str] = set()
    patients = []
    while len(patients) < n_pat:
        sex = "F" if rng.random() < 0.5 else "M"
        givens = GIVEN_F if sex == "F" else GIVEN_M
        given = givens[int(rng.integers(0, len(givens)))]
        sur = SURNAMES[int(rng.integers(0, len(SURNAMES)))]
        name = f"{sur}^{given}"
        if name in names:
            continue
        names.add(name)
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 80)))
        p = len(patients)
        patients.append({"index": p, "name": name, "sex": sex, "birth": birth, "id": f"{args.tag}-P{p + 1:05d}"})
    # study -> patient: every patient gets one study, the rest go to random patients (2-3 studies each)
    owner = list(rng.permutation(n_pat)) + [int(x) for x in rng.integers(0, n_pat, size=n_studies - n_pat)]
    big_index = n_studies - 1
    d0, d1 = dt.date(2015, 1, 1), dt.date(2023, 12, 31)
    studies = []
    for s in range(n_studies):
        p = patients[int(owner[s])]
        big = s == big_index
        sdate = d0 + dt.timedelta(days=int(rng.integers(0, (d1 - d0).days + 1)))
        stime = f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
        age = sdate.year - p["birth"].year - ((sdate.month, sdate.day) < (p["birth"].month, p["birth"].day))
        kind = "CT" if big or rng.random() >= args.mr_fraction else "MR"
        size = 512 if big else int(rng.choice([64, 128]))
        desc = (
            BIG_STUDY_DESC
            if big
            else (CT_STUDY_DESCS if kind == "CT" else MR_STUDY_DESCS)[
                int(rng.integers(0, len(CT_STUDY_DESCS if kind == "CT" else MR_STUDY_DESCS)))
            ]
        )
        group = s % args.groups
        st = {
            "index": s,
            "big": big,
            "kind": kind,
            "group": group,
            "dir": f"g{group}/st{s:04d}",
            "study_uid": det_uid(args.tag, "study", s),
            "for_uid": det_uid(args.tag, "for", s),
            "patient_index": p["index"],
            "patient_id": p["id"],
            "patient_name": p["name"],
            "sex": p["sex"],
            "birth_date": p["birth"].strftime("%Y%m%d"),
            "age": f"{max(age, 0):03d}Y",
            "weight": f"{float(rng.uniform(45, 110)):.1f}",
            "study_date": sdate.strftime("%Y%m%d"),
            "study_time": stime,
            "accession": f"ACC{args.seed % 100:02d}{s + 1:06d}",
            "study_id": f"{s + 1}",
            "description": desc,
            "referring": REFERRING[int(rng.integers(0, len(REFERRING)))],
            "institution": INSTITUTIONS[int(rng.integers(0, len(INSTITUTIONS)))],
            "series": [],
        }
        n_series = 1 if big else args.series_per_study
        ct_kinds = CT_HEAD_SERIES if desc in CT_HEAD_DESCS else CT_SERIES
        kinds = rng.permutation(len(ct_kinds if kind == "CT" else MR_SERIES))
        for k in range(n_series):
            M = args.big_instances if big else args.instances_per_series
            se_uid = det_uid(args.tag, "series", s, k)
            hh, mm = int(stime[:2]), int(stime[2:4]) + 3 * (k + 1)
            se = {
                "series_uid": se_uid,
                "number": k + 1,
                "modality": kind,
                "rows": size,
                "cols": size,
                "instances": M,
                "dir": f"{st['dir']}/se{k}",
                "series_time": f"{hh + mm // 60:02d}{mm % 60:02d}00",
                "sop_uids": [det_uid(args.tag, "sop", s, k, m) for m in range(M)],
            }
            if big:
                d, kern, th, wc, ww, bp = BIG_SERIES_DESC
                se.update(description=d, kernel=kern, thickness=th, window=[wc, ww], body_part=bp)
            elif kind == "CT":
                d, kern, th, wc, ww, bp = ct_kinds[int(kinds[k])]
                se.update(description=d, kernel=kern, thickness=th, window=[wc, ww], body_part=bp)
            else:
                d, seq, tr, te, th, wc, ww = MR_SERIES[int(kinds[k])]
                se.update(
                    description=d,
                    sequence=seq,
                    tr=tr,
                    te=te,
                    thickness=th,
                    window=[wc, ww],
                    body_part=MR_BODY_PARTS[desc],
                )
            st["series"].append(se)
        studies.append(st)
    # tasks: one per small study; the big study in chunks so that both workers share it (largest first)
    tasks = []
    for st in studies:
        if st["big"]:
            for m0 in range(0, args.big_instances, 25):
                tasks.append({"study": st, "m0": m0, "m1": m0 + 25})
    for st in studies:
        if not st["big"]:
            tasks.append({"study": st, "m0": 0, "m1": args.instances_per_series})
    for t in tasks:
        t.update(seed=args.seed, out=args.out)
    return studies, tasks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/qbench-ds")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--tag", default="QBENCH", help="PatientID prefix (<tag>-P00001) and UID entropy")
    ap.add_argument("--small-studies", type=int, default=999)
    ap.add_argument("--series-per-study", type=int, default=2)
    ap.add_argument("--instances-per-series", type=int, default=50)
    ap.add_argument("--big-instances", type=int, default=500, help="instances of the big 512x512 series")
    ap.add_argument("--patients", type=int, default=800)
    ap.add_argument("--mr-fraction", type=float, default=0.10, help="share of small studies that are MR")
    ap.add_argument("--groups", type=int, default=4, help="top-level folders g0..g<n-1> (parallel loading)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="allow a non-empty --out (files are overwritten)")
    args = ap.parse_args()
    if not (
        1 <= args.small_studies <= 9998
        and 1 <= args.series_per_study <= 9
        and 1 <= args.instances_per_series <= 999
        and 1 <= args.big_instances <= 999
        and args.patients >= 1
        and 1 <= args.groups <= 16
        and 1 <= args.workers <= 16
    ):
        ap.error("counts out of range")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        ap.error(f"{args.out} is not empty (use --force)")
    args.out = os.path.abspath(args.out)
    t0 = time.time()
    studies, tasks = plan(args)
    all_uids = (
        [st["study_uid"] for st in studies]
        + [se["series_uid"] for st in studies for se in st["series"]]
        + [u for st in studies for se in st["series"] for u in se["sop_uids"]]
    )
    if len(set(all_uids)) != len(all_uids):
        raise SystemExit("UID collision")
    for st in studies:
        for se in st["series"]:
            os.makedirs(os.path.join(args.out, se["dir"]), exist_ok=True)
    n_total = sum(se["instances"] for st in studies for se in st["series"])
    print(
        f"plan: {len(studies)} studies, {n_total} instances, {len({s['patient_id'] for s in studies})} patients, "
        f"{len(tasks)} tasks on {args.workers} workers",
        flush=True,
    )

    results: dict[int, list] = {}
    total_bytes, done, last = 0, 0, time.time()
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers) as pool:
        for r in pool.imap_unordered(gen_task, tasks, chunksize=4):
            results.setdefault(r["study"], []).extend(r["records"])
            total_bytes += r["bytes"]
            done += len(r["records"])
            if time.time() - last > 10:
                last = time.time()
                print(f"  {done}/{n_total} files, {total_bytes / 1e6:.0f} MB, {time.time() - t0:.0f} s", flush=True)
    elapsed = time.time() - t0

    # manifest
    mstudies = []
    big = None
    for st in studies:
        recs = results[st["index"]]
        sizes = {(r["series"], r["m"]): r for r in recs}
        series = []
        for k, se in enumerate(st["series"]):
            sj = {
                "series_uid": se["series_uid"],
                "number": se["number"],
                "modality": se["modality"],
                "description": se["description"],
                "rows": se["rows"],
                "cols": se["cols"],
                "instances": se["instances"],
                "dir": se["dir"],
                "file_pattern": "im{m:03d}.dcm (m = InstanceNumber-1)",
                "bytes": sum(sizes[(k, m)]["bytes"] for m in range(se["instances"])),
                "sop_uids": se["sop_uids"],
            }
            if st["big"]:
                sj["instance_list"] = [
                    {
                        "sop_uid": se["sop_uids"][m],
                        "number": m + 1,
                        "file": f"{se['dir']}/im{m:03d}.dcm",
                        "pixel_sha1": sizes[(k, m)]["pixel_sha1"],
                        "bytes": sizes[(k, m)]["bytes"],
                    }
                    for m in range(se["instances"])
                ]
            series.append(sj)
        sj_st = {
            k: st[k]
            for k in (
                "index",
                "big",
                "group",
                "dir",
                "study_uid",
                "patient_id",
                "patient_name",
                "sex",
                "birth_date",
                "study_date",
                "study_time",
                "accession",
                "study_id",
                "description",
                "referring",
            )
        }
        sj_st["modalities"] = sorted({se["modality"] for se in st["series"]})
        sj_st["series"] = series
        mstudies.append(sj_st)
        if st["big"]:
            big = {
                "study_index": st["index"],
                "study_uid": st["study_uid"],
                "series_uid": st["series"][0]["series_uid"],
                "instances": st["series"][0]["instances"],
                "rows": 512,
                "cols": 512,
            }
    manifest = {
        "generator": "bench/make_query_dataset.py",
        "format": FORMAT,
        "seed": args.seed,
        "tag": args.tag,
        "patient_id_prefix": f"{args.tag}-P",
        "studies_count": len(studies),
        "patients_count": len({s["patient_id"] for s in studies}),
        "instances_count": n_total,
        "series_count": sum(len(st["series"]) for st in studies),
        "transfer_syntax": str(ExplicitVRLittleEndian),
        "sop_classes": {"CT": str(CTImageStorage), "MR": str(MRImageStorage)},
        "groups": [f"g{g}" for g in range(args.groups)],
        "templates": "pydicom data/test_files CT_small.dcm (GE HiSpeed CT/i), MR_small.dcm (Toshiba)",
        "pydicom_version": pydicom.__version__,
        "numpy_version": np.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("force",)},
        "big": big,
        "total_files": n_total,
        "total_bytes": total_bytes,
        "group_files": {
            f"g{g}": sum(se["instances"] for st in studies if st["group"] == g for se in st["series"])
            for g in range(args.groups)
        },
        "generated_seconds": round(elapsed, 1),
        "workers": args.workers,
        "studies": mstudies,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=None, separators=(",", ":"), ensure_ascii=False)
    print(
        f"wrote {n_total} files ({total_bytes / 1e6:.0f} MB, {total_bytes / 2**30:.2f} GiB) in {len(studies)} studies "
        f"+ manifest.json to {args.out} in {elapsed:.1f} s ({n_total / elapsed:.0f} files/s, {args.workers} workers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
