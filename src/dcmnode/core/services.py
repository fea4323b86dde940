"""The node's services, built once from the settings: the store and everything over it.

``dcmnode serve`` (each of its processes), the SR worker and every CLI command open one ``Services`` and close it
when they are done; the adapters are handed the services they use, never the settings file or the store path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from dcmnode.config import Settings
from dcmnode.core import query as q
from dcmnode.core.audit import Audit
from dcmnode.core.catalog import Catalog
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs.queue import Jobs
from dcmnode.core.render import Renderer
from dcmnode.store import Store

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    store: Store
    ingest: Ingest  # the one path in (C-STORE, STOW-RS, imports, derived series)
    catalog: Catalog  # the read side (queries, retrieves, metadata)
    jobs: Jobs  # the super-resolution job queue
    renderer: Renderer  # rendered frames with their disk cache
    audit: Audit  # the audit trail (data/audit/, optional syslog)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        store = Store.open(settings.data_dir, fsync=settings.store.fsync)
        renderer = Renderer(store.root / "cache" / "rendered", store.files.tmp_dir, settings.http.render_cache_mb * MIB)
        catalog = Catalog(store, settings.http.metadata_workers)
        audit = Audit(store.root / "audit", settings.audit, settings.node.ae_title, _patient_of(catalog))
        return cls(
            settings=settings,
            store=store,
            ingest=Ingest(store, settings.store.on_duplicate),
            catalog=catalog,
            jobs=Jobs(store.index),
            renderer=renderer,
            audit=audit,
        )

    def close(self) -> None:
        self.audit.close()
        self.catalog.close()
        self.store.close()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _patient_of(catalog: Catalog) -> Callable[[str], str]:
    """The Patient ID of a stored study, for the audit trail's participant objects ("" when not stored)."""

    def patient_of(study: str) -> str:
        query = q.Query(level=q.Level.STUDY, matches={"StudyInstanceUID": study}, include={"PatientID"}, limit=1)
        rows = catalog.search(query).rows
        return str(rows[0].get("PatientID") or "") if rows else ""

    return patient_of
