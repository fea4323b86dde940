"""Value types shared by every layer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from dcmnode.errors import InvalidInstance

# PS3.5 §9.1: digits and dots, at most 64 characters. We tolerate leading zeros in a component (common in the
# field) but nothing else, which also makes a UID safe to use as a path component.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: object, keyword: str) -> str:
    """Return the UID as str, or raise InvalidInstance naming the attribute."""
    if value is None or value == "":
        raise InvalidInstance(f"{keyword} is missing")
    text = str(value).rstrip("\x00 ")
    if len(text) > 64 or not UID_PATTERN.match(text):
        raise InvalidInstance(f"{keyword} is not a valid UID: {text[:80]!r}")
    return text


class Level(StrEnum):
    """The query/retrieve levels of the patient root information model (PS3.4 C.6.1), IMAGE being the instance."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True, slots=True)
class InstanceKey:
    study: str
    series: str
    sop: str

    @classmethod
    def checked(cls, study: object, series: object, sop: object) -> InstanceKey:
        return cls(
            check_uid(study, "StudyInstanceUID"),
            check_uid(series, "SeriesInstanceUID"),
            check_uid(sop, "SOPInstanceUID"),
        )


class SourceKind(StrEnum):
    DIMSE = "dimse"
    STOW = "stow"
    IMPORT = "import"
    REINDEX = "reindex"
    DERIVED = "derived"  # made by this node (super-resolution)


@dataclass(frozen=True, slots=True)
class Source:
    kind: SourceKind
    ae_title: str = ""  # calling AE for DIMSE; empty otherwise
    address: str = ""  # peer address (host) where known
    labels: tuple[str, ...] = ()  # study labels to attach to the studies this source stores (per-study access)
    # the writer's study groups when it does not see every study (a principal limited to groups): it may not add
    # instances to a stored study it does not see, and a new study it stores without labels gets these as labels
    groups: frozenset[str] | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.ae_title}" if self.ae_title else str(self.kind)


class Outcome(StrEnum):
    STORED = "stored"
    REPLACED = "replaced"
    DUPLICATE = "duplicate"  # on_duplicate = keep: the stored copy is kept, the sender hears success


@dataclass(frozen=True, slots=True)
class StoredInstance:
    key: InstanceKey
    sop_class: str
    transfer_syntax: str
    size: int
    outcome: Outcome
