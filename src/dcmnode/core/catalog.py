"""The read side of the store, as the adapters see it: search, select for retrieve, metadata.

DIMSE and DICOMweb hold a ``Catalog`` (never the store itself), so that what a
query or a retrieve may do is decided here, once. ``groups`` is the asking principal's (``core.access``): a study
that carries none of them is answered as if it were not stored; None (or ``*``) sees every study.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dcmnode.core import metadata, retrieve
from dcmnode.core import query as q
from dcmnode.errors import NotFound
from dcmnode.store import Store, labels


class Catalog:
    def __init__(self, store: Store, metadata_workers: int = 0, metadata_idle_seconds: float = 0.0) -> None:
        self.store = store
        self.metadata = metadata.MetadataCache(store, metadata_workers, metadata_idle_seconds)

    def close(self) -> None:
        self.metadata.close()

    def search(self, query: q.Query) -> q.Result:
        return q.run(self.store.index, query)

    def iterate(self, query: q.Query) -> Iterator[dict[str, Any]]:
        return q.iterate(self.store.index, query)

    def select(
        self, matches: Mapping[str, str], level: q.Level = q.Level.IMAGE, groups: frozenset[str] | None = None
    ) -> list[retrieve.StoredFile]:
        return retrieve.select(self.store, matches, level, groups)

    def resource(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        groups: frozenset[str] | None = None,
    ) -> list[retrieve.StoredFile]:
        return retrieve.resource(self.store, study, series, sop, groups)

    def series_metadata(self, study: str, series: str, groups: frozenset[str] | None = None) -> tuple[bytes, str]:
        """The series' metadata, from the cache; the study's visibility is checked first (the cache knows no
        principal)."""
        if not self.visible(study, groups):
            raise NotFound(f"series {series} of study {study} is not stored here")
        return self.metadata.series_json(study, series)

    def visible(self, study: str, groups: frozenset[str] | None) -> bool:
        """Whether ``groups`` sees the study (True for every study when there is no filter)."""
        limit = q.study_filter(groups)
        return limit is None or labels.visible(self.store.index, study, sorted(limit))

    def series_visible(self, series: str, groups: frozenset[str] | None) -> bool:
        """Whether the series is stored and its study visible to ``groups``."""
        study = self.store.index.series_study(series)
        return study is not None and self.visible(study, groups)

    def study_series(self, study: str) -> list[str]:
        return self.store.index.study_series(study)

    def instance_path(self, sop: str) -> Path | None:
        """The stored file of one instance, by SOP Instance UID (any string: None when nothing matches)."""
        row = self.store.index.instance(sop)
        return None if row is None else self.store.files.absolute(row["path"])

    def counts(self) -> dict[str, int]:
        """Patients, studies, series, instances and bytes stored."""
        return self.store.index.counts()
