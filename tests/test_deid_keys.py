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
