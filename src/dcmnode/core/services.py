"""The node's services, built once from the settings: the store and everything over it.

``dcmnode serve`` (each of its processes), the SR worker and every CLI command open one ``Services`` and close it
when they are done; the adapters are handed the services they use, never the settings file or the store path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from dcmnode.config import Settings
from dcmnode.core import coercion
from dcmnode.core import query as q
from dcmnode.core.access import Principal
from dcmnode.core.audit import Actor, Audit
from dcmnode.core.auth import Authenticator
from dcmnode.core.catalog import Catalog
from dcmnode.core.deletion import Deleted, Deletion, OnDeleted
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs.queue import Jobs
from dcmnode.core.labels import Labels
from dcmnode.core.limits import Slots
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
    auth: Authenticator  # API tokens, local users, OIDC bearer tokens -> Principal (HTTP doors, DIMSE identity)
    deletion: Deletion  # deleting studies, series, instances (rows, files, caches; the audit hook)
    labels: Labels  # study labels (per-study access)
    audit: Audit  # the audit trail (data/audit/, optional syslog)
    associations: Slots  # associations held per calling AE title, across the node's processes (data/locks/)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        coercion.check(settings)  # [peers.X] deidentify: an unknown option stops the node before it serves
        store = Store.open(settings.data_dir, fsync=settings.store.fsync)
        renderer = Renderer(store.root / "cache" / "rendered", store.files.tmp_dir, settings.http.render_cache_mb * MIB)
        catalog = Catalog(store, settings.http.metadata_workers, settings.http.metadata_idle_seconds)
        audit = Audit(store.root / "audit", settings.audit, settings.node.ae_title, _patient_of(catalog))
        return cls(
            settings=settings,
            store=store,
            ingest=Ingest(store, settings.store.on_duplicate),
            catalog=catalog,
            jobs=Jobs(store.index, settings.sr.max_running),
            renderer=renderer,
            auth=Authenticator(store, settings),
            deletion=Deletion(store, catalog.metadata, renderer, _audit_deleted(audit)),
            labels=Labels(store),
            audit=audit,
            associations=Slots(store.root / "locks" / "associations", settings.dimse.max_associations_per_ae),
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


def _audit_deleted(audit: Audit) -> OnDeleted:
    """The deletion service's hook: one 110105 Study Deleted record per delete, with who asked (the command line's
    operating-system user when no principal)."""

    def on_deleted(deleted: Deleted, who: Principal | None) -> None:
        actor = Actor.of(who) if who is not None else Actor.local()
        audit.study_deleted(deleted.study, deleted.patient_id, len(deleted.instances), actor)

    return on_deleted
