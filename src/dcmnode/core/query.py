"""The one query engine behind QIDO-RS and C-FIND: the DICOM model of a query.

A ``Query`` names a level, matching keys (keyword -> value in DICOM string form, as C-FIND carries them and
as QIDO-RS sends them) and the attributes to return. ``run`` checks it, turns each matching key into a typed
condition and has the store answer it in one statement (``store.matching`` holds the SQL): no file is opened to
answer a query. Matching follows PS3.4 C.2.2.2 (and PS3.18 §8.3.4, which defers to it):

- universal matching: an empty value matches everything (the attribute is only returned);
- single value matching: exact; person names case-insensitively (PS3.4 C.2.2.2.1);
- wildcard matching: ``*`` (any run) and ``?`` (one character), case-sensitive for text and case-insensitive
  for person names. A value that is only ``*`` is universal matching (PS3.4 C.2.2.2.4);
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

from dcmnode.core import access
from dcmnode.errors import InvalidRequest
from dcmnode.model import UID_PATTERN
from dcmnode.model import Level as Level  # re-exported: adapters say q.Level
from dcmnode.store import matching
from dcmnode.store.index import Index
from dcmnode.store.schema import INSTANCE_COLUMNS, PATIENT_COLUMNS, SERIES_COLUMNS, STUDY_COLUMNS

_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


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
    match: Match

    @property
    def key(self) -> matching.Key:
        return matching.Key(self.keyword, self.level)


def _attr(keyword: str, level: Level, match: Match | None = None) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    vr = dictionary_VR(tag)
    if match is None:
        match = {"PN": Match.PN, "UI": Match.UID, "DA": Match.RANGE, "TM": Match.RANGE, "DT": Match.RANGE}.get(
            vr, Match.INTEGER if vr in ("IS", "US") else Match.TEXT
        )
    return Attribute(keyword, tag, vr, level, match)


def _column(level: Level, names: Iterable[str], exclude: tuple[str, ...] = ()) -> list[Attribute]:
    """The index columns of one level (``store.schema``) as attributes; ``exclude``: columns another level owns
    or that are not matching keys (SpecificCharacterSet, the stored TransferSyntaxUID)."""
    return [_attr(name, level) for name in names if name not in exclude]


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in [
        *_column(P, PATIENT_COLUMNS),
        _attr("NumberOfPatientRelatedStudies", P, Match.RETURN_ONLY),
        _attr("NumberOfPatientRelatedSeries", P, Match.RETURN_ONLY),
        _attr("NumberOfPatientRelatedInstances", P, Match.RETURN_ONLY),
        *_column(ST, STUDY_COLUMNS, exclude=("SpecificCharacterSet",)),
        _attr("ModalitiesInStudy", ST, Match.MODALITIES),
        _attr("SOPClassesInStudy", ST, Match.RETURN_ONLY),
        _attr("NumberOfStudyRelatedSeries", ST, Match.RETURN_ONLY),
        _attr("NumberOfStudyRelatedInstances", ST, Match.RETURN_ONLY),
        *_column(SE, SERIES_COLUMNS, exclude=("StudyInstanceUID",)),
        _attr("NumberOfSeriesRelatedInstances", SE, Match.RETURN_ONLY),
        *_column(IM, INSTANCE_COLUMNS, exclude=("SeriesInstanceUID", "StudyInstanceUID", "TransferSyntaxUID")),
        _attr("AvailableTransferSyntaxUID", IM, Match.UID),
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
    groups: frozenset[str] | None = None  # the principal's groups: only studies carrying one; None or "*": all

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
    returned = [ATTRIBUTES[n].key for n in names]
    conditions = _conditions(query.matches, query.fuzzy)
    groups = study_filter(query.groups)
    for row in matching.iterate(index, query.level, returned, conditions, limit, query.offset, groups):
        yield dict(zip(names, row, strict=True))


def instances(
    index: Index, matches: Mapping[str, str], level: Level = Level.IMAGE, groups: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    """The stored instances under the entities ``matches`` selects at ``level`` (retrieve requests:
    PS3.4 C.4.2.1.4 / C.4.3.1.3, unique keys at and above the level; keys below it are ignored), of the studies
    ``groups`` sees only: a PATIENT-level retrieve takes the patient's visible studies, nothing of the others."""
    kept = {n: v for n, v in matches.items() if _DEPTH[attribute(n).level] <= _DEPTH[level]}
    conditions = _conditions({attribute(n).keyword: v for n, v in kept.items()}, False)
    return matching.instances(index, conditions, study_filter(groups))


def study_filter(groups: frozenset[str] | None) -> frozenset[str] | None:
    """The labels a study must carry one of, or None for no filter (no groups given, or ``*``)."""
    if groups is None or access.ALL_GROUPS in groups:
        return None
    return frozenset(groups)


def _conditions(matches: Mapping[str, str], fuzzy: bool) -> list[tuple[matching.Key, matching.Condition]]:
    out = []
    for name, value in matches.items():
        attr = ATTRIBUTES[name]
        found = condition(attr, value, fuzzy)
        if found is not None:
            out.append((attr.key, found))
    return out


def condition(attr: Attribute, value: str, fuzzy: bool = False) -> matching.Condition | None:
    """The matching a key asks for (PS3.4 C.2.2.2), checked; None for universal matching."""
    value = value.strip(" \x00")
    if value == "" or value == "*" or attr.match is Match.RETURN_ONLY:
        return None  # universal matching
    if attr.match is Match.UID:
        return _uid_list(attr, value)
    if attr.match is Match.RANGE:
        return _range(attr, value)
    if attr.match is Match.INTEGER:
        try:
            return matching.Single(int(value))
        except ValueError as exc:
            raise InvalidRequest(f"{attr.keyword}: {value!r} is not an integer") from exc
    if attr.match is Match.MODALITIES:
        modalities = tuple(v for v in value.split("\\") if v)
        return matching.AnyModality(modalities) if modalities else None
    if attr.match is Match.PN:
        return _person_name(value, fuzzy)
    return matching.Wildcard(value) if _has_wildcard(value) else matching.Single(value)


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _uid_list(attr: Attribute, value: str) -> matching.UidList:
    uids = [u.strip() for u in value.split("\\") if u.strip()]
    for uid in uids:
        if not UID_PATTERN.match(uid) or len(uid) > 64:
            raise InvalidRequest(f"{attr.keyword}: {uid!r} is not a UID")
    return matching.UidList(tuple(uids))


def _person_name(value: str, fuzzy: bool) -> matching.Condition:
    if fuzzy:
        return matching.Fuzzy(tuple(w for w in re.split(r"[\s^,=]+", value.replace("*", "").replace("?", "")) if w))
    if _has_wildcard(value):
        return matching.Wildcard(value, person_name=True)
    return matching.Single(value)  # case-insensitive (PS3.4 C.2.2.2.1)


_RANGE_VALUE = {"DA": r"\d{8}", "TM": r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", "DT": r"\d{4}[\d.+-]*"}


def _range(attr: Attribute, value: str) -> matching.Condition:
    low, dash, high = value.partition("-") if attr.vr != "DT" else _split_datetime(value)
    pattern = _RANGE_VALUE[attr.vr]
    for part in (low, high):
        if part and not re.fullmatch(pattern, part.replace(":", "") if attr.vr == "TM" else part):
            raise InvalidRequest(f"{attr.keyword}: {value!r} is not a {attr.vr} value or range")
    low, high = low.replace(":", ""), high.replace(":", "")
    if not dash:
        if attr.vr == "DA":
            return matching.Single(low)
        high = low  # TM/DT single value: everything within the precision given
    if not low and not high:
        raise InvalidRequest(f"{attr.keyword}: {value!r} is an empty range")
    # An upper bound with less precision than the stored value covers the whole unit it names.
    return matching.Range(low, high)


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


def keyword_values(row: Mapping[str, Any]) -> Iterator[tuple[Attribute, Any]]:
    """The attributes of a result row with their values (None where the index holds nothing)."""
    for name, value in row.items():
        yield ATTRIBUTES[name], value
