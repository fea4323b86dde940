"""An identity-rich generated study for the de-identification tests: identity everywhere a real study carries it.

One patient, two studies 17 days apart:

- study A: 3 CT slices (names, IDs, addresses, phone numbers, institution and device identity, dates and times of
  every kind, a DT with fraction and offset, UIDs in nested sequences, a private block with the patient's name and
  IDs in it and a private sequence, a curve group 5000 and an overlay group 6000 whose descriptions name the
  patient, descriptions and comments quoting the name, the ID and the dates in other text forms), an RT Structure
  Set referencing the CT images (Frame of Reference → study → series → contour images, ROI Contour → image,
  the study UID in a Referenced SOP Instance UID as RT does), and a Comprehensive SR with patient content (TEXT
  items naming the patient, a PNAME, a DATE, a UIDREF, an IMAGE reference);
- study B: 2 CT slices 17 days later, its Referenced Study Sequence pointing at study A.

Everything is deterministic (fixed UIDs and pixels), so leak scans never flake. ``IDENTITY`` holds the identifying
values by kind; ``identifying_values()`` flattens them (a test that retains a kind on purpose, e.g. Retain UIDs,
leaves that kind out). The fixture is valid: dciodvfy finds no error in any of its files (tests/test_deid_keys.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # the RT Referenced Study Sequence's SOP class (PS3.3 C.8.8.5)
MODALITY_PPS = "1.2.840.10008.3.1.2.3.3"

# -- the identity --------------------------------------------------------------------------------------------------
PATIENT_NAME = "Quatermain^Evangeline^Rosalind^^"
PATIENT_NAME_PARTS = ("Quatermain", "Evangeline", "Rosalind")
PATIENT_ID = "QX7734021"
OTHER_PATIENT_ID = "ALT-998877"
ISSUER_OF_PATIENT_ID = "KETTLEBYMRN"
ACCESSION = "ACX55120931"
ACCESSION_LATER = "ACX55120988"
STUDY_ID = "STX4410"
BIRTH_DATE = "19610423"
STUDY_DATE = "20240305"
LATER_DATE = "20240322"  # 17 days after STUDY_DATE
INTERVAL_DAYS = 17
CALIBRATION_DATE = "20231102"
SCHEDULED_DATE = "20240228"
STUDY_TIME = "101512"
LATER_TIME = "083344"
ACQUISITION_DATETIME = "20240305101623.250000+0100"
LATER_DATETIME = "20240322083512.125000+0100"
VERIFICATION_DATETIME = "20240306142207+0100"


@dataclass(frozen=True)
class Identity:
    """The identifying values of the fixture, by kind (each kind is what one option may keep on purpose)."""

    names: tuple[str, ...]
    ids: tuple[str, ...]
    dates: tuple[str, ...]  # DA values and the DT values (which start with a date)
    times: tuple[str, ...]
    addresses: tuple[str, ...]
    institution: tuple[str, ...]  # Retain Institution Identity keeps these
    device: tuple[str, ...]  # Retain Device Identity keeps these
    uids: tuple[str, ...] = field(default=())  # Retain UIDs keeps these

    def values(self, exclude: Iterable[str] = ()) -> list[str]:
        """Every identifying value except the kinds named in ``exclude`` (e.g. ``{"uids", "dates"}``)."""
        left_out = set(exclude)
        unknown = left_out - set(self.__dataclass_fields__)
        assert not unknown, f"unknown kinds {unknown}"
        out: list[str] = []
        for kind in self.__dataclass_fields__:
            if kind not in left_out:
                out.extend(getattr(self, kind))
        return out


def _uid(label: str) -> str:
    # Deterministic, so that the UID list is fixed and a test can name them (PS3.5 9.1: ≤ 64 chars, digits, dots).
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["dcmnode deid fixture", label])


STUDY_A = _uid("study A")
STUDY_B = _uid("study B")
FRAME_OF_REFERENCE = _uid("frame of reference")
CT_SERIES_A = _uid("CT series A")
CT_SERIES_B = _uid("CT series B")
RT_SERIES = _uid("RT series")
SR_SERIES = _uid("SR series")
CT_A = tuple(_uid(f"CT A {i}") for i in range(3))
CT_B = tuple(_uid(f"CT B {i}") for i in range(2))
RTSTRUCT = _uid("RTSTRUCT")
SR = _uid("SR")
IRRADIATION_EVENT = _uid("irradiation event")
PPS = _uid("performed procedure step")
INSTANCE_CREATOR = _uid("instance creator")

IDENTITY = Identity(
    names=(
        PATIENT_NAME.rstrip("^"),
        "Quatermain^Eva",  # Other Patient Names
        "Fairweather^Imogen",  # Patient's Mother's Birth Name
        "Thistlewood^Margery",  # Referring Physician
        "Okonkwo^Bartholomew",  # Performing Physician, ROI Interpreter
        "Vanterpool^Serafina",  # Operators' Name
        "Ashdown^Cornelius",  # Physicians of Record, Verifying Observer
        "Pemberton^Lysander",  # Requesting Physician, Name of Physicians Reading Study
    ),
    ids=(
        PATIENT_ID,
        OTHER_PATIENT_ID,
        ISSUER_OF_PATIENT_ID,
        ACCESSION,
        ACCESSION_LATER,
        STUDY_ID,
        "RQP80071",
        "SPS80072",
    ),
    dates=(
        BIRTH_DATE,
        STUDY_DATE,
        LATER_DATE,
        CALIBRATION_DATE,
        SCHEDULED_DATE,
        ACQUISITION_DATETIME,
        LATER_DATETIME,
        VERIFICATION_DATETIME,
    ),
    times=(STUDY_TIME, LATER_TIME),
    addresses=(
        "17 Larkspur Crescent^Whitbyhaven^YO22 4QT",
        "+44 1947 602233",
        "Hawthorn Mews 4, Brackenfold",
        "+44 1947 600101",
    ),
    institution=("Wenceslas Kettleby Infirmary", "Ravensworth Lane 9, Kettleby", "Zephyrine Quillbrook Wing"),
    device=("ZEPHYRSTATION7", "SNZ558213"),
    uids=(
        STUDY_A,
        STUDY_B,
        FRAME_OF_REFERENCE,
        CT_SERIES_A,
        CT_SERIES_B,
        RT_SERIES,
        SR_SERIES,
        *CT_A,
        *CT_B,
        RTSTRUCT,
        SR,
        IRRADIATION_EVENT,
        PPS,
        INSTANCE_CREATOR,
    ),
)

# The texts of descriptions and comments (Clean Descriptors must remove the identity from them, not empty them).
STUDY_DESCRIPTION = "CT chest for QUATERMAIN EVANGELINE QX7734021 of 05.03.2024"
SERIES_DESCRIPTION = "Axial soft tissue, Quatermain Evangeline"
IMAGE_COMMENTS = "Patient Quatermain, Evangeline (QX7734021), born 1961-04-23, scanned 03/05/2024"
PATIENT_COMMENTS = "Evangeline Quatermain prefers the morning slot; mother Fairweather"
SR_TEXT = "Comparison with the CT of Evangeline Quatermain QX7734021 from 20240305"

PRIVATE_CREATOR = "DCMNODE IDENTITY TEST"


def identifying_values(exclude: Iterable[str] = ()) -> list[str]:
    """The fixture's identifying values (kinds in ``exclude`` left out): none may appear in a de-identified output."""
    return IDENTITY.values(exclude)


def identity_study(tmp_path: Path) -> list[Path]:
    """The fixture written to ``tmp_path/identity``: CT A (3), RTSTRUCT, SR, CT B (2), in this order."""
    folder = tmp_path / "identity"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ds in identity_datasets().items():
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def identity_datasets() -> dict[str, Dataset]:
    """The fixture's data sets by file name (``ct_a0``.., ``rtstruct``, ``sr``, ``ct_b0``..)."""
    out: dict[str, Dataset] = {}
    for i, sop in enumerate(CT_A):
        out[f"ct_a{i}"] = _ct(i, sop, later=False)
    out["rtstruct"] = _rtstruct()
    out["sr"] = _sr()
    for i, sop in enumerate(CT_B):
        out[f"ct_b{i}"] = _ct(i, sop, later=True)
    return out


# -- builders -------------------------------------------------------------------------------------------------------
def _new(sop_class: str, sop: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.InstanceCreationDate = STUDY_DATE
    ds.InstanceCreationTime = STUDY_TIME
    ds.InstanceCreatorUID = INSTANCE_CREATOR
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _patient_and_study(ds: Dataset, later: bool) -> None:
    ds.PatientName = PATIENT_NAME.rstrip("^")
    ds.PatientID = PATIENT_ID
    ds.IssuerOfPatientID = ISSUER_OF_PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "F"
    ds.PatientAge = "062Y"
    ds.PatientSize = "1.68"
    ds.PatientWeight = "71.5"
    ds.OtherPatientNames = "Quatermain^Eva"
    other = Dataset()
    other.PatientID = OTHER_PATIENT_ID
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientMotherBirthName = "Fairweather^Imogen"
    ds.PatientAddress = "17 Larkspur Crescent^Whitbyhaven^YO22 4QT"
    ds.PatientTelephoneNumbers = "+44 1947 602233"
    ds.PatientComments = PATIENT_COMMENTS
    ds.AdditionalPatientHistory = "Seen by Thistlewood^Margery, record QX7734021"
    ds.StudyInstanceUID = STUDY_B if later else STUDY_A
    ds.StudyDate = LATER_DATE if later else STUDY_DATE
    ds.StudyTime = LATER_TIME if later else STUDY_TIME
    ds.AccessionNumber = ACCESSION_LATER if later else ACCESSION
    ds.StudyID = STUDY_ID
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.ReferringPhysicianName = "Thistlewood^Margery"
    ds.ReferringPhysicianAddress = "Hawthorn Mews 4, Brackenfold"
    ds.ReferringPhysicianTelephoneNumbers = "+44 1947 600101"
    ds.PhysiciansOfRecord = "Ashdown^Cornelius"
    ds.NameOfPhysiciansReadingStudy = "Pemberton^Lysander"
    ds.RequestingPhysician = "Pemberton^Lysander"
    ds.Manufacturer = "Generated"
    ds.InstitutionName = "Wenceslas Kettleby Infirmary"
    ds.InstitutionAddress = "Ravensworth Lane 9, Kettleby"
    ds.InstitutionalDepartmentName = "Zephyrine Quillbrook Wing"
    ds.StationName = "ZEPHYRSTATION7"
    ds.DeviceSerialNumber = "SNZ558213"
    ds.DateOfLastCalibration = CALIBRATION_DATE
    ds.TimeOfLastCalibration = "070000"
    ds.ManufacturerModelName = "Generated CT"
    ds.SoftwareVersions = "1"
    if later:
        # The prior: study B names study A (a reference that must resolve inside the output).
        prior = Dataset()
        prior.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
        prior.ReferencedSOPInstanceUID = STUDY_A
        ds.ReferencedStudySequence = Sequence([prior])
    request = Dataset()
    request.RequestedProcedureID = "RQP80071"
    request.ScheduledProcedureStepID = "SPS80072"
    request.AccessionNumber = ds.AccessionNumber
    request.StudyInstanceUID = ds.StudyInstanceUID
    request.RequestedProcedureDescription = "CT chest for Quatermain^Evangeline"
    request.ScheduledProcedureStepDescription = f"Booked {SCHEDULED_DATE} for QX7734021"
    ds.RequestAttributesSequence = Sequence([request])
    pps = Dataset()
    pps.ReferencedSOPClassUID = MODALITY_PPS
    pps.ReferencedSOPInstanceUID = PPS
    ds.ReferencedPerformedProcedureStepSequence = Sequence([pps])
    ds.PerformedProcedureStepStartDate = ds.StudyDate
    ds.PerformedProcedureStepStartTime = ds.StudyTime
    ds.PerformedProcedureStepID = "SPS80072"
    ds.PerformedProcedureStepDescription = "Chest CT of Evangeline Quatermain"


def _ct(i: int, sop: str, later: bool) -> Dataset:
    ds = _new(CT_IMAGE_STORAGE, sop)
    _patient_and_study(ds, later)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    ds.SeriesInstanceUID = CT_SERIES_B if later else CT_SERIES_A
    ds.SeriesNumber = 1
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDateTime = LATER_DATETIME if later else ACQUISITION_DATETIME
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.ProtocolName = "Chest QX7734021"
    ds.PerformingPhysicianName = "Okonkwo^Bartholomew"
    ds.OperatorsName = "Vanterpool^Serafina"
    ds.IrradiationEventUID = IRRADIATION_EVENT
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = i + 1
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    ds.ImageComments = IMAGE_COMMENTS
    ds.ImagePositionPatient = [-100.0, -100.0, float(i * 2.5)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceLocation = float(i * 2.5)
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.5
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    # Deterministic pixels (a ramp per slice) whose bytes never spell a letter: leak scans cannot flake on them.
    ds.PixelData = ((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) + 7 * i) % 16).astype(np.uint16).tobytes()
    # References at depth: the neighbouring slice (Referenced Image) and the source slice (Source Image).
    series = CT_B if later else CT_A
    neighbour = Dataset()
    neighbour.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    neighbour.ReferencedSOPInstanceUID = series[(i + 1) % len(series)]
    ds.ReferencedImageSequence = Sequence([neighbour])
    source = Dataset()
    source.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    source.ReferencedSOPInstanceUID = series[0]
    ds.SourceImageSequence = Sequence([source])
    _private(ds)
    _curve_and_overlay(ds)
    return ds


def _private(ds: Dataset) -> None:
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "Quatermain^Evangeline")
    block.add_new(0x02, "LO", PATIENT_ID)
    block.add_new(0x03, "DA", BIRTH_DATE)
    block.add_new(0x04, "LO", "Wenceslas Kettleby Infirmary")
    inner = Dataset()
    inner.PatientID = OTHER_PATIENT_ID
    inner.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    block.add_new(0x10, "SQ", Sequence([inner]))


def _curve_and_overlay(ds: Dataset) -> None:
    # A curve (group 5000, retired since 2004 but still met) and an overlay (group 6000): Clean Graphics' groups.
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions
    ds.add_new(0x50000010, "US", 4)  # Number of Points
    ds.add_new(0x50000020, "CS", "ROI")  # Type of Data
    ds.add_new(0x50000022, "LO", "Outline drawn for Quatermain QX7734021")  # Curve Description
    ds.add_new(0x50000103, "US", 0)  # Data Value Representation (unsigned short)
    ds.add_new(0x50003000, "OW", np.array([1, 2, 3, 4], dtype="<u2").tobytes())  # Curve Data
    ds.add_new(0x60000010, "US", 32)  # Overlay Rows
    ds.add_new(0x60000011, "US", 32)  # Overlay Columns
    ds.add_new(0x60000022, "LO", "Marker for Evangeline Quatermain")  # Overlay Description
    ds.add_new(0x60000040, "CS", "G")  # Overlay Type
    ds.add_new(0x60000050, "SS", [1, 1])  # Overlay Origin
    ds.add_new(0x60000100, "US", 1)  # Overlay Bits Allocated
    ds.add_new(0x60000102, "US", 0)  # Overlay Bit Position
    ds.add_new(0x60001500, "LO", "QX7734021")  # Overlay Label
    bits = np.zeros((32, 32), dtype=np.uint8)
    bits[4:8, 4:20] = 1
    ds.add_new(0x60003000, "OW", np.packbits(bits.ravel(), bitorder="little").tobytes())  # Overlay Data


def _image_ref(sop: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = sop
    return item


def _rtstruct() -> Dataset:
    ds = _new(RT_STRUCTURE_SET_STORAGE, RTSTRUCT)
    _patient_and_study(ds, later=False)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = RT_SERIES
    ds.SeriesNumber = 2
    ds.SeriesDescription = "Contours for Quatermain"
    ds.OperatorsName = "Vanterpool^Serafina"
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = "QX7734021"
    ds.StructureSetName = "Quatermain plan"
    ds.StructureSetDate = STUDY_DATE
    ds.StructureSetTime = STUDY_TIME
    # Referenced Frame of Reference → RT Referenced Study (the study UID as a Referenced SOP Instance UID) → RT
    # Referenced Series → Contour Image (PS3.3 C.8.8.5).
    series = Dataset()
    series.SeriesInstanceUID = CT_SERIES_A
    series.ContourImageSequence = Sequence([_image_ref(sop) for sop in CT_A])
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = STUDY_A
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = FRAME_OF_REFERENCE
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = FRAME_OF_REFERENCE
    roi.ROIName = "GTV"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for i, sop in enumerate(CT_A):
        contour = Dataset()
        contour.ContourImageSequence = Sequence([_image_ref(sop)])
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 4
        z = float(i * 2.5)
        contour.ContourData = [-90.0, -90.0, z, -80.0, -90.0, z, -80.0, -80.0, z, -90.0, -80.0, z]
        contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber = 1
    observation.ReferencedROINumber = 1
    observation.RTROIInterpretedType = "GTV"
    observation.ROIInterpreter = "Okonkwo^Bartholomew"
    ds.RTROIObservationsSequence = Sequence([observation])
    ds.ApprovalStatus = "APPROVED"
    ds.ReviewDate = STUDY_DATE
    ds.ReviewTime = STUDY_TIME
    ds.ReviewerName = "Ashdown^Cornelius"
    return ds


def _content(relationship: str, value_type: str, concept: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _sr() -> Dataset:
    ds = _new(COMPREHENSIVE_SR_STORAGE, SR)
    _patient_and_study(ds, later=False)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = SR_SERIES
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Report for Quatermain"
    ds.InstanceNumber = 1
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = STUDY_TIME
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    verifier = Dataset()
    verifier.VerifyingObserverName = "Ashdown^Cornelius"
    verifier.VerifyingOrganization = "Wenceslas Kettleby Infirmary"
    verifier.VerificationDateTime = VERIFICATION_DATETIME
    verifier.VerifyingObserverIdentificationCodeSequence = Sequence()
    ds.VerifyingObserverSequence = Sequence([verifier])
    ds.PerformedProcedureCodeSequence = Sequence()
    # The evidence: the CT images the report is about (PS3.3 C.17.2.3).
    series = Dataset()
    series.SeriesInstanceUID = CT_SERIES_A
    series.ReferencedSOPSequence = Sequence([_image_ref(sop) for sop in CT_A])
    study = Dataset()
    study.StudyInstanceUID = STUDY_A
    study.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    # The content: patient identity in TEXT, PNAME and DATE items, a UIDREF and an IMAGE reference.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    image = Dataset()
    image.ReferencedSOPSequence = Sequence([_image_ref(CT_A[1])])
    ds.ContentSequence = Sequence(
        [
            _content("CONTAINS", "TEXT", _code("121106", "DCM", "Comment"), TextValue=SR_TEXT),
            _content(
                "CONTAINS",
                "TEXT",
                _code("121106", "DCM", "Comment"),
                TextValue="Ms Quatermain^Evangeline, ID QX7734021, DOB 23.04.1961",
            ),
            _content(
                "HAS OBS CONTEXT",
                "PNAME",
                _code("121008", "DCM", "Person Observer Name"),
                PersonName="Ashdown^Cornelius",
            ),
            _content("CONTAINS", "DATE", _code("111060", "DCM", "Study Date"), Date=STUDY_DATE),
            _content("CONTAINS", "UIDREF", _code("121018", "DCM", "Procedure Study Instance UID"), UID=STUDY_A),
            _content(
                "CONTAINS",
                "IMAGE",
                _code("121112", "DCM", "Source of Measurement"),
                ReferencedSOPSequence=image.ReferencedSOPSequence,
            ),
        ]
    )
    return ds
