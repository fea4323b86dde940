"""Study labels: what a study carries, so that principals with groups see it (per-study access, issue 16).

A label is 1-64 characters of ``[A-Za-z0-9_.-]``. Labels name the groups that see a study (``core.access``);
``*`` is not a label (it is the group that sees every study). The API (``/api/studies/{uid}/labels``), the CLI
(``dcmnode label``), peers' ``labels``, imports and STOW-RS all go through ``check`` and these services.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from dcmnode.core import query as q
from dcmnode.errors import InvalidRequest, NotFound
from dcmnode.store import Store
from dcmnode.store import labels as table

log = logging.getLogger(__name__)

LABEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check(label: object) -> str:
    """A label name, or InvalidRequest saying what a label is."""
    if not isinstance(label, str) or not LABEL.fullmatch(label):
        shown = label[:80] if isinstance(label, str) else label
        raise InvalidRequest(f"label {shown!r}: 1-64 characters of letters, digits, '_', '.' and '-'")
    return label


def checked(labels: Iterable[object]) -> tuple[str, ...]:
    """Several labels, each checked, in the order given, without repeats."""
    return tuple(dict.fromkeys(check(label) for label in labels))


def allowed_for(labels: Iterable[str], groups: frozenset[str] | None) -> None:
    """A principal limited to ``groups`` may only set labels among them (else it could make another group's
    study visible to itself); InvalidRequest otherwise."""
    limit = q.study_filter(groups)
    if limit is None:
        return
    foreign = sorted(set(labels) - limit)
    if foreign:
        raise InvalidRequest(f"label(s) {', '.join(foreign)}: not among your groups")


class Labels:
    def __init__(self, store: Store) -> None:
        self.store = store

    def of(self, study: str, groups: frozenset[str] | None = None) -> list[str]:
        """The labels of a stored study; NotFound if it is not stored (or not visible to ``groups``)."""
        self._visible(study, groups)
        return table.of(self.store.index, study)

    def add(self, study: str, label: str, groups: frozenset[str] | None = None) -> bool:
        """Attach a label; True when it is new."""
        check(label)
        self._visible(study, groups)
        allowed_for([label], groups)
        with self.store.index.write() as conn:
            added = table.add(conn, study, [label]) > 0
        if added:
            log.info("study %s labelled %s", study, label)
        return added

    def remove(self, study: str, label: str, groups: frozenset[str] | None = None) -> bool:
        """Take a label off; True when the study carried it."""
        check(label)
        self._visible(study, groups)
        allowed_for([label], groups)
        with self.store.index.write() as conn:
            removed = table.remove(conn, study, label)
        if removed:
            log.info("study %s unlabelled %s", study, label)
        return removed

    def _visible(self, study: str, groups: frozenset[str] | None) -> None:
        index = self.store.index
        limit = q.study_filter(groups)
        if not table.study_exists(index, study) or (
            limit is not None and not table.visible(index, study, sorted(limit))
        ):
            raise NotFound(f"study {study} is not stored here")
