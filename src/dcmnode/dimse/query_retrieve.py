"""C-FIND, C-MOVE and C-GET SCP (PS3.4 Annex C), Patient Root and Study Root, over ``core.query`` and
``core.retrieve``.

C-FIND answers with the same engine and the same values as QIDO-RS: one pending response per match, holding
exactly the keys the identifier asked for. C-MOVE sends to a destination declared under ``[peers]`` (0xA801
and a log line otherwise); C-GET sends back over the requesting association, on the storage contexts it
negotiated with SCP/SCU role selection. Both send each file as stored when the receiver accepted its transfer
syntax, and decompress it when the receiver accepted only uncompressed syntaxes. C-CANCEL is honoured between
matches and between sub-operations. A request that fails is answered from ``dcmnode.status``: 0xA900 for a bad
identifier, the service's "unable to process" code (0xC320, 0xC520, 0xC420) for anything else.

Per-study access: the calling AE's ``groups`` (``[peers.X] groups``; a caller not declared, or declared without
``groups``, sees every study) restrict C-FIND matches, patient-level counts and the instances C-MOVE and C-GET
send: a study outside them is answered as if it were not stored (no match, no sub-operation).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dcmnode import status
from dcmnode.config import Peer, Settings
from dcmnode.core import access, coercion, retrieve
from dcmnode.core import query as q
from dcmnode.core.audit import Actor, Audit
from dcmnode.core.catalog import Catalog
from dcmnode.dimse import audit, coerce, identifier, send, tls
from dcmnode.dimse.compat import EncodedIdentifier
from dcmnode.errors import AuditUnavailable, DcmnodeError, InvalidRequest
from dcmnode.status import CANCEL, MOVE_DESTINATION_UNKNOWN, PENDING, SUB_OPERATIONS_WARNING, SUCCESS, Service

log = logging.getLogger(__name__)

NEVER_NEGOTIATED = "2.25.0"  # a valid UID no presentation context ever names
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
INTERNAL_ERROR = "internal error; see the node's log"
_SKIP = {0x00080005, 0x00080052, 0x00080054, 0x00080056}  # charset, level, retrieve AE, availability

Response = tuple[int | Dataset, Dataset | EncodedIdentifier | None]
"""(Status, data set): a status code or a status data set (Status, Error Comment), with the C-FIND match or the
instance a C-MOVE/C-GET sub-operation sends (None with a final status)."""
Destination = tuple[None, None] | tuple[str, int, dict[str, Any]]
"""Where a C-MOVE sends: (None, None) for an unknown destination, else host, port and ``AE.associate`` keywords."""


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
    """A match as a Dataset: the row's keys, Query/Retrieve Level, Retrieve AE Title, the unknown keys empty
    (``identifier.Identifiers`` encodes the same bytes without building it)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = str(level)
    ds.RetrieveAETitle = ae_title
    for attr, value in q.keyword_values(row):
        ds.add_new(attr.tag, attr.vr, _dicom_value(attr.vr, value))
    for tag in unknown:
        ds.add_new(tag, identifier.vr_of(tag), None)
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


def handle_find(
    event: evt.Event,
    catalog: Catalog,
    settings: Settings,
    trail: Audit | None = None,
    principal: access.Principal | None = None,
) -> Iterator[Response]:
    """Answer a C-FIND (``evt.EVT_C_FIND``) from the index.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-FIND request: its ``identifier`` (query level and keys) and the information model it came under
        (``context.abstract_syntax``: PATIENT level needs Patient Root).
    catalog : Catalog
        The read side of the store.
    settings : Settings
        The node's settings (its AE title is each match's Retrieve AE Title).
    trail : Audit, optional
        The audit trail: one Query record per request (``dimse/audit.py``); with ``audit.fail_closed`` the
        request is refused (0xA700) while it cannot be written.

    Yields
    ------
    Response
        ``(0xFF00, match)`` per matching entity, holding the keys the identifier asked for (those the index
        does not hold come back empty); then nothing, and pynetdicom answers 0x0000. On C-CANCEL
        ``(0xFE00, None)``. On a failure one ``(status, None)`` with Status and Error Comment (``status.failure``):
        0xA900 for a bad identifier, 0xC320 for anything else.
    """
    final = SUCCESS
    try:
        if trail is not None:
            trail.guard()
        final = yield from _matches(event, catalog, settings, principal)
    except Exception as exc:
        refusal = _refusal(exc, Service.FIND, event)
        final = int(refusal.Status)
        yield refusal, None
    if trail is not None:
        _audit(trail.query, audit.requestor(event), audit.identifier_keys(event.identifier), audit.outcome(final),
               sop_class=str(event.context.abstract_syntax), study=_study_key(event.identifier))  # fmt: skip


def caller_groups(event: evt.Event, settings: Settings, principal: access.Principal | None = None) -> frozenset[str]:
    """The groups of whoever asks: the association's principal (``dimse.access.Gate``: a verified user's groups,
    else the calling AE's ``[peers.X] groups``); without a gate, the peer's groups when declared, else every study."""
    if principal is not None:
        return principal.groups
    peer = settings.peers.get(str(event.assoc.requestor.ae_title).strip())
    return frozenset(peer.groups) if peer is not None else frozenset({access.ALL_GROUPS})


def _matches(
    event: evt.Event, catalog: Catalog, settings: Settings, principal: access.Principal | None
) -> Generator[Response, None, int]:
    requestor = event.assoc.requestor
    query, unknown = identifier_to_query(event.identifier, str(event.context.abstract_syntax))
    query.groups = caller_groups(event, settings, principal)
    matches = _Matches(query, unknown, settings.node.ae_title, UID(str(event.context.transfer_syntax)))
    count = 0
    for row in catalog.iterate(query):
        if event.is_cancelled:
            log.info("C-FIND from %s cancelled after %d matches", requestor.ae_title, count)
            yield CANCEL, None
            return CANCEL
        count += 1
        yield PENDING, matches.identifier(row)
    log.info("C-FIND %s from %s: %d matches", query.level, requestor.ae_title, count)
    return SUCCESS


class _Matches:
    """The identifiers of one C-FIND's matches: encoded from the row where the context is little endian
    (``identifier.Identifiers``, handed to pynetdicom as ``EncodedIdentifier``), else, and for a row that encoder
    leaves to pydicom, the Dataset ``row_to_dataset`` builds."""

    def __init__(self, query: q.Query, unknown: list[int], ae_title: str, syntax: UID) -> None:
        self.level, self.unknown, self.ae_title = query.level, unknown, ae_title
        self.implicit = syntax.is_implicit_VR and not syntax.is_deflated
        self.encoder: identifier.Identifiers | None = None
        if syntax.is_little_endian:
            self.encoder = identifier.Identifiers(query.returned(), unknown, str(query.level), ae_title, self.implicit)

    def identifier(self, row: dict[str, Any]) -> Dataset | EncodedIdentifier:
        data = self.encoder.encode(row) if self.encoder is not None else None
        if data is None:
            return row_to_dataset(row, self.level, self.unknown, self.ae_title)
        return EncodedIdentifier(
            data, self.implicit, lambda: row_to_dataset(row, self.level, self.unknown, self.ae_title)
        )


def _study_key(identifier: Dataset) -> str:
    """The study an identifier names by one Study Instance UID (for the audit record), else ""."""
    value = str(identifier.get("StudyInstanceUID", "") or "").strip()
    return value if value and not any(c in value for c in "\\*?") else ""


def _audit(write: Callable[..., bool], *args: Any, **kwargs: Any) -> None:
    """Write a record once the answer is out; a failure is logged and counted by the trail (with
    ``fail_closed`` the next request is refused by ``guard``)."""
    with contextlib.suppress(AuditUnavailable):
        write(*args, **kwargs)


def _refusal(exc: Exception, service: Service, event: evt.Event) -> Dataset:
    """The failure status for an error raised while answering ``event`` (call it in the ``except`` block): a
    domain error's row of the status table; any other exception is logged with its traceback and answered as
    a processing failure (the service's "unable to process" code), its text kept out of the answer."""
    caller = event.assoc.requestor.ae_title
    err = exc if isinstance(exc, DcmnodeError) else DcmnodeError(INTERNAL_ERROR)
    answer = status.failure(err, service)
    if err is exc:
        log.warning("%s from %s refused 0x%04X: %s", service, caller, answer.Status, err.reason)
    else:
        log.exception("%s from %s failed (0x%04X)", service, caller, answer.Status)
    return answer


def _retrieve_files(
    event: evt.Event, catalog: Catalog, settings: Settings, principal: access.Principal | None
) -> list[retrieve.StoredFile]:
    """The instances a C-MOVE/C-GET identifier names, of the studies the caller sees (a PATIENT-level retrieve
    takes each visible study of the patient, nothing of the others). The level's unique key must be given
    (PS3.4 C.4.2.2.1), so that an empty identifier cannot retrieve the whole store."""
    query, _ = identifier_to_query(event.identifier, str(event.context.abstract_syntax))
    unique = q.UNIQUE_KEY[query.level]
    value = query.matches.get(unique, "").strip()
    if not value or "*" in value or "?" in value:
        raise InvalidRequest(f"a {query.level} retrieve needs {unique} (one value or a list of UIDs)")
    return catalog.select(query.matches, query.level, caller_groups(event, settings, principal))


def _proposal(files: list[retrieve.StoredFile]) -> list[PresentationContext]:
    """``send.proposal``; needing more presentation contexts than one association holds is a limit of the
    node, not a fault of the identifier, so it is answered "unable to process", not 0xA900."""
    try:
        return send.proposal(files)
    except InvalidRequest as err:
        raise DcmnodeError(err.reason) from err


def handle_move(
    event: evt.Event,
    catalog: Catalog,
    settings: Settings,
    trail: Audit | None = None,
    principal: access.Principal | None = None,
) -> Iterator[Destination | int | Response]:
    """Answer a C-MOVE (``evt.EVT_C_MOVE``): send the instances the identifier names to a declared peer.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-MOVE request: ``identifier`` (level and unique keys), ``move_destination`` (an AE title).
    catalog : Catalog
        The read side of the store.
    settings : Settings
        The node's settings: ``peers`` holds the destinations C-MOVE may send to.
    trail : Audit, optional
        The audit trail: one Instances Transferred (R) record per request and destination; with
        ``audit.fail_closed`` the request is refused (0xA702) while it cannot be written.

    Yields
    ------
    Destination
        First, where to send: ``(None, None)`` when the destination is not under ``[peers]`` (pynetdicom then
        answers 0xA801 and the generator ends). Else ``(host, port, {"contexts": ..., "evt_handlers": ...})``
        proposing each SOP class in its stored and in the uncompressed transfer syntaxes.
    int
        Second, the number of sub-operations (pynetdicom associates with the destination after this).
    Response
        Then one ``(0xFF00, instance)`` per sub-operation, an instance the destination cannot receive as a
        stand-in that fails (``_unsendable``), or ``(0xFE00, None)`` on C-CANCEL; pynetdicom sends the C-STOREs,
        counts them and answers 0x0000, 0xB000 or 0xA702. A request that fails before any sub-operation still
        yields a destination (proposing only Verification) and a count of 1, since pynetdicom answers only
        after associating, then its failure: 0xA900 for a bad identifier, 0xC520 for anything else.
    """
    peer = _destination(event, settings)
    name = str(event.move_destination).strip()
    if peer is None:
        _audit_retrieve(trail, event, {}, MOVE_DESTINATION_UNKNOWN, Actor.peer(name))
        yield None, None
        return
    destination = Actor.peer(name, peer.host)
    try:
        if trail is not None:
            trail.guard()
        files = _retrieve_files(event, catalog, settings, principal)
        contexts = _proposal(files)
        over = _over(peer)  # TLS to the destination: pynetdicom passes tls_args on to AE.associate
        coerced = coercion.for_peer(settings, peer)  # [peers.X] deidentify: it receives the profile's output
    except Exception as exc:
        refusal = _refusal(exc, Service.MOVE, event)
        _audit_retrieve(trail, event, {}, int(refusal.Status), destination)
        yield from _refused_move(peer, refusal)
        return
    accepted: dict[str, list[str]] = {}
    yield (
        peer.host,
        peer.port,
        {"contexts": contexts, "evt_handlers": [(evt.EVT_ACCEPTED, _remember, [accepted])], **over},
    )
    yield len(files)
    log.info("C-MOVE from %s: %d instances to %s", event.assoc.requestor.ae_title, len(files), _described(peer))
    final = yield from _sub_operations(event, files, accepted, coerced)
    _audit_retrieve(trail, event, audit.studies_of(files), final, destination)


def _audit_retrieve(
    trail: Audit | None, event: evt.Event, studies: dict[str, int], final: int, destination: Actor | None
) -> None:
    """The C-MOVE (to ``destination``) or C-GET record: 110104 R, the studies sent and how many of each."""
    if trail is not None:
        _audit(trail.transferred_out, audit.requestor(event), studies, audit.outcome(final), destination,
               detail={"via": "C-MOVE" if destination is not None else "C-GET"})  # fmt: skip


def refuse_move(event: evt.Event, settings: Settings, refusal: Dataset) -> Iterator[Destination | int | Response]:
    """Answer a C-MOVE with ``refusal`` (e.g. 0x0124, ``dimse.access``): 0xA801 for an undeclared destination as
    ``handle_move`` does, else the refusal after the Verification-only association ``_refused_move`` opens."""
    peer = _destination(event, settings)
    if peer is None:
        yield None, None
        return
    yield from _refused_move(peer, refusal)


def _destination(event: evt.Event, settings: Settings) -> Peer | None:
    """The declared peer a C-MOVE names as Move Destination; None (and a log line saying where to declare it)
    for an AE title not under ``[peers]``."""
    destination = str(event.move_destination).strip()
    peer = settings.peers.get(destination)
    if peer is None:
        log.warning(
            "C-MOVE from %s to %s refused (0xA801): move destination unknown; declare it as [peers.%s] host/port",
            event.assoc.requestor.ae_title, destination, destination,
        )  # fmt: skip
    return peer


def _over(peer: Peer) -> dict[str, Any]:
    """``AE.associate`` keywords for the sub-association: ``tls_args`` for a peer with ``tls = true``."""
    tls_args = tls.peer_tls_args(peer)
    return {"tls_args": tls_args} if tls_args is not None else {}


def _described(peer: Peer) -> str:
    return f"{peer.ae_title} ({peer.host}:{peer.port})"


def _refused_move(peer: Peer, refusal: Dataset) -> Iterator[Destination | int | Response]:
    """A C-MOVE failure before any sub-operation. pynetdicom answers only after associating with the destination:
    propose just Verification (every SCP takes it), announce one sub-operation, then fail it with the reason."""
    yield peer.host, peer.port, {"contexts": [build_context(Verification)], **_over(peer)}
    yield 1
    yield refusal, None


def _remember(event: evt.Event, accepted: dict[str, list[str]]) -> None:
    """``evt.EVT_ACCEPTED`` on the association with the C-MOVE destination: note the transfer syntaxes it
    accepted per SOP class (filled into ``accepted``) before the first sub-operation."""
    for cx in event.assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), []).extend(str(ts) for ts in cx.transfer_syntax)


def _sub_operations(
    event: evt.Event,
    files: list[retrieve.StoredFile],
    accepted: dict[str, list[str]],
    coerced: coercion.Coercion | None = None,
) -> Generator[Response, None, int]:
    """The sub-operations, one instance at a time: its stored file as stored where the receiver accepted its
    transfer syntax (``coerce.outgoing``: never decoded), else decompressed or de-identified with ``coerced``,
    while the next file is read in (``retrieve.READAHEAD``). Returns the final status as far as this side knows
    (0xFE00 on a cancel, 0xB000 when an instance could not be offered, e.g. one the profile refused: it lands in
    FailedSOPInstanceUIDList; the destination's own refusals are counted by pynetdicom)."""
    final = SUCCESS
    for n, item in enumerate(files):
        if event.is_cancelled:
            yield CANCEL, None
            return CANCEL
        if n + 1 < len(files):
            retrieve.READAHEAD.ahead(files[n + 1].path)  # read in while this one is sent
        how = retrieve.plan(item.transfer_syntax, accepted.get(item.sop_class, []))
        if how is None:
            log.warning("no accepted transfer syntax for %s (%s)", item.sop, item.sop_class)
            final = SUB_OPERATIONS_WARNING
            yield PENDING, _unsendable(item)
            continue
        try:
            ds = coerce.outgoing(item, how, accepted.get(item.sop_class, []), coerced)
        except (DcmnodeError, OSError) as err:
            log.warning("cannot send %s: %s", item.sop, getattr(err, "reason", err))
            final = SUB_OPERATIONS_WARNING
            yield PENDING, _unsendable(item)
            continue
        yield PENDING, ds
    return final


def _unsendable(item: retrieve.StoredFile) -> Dataset:
    """A stand-in pynetdicom's send_c_store refuses (no presentation context for its SOP class), so that the
    sub-operation counts as failed and the instance lands in FailedSOPInstanceUIDList (PS3.4 C.4.2.1.4.2)."""
    ds = Dataset()
    ds.SOPClassUID = NEVER_NEGOTIATED
    ds.SOPInstanceUID = item.sop
    return ds


def handle_get(
    event: evt.Event,
    catalog: Catalog,
    settings: Settings,
    trail: Audit | None = None,
    principal: access.Principal | None = None,
) -> Iterator[int | Response]:
    """Answer a C-GET (``evt.EVT_C_GET``): send the instances the identifier names back over the same
    association, as C-STORE sub-operations on the storage contexts the requestor accepted the SCP role for.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-GET request: ``identifier`` (level and unique keys); ``assoc.accepted_contexts`` tells what the
        requestor can receive.
    catalog : Catalog
        The read side of the store.
    settings : Settings
        The node's settings: the calling AE's ``groups`` under ``[peers]``.
    trail : Audit, optional
        The audit trail: one Instances Transferred (R) record per request; with ``audit.fail_closed`` the
        request is refused (0xA702) while it cannot be written.

    Yields
    ------
    int
        First, the number of sub-operations.
    Response
        Then one ``(0xFF00, instance)`` per sub-operation, a stand-in that fails for an instance the requestor
        cannot receive, or ``(0xFE00, None)`` on C-CANCEL; pynetdicom answers 0x0000, 0xB000 or 0xA702 at the
        end. A request that fails yields a count of 1 (pynetdicom answers nothing before it), then its failure:
        0xA900 for a bad identifier, 0xC420 for anything else.
    """
    requestor = event.assoc.requestor
    try:
        if trail is not None:
            trail.guard()
        files = _retrieve_files(event, catalog, settings, principal)
        coerced = coercion.for_peer(settings, settings.peers.get(str(requestor.ae_title).strip()))
    except Exception as exc:
        refusal = _refusal(exc, Service.GET, event)
        _audit_retrieve(trail, event, {}, int(refusal.Status), None)
        yield 1
        yield refusal, None
        return
    accepted: dict[str, list[str]] = {}
    for cx in event.assoc.accepted_contexts:
        if cx.as_scu:  # storage contexts where we, the C-GET SCP, act as storage SCU (role selection)
            accepted.setdefault(str(cx.abstract_syntax), []).extend(str(ts) for ts in cx.transfer_syntax)
    yield len(files)
    log.info("C-GET from %s: %d instances", requestor.ae_title, len(files))
    final = yield from _sub_operations(event, files, accepted, coerced)
    _audit_retrieve(trail, event, audit.studies_of(files), final, None)
