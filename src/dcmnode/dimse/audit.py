"""The DIMSE side of the audit trail (``core/audit.py``).

C-STORE: one 110104 C record per association and study, written when the association's connection closes (the
instances stored and refused per study; dcm4chee does the same), through ``Associations``. C-FIND: one 110112
record per request, with the identifier's keys (person names emptied). C-MOVE: one 110104 R record per request
and destination; C-GET: one per request (the requestor is the destination). The requestor is the calling AE at
its address. With ``audit.fail_closed``, each service first asks ``Audit.guard`` and is refused while the trail
cannot be written (``AuditUnavailable``: C-STORE and C-FIND 0xA700, C-MOVE and C-GET 0xA702).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt

from dcmnode.core import audit as au
from dcmnode.core.access import Kind
from dcmnode.dimse import tls
from dcmnode.errors import AuditUnavailable
from dcmnode.model import StoredInstance

log = logging.getLogger(__name__)
_SKIP_KEYS = {0x00080005}  # Specific Character Set


def requestor(event: evt.Event) -> au.Actor:
    """The calling AE at its address, and "TLS ..." when the association came over TLS (``tls.transport``)."""
    who = event.assoc.requestor
    return au.Actor(str(who.ae_title).strip(), str(Kind.PEER), str(who.address), tls.transport(event.assoc))


def identifier_keys(identifier: Dataset) -> str:
    """The identifier's keys as ``keyword=value&...`` in base64, person-name values emptied."""
    pairs = []
    for elem in identifier:
        if elem.tag in _SKIP_KEYS or elem.tag.is_private or elem.VR == "SQ":
            continue
        value = "" if elem.VR == "PN" or elem.value is None else str(elem.value)
        pairs.append((elem.keyword or f"{int(elem.tag):08X}", value))
    return au.query_keys(pairs, lambda key: False)


def outcome(status: int) -> int:
    if status in (0x0000, 0xFF00, 0xFF01):
        return au.SUCCESS
    if status == 0xFE00 or status == 0xB000 or 0xA900 <= status < 0xAA00:
        return au.MINOR_FAILURE  # a cancel, some sub-operations failed, a bad identifier
    return au.SERIOUS_FAILURE


class Associations:
    """The C-STORE batches of the open associations, keyed by association; ``closed`` writes them."""

    def __init__(self, audit: au.Audit) -> None:
        self.audit = audit
        self._open: dict[int, au.Transfers] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[Any]:
        return [(evt.EVT_CONN_CLOSE, self.closed)]

    def _batch(self, event: evt.Event) -> au.Transfers:
        key = id(event.assoc)
        with self._lock:
            batch = self._open.get(key)
            if batch is None:
                batch = self._open[key] = self.audit.transfer_in(requestor(event), "C-STORE")
            return batch

    def stored(self, event: evt.Event, stored: StoredInstance) -> None:
        self._batch(event).add(stored)

    def failed(self, event: evt.Event, study: str = "") -> None:
        self._batch(event).fail(study)

    def closed(self, event: evt.Event) -> None:
        """``evt.EVT_CONN_CLOSE``: write the association's records (released, aborted or dropped alike)."""
        with self._lock:
            batch = self._open.pop(id(event.assoc), None)
        if batch is not None:
            try:
                batch.close()
            except AuditUnavailable:
                pass  # logged and counted by the trail; the next C-STORE is refused (guard)


def studies_of(files: Iterable[Any]) -> dict[str, int]:
    """Instances per study of the files a retrieve sends (``retrieve.StoredFile``)."""
    counts: dict[str, int] = {}
    for item in files:
        counts[item.study] = counts.get(item.study, 0) + 1
    return counts
