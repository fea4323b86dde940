"""The de-identification engine (deid/engine.py) against PS3.15 Table E.1-1 and the identity-rich fixture."""

from __future__ import annotations

import copy
import re
from datetime import date
from pathlib import Path

import deid_data
import pydicom
import pydicom.multival
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

import dcmnode
from dcmnode.deid import pixels, table
from dcmnode.deid.engine import SAFE_UIDS, Deidentifier, Outcome, Profile, method_codes
from dcmnode.deid.keys import ProjectKey
from dcmnode.deid.options import Option
from dcmnode.errors import DeidentificationRefused

from . import dciodvfy, leakscan
from .deid_fixtures import CALIBRATION_DATE, INTERVAL_DAYS, STUDY_A, STUDY_B, identifying_values, identity_datasets

KEY = ProjectKey(b"\x01" * 32)
OTHER_KEY = ProjectKey(b"\x02" * 32)
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TEXT = "Scan of Quatermain"
SAFE_CREATOR, SAFE_ELEMENT = "GEMS_SERS_01", 0x00251007  # Table E.3.10-1: Images in Series
CURVE_TAGS = (0x50000005, 0x50003000)


def _apply(ds: Dataset, *options: Option, key: ProjectKey = KEY) -> Dataset:
    return Deidentifier(key, Profile(options=frozenset(options))).apply(ds).dataset


# -- the table -----------------------------------------------------------------------------------------------------
def test_table_pins_edition_rows_and_action_codes() -> None:
    t = table.load()
    assert t.edition == "2024b"
    assert len(t.rows) == 621
    assert {row.basic for row in t.rows} == {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert {action for row in t.rows for action in row.options.values()} == {"K", "C"}
    assert "7f4749d" in t.provenance
    counts = {option: sum(option in row.options for row in t.rows) for option in Option}
    assert counts[Option.RETAIN_LONGITUDINAL_FULL_DATES] == counts[Option.RETAIN_LONGITUDINAL_MODIFIED_DATES] == 165
    assert counts[Option.CLEAN_DESCRIPTORS] == 125 and counts[Option.RETAIN_UIDS] == 59
    assert counts[Option.CLEAN_PIXEL_DATA] == 0
    document = (Path(table.__file__).parent / "e1_1.json").read_text(encoding="utf-8")
    assert "Innolitics" in document and "Permission is hereby granted" in document
    assert table.safe_private().is_safe(SAFE_CREATOR, 0x0025, 0x1007)


# -- for each option alone, exactly its column changes ---------------------------------------------------------------
def _value(vr: str, tag: int, cleaned: bool) -> object:
    """A value per VR. Text that some option cleans names the patient ("Quatermain", from Patient's Name); other
    text is unique to its attribute, so that the patient's identifying values never cover a whole cleaned text."""
    if vr == "SQ":
        item = Dataset()  # an attribute nothing lists: what changes is its sequence's own action
        item.ContrastBolusRoute = TEXT  # emptied inside a replaced sequence, cleaned inside a kept or cleaned one
        return Sequence([item])
    values: dict[str, object] = {"DA": "20240305", "DT": "20240305101623", "TM": "101512", "UI": f"1.2.3.{tag}"}
    values |= {"PN": "Quatermain^Evangeline", "AS": "045Y", "AE": "CT QUATERMAIN", "CS": "QUATERMAIN"}
    values |= {"SH": "Quatermain scan", "IS": "7", "DS": "7.5", "AT": 0x00100010, "UR": "http://quatermain.example"}
    values |= {vr: 7 for vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV")}
    values |= {vr: b"\x01\x02" for vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN")}
    if vr in ("LO", "LT", "SH", "ST", "UC", "UT") and not cleaned:
        return f"V{tag:08X}"
    return values.get(vr, TEXT)


def _every_attribute() -> Dataset:
    """A data set holding every attribute of the table pydicom's dictionary knows (a curve group, an overlay's two
    listed elements, a safe private element), each with a value its action can visibly change."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.BurnedInAnnotation = "NO"
    ds.PatientID = "QX7734021"
    ds.PatientName = "Quatermain^Evangeline"
    tags = [*table.load().exact, *CURVE_TAGS, 0x60003000, 0x60004000]
    for tag in tags:
        if tag >> 16 in (0x0000, 0x0002, 0xFFFC) or tag in ds:
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        row = table.load().rule(tag)
        cleaned = row is not None and "C" in row.options.values()
        ds.add(DataElement(tag, vr, _value(vr, tag, cleaned)))
    ds.add(DataElement(0x00250010, "LO", SAFE_CREATOR))
    ds.add(DataElement(SAFE_ELEMENT, "SL", 12))
    return ds


def _column(option: Option, ds: Dataset) -> set[int]:
    t = table.load()
    rows = {tag for tag, row in t.exact.items() if option in row.options}
    if option is Option.CLEAN_GRAPHICS:
        rows |= {*CURVE_TAGS, 0x60003000, 0x60004000}
    if option is Option.RETAIN_SAFE_PRIVATE:
        rows |= {0x00250010, SAFE_ELEMENT}
    return rows & {int(elem.tag) for elem in ds}


@pytest.mark.parametrize("option", [o for o in Option if o is not Option.CLEAN_PIXEL_DATA], ids=lambda o: o.value)
def test_each_option_changes_exactly_its_column(option: Option) -> None:
    ds = _every_attribute()
    basic, optioned = _apply(ds), _apply(ds, option)
    ignore = {0x00120063, 0x00120064, 0x00280303}  # the markers name the option (tested below)
    changed = {int(e.tag) for e in ds if int(e.tag) not in ignore and basic.get(e.tag) != optioned.get(e.tag)}
    assert changed == _column(option, ds)


def test_the_test_data_set_holds_most_of_the_table() -> None:
    assert len(_every_attribute()) > 560


# -- the identity-rich study -----------------------------------------------------------------------------------------
OPTION_SETS: list[tuple[Option, ...]] = [(), *[(o,) for o in Option if o is not Option.CLEAN_PIXEL_DATA]]
OPTION_SETS.append(
    tuple(o for o in Option if o not in (Option.CLEAN_PIXEL_DATA, Option.RETAIN_LONGITUDINAL_FULL_DATES))
)


def _effective(row: table.Row, options: tuple[Option, ...]) -> str:
    chosen = {row.options[o] for o in options if o in row.options}
    return "K" if "K" in chosen else "C" if "C" in chosen else row.basic


def _outputs(options: tuple[Option, ...], key: ProjectKey = KEY) -> dict[str, Dataset]:
    return {name: _apply(ds, *options, key=key) for name, ds in identity_datasets().items()}


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(x.value for x in o) or "basic")
def test_no_removed_attribute_at_any_depth(options: tuple[Option, ...]) -> None:
    t = table.load()
    for name, out in _outputs(options).items():
        for elem in out.iterall():
            row = t.rule(elem.tag)
            if elem.tag.is_private:
                assert Option.RETAIN_SAFE_PRIVATE in options, (name, elem.tag)
                continue
            assert row is None or _effective(row, options) != "X", (name, elem.tag, row and row.name)


def test_file_meta_follows_the_new_sop_instance_uid(tmp_path: Path) -> None:
    for name, out in _outputs(()).items():
        path = tmp_path / f"{name}.dcm"
        out.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        assert back.file_meta.MediaStorageSOPClassUID == back.SOPClassUID
        assert "SourceApplicationEntityTitle" not in back.file_meta


def _uids(datasets: dict[str, Dataset]) -> set[str]:
    found = set()
    for ds in datasets.values():
        for elem in ds.iterall():
            if elem.VR == "UI" and elem.value:
                values = elem.value if isinstance(elem.value, list | pydicom.multival.MultiValue) else [elem.value]
                found |= {str(v) for v in values if not str(v).startswith("1.2.840.10008.")}
    return found


def test_keyed_uids_same_key_identical_other_key_disjoint() -> None:
    first, again, other = _uids(_outputs(())), _uids(_outputs(())), _uids(_outputs((), key=OTHER_KEY))
    assert first == again
    assert not first & other
    originals = _uids(identity_datasets())
    assert not first & originals
    for uid in first:
        assert len(uid) <= 64 and UID_RE.match(uid) and uid.startswith("2.25."), uid


def test_every_reference_resolves_inside_the_output() -> None:
    outputs = _outputs(())
    instances = {str(ds.SOPInstanceUID) for ds in outputs.values()}
    studies = {str(ds.StudyInstanceUID) for ds in outputs.values()}
    series = {str(ds.SeriesInstanceUID) for ds in outputs.values()}
    frames = {str(ds.FrameOfReferenceUID) for ds in outputs.values() if "FrameOfReferenceUID" in ds}
    kinds = {
        "ReferencedSOPInstanceUID": instances | studies,  # RT's Referenced Study Sequence names the study
        "SeriesInstanceUID": series,
        "StudyInstanceUID": studies,
        "FrameOfReferenceUID": frames,
        "ReferencedFrameOfReferenceUID": frames,
        "UID": studies | series | instances,  # the SR's UIDREF
    }
    checked = 0
    for ds in outputs.values():
        for elem in ds.iterall():
            if elem.keyword in kinds and elem.value:
                assert str(elem.value) in kinds[elem.keyword], (elem.keyword, elem.value)
                checked += 1
    assert checked > 30


def test_two_studies_seventeen_days_apart_stay_seventeen_days_apart() -> None:
    outputs = _outputs((Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,))
    by_study = {str(identity_datasets()[name].StudyInstanceUID): ds for name, ds in outputs.items()}
    a, b = by_study[STUDY_A], by_study[STUDY_B]

    def day(value: str) -> date:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))

    assert (day(b.StudyDate) - day(a.StudyDate)).days == INTERVAL_DAYS
    assert a.StudyDate != identity_datasets()["ct_a0"].StudyDate
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert _apply(identity_datasets()["ct_a0"]).LongitudinalTemporalInformationModified == "REMOVED"
    full = _apply(identity_datasets()["ct_a0"], Option.RETAIN_LONGITUDINAL_FULL_DATES)
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"


@pytest.mark.parametrize(
    ("options", "codes", "method"),
    [
        ((), ["113100"], []),
        ((Option.RETAIN_UIDS,), ["113100", "113110"], ["+ retain-uids"]),
        (
            (Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.CLEAN_DESCRIPTORS),
            ["113100", "113105", "113107"],
            ["+ clean-descriptors", "+ retain-longitudinal-modified-dates"],
        ),
    ],
)
def test_markers_exact(options: tuple[Option, ...], codes: list[str], method: list[str]) -> None:
    out = _apply(identity_datasets()["ct_a0"], *options)
    assert out.PatientIdentityRemoved == "YES"
    items = out.DeidentificationMethodCodeSequence
    assert [item.CodeValue for item in items] == codes
    assert {item.CodingSchemeDesignator for item in items} == {"DCM"}
    assert [(item.CodeValue, item.CodeMeaning) for item in items] == method_codes(frozenset(options))
    assert items[0].CodeMeaning == "Basic Application Confidentiality Profile"
    expected = [f"dcmnode {dcmnode.__version__} PS3.15 2024b Basic Profile", *method]
    found = out.DeidentificationMethod
    assert ([found] if isinstance(found, str) else list(found)) == expected
    assert all(len(value) <= 64 for value in expected)


def test_replacement_identity_and_the_input_untouched() -> None:
    ds = identity_datasets()["ct_a0"]
    before = copy.deepcopy(ds)
    profile = Profile(patient_id="TRIAL-0042", patient_name="Subject^42")
    out = Deidentifier(KEY, profile).apply(ds).dataset
    assert (out.PatientID, str(out.PatientName)) == ("TRIAL-0042", "Subject^42")
    assert ds == before and ds.file_meta == before.file_meta
    derived = _apply(ds)
    assert derived.PatientID == KEY.pseudonym(str(ds.PatientID)) and derived.PatientID != ds.PatientID


def test_overlays_go_as_a_group_or_stay_with_clean_graphics() -> None:
    ds = identity_datasets()["ct_a0"]
    assert any(e.tag.group == 0x6000 for e in ds)
    assert not any(e.tag.group in (0x5000, 0x6000) for e in _apply(ds))
    kept = _apply(ds, Option.CLEAN_GRAPHICS)
    assert (0x6000, 0x3000) in kept and (0x6000, 0x0010) in kept and (0x5000, 0x3000) in kept


def test_private_attributes_go_unless_safe_and_retained() -> None:
    ds = _every_attribute()
    ds.add(DataElement(0x00290010, "LO", "DCMNODE IDENTITY TEST"))
    ds.add(DataElement(0x00291001, "LO", "Quatermain"))
    assert not any(e.tag.is_private for e in _apply(ds))
    kept = _apply(ds, Option.RETAIN_SAFE_PRIVATE)
    assert kept[SAFE_ELEMENT].value == 12 and kept[0x00250010].value == SAFE_CREATOR
    assert 0x00291001 not in kept and 0x00290010 not in kept


# -- leak scan and validity: the fixture and deid-data's real files --------------------------------------------------
RETAINED_KINDS: dict[Option, set[str]] = {
    Option.RETAIN_UIDS: {"uids"},
    Option.RETAIN_LONGITUDINAL_FULL_DATES: {"dates", "times"},
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: {"times"},
    Option.RETAIN_DEVICE_IDENTITY: {"device"},
    Option.RETAIN_INSTITUTION_IDENTITY: {"institution"},
}


def _write(outputs: dict[str, Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ds in outputs.items():
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _leaks(paths: list[Path], values: list[str]) -> list[str]:
    return leakscan.leaks(paths, values)


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(x.value for x in o) or "basic")
def test_leak_scan_of_the_identity_study(options: tuple[Option, ...], tmp_path: Path) -> None:
    retained = set().union(*(RETAINED_KINDS.get(o, set()) for o in options))
    values = identifying_values(exclude=retained)
    if Option.RETAIN_DEVICE_IDENTITY in options:
        values = [v for v in values if v != CALIBRATION_DATE]  # Date of Last Calibration: K in that column
    paths = _write(_outputs(options), tmp_path / "out")
    assert _leaks(paths, values) == []


def test_dciodvfy_finds_no_new_error_in_the_identity_study(tmp_path: Path) -> None:
    dciodvfy.require()
    sources = _write(identity_datasets(), tmp_path / "in")
    for options in OPTION_SETS:
        outputs = _write(_outputs(options), tmp_path / "+".join(o.value for o in options))
        for source, output in zip(sources, outputs, strict=True):
            assert dciodvfy.errors(output) - dciodvfy.errors(source) == set(), (options, output.name)


DEID_DATA = Path(deid_data.__file__).parent / "data"
REAL_FILES = sorted(
    [*DEID_DATA.glob("dicom-cookies/*.dcm"), *DEID_DATA.glob("humans/*.dcm"), DEID_DATA / "animals/cat.dcm"]
)


def _real_values(ds: Dataset) -> list[str]:
    from dcmnode.deid import descriptors

    values = [v for v in descriptors.identifying_values(ds) if len(v) >= leakscan.MIN_CHARS]
    uids = {
        str(e.value) for e in ds.iterall() if e.VR == "UI" and isinstance(e.value, str) and e.keyword not in SAFE_UIDS
    }
    return values + sorted(u for u in uids if not u.startswith("1.2.840.10008."))


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_files_leak_nothing_and_stay_valid(path: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(path)
    # Secondary captures without Burned In Annotation may carry text: they need Clean Pixel Data (OCR).
    options = frozenset({Option.CLEAN_PIXEL_DATA}) if pixels.may_carry_burned_in_text(ds) else frozenset()
    out = _write({"out": Deidentifier(KEY, Profile(options=options)).apply(ds).dataset}, tmp_path)[0]
    assert _leaks([out], _real_values(ds)) == []
    assert pydicom.dcmread(out).PatientIdentityRemoved == "YES"
    if dciodvfy.available():
        assert dciodvfy.errors(out) - dciodvfy.errors(path) == set()


@pytest.mark.parametrize("path", sorted(DEID_DATA.glob("ultrasounds/*.dcm")), ids=lambda p: p.name)
def test_ultrasound_without_clean_pixel_data_is_refused(path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=False)
    with pytest.raises(DeidentificationRefused, match="burned-in"):
        Deidentifier(KEY, Profile()).apply(ds)


def test_outcome_type() -> None:
    outcome = Deidentifier(KEY, Profile()).apply(identity_datasets()["ct_a0"])
    assert isinstance(outcome, Outcome) and outcome.masked == []
    assert isinstance(outcome.dataset.file_meta, FileMetaDataset)
    assert Deidentifier(KEY, Profile()).edition == "2024b"


def test_unknown_tags_go_safe_text_is_cleaned_and_retain_uids_keeps_every_uid() -> None:
    ds = identity_datasets()["ct_a0"]
    family = str(ds.PatientName).split("^")[0]
    ds.add_new(0x00100099, "CS", family.upper())  # public tags no dictionary knows: not known safe (E.1.1)
    ds.add_new(0x00180099, "OB", f"{family} {ds.PatientID}".encode())
    ds.WindowCenterWidthExplanation = f"Dr {family} window"
    ds.TableFrameOfReferenceUID = ds.FrameOfReferenceUID  # an unlisted UID pointing at a listed one
    out = Deidentifier(KEY, Profile()).apply(ds).dataset
    assert 0x00100099 not in out and 0x00180099 not in out
    assert family.lower() not in str(out.WindowCenterWidthExplanation).lower()
    assert "window" in str(out.WindowCenterWidthExplanation)
    kept = Deidentifier(KEY, Profile(options=frozenset({Option.RETAIN_UIDS}))).apply(ds).dataset
    assert kept.FrameOfReferenceUID == ds.FrameOfReferenceUID == kept.TableFrameOfReferenceUID
