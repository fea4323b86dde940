"""Clean Descriptors (PS3.15 E.3.5): the identity removed from descriptions and comments, the rest of the text kept.

``identifying_values(ds)`` collects what identifies the patient in the original header: the patient's name and
each of its parts, the IDs, the birth date and the other dates in the text forms people type, every other person
name in the data set (at any depth) with its parts, the addresses and telephone numbers. ``clean(text, values)``
removes every occurrence of them (case-insensitive, whole words only: "JOHN" goes, "JOHNSON" stays) and, beyond
the header's own dates, every calendar date written as YYYYMMDD, YYYY-MM-DD, YYYY.MM.DD, DD.MM.YYYY, DD/MM/YYYY,
MM/DD/YYYY or DD-MM-YYYY (a description needs none, and a date names an encounter). The pixel cleaner looks for the
same values in burned-in text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date

from pydicom.dataset import Dataset

MIN_CHARS = 2
_PARTS = re.compile(r"[\s\^=,;]+")
_ID_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "MedicalRecordLocator",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "AdmissionID",
    "ServiceEpisodeID",
)
_DATE_KEYWORDS = (
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AcquisitionDateTime",
    "InstanceCreationDate",
    "PerformedProcedureStepStartDate",
)
_ADDRESS_KEYWORDS = (
    "PatientAddress",
    "PatientTelephoneNumbers",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "InstitutionAddress",
    "RegionOfResidence",
    "CountryOfResidence",
)
# Any calendar date in text (the forms of date_forms); validated before removal, so "12.34.5678" stays.
_ANY_DATE = re.compile(
    r"(?<![\w.])(?:"
    r"(?P<a>\d{4})(?P<sa>[-./]?)(?P<b>\d{2})(?P=sa)(?P<c>\d{2})"  # YYYYMMDD, YYYY-MM-DD, YYYY.MM.DD, YYYY/MM/DD
    r"|(?P<x>\d{1,2})(?P<sx>[-./])(?P<y>\d{1,2})(?P=sx)(?P<z>\d{4})"  # DD.MM.YYYY, DD/MM/YYYY, MM/DD/YYYY, DD-MM-YYYY
    r")(?![\w])"
)


def date_forms(value: str) -> list[str]:
    """The text forms of the date a DA or DT value starts with; [] when it starts with no valid date."""
    match = re.match(r"^(\d{4})(\d{2})(\d{2})", value.strip())
    if not match:
        return []
    y, m, d = match.groups()
    try:
        date(int(y), int(m), int(d))
    except ValueError:
        return []
    forms = [f"{y}{m}{d}", f"{y}-{m}-{d}", f"{y}.{m}.{d}", f"{y}/{m}/{d}"]
    forms += [f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}-{m}-{y}"]
    day, month = str(int(d)), str(int(m))  # 5.3.2024, 3/5/2024
    forms += [f"{day}.{month}.{y}", f"{day}/{month}/{y}", f"{month}/{day}/{y}"]
    return list(dict.fromkeys(forms))


def _texts(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if v is not None]  # type: ignore[attr-defined]
    return [str(value)]


def _with_parts(text: str) -> list[str]:
    text = text.strip().strip("^=")
    return [text, *(part for part in _PARTS.split(text))]


def identifying_values(ds: Dataset) -> list[str]:
    """The patient's identifying values in ``ds`` (each at least 2 characters, without repeats, longest first)."""
    found: list[str] = []
    for text in _texts(ds.get("PatientName")):
        found += _with_parts(text)
    for keyword in _ID_KEYWORDS:
        for text in _texts(ds.get(keyword)):
            found.append(text.strip())
    for keyword in _DATE_KEYWORDS:
        for text in _texts(ds.get(keyword)):
            found += date_forms(text)
    for keyword in _ADDRESS_KEYWORDS:
        for text in _texts(ds.get(keyword)):
            if "Address" in keyword:  # the address and its words, not its short house numbers ("17" is no identity)
                found += [p for p in _with_parts(text) if not (p.isdigit() and len(p) < 4)]
            else:
                found.append(text.strip())
    # At any depth: every person name (other names, physicians, operators, observers, private PN elements), the
    # other IDs and the dates in the Other Patient IDs Sequence and the like.
    for element in ds.iterall():
        if element.VR == "PN":
            for text in _texts(element.value):
                found += _with_parts(text)
        elif element.keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "IssuerOfPatientID"):
            found += [text.strip() for text in _texts(element.value)]
        elif element.keyword == "PatientBirthDate":
            for text in _texts(element.value):
                found += date_forms(text)
    unique = dict.fromkeys(v for v in found if len(v) >= MIN_CHARS)
    return sorted(unique, key=len, reverse=True)


def _pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted({v.strip() for v in values if len(v.strip()) >= MIN_CHARS}, key=len, reverse=True)
    if not ordered:
        return None
    # Whole words only: no letter or digit right before or after (so "DOE" does not cut "DOEL" or "MACDOE").
    body = "|".join(re.escape(v) for v in ordered)
    return re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])", re.IGNORECASE)


def _is_date(match: re.Match[str]) -> bool:
    if match.group("a"):
        parts = [(int(match.group("a")), int(match.group("b")), int(match.group("c")))]
    else:
        x, y, z = int(match.group("x")), int(match.group("y")), int(match.group("z"))
        parts = [(z, y, x), (z, x, y)]  # DD.MM.YYYY or MM/DD/YYYY: a date if either reading is
    for year, month, day in parts:
        try:
            date(year, month, day)
            return True
        except ValueError:
            continue
    return False


def _tidy(text: str) -> str:
    text = re.sub(r"\(\s*\)|\[\s*\]", " ", text)  # brackets left empty
    text = re.sub(r"\^+", " ", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip(" ,;:-")


def clean(text: str, identifying: Sequence[str]) -> str:
    """``text`` without any occurrence of the identifying values and without calendar dates; "" when nothing but
    identity was in it."""
    pattern = _pattern(identifying)
    out = pattern.sub(" ", text) if pattern else text
    out = _ANY_DATE.sub(lambda m: " " if _is_date(m) else m.group(0), out)
    out = _tidy(out)
    return out if re.search(r"[^\W_]", out) else ""
