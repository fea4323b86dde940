"""The ``tokens`` and ``users`` tables: every statement about who may call the node. What a row means (hashing,
scopes, expiry) is ``core.auth``'s; this module only reads and writes rows, each change in one transaction.

Rows come back as plain dicts (column name -> value).
"""

from __future__ import annotations

from typing import Any

from dcmnode.errors import Conflict
from dcmnode.store.index import Index, now

Row = dict[str, Any]


class PrincipalTable:
    def __init__(self, index: Index) -> None:
        self.index = index

    # -- API tokens ------------------------------------------------------------------------------------------
    def add_token(self, name: str, digest: str, scopes: str, groups: str, expires_at: str | None) -> None:
        with self.index.write() as conn:
            if conn.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"a token named {name!r} exists (revoke it first, or choose another name)")
            conn.execute(
                "INSERT INTO tokens (name, hash, scopes, groups, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, digest, scopes, groups, now(), expires_at),
            )

    def token_by_hash(self, digest: str) -> Row | None:
        row = self.index.connection().execute("SELECT * FROM tokens WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else dict(row)

    def tokens(self) -> list[Row]:
        rows = self.index.connection().execute(
            "SELECT name, scopes, groups, created_at, expires_at, revoked_at, last_used_at FROM tokens ORDER BY name"
        )
        return [dict(r) for r in rows.fetchall()]

    def revoke_token(self, name: str) -> bool:
        """False when there is no such token or it was already revoked."""
        with self.index.write() as conn:
            row = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL RETURNING id", (now(), name)
            ).fetchone()
        return row is not None

    def token_used(self, digest: str) -> None:
        with self.index.write() as conn:
            conn.execute("UPDATE tokens SET last_used_at = ? WHERE hash = ?", (now(), digest))

    # -- local users -----------------------------------------------------------------------------------------
    def add_user(self, name: str, password: str, scopes: str, groups: str) -> None:
        stamp = now()
        with self.index.write() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"a user named {name!r} exists")
            conn.execute(
                "INSERT INTO users (name, password, scopes, groups, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, password, scopes, groups, stamp, stamp),
            )

    def user(self, name: str) -> Row | None:
        row = self.index.connection().execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(row)

    def users(self) -> list[Row]:
        rows = self.index.connection().execute(
            "SELECT name, scopes, groups, created_at, updated_at FROM users ORDER BY name"
        )
        return [dict(r) for r in rows.fetchall()]

    def set_password(self, name: str, password: str) -> bool:
        with self.index.write() as conn:
            row = conn.execute(
                "UPDATE users SET password = ?, updated_at = ? WHERE name = ? RETURNING id", (password, now(), name)
            ).fetchone()
        return row is not None

    def remove_user(self, name: str) -> bool:
        with self.index.write() as conn:
            row = conn.execute("DELETE FROM users WHERE name = ? RETURNING id", (name,)).fetchone()
        return row is not None
