"""The SQL of query matching over the index: every statement QIDO-RS, C-FIND and the retrieves run.

``core.query`` holds the DICOM model of a query (levels, attributes, matching types, validation) and hands this
module typed conditions, in PS3.4 C.2.2.2's words; this module turns each into one ``(clause, params)`` pair and
the whole query into one statement. The SQLite-only constructs are here and nowhere else:

- ``GLOB`` for case-sensitive wildcards (a literal ``[`` escaped as ``[[]``);
- ``LIKE ... ESCAPE '\\'`` for person names: the PN columns are ``COLLATE NOCASE`` (``store.schema``), so both
  single value and wildcard matching of names are case-insensitive (PS3.4 C.2.2.2.1) and stay on an index;
- ``group_concat`` for ModalitiesInStudy and SOPClassesInStudy, ``rowid`` as the arrival order;
- an upper range bound followed by ``\\x7f``, which sorts after any longer value with that prefix.

Per-study access: ``groups`` (None = every study) keeps the studies carrying one of those labels
(``study_labels``): at study, series and instance level the entity's study must carry one, at patient level the
patient must have such a study. The patient-level counts (NumberOfPatientRelated*) count the visible studies only,
so that a principal never learns of a study it may not see; the study- and series-level counts are within a visible
study and unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dcmnode.model import Level
from dcmnode.store.index import Index

P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE


# -- what core asks for ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Key:
    """An attribute (its DICOM keyword) and the level whose table holds it."""

    keyword: str
    level: Level


@dataclass(frozen=True, slots=True)
class Single:
    """Single value matching: equal (person names case-insensitively)."""

    value: str | int


@dataclass(frozen=True, slots=True)
class Wildcard:
    """``*`` and ``?`` matching; ``person_name``: case-insensitive."""

    pattern: str
    person_name: bool = False


@dataclass(frozen=True, slots=True)
class UidList:
    uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Range:
    """``low <= value`` and ``value <= high``, where ``high`` covers every value it is a prefix of; '' = open."""

    low: str
    high: str


@dataclass(frozen=True, slots=True)
class Fuzzy:
    """Each word begins some component of the person name, in any order and case."""

    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AnyModality:
    """ModalitiesInStudy: some series of the study has one of these modalities (each may hold wildcards)."""

    modalities: tuple[str, ...]


Condition = Single | Wildcard | UidList | Range | Fuzzy | AnyModality
Clause = tuple[str, list[Any]]

# -- the index as tables ---------------------------------------------------------------------------------------
ALIAS = {P: "p", ST: "st", SE: "se", IM: "i"}
FROM = {
    P: "patients p",
    ST: "studies st JOIN patients p ON p.id = st.patient_id",
    SE: "series se JOIN studies st ON st.StudyInstanceUID = se.StudyInstanceUID"
    " JOIN patients p ON p.id = st.patient_id",
    IM: "instances i JOIN series se ON se.SeriesInstanceUID = i.SeriesInstanceUID"
    " JOIN studies st ON st.StudyInstanceUID = i.StudyInstanceUID JOIN patients p ON p.id = st.patient_id",
}
ORDER = {
    P: "p.PatientName, p.id",
    ST: "st.StudyDate DESC, st.StudyTime DESC, st.rowid",
    SE: "se.SeriesNumber, se.rowid",
    IM: "i.InstanceNumber, i.rowid",
}
# Attributes the index computes (or holds under another name), for the returned rows only.
COMPUTED = {
    "NumberOfPatientRelatedStudies": "(SELECT COUNT(*) FROM studies x WHERE x.patient_id = p.id)",
    "NumberOfPatientRelatedSeries": "(SELECT COUNT(*) FROM series x JOIN studies y"
    " ON y.StudyInstanceUID = x.StudyInstanceUID WHERE y.patient_id = p.id)",
    "NumberOfPatientRelatedInstances": "(SELECT COUNT(*) FROM instances x JOIN studies y"
    " ON y.StudyInstanceUID = x.StudyInstanceUID WHERE y.patient_id = p.id)",
    "ModalitiesInStudy": "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT x.Modality AS m FROM series x"
    " WHERE x.StudyInstanceUID = st.StudyInstanceUID AND x.Modality IS NOT NULL ORDER BY m))",
    "SOPClassesInStudy": "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT x.SOPClassUID AS c FROM instances x"
    " WHERE x.StudyInstanceUID = st.StudyInstanceUID ORDER BY c))",
    "NumberOfStudyRelatedSeries": "(SELECT COUNT(*) FROM series x WHERE x.StudyInstanceUID = st.StudyInstanceUID)",
    "NumberOfStudyRelatedInstances": "(SELECT COUNT(*) FROM instances x"
    " WHERE x.StudyInstanceUID = st.StudyInstanceUID)",
    "NumberOfSeriesRelatedInstances": "(SELECT COUNT(*) FROM instances x"
    " WHERE x.SeriesInstanceUID = se.SeriesInstanceUID)",
    "AvailableTransferSyntaxUID": "i.TransferSyntaxUID",
}
RETRIEVE_COLUMNS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "TransferSyntaxUID",
    "path",
    "size",
    "render",
)
RETRIEVE_ORDER = "st.StudyDate, i.StudyInstanceUID, se.SeriesNumber, i.SeriesInstanceUID, i.InstanceNumber"


# The patient-level counts, restricted to the studies a set of groups sees ("{}": the study alias's visibility).
PATIENT_COUNTS = {
    "NumberOfPatientRelatedStudies": "(SELECT COUNT(*) FROM studies x WHERE x.patient_id = p.id AND {x})",
    "NumberOfPatientRelatedSeries": "(SELECT COUNT(*) FROM series x JOIN studies y"
    " ON y.StudyInstanceUID = x.StudyInstanceUID WHERE y.patient_id = p.id AND {y})",
    "NumberOfPatientRelatedInstances": "(SELECT COUNT(*) FROM instances x JOIN studies y"
    " ON y.StudyInstanceUID = x.StudyInstanceUID WHERE y.patient_id = p.id AND {y})",
}


def expression(key: Key) -> str:
    """The SQL expression giving an attribute's value."""
    return COMPUTED.get(key.keyword) or f"{ALIAS[key.level]}.{key.keyword}"


def _returned(returned: Sequence[Key], groups: frozenset[str] | None) -> Clause:
    """The select list; with ``groups`` the patient-level counts count visible studies only."""
    parts, params = [], []
    for key in returned:
        template = PATIENT_COUNTS.get(key.keyword) if groups is not None else None
        if template is None:
            parts.append(expression(key))
            continue
        alias = "x" if "{x}" in template else "y"
        clause, values = _labelled(f"{alias}.StudyInstanceUID", groups or frozenset())
        parts.append(template.replace("{" + alias + "}", clause))
        params += values
    return ", ".join(parts), params


def _labelled(study: str, groups: frozenset[str]) -> Clause:
    """The study ``study`` (an SQL expression) carries one of ``groups``."""
    if not groups:
        return "0", []
    names = sorted(groups)
    marks = ", ".join("?" * len(names))
    return f"EXISTS (SELECT 1 FROM study_labels l WHERE l.study = {study} AND l.label IN ({marks}))", names


def visibility(level: Level, groups: frozenset[str]) -> Clause:
    """The entities of ``level`` a principal with ``groups`` sees (PATIENT: those with a visible study)."""
    if level is P:
        clause, params = _labelled("y.StudyInstanceUID", groups)
        return f"EXISTS (SELECT 1 FROM studies y WHERE y.patient_id = p.id AND {clause})", params
    return _labelled("st.StudyInstanceUID", groups)


# -- statements ------------------------------------------------------------------------------------------------
def iterate(
    index: Index,
    level: Level,
    returned: Sequence[Key],
    conditions: Sequence[tuple[Key, Condition]],
    limit: int | None = None,
    offset: int = 0,
    groups: frozenset[str] | None = None,
) -> Iterator[tuple[Any, ...]]:
    """The matching entities of ``level``, one tuple of ``returned`` values each, in the level's order; with
    ``groups``, only those a principal with these groups sees (``limit`` and ``offset`` count those only)."""
    select, params = _returned(returned, groups)
    where, where_params = _where(conditions, level, groups)
    params += where_params
    sql = f"SELECT {select} FROM {FROM[level]}{where} ORDER BY {ORDER[level]}"
    if limit is not None or offset:
        sql += " LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
    cursor = index.connection().execute(sql, params)
    try:
        for row in cursor:
            yield tuple(row)
    finally:
        cursor.close()


def instances(
    index: Index, conditions: Sequence[tuple[Key, Condition]], groups: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    """The stored instances under the matching entities (``RETRIEVE_COLUMNS`` each), in study, series and
    instance order; with ``groups``, only those of the studies carrying one of them."""
    where, params = _where(conditions, IM, groups)
    columns = ", ".join(f"i.{c}" for c in RETRIEVE_COLUMNS)
    sql = f"SELECT {columns} FROM {FROM[IM]}{where} ORDER BY {RETRIEVE_ORDER}"
    return [dict(zip(RETRIEVE_COLUMNS, row, strict=True)) for row in index.connection().execute(sql, params)]


def _where(conditions: Sequence[tuple[Key, Condition]], level: Level, groups: frozenset[str] | None) -> Clause:
    clauses, params = [], []
    for key, condition in conditions:
        clause, values = clause_for(expression(key), condition)
        clauses.append(clause)
        params += values
    if groups is not None:
        clause, values = visibility(level, groups)
        clauses.append(clause)
        params += values
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def clause_for(sql: str, condition: Condition) -> Clause:
    """One condition on the expression ``sql``."""
    match condition:
        case Single(value):
            return f"{sql} = ?", [value]  # person names: a NOCASE column, case-insensitive on its index
        case Wildcard(pattern, person_name=True):
            return f"{sql} LIKE ? ESCAPE '\\'", [_like(pattern)]
        case Wildcard(pattern):
            return f"{sql} GLOB ?", [_glob(pattern)]
        case UidList(uids):
            return f"{sql} IN ({', '.join('?' * len(uids))})", list(uids)
        case Range(low, high):
            return _range(sql, low, high)
        case Fuzzy(words):
            return _fuzzy(sql, words)
        case AnyModality(modalities):
            return _any_modality(modalities)
    raise TypeError(condition)


def _glob(pattern: str) -> str:
    return pattern.replace("[", "[[]")


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _range(sql: str, low: str, high: str) -> Clause:
    clauses, params = [], []
    if low:
        clauses.append(f"{sql} >= ?")
        params.append(low)
    if high:
        clauses.append(f"{sql} <= ?")
        params.append(high + "\x7f")  # sorts after any longer value with this prefix
    return " AND ".join(clauses), params


def _fuzzy(sql: str, words: Sequence[str]) -> Clause:
    clauses, params = [], []
    for word in words:
        pattern = _like(word)
        params += [pattern + "%", "%^" + pattern + "%", "% " + pattern + "%"]
        clauses.append(f"({sql} LIKE ? ESCAPE '\\' OR {sql} LIKE ? ESCAPE '\\' OR {sql} LIKE ? ESCAPE '\\')")
    return (" AND ".join(clauses) if clauses else "1"), params


def _any_modality(modalities: Sequence[str]) -> Clause:
    clauses, params = [], []
    for item in modalities:
        if "*" in item or "?" in item:
            clauses.append("x.Modality GLOB ?")
            params.append(_glob(item))
        else:
            clauses.append("x.Modality = ?")
            params.append(item)
    exists = "EXISTS (SELECT 1 FROM series x WHERE x.StudyInstanceUID = st.StudyInstanceUID AND ({}))"
    return exists.format(" OR ".join(clauses)), params
