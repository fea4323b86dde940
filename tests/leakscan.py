"""Leak scan: does any identifying input value occur anywhere in the output bytes?

Each value of 4+ characters is searched case-insensitively in the raw bytes of every file, encoded as UTF-8,
Latin-1 and UTF-16 (LE and BE); so is each word or name component of 4+ characters ("Doe^Johnathan" → "Doe^Johnathan",
"Johnathan") and each date (a DA, or the date of a DT) in its common text forms (YYYYMMDD, YYYY-MM-DD, YYYY.MM.DD,
YYYY/MM/DD, DD.MM.YYYY, DD/MM/YYYY, MM/DD/YYYY, DD-MM-YYYY). A needle made only of digits is not a hit when a digit
or a dot precedes it: a date inside a keyed ``2.25.`` UID's decimal digits is chance, not a leak (a DT that starts
with the date is still found).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path

MIN_CHARS = 4
ENCODINGS = ("utf-8", "latin-1", "utf-16-le", "utf-16-be")
_WORDS = re.compile(r"[\s^=,;:()\\/]+")
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")


def date_forms(value: str) -> list[str]:
    """The text forms of the date a DA/DT value starts with ([] when it does not start with a valid date)."""
    match = _DATE.match(value.strip())
    if not match:
        return []
    y, m, d = match.groups()
    try:
        date(int(y), int(m), int(d))
    except ValueError:
        return []
    return [
        f"{y}{m}{d}",
        f"{y}-{m}-{d}",
        f"{y}.{m}.{d}",
        f"{y}/{m}/{d}",
        f"{d}.{m}.{y}",
        f"{d}/{m}/{y}",
        f"{m}/{d}/{y}",
        f"{d}-{m}-{y}",
    ]


def needles(value: str) -> set[str]:
    """What is searched for one identifying value: itself, its words and name components, its date forms."""
    value = value.strip().strip("^")
    found = {value, *_WORDS.split(value), *date_forms(value)}
    return {n for n in found if len(n) >= MIN_CHARS}


def _patterns(needle: str) -> list[tuple[str, re.Pattern[bytes]]]:
    out = []
    variants = {needle, needle.lower(), needle.upper()}
    for encoding in ENCODINGS:
        # No DICOM character set is UTF-16 (PS3.3 C.12.1.1.2): it is searched as a belt and braces for text, but not
        # for a needle without letters, whose UTF-16 form is just as much four 16-bit pixel values ("6270" at
        # 54, 50, 55, 48 in a CT's pixel data, deid-data's cat).
        if encoding.startswith("utf-16") and not any(c.isalpha() for c in needle):
            continue
        alternatives = set()
        for variant in variants:
            try:
                alternatives.add(variant.encode(encoding))
            except UnicodeEncodeError:
                continue
        if not alternatives:
            continue
        body = b"|".join(re.escape(a) for a in sorted(alternatives))
        # Digits-only needles in the 1-byte encodings: not preceded by a digit or a dot (see the module's docstring).
        guard = b"(?<![0-9.])" if needle.isdigit() and encoding in ("utf-8", "latin-1") else b""
        out.append((encoding, re.compile(guard + b"(?:" + body + b")", re.IGNORECASE)))
    return out


def leaks(files: Iterable[Path], values: Iterable[str]) -> list[str]:
    """One line per (file, needle) found: the needle, the value it comes from, the offset and the encoding.
    An empty list means no identifying value of 4+ characters occurs in any file."""
    searched: dict[str, str] = {}
    for value in values:
        for needle in needles(value):
            searched.setdefault(needle, value)
    compiled = {needle: _patterns(needle) for needle in searched}
    found = []
    for path in files:
        data = Path(path).read_bytes()
        for needle, patterns in compiled.items():
            for encoding, pattern in patterns:
                match = pattern.search(data)
                if match:
                    found.append(f"{path}: {needle!r} (from {searched[needle]!r}) at byte {match.start()} ({encoding})")
                    break
    return found
