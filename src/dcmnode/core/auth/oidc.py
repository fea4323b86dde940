"""OIDC bearer tokens (Keycloak, Entra, Google) checked as a resource server does, with PyJWT.

Only asymmetric signatures are accepted (``ALGORITHMS``: no ``none``, no HS*, so a token "signed" with the public
key as an HMAC secret fails); ``exp``, ``iss`` and ``aud`` are required and checked with ``leeway_seconds``. The
issuer's keys come from a JWKS file or an https URL (plain http only on loopback), kept for ``JWKS_MAX_AGE``
seconds and read again once when a token names a ``kid`` they do not hold (a key rotation). A URL is re-read on an
unknown kid at most once per ``http.oidc.jwks_refetch_seconds`` (``REFETCH_COOLDOWN`` by default), counted from
the last such re-read, not from the last read: a key published just after the regular read is found at once, and
tokens with made-up kids cannot make the node hammer the issuer. A read that fails keeps the keys already held.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dcmnode.config import OidcSettings
from dcmnode.core.access import ALL_GROUPS, Kind, Principal, Scope

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
JWKS_MAX_AGE = 300.0
REFETCH_COOLDOWN = 5.0
FETCH_TIMEOUT = 5.0


class InvalidToken(Exception):
    """Why a JWT was refused (for the log: never holds the token itself)."""


class Jwks:
    """The issuer's signing keys by kid, from a file or a URL, cached."""

    def __init__(self, source: str, refetch_cooldown: float = REFETCH_COOLDOWN) -> None:
        self.source = source
        self.refetch_cooldown = refetch_cooldown
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched = -1e9  # time.monotonic() of the last read
        self._refetched = -1e9  # time.monotonic() of the last re-read for an unknown kid
        self._lock = threading.Lock()
        self._is_url = "://" in source
        if self._is_url:
            url = urllib.parse.urlsplit(source)
            if url.scheme != "https" and not (url.scheme == "http" and _loopback(url.hostname or "")):
                raise ValueError(f"http.oidc.jwks must be an https URL (or a file), not {source!r}")

    def key(self, kid: str | None) -> dict[str, Any]:
        """The JWK for ``kid`` (None: the only key there is)."""
        with self._lock:
            now = time.monotonic()
            if now - self._fetched > JWKS_MAX_AGE:
                self._read()
            found = self._find(kid)
            if found is None and (not self._is_url or now - self._refetched >= self.refetch_cooldown):
                self._refetched = now
                self._read()  # a rotated key: read the set again, once
                found = self._find(kid)
        if found is None:
            raise InvalidToken(f"no key {kid!r} in the issuer's JWKS")
        return found

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _read(self) -> None:
        self._fetched = time.monotonic()
        try:
            if self._is_url:
                with urllib.request.urlopen(self.source, timeout=FETCH_TIMEOUT) as answer:  # noqa: S310 (checked)
                    data = json.loads(answer.read(1024 * 1024))
            else:
                data = json.loads(Path(self.source).read_text(encoding="utf-8"))
            keys = data["keys"]
            assert isinstance(keys, list)
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            log.error("cannot read the OIDC JWKS %s: %s", self.source, exc)  # keep the keys we had
            return
        self._keys = {
            str(k.get("kid", n)): k
            for n, k in enumerate(keys)
            if isinstance(k, dict) and k.get("kty") in ("RSA", "EC") and k.get("use", "sig") == "sig"
        }


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``realm_access.roles``); None when absent."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def names(value: Any) -> list[str]:
    """A claim as a list of names: a space-separated string or a list of strings."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, Iterable) and not isinstance(value, dict | bytes):
        return [str(v) for v in value if isinstance(v, str)]
    return []


class OidcVerifier:
    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self.jwks = Jwks(settings.jwks, settings.jwks_refetch_seconds)

    def verify(self, token: str) -> tuple[Principal, float]:
        """The principal and its ``exp`` (a UNIX time), or InvalidToken with the reason."""
        import jwt  # PyJWT brings cryptography: only a node that verifies OIDC tokens loads them (issue 19)

        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"not a JWT: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise InvalidToken(f"algorithm {alg!r} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("kid is not a string")
        jwk = self.jwks.key(kid)
        if jwk.get("kty") != KEY_TYPES[alg[:2]] or jwk.get("alg", alg) != alg:
            raise InvalidToken(f"key {kid!r} is not a {alg} key")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("no sub claim")
        scopes = frozenset(Scope(n) for n in names(claim(claims, s.scopes_claim)) if n in set(Scope))
        groups = frozenset(names(claim(claims, s.groups_claim))) if s.groups_claim else frozenset({ALL_GROUPS})
        return Principal(subject, Kind.OIDC, scopes, groups), float(claims["exp"])
