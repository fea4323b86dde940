"""Secrets as they are kept: an API token is 256 random bits shown once (``dcm_...``), kept as its SHA-256; a
password is kept as a scrypt hash whose string carries its parameters and salt (``scrypt$n$r$p$salt$hash``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "dcm_"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and ~30-60 ms per check
_MAXMEM = 64 * 1024 * 1024


def new_token() -> str:
    """A new API token: the prefix (so scanners and our own bearer check recognise it) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the index keeps of a token (a 256-bit random secret needs no salt or slow hash)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a string from ``hash_password`` (with whatever parameters it was made)."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(key)
        found = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(found, expected)


# Checked against when a user does not exist, so that an unknown name costs as long as a wrong password.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
