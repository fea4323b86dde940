"""The store and the one ingest service: real files in, files + index rows out, nothing half-written."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pydicom
import pytest

from dcmnode.core.ingest import Ingest
from dcmnode.core.parse import Expected
from dcmnode.errors import Conflict, DuplicateInstance, InvalidInstance, SopClassMismatch
from dcmnode.model import Outcome, Source, SourceKind
from dcmnode.store import Store
from tests.conftest import stored_files, temp_files
from tests.factories import (
    TRANSFER_SYNTAX_FILES,
    bundled,
    ct_series,
    dataset_bytes,
    deid_files,
    part10,
    sop_class_mismatch,
)

SRC = Source(SourceKind.IMPORT)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def ingest_for(store: Store, policy: str = "keep") -> Ingest:
    return Ingest(store, policy)


def rows(store: Store, sql: str) -> list[sqlite3.Row]:
    return list(store.index.connection().execute(sql))


def test_real_files_are_stored_as_received_and_indexed(store: Store) -> None:
    ingest = ingest_for(store)
    sources = [bundled(name) for name, _ in TRANSFER_SYNTAX_FILES] + deid_files()
    outcomes = [ingest.store_path(p, SRC).outcome for p in sources]
    assert outcomes.count(Outcome.STORED) >= 10
    for path in sources:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        row = store.index.instance(sop)
        assert row is not None
        stored = store.files.absolute(row["path"])
        assert stored.parts[-3:] == (row["StudyInstanceUID"], row["SeriesInstanceUID"], f"{sop}.dcm")
        if store.files.absolute(row["path"]).read_bytes() == path.read_bytes():
            assert row["TransferSyntaxUID"] == dataset_bytes(path)[0]
    # Every file that was stored (not a duplicate of an earlier one) is byte-identical to its source.
    originals = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in reversed(sources)}
    for sop, path in originals.items():
        assert store.files.absolute(store.index.instance(sop)["path"]).read_bytes() == path.read_bytes()
    assert temp_files(store.root) == []


def test_index_holds_the_query_attributes_at_every_level(store: Store) -> None:
    series = ct_series(3, patient_id="PID-7", patient_name="Doe^Jane")
    ingest = ingest_for(store)
    for ds in series:
        ingest.store_bytes(part10(ds), Source(SourceKind.DIMSE, ae_title="CT1"))
    patient = rows(store, "SELECT * FROM patients")
    assert [(p["PatientID"], p["PatientName"], p["PatientBirthDate"]) for p in patient] == [
        ("PID-7", "Doe^Jane", "19700101")
    ]
    study = rows(store, "SELECT * FROM studies")[0]
    assert (study["StudyDate"], study["AccessionNumber"], study["ReferringPhysicianName"]) == (
        "20240305",
        "ACCID-7",
        "Ref^Doctor",
    )
    se = rows(store, "SELECT * FROM series")[0]
    assert (se["Modality"], se["SeriesNumber"], se["source_ae"]) == ("CT", 1, "CT1")
    inst = rows(store, "SELECT * FROM instances ORDER BY InstanceNumber")
    assert [i["InstanceNumber"] for i in inst] == [1, 2, 3]
    assert {i["source"] for i in inst} == {"dimse"} and all(i["size"] > 8192 for i in inst)
    assert store.index.counts() == {
        "patients": 1,
        "studies": 1,
        "series": 1,
        "instances": 3,
        "bytes": sum(i["size"] for i in inst),
    }
    # person names match case-insensitively on the index (PS3.4 C.2.2.2.1)
    assert rows(store, "SELECT PatientID FROM patients WHERE PatientName = 'DOE^JANE'")[0][0] == "PID-7"


def test_index_is_wal_with_indexes_on_matching_keys(store: Store) -> None:
    conn = store.index.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexed = set()
    for table in ("patients", "studies", "series", "instances"):
        for ix in conn.execute(f"PRAGMA index_list({table})"):
            indexed |= {(table, c[2]) for c in conn.execute(f"PRAGMA index_info({ix[1]})")}
    required = {
        ("patients", "PatientID"),
        ("patients", "PatientName"),
        ("studies", "StudyInstanceUID"),
        ("studies", "StudyDate"),
        ("studies", "StudyTime"),
        ("studies", "AccessionNumber"),
        ("studies", "StudyID"),
        ("studies", "ReferringPhysicianName"),
        ("series", "Modality"),
        ("series", "SeriesInstanceUID"),
        ("series", "SeriesNumber"),
        ("series", "StudyInstanceUID"),
        ("series", "PerformedProcedureStepStartDate"),
        ("series", "ScheduledProcedureStepID"),
        ("series", "RequestedProcedureID"),
        ("instances", "SOPInstanceUID"),
        ("instances", "SOPClassUID"),
        ("instances", "InstanceNumber"),
        ("instances", "SeriesInstanceUID"),
    }
    assert required <= indexed


def _without(ds: pydicom.Dataset, keyword: str) -> bytes:
    del ds[keyword]
    return part10(ds)


def _with(ds: pydicom.Dataset, keyword: str, value: str) -> bytes:
    setattr(ds, keyword, value)
    return part10(ds)


@pytest.mark.parametrize(
    ("make", "error", "reason"),
    [
        (lambda: b"this is not DICOM at all" * 10, InvalidInstance, "not a DICOM Part 10"),
        (lambda: bundled("MR_truncated.dcm").read_bytes(), InvalidInstance, "truncated"),
        (lambda: part10(ct_series(1)[0])[:-1000], InvalidInstance, "truncated"),
        (lambda: _without(ct_series(1)[0], "StudyInstanceUID"), InvalidInstance, "StudyInstanceUID is missing"),
        (lambda: _without(ct_series(1)[0], "SOPClassUID"), InvalidInstance, "SOPClassUID is missing"),
        (lambda: _with(ct_series(1)[0], "SeriesInstanceUID", "../../../etc"), InvalidInstance, "not a valid UID"),
        (lambda: _with(ct_series(1)[0], "SOPInstanceUID", "1.2/../../x"), InvalidInstance, "not a valid UID"),
        (sop_class_mismatch, SopClassMismatch, "file meta"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(store: Store, make, error, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=reason):
        ingest_for(store).store_bytes(make(), SRC)
    assert stored_files(store.root) == [] and temp_files(store.root) == []
    assert store.index.counts()["instances"] == 0
    assert not list(store.root.rglob("etc"))


def test_transport_expectations_are_checked(store: Store) -> None:
    ds = ct_series(1)[0]
    ingest = ingest_for(store)
    with pytest.raises(SopClassMismatch, match="does not match the request"):
        ingest.store_bytes(part10(ds), SRC, Expected(sop_class="1.2.840.10008.5.1.4.1.1.4"))
    with pytest.raises(Conflict, match="differs from the study in the request URL"):
        ingest.store_bytes(part10(ds), SRC, Expected(study="1.2.3"))
    assert store.index.counts()["instances"] == 0 and stored_files(store.root) == []


@pytest.mark.parametrize("policy", ["keep", "replace", "reject"])
def test_duplicate_policy(store: Store, policy: str) -> None:
    ingest = ingest_for(store, policy)
    ds = ct_series(1)[0]
    first = part10(ds)
    ds.SeriesDescription = "Second copy"
    second = part10(ds)
    assert ingest.store_bytes(first, SRC).outcome == Outcome.STORED
    path = stored_files(store.root)[0]
    if policy == "reject":
        with pytest.raises(DuplicateInstance) as info:
            ingest.store_bytes(second, SRC)
        assert info.value.status == 0x0111
    else:
        expected = Outcome.DUPLICATE if policy == "keep" else Outcome.REPLACED
        assert ingest.store_bytes(second, SRC).outcome == expected
    assert stored_files(store.root) == [path] and temp_files(store.root) == []
    assert path.read_bytes() == (second if policy == "replace" else first)
    assert store.index.counts()["instances"] == 1


def test_replace_moving_an_instance_removes_the_old_file_and_empty_rows(store: Store) -> None:
    ingest = ingest_for(store, "replace")
    ds = ct_series(1)[0]
    ingest.store_bytes(part10(ds), SRC)
    old = stored_files(store.root)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ingest.store_bytes(part10(ds), SRC)
    new = stored_files(store.root)
    assert len(new) == 1 and new != old
    assert store.index.counts()["series"] == 1


def test_a_failing_index_write_leaves_no_file(store: Store) -> None:
    ingest = ingest_for(store)
    a = ct_series(1)[0]
    ingest.store_bytes(part10(a), SRC)
    b = ct_series(1)[0]
    b.SeriesInstanceUID = a.SeriesInstanceUID  # same series UID, another study: the index refuses it
    with pytest.raises(Conflict, match="already belongs to study"):
        ingest.store_bytes(part10(b), SRC)
    assert len(stored_files(store.root)) == 1 and temp_files(store.root) == []
    assert store.index.instance(str(b.SOPInstanceUID)) is None


def test_deflated_truncation_is_detected(store: Store) -> None:
    raw = bundled("image_dfl.dcm").read_bytes()
    with pytest.raises(InvalidInstance):
        ingest_for(store).store_bytes(raw[: len(raw) - 200], SRC)
    assert ingest_for(store).store_bytes(raw, SRC).outcome == Outcome.STORED
    assert pydicom.dcmread(io.BytesIO(stored_files(store.root)[0].read_bytes())).Rows > 0
