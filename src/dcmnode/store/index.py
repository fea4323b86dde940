"""The SQLite index: one connection per thread, one writer at a time.

WAL mode lets readers run beside the writer. In-process writers take ``_write_lock`` and ``BEGIN IMMEDIATE``;
another process (``dcmnode import`` beside a running node) waits on ``busy_timeout``. The index can always be
rebuilt from the files (``dcmnode reindex``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from dcmnode.errors import Conflict
from dcmnode.model import Level
from dcmnode.store.schema import PATIENT_COLUMNS, migrations


@dataclass(slots=True)
class InstanceRecord:
    """Column values for one instance at each level (keys are schema column names)."""

    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeletedInstance:
    """One instance ``delete_entity`` removed: its UIDs, its file (relative to the data folder), its patient."""

    study: str
    series: str
    sop: str
    path: str
    patient_id: str  # Patient ID (0010,0020), for the audit record; never the patient's name


_CREATED = {Level.STUDY: ("studies", "StudyInstanceUID"), Level.SERIES: ("series", "SeriesInstanceUID")}


# The patient, study and series of an instance are upserted for every instance, and most instances change nothing
# in them: an UPDATE that sets every column (COALESCE(new, old)) would rewrite the row and every index over its
# columns (SQLite updates an index whose columns the SET names, changed or not): ~25 pages of WAL for each
# instance. So the upsert updates only when a value changes (the WHERE of its DO UPDATE), and otherwise a second
# statement sets updated_at alone (the series' is what metadata and SR jobs look at: series_changed).


def _changes(cols: tuple[str, ...], fixed: tuple[str, ...]) -> tuple[str, str]:
    """(the SET list, the WHERE: some value would change) of an upsert over ``cols`` (``fixed`` never updated)."""
    updated = [c for c in cols if c not in fixed]
    sets = ", ".join(f"{c} = COALESCE(excluded.{c}, {c})" for c in updated)
    where = " OR ".join(f"(excluded.{c} IS NOT NULL AND excluded.{c} IS NOT {c})" for c in updated) or "0"
    return sets, where


@functools.lru_cache(maxsize=64)
def _patient_upsert(cols: tuple[str, ...]) -> str:
    """The patient upsert for these columns (made once: ingest runs it for every instance). It returns the row's
    id only when it inserted or changed the row (else ``_TOUCH_PATIENT``)."""
    sets, where = _changes(cols, ("PatientID", "IssuerOfPatientID"))
    return (
        f"INSERT INTO patients ({', '.join(cols)}, created_at, updated_at) "
        f"VALUES ({', '.join('?' * len(cols))}, ?, ?) "
        f"ON CONFLICT (PatientID, IssuerOfPatientID) DO UPDATE SET {sets}, updated_at = excluded.updated_at "
        f"WHERE {where} RETURNING id"
    )


_TOUCH_PATIENT = "UPDATE patients SET updated_at = ? WHERE PatientID = ? AND IssuerOfPatientID = ? RETURNING id"


@functools.lru_cache(maxsize=64)
def _upsert_sql(table: str, pk: str, cols: tuple[str, ...]) -> tuple[str, str]:
    """A study or series upsert for these columns (made once), and the statement that only sets its updated_at
    (run when the upsert changed nothing)."""
    sets, where = _changes(cols, (pk, "source_ae"))
    return (
        f"INSERT INTO {table} ({', '.join(cols)}, created_at, updated_at) "
        f"VALUES ({', '.join('?' * len(cols))}, ?, ?) "
        f"ON CONFLICT ({pk}) DO UPDATE SET {sets}, updated_at = excluded.updated_at WHERE {where}",
        f"UPDATE {table} SET updated_at = ? WHERE {pk} = ?",
    )


@functools.lru_cache(maxsize=64)
def _instance_insert(cols: tuple[str, ...]) -> str:
    return f"INSERT OR REPLACE INTO instances ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Index:
    def __init__(self, path: Path, busy_timeout_ms: int = 30000, durable: bool = True) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self.durable = durable  # store.fsync: a COMMIT survives power loss, not only the process
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._lock_fd = -1

    # -- connections ---------------------------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # https://www.sqlite.org/pragma.html#pragma_synchronous: in WAL mode NORMAL is consistent and survives
            # an application crash, but "a transaction committed in WAL mode with synchronous=NORMAL might roll
            # back following a power loss or system crash"; FULL syncs the WAL at every COMMIT, which is what an
            # acknowledged C-STORE / STOW promises with store.fsync on. The group commit (core.group_commit)
            # shares that sync between the instances that wait at the same moment.
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection (and the writer lock file)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            migrations.apply(Database(self.connection()))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """A thread lock orders this process's writers; an flock on ``index.sqlite.lock`` orders processes (the
        DIMSE processes, ``dcmnode import``), waking the next writer at once where SQLite's busy handler would
        sleep and poll."""
        with self._write_lock:
            if self._lock_fd < 0:
                self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def write(self, then: Callable[[], None] | None = None) -> Iterator[sqlite3.Connection]:
        """The only way to write: one writer at a time (threads and processes), one transaction. ``then`` runs
        after COMMIT while the writer lock is still held (a delete unlinks its files there, so that no writer can
        store the same instance again between the COMMIT and the unlink)."""
        conn = self.connection()
        with self._exclusive():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if then is not None:
                then()

    @contextlib.contextmanager
    def savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Inside ``write()``: a part of the transaction that fails alone. An exception rolls back what the block
        did (and re-raises); the rest of the transaction goes on (the group commit: one instance of a batch)."""
        conn.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO part")
            conn.execute("RELEASE part")
            raise
        conn.execute("RELEASE part")

    # -- instances -----------------------------------------------------------------------------------------
    def instance(self, sop_uid: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
        row: sqlite3.Row | None = (
            (conn or self.connection())
            .execute("SELECT * FROM instances WHERE SOPInstanceUID = ?", (sop_uid,))
            .fetchone()
        )
        return row

    def upsert_instance(self, conn: sqlite3.Connection, record: InstanceRecord) -> None:
        """Insert or update the patient, study, series and instance rows of one instance (inside ``write()``)."""
        stamp = now()
        patient_id = self._upsert_patient(conn, record.patient, stamp)
        study = {**record.study, "patient_id": patient_id}
        self._upsert(conn, "studies", "StudyInstanceUID", study, stamp)
        series_uid = record.series["SeriesInstanceUID"]
        owner = conn.execute(
            "SELECT StudyInstanceUID FROM series WHERE SeriesInstanceUID = ?", (series_uid,)
        ).fetchone()
        if owner is not None and owner[0] != record.series["StudyInstanceUID"]:
            raise Conflict(f"series {series_uid} already belongs to study {owner[0]}")
        self._upsert(conn, "series", "SeriesInstanceUID", record.series, stamp)
        conn.execute(_instance_insert(tuple(record.instance)), list(record.instance.values()))

    def _upsert_patient(self, conn: sqlite3.Connection, values: Mapping[str, Any], stamp: str) -> int:
        cols = tuple(c for c in PATIENT_COLUMNS if c in values)
        row = conn.execute(_patient_upsert(cols), [values[c] for c in cols] + [stamp, stamp]).fetchone()
        if row is None:  # stored already, nothing changed: only its updated_at
            row = conn.execute(_TOUCH_PATIENT, (stamp, values["PatientID"], values["IssuerOfPatientID"])).fetchone()
        return int(row[0])

    def _upsert(self, conn: sqlite3.Connection, table: str, pk: str, values: Mapping[str, Any], stamp: str) -> None:
        upsert, touch = _upsert_sql(table, pk, tuple(values))
        if conn.execute(upsert, [*values.values(), stamp, stamp]).rowcount == 0:  # stored, nothing changed
            conn.execute(touch, (stamp, values[pk]))

    def delete_instance(self, conn: sqlite3.Connection, sop_uid: str) -> None:
        """Remove an instance row and any series, study and patient rows it leaves empty (inside ``write()``).

        Lock order: the one write lock (``write()``: ``BEGIN IMMEDIATE`` holds the whole SQLite database) comes
        first, so an insert and a delete never wait on each other's rows; the hierarchy is read top-down (the
        study's patient before anything is removed) and removed bottom-up, as the foreign keys require. A backend
        with row locks takes them in the insert's order, patient, study, series, instance (the PostgreSQL issue).
        """
        row = self.instance(sop_uid, conn)
        if row is None:
            return
        study, series = row["StudyInstanceUID"], row["SeriesInstanceUID"]
        owner = conn.execute("SELECT patient_id FROM studies WHERE StudyInstanceUID = ?", (study,)).fetchone()
        conn.execute("DELETE FROM instances WHERE SOPInstanceUID = ?", (sop_uid,))
        conn.execute(
            "DELETE FROM series WHERE SeriesInstanceUID = ? AND NOT EXISTS "
            "(SELECT 1 FROM instances WHERE SeriesInstanceUID = ?)",
            (series, series),
        )
        gone = conn.execute(
            "DELETE FROM studies WHERE StudyInstanceUID = ? AND NOT EXISTS "
            "(SELECT 1 FROM series WHERE StudyInstanceUID = ?) RETURNING patient_id",
            (study, study),
        ).fetchone()
        if gone is not None and owner is not None:
            conn.execute(
                "DELETE FROM patients WHERE id = ? AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_id = ?)",
                (owner[0], owner[0]),
            )

    def delete_entity(
        self, conn: sqlite3.Connection, study: str, series: str | None = None, sop: str | None = None
    ) -> list[DeletedInstance]:
        """Remove a study, a series of it or an instance of that series (inside ``write()``): its instance rows in
        one statement, then the series, study and patient rows left empty. Returns what was removed (nothing when
        nothing matches: a series named under another study matches nothing).

        Same lock order as ``delete_instance``: the one write lock first, the hierarchy read before anything is
        removed, rows removed bottom-up."""
        where, params = ["i.StudyInstanceUID = ?"], [study]
        if series is not None:
            where.append("i.SeriesInstanceUID = ?")
            params.append(series)
        if sop is not None:
            where.append("i.SOPInstanceUID = ?")
            params.append(sop)
        clause = " AND ".join(where)
        rows = conn.execute(
            "SELECT i.SOPInstanceUID, i.SeriesInstanceUID, i.StudyInstanceUID, i.path, s.patient_id, p.PatientID "
            "FROM instances i JOIN studies s ON s.StudyInstanceUID = i.StudyInstanceUID "
            f"JOIN patients p ON p.id = s.patient_id WHERE {clause}",
            params,
        ).fetchall()
        if not rows:
            return []
        conn.execute(f"DELETE FROM instances AS i WHERE {clause}", params)
        for one in sorted({str(r[1]) for r in rows}):
            conn.execute(
                "DELETE FROM series WHERE SeriesInstanceUID = ? AND NOT EXISTS "
                "(SELECT 1 FROM instances WHERE SeriesInstanceUID = ?)",
                (one, one),
            )
        gone = conn.execute(
            "DELETE FROM studies WHERE StudyInstanceUID = ? AND NOT EXISTS "
            "(SELECT 1 FROM series WHERE StudyInstanceUID = ?) RETURNING patient_id",
            (study, study),
        ).fetchone()
        if gone is not None:
            conn.execute(
                "DELETE FROM patients WHERE id = ? AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_id = ?)",
                (gone[0], gone[0]),
            )
        return [DeletedInstance(str(r[2]), str(r[1]), str(r[0]), str(r[3]), str(r[5])) for r in rows]

    def holds(self, conn: sqlite3.Connection, relative_path: str) -> bool:
        """Whether an instance row points at this stored file (looked up by its SOP Instance UID, the file's
        name, which is indexed)."""
        sop = relative_path.rsplit("/", 1)[-1].removesuffix(".dcm")
        row = self.instance(sop, conn)
        return row is not None and row["path"] == relative_path

    def locate(self, uid: str) -> tuple[Level, str, str | None, str | None] | None:
        """What a bare UID names, looked up as a study, then a series, then an instance: (level, study, series,
        sop) with the levels above filled in; None when nothing stored has that UID."""
        conn = self.connection()
        if conn.execute("SELECT 1 FROM studies WHERE StudyInstanceUID = ?", (uid,)).fetchone() is not None:
            return Level.STUDY, uid, None, None
        row = conn.execute("SELECT StudyInstanceUID FROM series WHERE SeriesInstanceUID = ?", (uid,)).fetchone()
        if row is not None:
            return Level.SERIES, str(row[0]), uid, None
        found = self.instance(uid, conn)
        if found is not None:
            return Level.IMAGE, str(found["StudyInstanceUID"]), str(found["SeriesInstanceUID"]), uid
        return None

    # -- series and studies --------------------------------------------------------------------------------
    def series_study(self, series: str) -> str | None:
        """The Study Instance UID of a stored series; None if it is not stored."""
        row = (
            self.connection()
            .execute("SELECT StudyInstanceUID FROM series WHERE SeriesInstanceUID = ?", (series,))
            .fetchone()
        )
        return None if row is None else str(row[0])

    def series_source_ae(self, series: str) -> str:
        """The calling AE title that sent the series ('' when unknown or not stored)."""
        row = (
            self.connection().execute("SELECT source_ae FROM series WHERE SeriesInstanceUID = ?", (series,)).fetchone()
        )
        return str(row[0]) if row and row[0] is not None else ""

    def study_series(self, study: str) -> list[str]:
        """The Series Instance UIDs of a study, by Series Number (then arrival)."""
        rows = self.connection().execute(
            "SELECT SeriesInstanceUID FROM series WHERE StudyInstanceUID = ? ORDER BY SeriesNumber, rowid", (study,)
        )
        return [str(r[0]) for r in rows]

    def series_version(self, series: str) -> tuple[str, int, str] | None:
        """(Study Instance UID, instance count, latest arrival) of a stored series; None if it has no instance."""
        row = (
            self.connection()
            .execute(
                "SELECT StudyInstanceUID, COUNT(*), MAX(received_at) FROM instances WHERE SeriesInstanceUID = ?",
                (series,),
            )
            .fetchone()
        )
        if row is None or not row[1]:
            return None
        return str(row[0]), int(row[1]), str(row[2])

    def series_instances(self, series: str) -> list[tuple[str, str]]:
        """(SOP Instance UID, relative path) of each instance of a series, by Instance Number (then arrival)."""
        rows = self.connection().execute(
            "SELECT SOPInstanceUID, path FROM instances WHERE SeriesInstanceUID = ? ORDER BY InstanceNumber, rowid",
            (series,),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def series_changed(self, since: str, until: str) -> list[tuple[str, str]]:
        """(Series Instance UID, updated_at) of the series changed after ``since`` and not after ``until``."""
        rows = self.connection().execute(
            "SELECT SeriesInstanceUID, updated_at FROM series WHERE updated_at > ? AND updated_at <= ?"
            " ORDER BY updated_at",
            (since, until),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def created_since(self, level: Level, uid: str, since: str) -> bool:
        """Whether the study or series row ``uid`` was created at or after ``since``."""
        table, column = _CREATED[level]
        row = self.connection().execute(f"SELECT created_at >= ? FROM {table} WHERE {column} = ?", (since, uid))
        found = row.fetchone()
        return bool(found and found[0])

    def checkpoint(self) -> None:
        """Move the write-ahead log into the database file (before the file is moved or copied)."""
        self.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- statistics ----------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        conn = self.connection()
        out = {}
        for table in ("patients", "studies", "series", "instances"):
            out[table] = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        out["bytes"] = int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()[0])
        return out

    def paths(self) -> Iterator[str]:
        for row in self.connection().execute("SELECT path FROM instances ORDER BY path"):
            yield str(row[0])
