"""The one query engine behind QIDO-RS and C-FIND. Imports: stdlib, pydicom (data dictionary), errors, store.

A ``Query`` names a level, matching keys (keyword -> value in DICOM string form, as C-FIND carries them and
as QIDO-RS sends them) and the attributes to return. ``run`` turns it into one SQL statement over the index:
no file is opened to answer a query. Matching follows PS3.4 C.2.2.2 (and PS3.18 §8.3.4, which defers to it):

- universal matching: an empty value matches everything (the attribute is only returned);
- single value matching: exact; person names case-insensitively (PS3.4 C.2.2.2.1, the PN columns are
  ``COLLATE NOCASE`` so this stays on an index);
- wildcard matching: ``*`` (any run) and ``?`` (one character). Text goes through ``GLOB`` (case-sensitive,
  literal ``[`` escaped as ``[[]``), person names through ``LIKE ... ESCAPE '\\'`` (``%``, ``_`` and ``\\``
  escaped). A value that is only ``*`` is universal matching (PS3.4 C.2.2.2.4);
- list of UID matching: backslash-separated UIDs (PS3.4 C.2.2.2.2);
- range matching for DA, TM, DT: ``A-B``, ``A-``, ``-B`` (PS3.4 C.2.2.2.5). An upper bound with less precision
  than the stored value covers the whole unit it names (``-1100`` includes 11:00:59);
- ``fuzzy`` (QIDO ``fuzzymatching=true``) on person names: each word of the query (split on spaces, ``^``,
  ``,``) must begin some name component, in any order and case (``joh doe`` finds ``Doe^John``).

Returned values come from the index; the counts and ``ModalitiesInStudy`` are computed in the same statement,
for the returned rows only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dcmnode.errors import InvalidRequest
from dcmnode.model import UID_PATTERN
from dcmnode.store.index import Index
from dcmnode.store.schema import INSTANCE_COLUMNS, PATIENT_COLUMNS, SERIES_COLUMNS, STUDY_COLUMNS


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}
_FROM = {
    Level.PATIENT: "patients p",
    Level.STUDY: "studies st JOIN patients p ON p.id = st.patient_id",
    Level.SERIES: "series se JOIN studies st ON st.StudyInstanceUID = se.StudyInstanceUID"
    " JOIN patients p ON p.id = st.patient_id",
    Level.IMAGE: "instances i JOIN series se ON se.SeriesInstanceUID = i.SeriesInstanceUID"
    " JOIN studies st ON st.StudyInstanceUID = i.StudyInstanceUID JOIN patients p ON p.id = st.patient_id",
}
_ORDER = {
    Level.PATIENT: "p.PatientName, p.id",
    Level.STUDY: "st.StudyDate DESC, st.StudyTime DESC, st.rowid",
    Level.SERIES: "se.SeriesNumber, se.rowid",
    Level.IMAGE: "i.InstanceNumber, i.rowid",
}


class Match(StrEnum):
    TEXT = "text"
    PN = "pn"
    UID = "uid"
    RANGE = "range"  # DA, TM, DT
    INTEGER = "integer"
    MODALITIES = "modalities"  # ModalitiesInStudy: matches if any series has the modality
    RETURN_ONLY = "return-only"  # computed counts: returned, never matched


@dataclass(frozen=True, slots=True)
class Attribute:
    keyword: str
    tag: int
    vr: str
    level: Level  # the level whose table holds it
    sql: str  # the SQL expression giving its value
    match: Match


def _attr(keyword: str, level: Level, sql: str, match: Match | None = None) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    vr = dictionary_VR(tag)
    if match is None:
        match = {"PN": Match.PN, "UI": Match.UID, "DA": Match.RANGE, "TM": Match.RANGE, "DT": Match.RANGE}.get(
            vr, Match.INTEGER if vr in ("IS", "US") else Match.TEXT
        )
    return Attribute(keyword, tag, vr, level, sql, match)


def _column(alias: str, level: Level, names: Iterable[str], exclude: tuple[str, ...] = ()) -> list[Attribute]:
    """The index columns of one level (``store.schema``) as attributes; ``exclude``: columns another level owns
    or that are not matching keys (SpecificCharacterSet, the stored TransferSyntaxUID)."""
    return [_attr(name, level, f"{alias}.{name}") for name in names if name not in exclude]


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
_STUDY_SERIES = "(SELECT COUNT(*) FROM series x WHERE x.StudyInstanceUID = st.StudyInstanceUID)"
_STUDY_INSTANCES = "(SELECT COUNT(*) FROM instances x WHERE x.StudyInstanceUID = st.StudyInstanceUID)"
_SERIES_INSTANCES = "(SELECT COUNT(*) FROM instances x WHERE x.SeriesInstanceUID = se.SeriesInstanceUID)"
_MODALITIES = (
    "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT x.Modality AS m FROM series x"
    " WHERE x.StudyInstanceUID = st.StudyInstanceUID AND x.Modality IS NOT NULL ORDER BY m))"
)
_SOP_CLASSES = (
    "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT x.SOPClassUID AS c FROM instances x"
    " WHERE x.StudyInstanceUID = st.StudyInstanceUID ORDER BY c))"
)
_PATIENT_STUDIES = "(SELECT COUNT(*) FROM studies x WHERE x.patient_id = p.id)"
_PATIENT_SERIES = (
    "(SELECT COUNT(*) FROM series x JOIN studies y ON y.StudyInstanceUID = x.StudyInstanceUID"
    " WHERE y.patient_id = p.id)"
)
_PATIENT_INSTANCES = (
    "(SELECT COUNT(*) FROM instances x JOIN studies y ON y.StudyInstanceUID = x.StudyInstanceUID"
    " WHERE y.patient_id = p.id)"
)

ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in [
        *_column("p", P, PATIENT_COLUMNS),
        _attr("NumberOfPatientRelatedStudies", P, _PATIENT_STUDIES, Match.RETURN_ONLY),
        _attr("NumberOfPatientRelatedSeries", P, _PATIENT_SERIES, Match.RETURN_ONLY),
        _attr("NumberOfPatientRelatedInstances", P, _PATIENT_INSTANCES, Match.RETURN_ONLY),
        *_column("st", ST, STUDY_COLUMNS, exclude=("SpecificCharacterSet",)),
        _attr("ModalitiesInStudy", ST, _MODALITIES, Match.MODALITIES),
        _attr("SOPClassesInStudy", ST, _SOP_CLASSES, Match.RETURN_ONLY),
        _attr("NumberOfStudyRelatedSeries", ST, _STUDY_SERIES, Match.RETURN_ONLY),
        _attr("NumberOfStudyRelatedInstances", ST, _STUDY_INSTANCES, Match.RETURN_ONLY),
        *_column("se", SE, SERIES_COLUMNS, exclude=("StudyInstanceUID",)),
        _attr("NumberOfSeriesRelatedInstances", SE, _SERIES_INSTANCES, Match.RETURN_ONLY),
        *_column("i", IM, INSTANCE_COLUMNS, exclude=("SeriesInstanceUID", "StudyInstanceUID", "TransferSyntaxUID")),
        _attr("AvailableTransferSyntaxUID", IM, "i.TransferSyntaxUID", Match.UID),
    ]
}
# Unique keys (PS3.4 C.6.1.1 / C.6.2.1) and what each level returns by default (PS3.18 Tables 10.6.3-3..5,
# PS3.4 C.6.1.1.2..5): the study table adds the patient attributes a study list needs.
UNIQUE_KEY = {P: "PatientID", ST: "StudyInstanceUID", SE: "SeriesInstanceUID", IM: "SOPInstanceUID"}
DEFAULT_RETURN: dict[Level, tuple[str, ...]] = {
    P: ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    ST: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SE: (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "StudyInstanceUID",
    ),
    IM: (
        "SOPClassUID",
        "SOPInstanceUID",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ),
}


@dataclass(slots=True)
class Query:
    level: Level
    matches: dict[str, str] = field(default_factory=dict)  # keyword -> value in DICOM string form
    include: set[str] = field(default_factory=set)  # extra keywords to return
    include_all: bool = False  # every attribute the index holds for the levels in ``defaults``
    defaults: frozenset[Level] | None = None  # levels whose default return attributes are returned (None: own)
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0

    def returned(self) -> list[str]:
        """Every keyword this query returns, in a stable order; nothing from below the query level."""
        depth = _DEPTH[self.level]
        levels = self.defaults if self.defaults is not None else frozenset({self.level})
        names: dict[str, None] = {}
        for level in (P, ST, SE, IM):
            if level in levels:
                names.update(dict.fromkeys(DEFAULT_RETURN[level]))
                if self.include_all:
                    names.update((a.keyword, None) for a in ATTRIBUTES.values() if a.level == level)
        names.update(dict.fromkeys(self.matches))
        names.update(dict.fromkeys(self.include))
        return [n for n in names if _DEPTH[ATTRIBUTES[n].level] <= depth]


def attribute(name: str) -> Attribute:
    """An attribute by keyword or by 8-digit hex tag; InvalidRequest if the index does not hold it."""
    keyword = name
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16)) or name
    found = ATTRIBUTES.get(keyword)
    if found is None:
        known = "known" if tag_for_keyword(keyword) is not None else "unknown"
        raise InvalidRequest(f"{name}: not a supported matching or return attribute ({known} to DICOM)")
    return found


def check(query: Query) -> None:
    """Refuse matching on keys below the query level (PS3.4 C.4.1.2.1 hierarchical search). Return keys from
    below are left out of the answer instead (OHIF asks for Modality on a study query, OHIF#5073)."""
    depth = _DEPTH[query.level]
    for name, value in query.matches.items():
        found = ATTRIBUTES[name]
        if _DEPTH[found.level] > depth and value.strip(" *\x00"):
            raise InvalidRequest(f"{name} is a {found.level.lower()}-level attribute; this is a {query.level} query")


@dataclass(slots=True)
class Result:
    rows: list[dict[str, Any]]
    more: bool  # rows were left off by the limit


def run(index: Index, query: Query) -> Result:
    """Answer a query in one statement; ``limit`` rows at most, ``more`` if the limit cut the answer."""
    rows = list(iterate(index, query, None if query.limit is None else query.limit + 1))
    more = query.limit is not None and len(rows) > query.limit
    return Result(rows[: query.limit] if more else rows, more)


def iterate(index: Index, query: Query, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Stream the matching rows (C-FIND sends one pending response per row)."""
    check(query)
    names = query.returned()
    sql, params = _sql(query, names, limit)
    conn = index.connection()
    cursor = conn.execute(sql, params)
    try:
        for row in cursor:
            yield dict(zip(names, row, strict=True))
    finally:
        cursor.close()


def _sql(query: Query, names: list[str], limit: int | None) -> tuple[str, list[Any]]:
    select = ", ".join(ATTRIBUTES[n].sql for n in names)
    where: list[str] = []
    params: list[Any] = []
    for name, value in query.matches.items():
        clause = _condition(ATTRIBUTES[name], value, query.fuzzy, params)
        if clause:
            where.append(clause)
    sql = f"SELECT {select} FROM {_FROM[query.level]}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {_ORDER[query.level]}"
    if limit is not None or query.offset:
        sql += " LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, query.offset]
    return sql, params


def _condition(attr: Attribute, value: str, fuzzy: bool, params: list[Any]) -> str | None:
    value = value.strip(" \x00")
    if value == "" or value == "*" or attr.match is Match.RETURN_ONLY:
        return None  # universal matching
    if attr.match is Match.UID:
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        for uid in uids:
            if not UID_PATTERN.match(uid) or len(uid) > 64:
                raise InvalidRequest(f"{attr.keyword}: {uid!r} is not a UID")
        params.extend(uids)
        return f"{attr.sql} IN ({', '.join('?' * len(uids))})"
    if attr.match is Match.RANGE:
        return _range(attr, value, params)
    if attr.match is Match.INTEGER:
        try:
            params.append(int(value))
        except ValueError as exc:
            raise InvalidRequest(f"{attr.keyword}: {value!r} is not an integer") from exc
        return f"{attr.sql} = ?"
    if attr.match is Match.MODALITIES:
        return _modalities(value, params)
    if attr.match is Match.PN:
        return _person_name(attr.sql, value, fuzzy, params)
    return _text(attr.sql, value, params)


def _text(sql: str, value: str, params: list[Any]) -> str:
    if "*" in value or "?" in value:
        params.append(value.replace("[", "[[]"))
        return f"{sql} GLOB ?"
    params.append(value)
    return f"{sql} = ?"


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _person_name(sql: str, value: str, fuzzy: bool, params: list[Any]) -> str:
    if fuzzy:
        words = [w for w in re.split(r"[\s^,=]+", value.replace("*", "").replace("?", "")) if w]
        clauses = []
        for word in words:
            pattern = _like_pattern(word)
            params.extend([pattern + "%", "%^" + pattern + "%", "% " + pattern + "%"])
            clauses.append(f"({sql} LIKE ? ESCAPE '\\' OR {sql} LIKE ? ESCAPE '\\' OR {sql} LIKE ? ESCAPE '\\')")
        return " AND ".join(clauses) if clauses else "1"
    if "*" in value or "?" in value:
        params.append(_like_pattern(value))
        return f"{sql} LIKE ? ESCAPE '\\'"
    params.append(value)
    return f"{sql} = ?"  # NOCASE column: case-insensitive, on the index


_RANGE_VALUE = {"DA": r"\d{8}", "TM": r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", "DT": r"\d{4}[\d.+-]*"}


def _range(attr: Attribute, value: str, params: list[Any]) -> str:
    low, dash, high = value.partition("-") if attr.vr != "DT" else _split_datetime(value)
    pattern = _RANGE_VALUE[attr.vr]
    for part in (low, high):
        if part and not re.fullmatch(pattern, part.replace(":", "") if attr.vr == "TM" else part):
            raise InvalidRequest(f"{attr.keyword}: {value!r} is not a {attr.vr} value or range")
    low, high = low.replace(":", ""), high.replace(":", "")
    if not dash:
        if attr.vr == "DA":
            params.append(low)
            return f"{attr.sql} = ?"
        high = low  # TM/DT single value: everything within the precision given
    clauses = []
    if low:
        params.append(low)
        clauses.append(f"{attr.sql} >= ?")
    if high:
        params.append(high + "\x7f")  # sorts after any longer value with this prefix
        clauses.append(f"{attr.sql} <= ?")
    if not clauses:
        raise InvalidRequest(f"{attr.keyword}: {value!r} is an empty range")
    return " AND ".join(clauses)


def _split_datetime(value: str) -> tuple[str, str, str]:
    # A DT may carry a "-hhmm" UTC offset, so the range dash is the one that has 4+ digits on its right or
    # stands at either end.
    if value.startswith("-"):
        return "", "-", value[1:]
    if value.endswith("-"):
        return value[:-1], "-", ""
    match = re.fullmatch(r"(\d{4}[\d.]*(?:[+-]\d{4})?)-(\d{4}.*)", value)
    if match:
        return match.group(1), "-", match.group(2)
    return value, "", ""


def _modalities(value: str, params: list[Any]) -> str:
    values = [v for v in value.split("\\") if v]
    clauses = []
    for item in values:
        if "*" in item or "?" in item:
            params.append(item.replace("[", "[[]"))
            clauses.append("x.Modality GLOB ?")
        else:
            params.append(item)
            clauses.append("x.Modality = ?")
    return (
        "EXISTS (SELECT 1 FROM series x WHERE x.StudyInstanceUID = st.StudyInstanceUID AND ("
        + " OR ".join(clauses)
        + "))"
    )


def keyword_values(row: Mapping[str, Any]) -> Iterator[tuple[Attribute, Any]]:
    """The attributes of a result row with their values (None where the index holds nothing)."""
    for name, value in row.items():
        yield ATTRIBUTES[name], value


def instance_sql(matches: Mapping[str, str], level: Level = Level.IMAGE) -> tuple[str, list[Any]]:
    """SQL for the stored instances under the entities ``matches`` selects at ``level`` (retrieve requests:
    PS3.4 C.4.2.1.4 / C.4.3.1.3, unique keys at and above the level; keys below it are ignored)."""
    params: list[Any] = []
    where = []
    for name, value in matches.items():
        attr = attribute(name)
        if _DEPTH[attr.level] > _DEPTH[level]:
            continue
        clause = _condition(attr, value, False, params)
        if clause:
            where.append(clause)
    sql = (
        "SELECT i.StudyInstanceUID, i.SeriesInstanceUID, i.SOPInstanceUID, i.SOPClassUID, i.TransferSyntaxUID,"
        f" i.path, i.size, i.render FROM {_FROM[Level.IMAGE]}"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    return (
        sql + " ORDER BY st.StudyDate, i.StudyInstanceUID, se.SeriesNumber, i.SeriesInstanceUID, i.InstanceNumber",
        params,
    )
