"""A project's key and what is derived from it: new UIDs, date offsets, pseudonyms (HMAC-SHA256).

The same key gives the same results on every run and every machine that holds it; another key gives unrelated
ones; without the key nobody can recompute the mapping (unlike an unkeyed hash of the original, which anyone holding
the original can). The key itself is kept by ``core/deidentify.py`` (mode 0600 under the data folder)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

KEY_BYTES = 32
WELL_KNOWN_ROOT = "1.2.840.10008."  # DICOM's own UIDs (SOP classes, transfer syntaxes, ...): never replaced
MIN_OFFSET_DAYS, MAX_OFFSET_DAYS = 30, 3650


@dataclass(frozen=True)
class ProjectKey:
    """32 secret bytes. ``repr`` never shows them."""

    secret: bytes

    def __post_init__(self) -> None:
        # A short (or empty) key would make the keyed mapping guessable; the message never shows the key.
        if not isinstance(self.secret, bytes) or len(self.secret) < KEY_BYTES:
            raise ValueError(f"a project key is {KEY_BYTES} random bytes")

    def __repr__(self) -> str:
        return "ProjectKey(<secret>)"

    def _mac(self, purpose: str, value: str) -> bytes:
        # The purpose separates the derivations: a UID and a Patient ID with the same text map independently.
        return hmac.new(self.secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.`` + the integer of a UUID (version 8, RFC 9562) from HMAC-SHA256(key, original): at most 44
        characters; well-known DICOM UIDs unchanged. One mapping per UID string, whatever tag it sits in."""
        original = original.strip("\x00 ")
        if not original or original.startswith(WELL_KNOWN_ROOT):
            return original
        raw = bytearray(self._mac("uid", original)[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
        return f"2.25.{uuid.UUID(bytes=bytes(raw)).int}"

    def date_offset_days(self, patient_id: str) -> int:
        """Days to move a patient's dates back (Retain Longitudinal Temporal Information with Modified Dates): one
        offset per project and original Patient ID, between 30 days and 10 years, so intervals stay exact."""
        span = MAX_OFFSET_DAYS - MIN_OFFSET_DAYS + 1
        return MIN_OFFSET_DAYS + int.from_bytes(self._mac("date", patient_id.strip())[:8], "big") % span

    def pseudonym(self, patient_id: str) -> str:
        """A replacement Patient ID derived from the original (when the caller gives none): 16 hex digits."""
        return self._mac("patient", patient_id.strip()).hex()[:16].upper()
