"""C-FIND, C-MOVE and C-GET SCP (PS3.4 Annex C), Patient Root and Study Root, over ``core.query`` and
``core.retrieve``. Imports: stdlib, pydicom, pynetdicom, config, errors, core.

C-FIND answers with the same engine and the same values as QIDO-RS: one pending response per match, holding
exactly the keys the identifier asked for. C-MOVE sends to a destination declared under ``[peers]`` (0xA801
and a log line otherwise); C-GET sends back over the requesting association, on the storage contexts it
negotiated with SCP/SCU role selection. Both send each file as stored when the receiver accepted its transfer
syntax, and decompress it when the receiver accepted only uncompressed syntaxes. C-CANCEL is honoured between
matches and between sub-operations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dcmnode.config import Settings
from dcmnode.core import query as q
from dcmnode.core import retrieve
from dcmnode.core.catalog import Catalog
from dcmnode.dimse import send
from dcmnode.errors import DcmnodeError, InvalidRequest

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
SUCCESS = 0x0000
IDENTIFIER_MISMATCH = 0xA900  # Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
SUB_OPERATION_FAILED = 0xA702  # Refused: out of resources - unable to perform sub-operations
NEVER_NEGOTIATED = "2.25.0"  # a valid UID no presentation context ever names
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
_SKIP = {0x00080005, 0x00080052, 0x00080054, 0x00080056}  # charset, level, retrieve AE, availability


def identifier_to_query(identifier: Dataset, sop_class: str) -> tuple[q.Query, list[int]]:
    """The query an identifier asks for, and the tags of requested keys the index does not hold (returned
    empty, PS3.4 C.2.2.1.3)."""
    level_text = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    try:
        level = q.Level(level_text)
    except ValueError as exc:
        raise InvalidRequest(f"QueryRetrieveLevel {level_text!r} is not PATIENT, STUDY, SERIES or IMAGE") from exc
    if level is q.Level.PATIENT and not sop_class.startswith(PATIENT_ROOT_FIND[:-2]):
        raise InvalidRequest("QueryRetrieveLevel PATIENT needs the Patient Root information model")
    query = q.Query(level=level, defaults=frozenset())
    unknown: list[int] = []
    for elem in identifier:
        if elem.tag in _SKIP or elem.tag.element == 0 or elem.tag.is_private:
            continue
        attr = q.ATTRIBUTES.get(elem.keyword)
        if attr is None or elem.VR == "SQ":
            unknown.append(int(elem.tag))
            continue
        query.matches[attr.keyword] = _text(elem.value)
    q.check(query)
    return query, unknown


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def row_to_dataset(row: dict[str, Any], level: q.Level, unknown: list[int], ae_title: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = str(level)
    ds.RetrieveAETitle = ae_title
    for attr, value in q.keyword_values(row):
        ds.add_new(attr.tag, attr.vr, _dicom_value(attr.vr, value))
    for tag in unknown:
        ds.add_new(tag, _vr_of(tag), None)
    if any(isinstance(v, str) and not v.isascii() for v in row.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _dicom_value(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    text = str(value)
    return text.split("\\") if "\\" in text else text


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def handle_find(event: evt.Event, catalog: Catalog, settings: Settings) -> Iterator[tuple[int, Dataset | None]]:
    requestor = event.assoc.requestor
    try:
        query, unknown = identifier_to_query(event.identifier, str(event.context.abstract_syntax))
    except DcmnodeError as err:
        log.warning("C-FIND from %s refused: %s", requestor.ae_title, err.reason)
        yield _failure(IDENTIFIER_MISMATCH, err.reason), None
        return
    count = 0
    for row in catalog.iterate(query):
        if event.is_cancelled:
            log.info("C-FIND from %s cancelled after %d matches", requestor.ae_title, count)
            yield CANCEL, None
            return
        count += 1
        yield PENDING, row_to_dataset(row, query.level, unknown, settings.node.ae_title)
    log.info("C-FIND %s from %s: %d matches", query.level, requestor.ae_title, count)


def _failure(code: int, reason: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = reason[:64]
    return status


def _retrieve_files(event: evt.Event, catalog: Catalog) -> list[retrieve.StoredFile]:
    """The instances a C-MOVE/C-GET identifier names. The level's unique key must be given (PS3.4 C.4.2.2.1),
    so that an empty identifier cannot retrieve the whole store."""
    query, _ = identifier_to_query(event.identifier, str(event.context.abstract_syntax))
    unique = q.UNIQUE_KEY[query.level]
    value = query.matches.get(unique, "").strip()
    if not value or "*" in value or "?" in value:
        raise InvalidRequest(f"a {query.level} retrieve needs {unique} (one value or a list of UIDs)")
    return catalog.select(query.matches, query.level)


def handle_move(event: evt.Event, catalog: Catalog, settings: Settings) -> Iterator[Any]:
    requestor = event.assoc.requestor
    destination = str(event.move_destination).strip()
    peer = settings.peers.get(destination)
    if peer is None:
        log.warning(
            "C-MOVE from %s to %s refused (0xA801): move destination unknown; declare it as [peers.%s] host/port",
            requestor.ae_title,
            destination,
            destination,
        )
        yield None, None
        return
    try:
        files = _retrieve_files(event, catalog)
    except DcmnodeError as err:
        log.warning("C-MOVE from %s refused: %s", requestor.ae_title, err.reason)
        # pynetdicom answers only after associating with the destination: propose just Verification (every
        # SCP takes it), then fail the one announced sub-operation with the reason.
        yield peer.host, peer.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield _failure(IDENTIFIER_MISMATCH, err.reason), None
        return
    accepted: dict[str, list[str]] = {}
    contexts = send.proposal(files)
    yield peer.host, peer.port, {"contexts": contexts, "evt_handlers": [(evt.EVT_ACCEPTED, _remember, [accepted])]}
    yield len(files)
    log.info("C-MOVE from %s: %d instances to %s (%s:%d)", requestor.ae_title, len(files), destination, *_at(peer))
    yield from _sub_operations(event, files, accepted)


def _at(peer: Any) -> tuple[str, int]:
    return peer.host, peer.port


def _remember(event: evt.Event, accepted: dict[str, list[str]]) -> None:
    for cx in event.assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), []).extend(str(ts) for ts in cx.transfer_syntax)


def _sub_operations(
    event: evt.Event, files: list[retrieve.StoredFile], accepted: dict[str, list[str]]
) -> Iterator[tuple[int, Dataset | None]]:
    for item in files:
        if event.is_cancelled:
            yield CANCEL, None
            return
        how = retrieve.plan(item.transfer_syntax, accepted.get(item.sop_class, []))
        if how is None:
            log.warning("no accepted transfer syntax for %s (%s)", item.sop, item.sop_class)
            yield PENDING, _unsendable(item)
            continue
        try:
            ds = retrieve.dataset(item, how)
        except (DcmnodeError, OSError) as err:
            log.warning("cannot send %s: %s", item.sop, getattr(err, "reason", err))
            yield PENDING, _unsendable(item)
            continue
        yield PENDING, ds


def _unsendable(item: retrieve.StoredFile) -> Dataset:
    """A stand-in pynetdicom's send_c_store refuses (no presentation context for its SOP class), so that the
    sub-operation counts as failed and the instance lands in FailedSOPInstanceUIDList (PS3.4 C.4.2.1.4.2)."""
    ds = Dataset()
    ds.SOPClassUID = NEVER_NEGOTIATED
    ds.SOPInstanceUID = item.sop
    return ds


def handle_get(event: evt.Event, catalog: Catalog, settings: Settings) -> Iterator[Any]:
    requestor = event.assoc.requestor
    try:
        files = _retrieve_files(event, catalog)
    except DcmnodeError as err:
        log.warning("C-GET from %s refused: %s", requestor.ae_title, err.reason)
        yield 1
        yield _failure(IDENTIFIER_MISMATCH, err.reason), None
        return
    accepted: dict[str, list[str]] = {}
    for cx in event.assoc.accepted_contexts:
        if cx.as_scu:  # storage contexts where we, the C-GET SCP, act as storage SCU (role selection)
            accepted.setdefault(str(cx.abstract_syntax), []).extend(str(ts) for ts in cx.transfer_syntax)
    yield len(files)
    log.info("C-GET from %s: %d instances", requestor.ae_title, len(files))
    yield from _sub_operations(event, files, accepted)
