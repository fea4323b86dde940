"""The de-identification's building blocks: the identity fixture, the leak scan and the dciodvfy harness (so that
the engine's tests stand on tested helpers), the project key's derivations, date shifting, Clean Descriptors."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests import deid_fixtures as fx
from tests.dciodvfy import errors
from tests.leakscan import leaks, needles


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return fx.identity_study(tmp_path_factory.mktemp("identity"))


# -- the fixture --------------------------------------------------------------------------------------------------
def test_the_identity_study_has_its_parts_and_reads_back(study: list[Path]) -> None:
    names = [p.stem for p in study]
    assert names == ["ct_a0", "ct_a1", "ct_a2", "rtstruct", "sr", "ct_b0", "ct_b1"]
    by_name = {p.stem: pydicom.dcmread(p) for p in study}
    ct, rt, sr, later = by_name["ct_a0"], by_name["rtstruct"], by_name["sr"], by_name["ct_b0"]
    assert ct.Modality == "CT" and rt.Modality == "RTSTRUCT" and sr.Modality == "SR"
    assert {ds.PatientID for ds in by_name.values()} == {fx.PATIENT_ID}
    assert {ds.StudyInstanceUID for ds in by_name.values()} == {fx.STUDY_A, fx.STUDY_B}
    # Identity at depth: a private block, a curve, an overlay, references in nested sequences.
    block = ct.private_block(0x0009, fx.PRIVATE_CREATOR)
    assert block[0x01].value == "Quatermain^Evangeline" and block[0x10].value[0].PatientID == fx.OTHER_PATIENT_ID
    assert 0x50000022 in ct and 0x60003000 in ct
    assert ct.RequestAttributesSequence[0].StudyInstanceUID == fx.STUDY_A
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    study_ref = frame.RTReferencedStudySequence[0]
    assert study_ref.ReferencedSOPInstanceUID == fx.STUDY_A
    contour_images = study_ref.RTReferencedSeriesSequence[0].ContourImageSequence
    assert [i.ReferencedSOPInstanceUID for i in contour_images] == list(fx.CT_A)
    assert rt.ROIContourSequence[0].ContourSequence[1].ContourImageSequence[0].ReferencedSOPInstanceUID == fx.CT_A[1]
    kinds = {item.ValueType for item in sr.ContentSequence}
    assert {"TEXT", "PNAME", "DATE", "UIDREF", "IMAGE"} <= kinds
    assert later.ReferencedStudySequence[0].ReferencedSOPInstanceUID == fx.STUDY_A
    # Two studies of one patient 17 days apart.
    from datetime import date

    a, b = (date.fromisoformat(f"{d[:4]}-{d[4:6]}-{d[6:]}") for d in (ct.StudyDate, later.StudyDate))
    assert (b - a).days == fx.INTERVAL_DAYS == 17


def test_every_identifying_value_of_the_fixture_is_in_the_fixture(study: list[Path]) -> None:
    """The values list describes the files: a leak scan of the input finds every value (and every UID)."""
    values = fx.identifying_values()
    for value in values:
        assert leaks(study, [value]), f"{value!r} is listed but not in the fixture"
    assert set(fx.identifying_values(exclude={"uids"})) == set(values) - set(fx.IDENTITY.uids)
    with pytest.raises(AssertionError):
        fx.identifying_values(exclude={"nonsense"})


def test_the_fixture_passes_dciodvfy(study: list[Path]) -> None:
    for path in study:
        assert errors(path) == set(), path.name


# -- the leak scan ---------------------------------------------------------------------------------------------------
def _write(tmp_path: Path, name: str, ds: Dataset) -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _clean_ct() -> Dataset:
    ds = fx.identity_datasets()["ct_a0"]
    keep = {"SOPClassUID", "Modality", "Rows", "Columns", "PixelData", "SpecificCharacterSet", "SamplesPerPixel"}
    keep |= {"PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"}
    for element in list(ds):
        if element.keyword not in keep:
            del ds[element.tag]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
    ds.PatientName, ds.PatientID = "ANON", "X1"
    return ds


def test_the_leak_scan_finds_nothing_in_a_clean_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "clean.dcm", _clean_ct())
    assert leaks([path], fx.identifying_values(exclude={"uids"})) == []


def test_the_leak_scan_finds_a_value_planted_in_a_private_tag(tmp_path: Path) -> None:
    ds = _clean_ct()
    ds.private_block(0x0011, "SOME VENDOR", create=True).add_new(0x01, "LO", "evangeline")
    found = leaks([_write(tmp_path, "private.dcm", ds)], [fx.PATIENT_NAME])
    assert len(found) == 1 and "'Evangeline'" in found[0], found


def test_the_leak_scan_finds_a_value_planted_in_a_nested_sequence(tmp_path: Path) -> None:
    inner = Dataset()
    inner.PatientID = fx.PATIENT_ID.lower()  # case-insensitive
    outer = Dataset()
    outer.ReferencedSOPInstanceUID = fx.CT_A[0]
    outer.OtherPatientIDsSequence = Sequence([inner])
    ds = _clean_ct()
    ds.ReferencedImageSequence = Sequence([outer])
    path = _write(tmp_path, "nested.dcm", ds)
    found = leaks([path], [fx.PATIENT_ID, fx.CT_A[0]])
    assert len(found) == 2, found


@pytest.mark.parametrize(
    "text",
    ["born 1961-04-23", "DOB 23.04.1961", "on 04/23/1961", "dt 19610423101500.5+0100", "23/04/1961 am", "1961.04.23"],
)
def test_the_leak_scan_finds_a_date_in_its_text_forms(tmp_path: Path, text: str) -> None:
    ds = _clean_ct()
    ds.ImageComments = text
    assert leaks([_write(tmp_path, "date.dcm", ds)], [fx.BIRTH_DATE])


def test_the_leak_scan_reads_utf16_and_latin1_and_ignores_digits_inside_numbers(tmp_path: Path) -> None:
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("note: QUATERMAIN".encode("utf-16-le"))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Mme Gérardine".encode("latin-1"))
    utf8 = tmp_path / "utf8.txt"
    utf8.write_bytes("MME GÉRARDINE".encode())
    assert leaks([utf16], ["Quatermain"]) and leaks([latin1], ["gérardine"]) and leaks([utf8], ["Gérardine"])
    # A date's digits inside a 2.25 UID's integer are chance, not a leak; the same digits on their own are.
    inside = tmp_path / "uid.txt"
    inside.write_bytes(b"2.25.3319610423777\x002.25.19610423")
    assert leaks([inside], [fx.BIRTH_DATE]) == []
    alone = tmp_path / "alone.txt"
    alone.write_bytes(b"\x08\x00DA19610423")
    assert leaks([alone], [fx.BIRTH_DATE])


def test_needles_are_the_value_its_parts_and_date_forms() -> None:
    assert needles("Doe^Johnathan^Q") == {"Doe^Johnathan^Q", "Johnathan"}
    assert "23.04.1961" in needles("19610423") and "04/23/1961" in needles("19610423")
    assert needles("19611399") == {"19611399"}  # not a date: searched as it is
    assert needles("ABC") == set()


# -- the dciodvfy harness --------------------------------------------------------------------------------------------
def test_dciodvfy_reports_errors_on_a_broken_file_normalised(tmp_path: Path) -> None:
    good = fx.identity_datasets()["ct_a0"]
    assert errors(_write(tmp_path, "good.dcm", good)) == set()
    broken = fx.identity_datasets()["ct_a0"]
    del broken.Rows
    broken.PatientSex = "Q"
    broken.StudyDate = "2024x"
    found = errors(_write(tmp_path, "broken.dcm", broken))
    assert any("<Rows>" in line for line in found), found
    assert any("Patient's Sex" in line for line in found), found
    # The quoted values are normalised out: another bad date gives the same line.
    other = fx.identity_datasets()["ct_a0"]
    del other.Rows
    other.PatientSex = "Z"
    other.StudyDate = "1999y"
    assert errors(_write(tmp_path, "other.dcm", other)) == found


# -- dates -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20240305", -30, "20240204"),
        ("20240322", -17, "20240305"),
        ("20240301", -1, "20240229"),  # leap day
        ("20240305", 400, "20250409"),
        ("1961.04.23", -30, "19610324"),  # ACR-NEMA form, written as DA
        ("20240101-20240201", -31, "20231201-20240101"),  # range: both ends
        ("-20240201", -1, "-20240131"),
        ("20240101-", -1, "20231231-"),
        ("20240101\\20240202", -1, "20231231\\20240201"),  # several values
        ("202403", -60, "202401"),  # partial: the middle of the month moved
        ("2024", -30, "2024"),  # partial: the middle of the year moved
        ("2024", -365, "2023"),
        ("20240230", -1, ""),  # no such day
        ("not a date", -1, ""),
        ("2024-03-05", -1, ""),  # not DA
        ("00010110", -30, ""),  # out of range after the shift
        ("", -30, ""),
        ("20240305 ", -1, "20240304"),  # padding
    ],
)
def test_shift_da(value: str, days: int, expected: str) -> None:
    from dcmnode.deid.dates import shift_da

    assert shift_da(value, days) == expected


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20240305101623.250000+0100", -30, "20240204101623.250000+0100"),  # fraction and offset kept
        ("20240305101623-0500", -1, "20240304101623-0500"),
        ("20240305", -1, "20240304"),
        ("2024030510", -1, "2024030410"),
        ("202403051016", -1, "202403041016"),
        ("20240305235960", -1, "20240304235960"),  # leap second
        ("202403", -60, "202401"),
        ("2024", -400, "2023"),
        ("20240101-0500-20240102-0500", -1, "20231231-0500-20240101-0500"),  # range whose ends carry offsets
        ("20240101120000-20240102", -1, "20231231120000-20240101"),
        ("2024-2025", -365, "2023-2024"),
        ("20240305+1500", -1, ""),  # no such offset
        ("2024030525", -1, ""),  # no such hour
        ("20240305101623.1234567", -1, ""),  # 7 fraction digits
        ("garbage", -1, ""),
    ],
)
def test_shift_dt(value: str, days: int, expected: str) -> None:
    from dcmnode.deid.dates import shift_dt

    assert shift_dt(value, days) == expected


def test_two_studies_17_days_apart_stay_17_days_apart_whatever_the_offset() -> None:
    from datetime import date

    from dcmnode.deid.dates import shift_da, shift_dt

    def day(v: str) -> date:
        return date(int(v[:4]), int(v[4:6]), int(v[6:8]))

    for offset in (30, 31, 365, 366, 1000, 3650):
        a, b = shift_da(fx.STUDY_DATE, -offset), shift_da(fx.LATER_DATE, -offset)
        assert (day(b) - day(a)).days == 17 and (day(fx.STUDY_DATE) - day(a)).days == offset
        dt_a, dt_b = shift_dt(fx.ACQUISITION_DATETIME, -offset), shift_dt(fx.LATER_DATETIME, -offset)
        assert (day(dt_b) - day(dt_a)).days == 17
        assert dt_a[8:] == fx.ACQUISITION_DATETIME[8:]  # time, fraction and offset untouched


# -- Clean Descriptors -------------------------------------------------------------------------------------------------
def _doe_john() -> Dataset:
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "1234567"
    ds.PatientBirthDate = "19700102"
    ds.StudyDate = "20240305"
    return ds


def test_clean_descriptors_removes_the_name_parts_and_the_id() -> None:
    from dcmnode.deid.descriptors import clean, identifying_values

    values = identifying_values(_doe_john())
    assert {"DOE^JOHN", "DOE", "JOHN", "1234567", "19700102", "1970-01-02", "02.01.1970", "01/02/1970"} <= set(values)
    out = clean("CT for DOE JOHN 1234567", values)
    assert out == "CT for"
    for gone in ("DOE", "JOHN", "1234567"):
        assert gone not in out.upper()
    # Case-insensitive, whole words only: JOHNSON's knee stays, Doe's name goes.
    assert clean("Knee of john doe, referred by Dr Johnson", values) == "Knee of, referred by Dr Johnson"
    assert clean("Doe^John", values) == ""


@pytest.mark.parametrize("written", ["20240305", "2024-03-05", "05.03.2024", "03/05/2024", "1970-01-02", "12/31/2023"])
def test_clean_descriptors_removes_dates_in_text(written: str) -> None:
    from dcmnode.deid.descriptors import clean, identifying_values

    out = clean(f"Follow-up of {written} chest", identifying_values(_doe_john()))
    assert out == "Follow-up of chest", out


def test_clean_descriptors_keeps_what_is_not_identity() -> None:
    from dcmnode.deid.descriptors import clean, identifying_values

    values = identifying_values(_doe_john())
    for text in ("Thorax 1.25 mm B30f", "T2 FLAIR 3D", "Ratio 12.34.5678", "Doel", ""):
        assert clean(text, values) == text


def test_identifying_values_of_the_identity_fixture_clean_its_descriptions() -> None:
    from dcmnode.deid.descriptors import clean, identifying_values

    datasets = fx.identity_datasets()
    ct = datasets["ct_a0"]
    values = identifying_values(ct)
    assert all(len(v) >= 2 for v in values)
    # Nested and other person names are in it (Other Patient IDs Sequence, physicians, operators).
    assert {fx.OTHER_PATIENT_ID, "Okonkwo", "Vanterpool", "Thistlewood", "Larkspur"} <= set(values)
    texts = [fx.STUDY_DESCRIPTION, fx.SERIES_DESCRIPTION, fx.IMAGE_COMMENTS, fx.PATIENT_COMMENTS, ct.ProtocolName]
    texts += [item.TextValue for item in datasets["sr"].ContentSequence if item.ValueType == "TEXT"]
    cleaned = [clean(t, values) for t in texts]
    assert cleaned[0] == "CT chest for of" and cleaned[1] == "Axial soft tissue"
    leak_values = fx.identifying_values(exclude={"uids"})
    from tests.leakscan import needles

    for text in cleaned:
        for needle in {n for v in leak_values for n in needles(v)}:
            assert needle.lower() not in text.lower(), (needle, text)
