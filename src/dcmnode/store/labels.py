"""The SQL of study labels (``study_labels``, migration m005): what a study carries, and which studies a set of
groups sees. The visibility clauses the query statements use are in ``store.matching``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from dcmnode.store.index import Index, now


def of(index: Index, study: str, conn: sqlite3.Connection | None = None) -> list[str]:
    """The labels of a study, sorted (empty for an unlabelled or unknown study)."""
    rows = (conn or index.connection()).execute(
        "SELECT label FROM study_labels WHERE study = ? ORDER BY label", (study,)
    )
    return [str(r[0]) for r in rows]


def study_exists(index: Index, study: str, conn: sqlite3.Connection | None = None) -> bool:
    row = (conn or index.connection()).execute("SELECT 1 FROM studies WHERE StudyInstanceUID = ?", (study,)).fetchone()
    return row is not None


def add(conn: sqlite3.Connection, study: str, labels: Iterable[str]) -> int:
    """Attach labels to a stored study (inside ``Index.write()``); those it already carries are kept as they are.
    Returns how many were new."""
    stamp = now()
    added = 0
    for label in labels:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO study_labels (study, label, created_at) VALUES (?, ?, ?)", (study, label, stamp)
        )
        added += cursor.rowcount
    return added


def remove(conn: sqlite3.Connection, study: str, label: str) -> bool:
    """Take a label off a study (inside ``Index.write()``); False when it did not carry it."""
    cursor = conn.execute("DELETE FROM study_labels WHERE study = ? AND label = ?", (study, label))
    return cursor.rowcount > 0


def visible(index: Index, study: str, groups: Sequence[str], conn: sqlite3.Connection | None = None) -> bool:
    """Whether a stored study carries one of ``groups`` (the caller handles "every study")."""
    if not groups:
        return False
    row = (
        (conn or index.connection())
        .execute(
            f"SELECT 1 FROM study_labels WHERE study = ? AND label IN ({', '.join('?' * len(groups))}) LIMIT 1",
            (study, *groups),
        )
        .fetchone()
    )
    return row is not None


def every(index: Index) -> list[tuple[str, str, str]]:
    """(study, label, created_at) of every label: ``dcmnode reindex`` carries them over to the rebuilt index."""
    rows = index.connection().execute("SELECT study, label, created_at FROM study_labels ORDER BY study, label")
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def restore(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, str]]) -> int:
    """Put back the labels ``every`` read, for the studies the rebuilt index holds (inside ``Index.write()``)."""
    restored = 0
    for study, label, created_at in rows:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO study_labels (study, label, created_at) SELECT ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM studies WHERE StudyInstanceUID = ?)",
            (study, label, created_at, study),
        )
        restored += cursor.rowcount
    return restored
