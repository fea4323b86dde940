"""Who is asking: API tokens, local users and OIDC bearer tokens, each turned into a ``core.access.Principal``.

``Authenticator`` is built once in ``core.services`` (``Services.auth``) for every adapter: the HTTP doors
(``verify_bearer``), the DIMSE user identity negotiation (``verify_password``, ``verify_jwt``) and the CLI
(tokens and users). Decisions are cached for at most 10 s (``cache.DecisionCache``), keyed by a hash of the
credential, so a token revoked or a user removed from another process (``dcmnode token revoke`` beside a running
node) stops working within 10 s, and a JWT never outlives its ``exp`` by more than that.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dcmnode.config import Settings
from dcmnode.core.access import ALL_GROUPS, Kind, Principal, Scope, parse_scopes
from dcmnode.core.auth import hashing
from dcmnode.core.auth.cache import DecisionCache
from dcmnode.core.auth.oidc import InvalidToken, OidcVerifier
from dcmnode.errors import InvalidRequest, NotFound
from dcmnode.store import Store
from dcmnode.store.principals import PrincipalTable
from dcmnode.store.sessions import SessionTable

__all__ = ["Authenticator", "InvalidToken", "TokenInfo", "UserInfo"]

log = logging.getLogger(__name__)

_REFUSED = "refused"  # cached for a credential found invalid


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    scopes: frozenset[Scope]
    groups: frozenset[str]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= _now():
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    scopes: frozenset[Scope]
    groups: frozenset[str]
    created_at: str
    updated_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _join(names: frozenset[str] | frozenset[Scope]) -> str:
    return ",".join(sorted(names))


def _groups(text: str) -> frozenset[str]:
    return frozenset(g.strip() for g in text.split(",") if g.strip())


def parse_groups(text: str | None) -> frozenset[str]:
    """``G1,G2`` as groups; None or empty: every study (``*``)."""
    found = _groups(text or "")
    if any(not g.replace("-", "").replace("_", "").replace(".", "").isalnum() and g != ALL_GROUPS for g in found):
        raise InvalidRequest(f"groups are names of letters, digits, '-', '_' or '.' (or *), not {text!r}")
    return found or frozenset({ALL_GROUPS})


def check_name(name: str, what: str) -> str:
    if not name or len(name) > 64 or not name.isprintable() or name != name.strip():
        raise InvalidRequest(f"a {what} name is 1-64 printable characters without surrounding spaces")
    return name


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


class Authenticator:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.table = PrincipalTable(store.index)
        self.sessions = SessionTable(store.index)
        self.session_hours = settings.http.session_hours
        self.oidc = OidcVerifier(settings.oidc) if settings.oidc.issuer else None
        self._decisions: DecisionCache[Principal | str] = DecisionCache()

    # -- API tokens ------------------------------------------------------------------------------------------
    def create_token(
        self, name: str, scopes: frozenset[Scope], groups: frozenset[str], expires_days: float | None = None
    ) -> str:
        """A new token (returned once: only its hash is kept)."""
        check_name(name, "token")
        if not scopes:
            raise InvalidRequest("a token needs at least one scope")
        if expires_days is not None and expires_days <= 0:
            raise InvalidRequest("--expires is a number of days greater than 0")
        expires = (
            None
            if expires_days is None
            else (datetime.now(UTC) + timedelta(days=expires_days)).isoformat(timespec="milliseconds")
        )
        token = hashing.new_token()
        self.table.add_token(name, hashing.token_digest(token), _join(scopes), _join(groups), expires)
        return token

    def tokens(self) -> list[TokenInfo]:
        return [
            TokenInfo(
                r["name"],
                parse_scopes(r["scopes"]),
                _groups(r["groups"]),
                r["created_at"],
                r["expires_at"],
                r["revoked_at"],
                r["last_used_at"],
            )
            for r in self.table.tokens()
        ]

    def revoke_token(self, name: str) -> None:
        if not self.table.revoke_token(name):
            raise NotFound(f"no active token named {name!r}")
        self._decisions.clear()  # this process at once; others within the cache's 10 s

    def verify_token(self, token: str) -> Principal | None:
        """The principal of an API token; None when it is unknown, revoked or expired."""
        digest = hashing.token_digest(token)
        cached = self._decisions.get("t" + digest)
        if cached is not None:
            return None if cached == _REFUSED else cached  # type: ignore[return-value]
        row = self.table.token_by_hash(digest)
        stamp = _now()
        if row is None or row["revoked_at"] or (row["expires_at"] and row["expires_at"] <= stamp):
            self._decisions.put("t" + digest, _REFUSED)
            return None
        found = Principal(row["name"], Kind.TOKEN, parse_scopes(row["scopes"]), _groups(row["groups"]))
        ttl = None
        if row["expires_at"]:
            ttl = (datetime.fromisoformat(row["expires_at"]) - datetime.now(UTC)).total_seconds()
        self._decisions.put("t" + digest, found, ttl)
        self.table.token_used(digest)  # at most once per token per cache lifetime
        return found

    # -- local users -----------------------------------------------------------------------------------------
    def add_user(self, name: str, password: str, scopes: frozenset[Scope], groups: frozenset[str]) -> None:
        check_name(name, "user")
        _check_password(password)
        self.table.add_user(name, hashing.hash_password(password), _join(scopes), _join(groups))

    def set_password(self, name: str, password: str) -> None:
        _check_password(password)
        if not self.table.set_password(name, hashing.hash_password(password)):
            raise NotFound(f"no user named {name!r}")
        self._decisions.clear()

    def remove_user(self, name: str) -> None:
        if not self.table.remove_user(name):
            raise NotFound(f"no user named {name!r}")
        self._decisions.clear()

    def users(self) -> list[UserInfo]:
        return [
            UserInfo(r["name"], parse_scopes(r["scopes"]), _groups(r["groups"]), r["created_at"], r["updated_at"])
            for r in self.table.users()
        ]

    def verify_password(self, name: str, password: str) -> Principal | None:
        """A local user's principal when ``password`` is theirs (the viewer's sign-in, DIMSE user identity)."""
        key = "u" + _key(name, password)
        cached = self._decisions.get(key)
        if cached is not None:
            return None if cached == _REFUSED else cached  # type: ignore[return-value]
        row = self.table.user(name)
        if row is None:
            hashing.check_password(password, hashing.DUMMY_HASH)  # as slow as a wrong password
            ok = False
        else:
            ok = hashing.check_password(password, row["password"])
        if not ok or row is None:
            self._decisions.put(key, _REFUSED)
            return None
        found = Principal(row["name"], Kind.USER, parse_scopes(row["scopes"]), _groups(row["groups"]))
        self._decisions.put(key, found)
        return found

    # -- the viewer's sign-in sessions ------------------------------------------------------------------------
    # Kept in the index (only a hash of the id), so every HTTP process and a restart see them; a session ends at
    # its expiry, at sign-out, or when its user is removed or its password changed (within the 10 s cache).
    def open_session(self, user: Principal) -> str | None:
        """A new session id for a user ``verify_password`` just accepted (returned once); None when the user was
        removed meanwhile."""
        row = self.table.user(user.name)
        if row is None:
            return None
        session = secrets.token_urlsafe(32)
        start = datetime.now(UTC)
        expires = start + timedelta(hours=self.session_hours)
        stamp, until = start.isoformat(timespec="milliseconds"), expires.isoformat(timespec="milliseconds")
        if not self.sessions.add(hashing.token_digest(session), user.name, _key(row["password"]), stamp, until):
            return None
        return session

    def verify_session(self, session: str) -> Principal | None:
        """The principal of a session id (the user's scopes and groups as they are now); None when it is unknown,
        signed out, expired, or its user was removed or changed their password."""
        digest = hashing.token_digest(session)
        cached = self._decisions.get("s" + digest)
        if cached is not None:
            return None if cached == _REFUSED else cached  # type: ignore[return-value]
        row = self.sessions.find(digest)
        if row is None or row["expires_at"] <= _now() or row["user_stamp"] != _key(row["password"]):
            self._decisions.put("s" + digest, _REFUSED)
            return None
        found = Principal(row["name"], Kind.USER, parse_scopes(row["scopes"]), _groups(row["groups"]))
        ttl = (datetime.fromisoformat(row["expires_at"]) - datetime.now(UTC)).total_seconds()
        self._decisions.put("s" + digest, found, ttl)
        return found

    def session_decided(self, session: str) -> tuple[bool, Principal | None]:
        """As ``decided``, for a session id: (True, principal or None) when cached, else (False, None)."""
        cached = self._decisions.get("s" + hashing.token_digest(session))
        if cached is None:
            return False, None
        return True, (None if cached == _REFUSED else cached)  # type: ignore[return-value]

    def close_session(self, session: str) -> None:
        """Sign out: the session is forgotten (in this process at once, in others within the cache's 10 s)."""
        digest = hashing.token_digest(session)
        self.sessions.remove(digest)
        self._decisions.put("s" + digest, _REFUSED)

    # -- OIDC ------------------------------------------------------------------------------------------------
    def verify_jwt(self, token: str) -> Principal | None:
        """The principal of an OIDC access token; None when OIDC is not configured or the token is refused (the
        reason is logged, never the token)."""
        if self.oidc is None:
            return None
        key = "j" + hashing.token_digest(token)
        cached = self._decisions.get(key)
        if cached is not None:
            return None if cached == _REFUSED else cached  # type: ignore[return-value]
        try:
            found, expires = self.oidc.verify(token)
        except InvalidToken as exc:
            log.info("OIDC token refused: %s", exc)
            self._decisions.put(key, _REFUSED)
            return None
        self._decisions.put(key, found, expires - time.time())
        return found

    def decided(self, token: str) -> tuple[bool, Principal | None]:
        """(True, the principal or None) when a bearer credential was decided within the cache's lifetime; else
        (False, None): ``verify_bearer`` must look (it may read the index or fetch the issuer's keys)."""
        kind = "t" if token.startswith(hashing.TOKEN_PREFIX) else "j"
        if kind == "j" and self.oidc is None:
            return True, None
        cached = self._decisions.get(kind + hashing.token_digest(token))
        if cached is None:
            return False, None
        return True, (None if cached == _REFUSED else cached)  # type: ignore[return-value]

    def verify_bearer(self, token: str) -> Principal | None:
        """An ``Authorization: Bearer`` credential: an API token (``dcm_...``) or an OIDC JWT."""
        if token.startswith(hashing.TOKEN_PREFIX):
            return self.verify_token(token)
        return self.verify_jwt(token)


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise InvalidRequest("a password has at least 8 characters")
