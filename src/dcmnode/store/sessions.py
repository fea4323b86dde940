"""The ``sessions`` table: the viewer's sign-in sessions (what a row means, hashing and expiry, is
``core.auth``'s; this module only reads and writes rows). Rows come back as plain dicts."""

from __future__ import annotations

from typing import Any

from dcmnode.store.index import Index

Row = dict[str, Any]


class SessionTable:
    def __init__(self, index: Index) -> None:
        self.index = index

    def add(self, digest: str, user: str, user_stamp: str, created_at: str, expires_at: str) -> bool:
        """False when there is no such user (removed meanwhile). Sessions expired by ``created_at`` go first."""
        with self.index.write() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (created_at,))
            row = conn.execute(
                "INSERT INTO sessions (hash, user_id, user_stamp, created_at, expires_at) "
                "SELECT ?, id, ?, ?, ? FROM users WHERE name = ? RETURNING hash",
                (digest, user_stamp, created_at, expires_at, user),
            ).fetchone()
        return row is not None

    def find(self, digest: str) -> Row | None:
        """The session with its user's current row (name, password, scopes, groups); None when there is none."""
        row = (
            self.index.connection()
            .execute(
                "SELECT s.user_stamp, s.expires_at, u.name, u.password, u.scopes, u.groups "
                "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.hash = ?",
                (digest,),
            )
            .fetchone()
        )
        return None if row is None else dict(row)

    def remove(self, digest: str) -> bool:
        with self.index.write() as conn:
            row = conn.execute("DELETE FROM sessions WHERE hash = ? RETURNING hash", (digest,)).fetchone()
        return row is not None
