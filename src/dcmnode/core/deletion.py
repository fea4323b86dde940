"""Deleting a study, a series or an instance (DICOMweb ``DELETE``, ``dcmnode delete``, the viewer).

Order of work, so that a crash never leaves an index row without its file:
1. one index transaction removes the instance rows and the series, study and patient rows left empty
   (``Store.delete``), having noted the files in ``deleting/``;
2. after the COMMIT, still under the writer lock, the files are unlinked and the note removed (a crash in between
   leaves files without rows, which the next ``Store.open`` removes);
3. the caches: the series' metadata files and the instances' renderings, so that an instance stored again under
   the same UIDs is never answered from what was built for the old file;
4. ``on_deleted`` (the audit trail's hook, event 110105 Study Deleted), with who asked.

The SR job table is not touched: a job's derived series is just another series. Access checks (the ``delete``
scope, the principal's study groups) are the adapters' job, before they call here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from dcmnode.core.access import Principal
from dcmnode.core.metadata import MetadataCache
from dcmnode.core.render import Renderer
from dcmnode.errors import NotFound
from dcmnode.model import Level
from dcmnode.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Deleted:
    """What one delete removed."""

    level: Level  # STUDY, SERIES or IMAGE: what was asked for
    study: str
    series: str | None  # the series asked for (SERIES, IMAGE)
    sop: str | None  # the instance asked for (IMAGE)
    patient_id: str  # Patient ID (0010,0020) of the study; never the patient's name
    instances: tuple[str, ...]  # SOP Instance UIDs removed
    series_removed: tuple[str, ...]  # Series Instance UIDs that had instances removed

    def to_json(self) -> dict[str, object]:
        return {
            "level": self.level.value,
            "study": self.study,
            "series": self.series,
            "sop": self.sop,
            "instances": len(self.instances),
            "series_touched": list(self.series_removed),
        }

    def describe(self) -> str:
        what = {Level.STUDY: "study", Level.SERIES: "series", Level.IMAGE: "instance"}[self.level]
        uid = self.sop or self.series or self.study
        n = len(self.instances)
        return f"deleted {what} {uid}: {n} instance(s) in {len(self.series_removed)} series"


OnDeleted = Callable[[Deleted, Principal | None], None]
"""Called after every delete, with what went and who asked (None: the command line, no principal). ``core/services.py``
hands it the audit trail's (DCM 110105 Study Deleted: Study Instance UID, Patient ID, instance count, who)."""


def study_deleted(deleted: Deleted, who: Principal | None) -> None:
    """The default ``on_deleted``: nothing yet (the audit trail replaces it)."""


class Deletion:
    def __init__(
        self, store: Store, metadata: MetadataCache, renderer: Renderer, on_deleted: OnDeleted = study_deleted
    ) -> None:
        self.store = store
        self.metadata = metadata
        self.renderer = renderer
        self.on_deleted = on_deleted

    def delete(
        self, study: str, series: str | None = None, sop: str | None = None, who: Principal | None = None
    ) -> Deleted:
        """Delete what a DICOMweb URL names (a study; a series of that study; an instance of that series).
        NotFound when nothing stored matches: a series under another study's UID matches nothing."""
        level = Level.IMAGE if sop else Level.SERIES if series else Level.STUDY
        gone = self.store.delete(study, series, sop)
        if not gone:
            what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
            raise NotFound(f"{what} is not stored here")
        touched = tuple(sorted({g.series for g in gone}))
        deleted = Deleted(level, study, series, sop, gone[0].patient_id, tuple(g.sop for g in gone), touched)
        for one in touched:
            self.metadata.forget(one)
        self.renderer.forget(list(deleted.instances))
        log.info("%s (by %s)", deleted.describe(), f"{who.kind}:{who.name}" if who is not None else "the command line")
        self.on_deleted(deleted, who)
        return deleted

    def delete_uid(self, uid: str, level: Level | None = None, who: Principal | None = None) -> Deleted:
        """Delete what a bare UID names (``dcmnode delete``): at ``level``, or, when not given, the UID looked up
        as a study, then a series, then an instance. NotFound when nothing matches."""
        found = self.store.index.locate(uid)
        if found is None or (level is not None and found[0] != level):
            what = {None: "study, series or instance", Level.STUDY: "study", Level.SERIES: "series"}
            raise NotFound(f"no {what.get(level, 'instance')} {uid} is stored here")
        _, study, series, sop = found
        return self.delete(study, series, sop, who)
