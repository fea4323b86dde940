"""The index schema and its history (sqlite-utils migrations).

Columns named as DICOM keywords hold the attributes QIDO-RS (PS3.18 §10.6.1.2, Tables 10.6.3-3..5) and C-FIND
(PS3.4 C.6.1.1/C.6.2.1, patient and study root) match on or return. Internal columns are lower_snake.
Person names are ``COLLATE NOCASE`` so case-insensitive PN matching (PS3.4 C.2.2.2.1) stays on an index.
Empty strings, not NULL, stand for "absent" in identity columns so UNIQUE constraints hold.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

PATIENT_COLUMNS = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDs",
    "EthnicGroup",
    "PatientComments",
)
STUDY_COLUMNS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    "InstitutionName",
)
SERIES_COLUMNS = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "Laterality",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "ScheduledProcedureStepID",
    "RequestedProcedureID",
    "Manufacturer",
    "StationName",
    "OperatorsName",
)
INSTANCE_COLUMNS = (
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "ContentDate",
    "ContentTime",
    "AcquisitionNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "ImageType",
    "TransferSyntaxUID",
)
INTEGER_COLUMNS = {
    "SeriesNumber",
    "InstanceNumber",
    "AcquisitionNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
}
PN_COLUMNS = {"PatientName", "ReferringPhysicianName", "OperatorsName"}

migrations = Migrations("dcmnode")


def _columns(names: tuple[str, ...], skip: set[str]) -> str:
    parts = []
    for name in names:
        if name in skip:
            continue
        kind = "INTEGER" if name in INTEGER_COLUMNS else "TEXT"
        collate = " COLLATE NOCASE" if name in PN_COLUMNS else ""
        parts.append(f"{name} {kind}{collate}")
    return ",\n  ".join(parts)


@migrations()
def m001_initial(db: Database) -> None:
    ident = {"PatientID", "IssuerOfPatientID"}
    db.execute(f"""
CREATE TABLE patients (
  id INTEGER PRIMARY KEY,
  PatientID TEXT NOT NULL DEFAULT '',
  IssuerOfPatientID TEXT NOT NULL DEFAULT '',
  {_columns(PATIENT_COLUMNS, ident)},
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  UNIQUE (PatientID, IssuerOfPatientID)
)""")
    db.execute(f"""
CREATE TABLE studies (
  StudyInstanceUID TEXT PRIMARY KEY,
  patient_id INTEGER NOT NULL REFERENCES patients(id),
  {_columns(STUDY_COLUMNS, {"StudyInstanceUID"})},
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
)""")
    db.execute(f"""
CREATE TABLE series (
  SeriesInstanceUID TEXT PRIMARY KEY,
  StudyInstanceUID TEXT NOT NULL REFERENCES studies(StudyInstanceUID),
  {_columns(SERIES_COLUMNS, {"SeriesInstanceUID", "StudyInstanceUID"})},
  source_ae TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
)""")
    db.execute(f"""
CREATE TABLE instances (
  SOPInstanceUID TEXT PRIMARY KEY,
  SeriesInstanceUID TEXT NOT NULL REFERENCES series(SeriesInstanceUID),
  StudyInstanceUID TEXT NOT NULL REFERENCES studies(StudyInstanceUID),
  {_columns(INSTANCE_COLUMNS, {"SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"})},
  path TEXT NOT NULL,
  size INTEGER NOT NULL,
  source TEXT NOT NULL,
  source_ae TEXT NOT NULL DEFAULT '',
  source_address TEXT NOT NULL DEFAULT '',
  received_at TEXT NOT NULL
)""")
    indexes = {
        "patients": ["PatientID", "PatientName", "PatientBirthDate"],
        "studies": [
            "patient_id",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "ReferringPhysicianName",
            "updated_at",
        ],
        "series": [
            "StudyInstanceUID, Modality",
            "Modality",
            "SeriesNumber",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
            "ScheduledProcedureStepID",
            "RequestedProcedureID",
            "updated_at",
        ],
        "instances": [
            "SeriesInstanceUID, InstanceNumber",
            "StudyInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
            "received_at",
        ],
    }
    for table, columns in indexes.items():
        for cols in columns:
            name = f"ix_{table}_" + cols.replace(", ", "_")
            db.execute(f"CREATE INDEX {name} ON {table} ({cols})")


@migrations()
def m002_sr_jobs(db: Database) -> None:
    """The super-resolution job queue (``sr.jobs``): persistent, so that a restart resumes it."""
    db.execute("""
CREATE TABLE sr_jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  series TEXT NOT NULL,
  study TEXT NOT NULL,
  factor INTEGER NOT NULL,
  method TEXT NOT NULL,
  send_to TEXT,
  origin TEXT NOT NULL,
  status TEXT NOT NULL,
  progress REAL NOT NULL DEFAULT 0,
  stage TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  worker TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL,
  started_at TEXT,
  finished_at TEXT,
  heartbeat_at TEXT,
  error TEXT,
  result TEXT,
  send_status TEXT NOT NULL DEFAULT '',
  sends TEXT
)""")
    db.execute("CREATE INDEX ix_sr_jobs_status ON sr_jobs (status, id)")
    db.execute("CREATE INDEX ix_sr_jobs_series ON sr_jobs (series)")


@migrations()
def m003_render_summary(db: Database) -> None:
    """What a plain grey image renders from (``part10.pixel_header``), kept at ingest; NULL for rows indexed before
    (they are rendered from their file's header, as before)."""
    db.execute("ALTER TABLE instances ADD COLUMN render TEXT")


@migrations()
def m004_principals(db: Database) -> None:
    """Who may call the node (``core.auth``): API tokens (only a hash of each is kept) and local users (a scrypt
    hash with its salt and parameters). ``scopes`` and ``groups`` are comma-separated names."""
    db.execute("""
CREATE TABLE tokens (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL UNIQUE,
  scopes TEXT NOT NULL,
  groups TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT,
  revoked_at TEXT,
  last_used_at TEXT
)""")
    db.execute("""
CREATE TABLE users (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  password TEXT NOT NULL,
  scopes TEXT NOT NULL,
  groups TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
)""")


@migrations()
def m005_study_labels(db: Database) -> None:
    """Labels on studies (per-study access: a principal sees the studies carrying one of its groups). A label row
    goes with its study's row (ON DELETE CASCADE; ``Index.connection`` turns foreign keys on)."""
    db.execute("""
CREATE TABLE study_labels (
  study TEXT NOT NULL REFERENCES studies(StudyInstanceUID) ON DELETE CASCADE,
  label TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (study, label)
) WITHOUT ROWID""")
    db.execute("CREATE INDEX ix_study_labels_label ON study_labels (label, study)")


@migrations()
def m006_sessions(db: Database) -> None:
    """The viewer's sign-in sessions (``core.auth``): only a hash of each session id is kept. A session goes with
    its user's row (ON DELETE CASCADE); ``user_stamp`` is a digest of the user's password hash when it was opened,
    so a changed password ends the sessions opened before."""
    db.execute("""
CREATE TABLE sessions (
  hash TEXT PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  user_stamp TEXT NOT NULL,
  created_at TEXT NOT NULL,
  expires_at TEXT NOT NULL
) WITHOUT ROWID""")
    db.execute("CREATE INDEX ix_sessions_user ON sessions (user_id)")
