"""DIMSE SCP: C-ECHO and C-STORE over pynetdicom, a thin adapter over ``core.ingest``.

Imports: stdlib, pynetdicom, pydicom, config, errors, model, core. The DICOM status of a failure comes from the
domain error (``err.status``, PS3.4 Annex B.2.3): 0xA700 out of resources, 0xA900 data set does not match SOP
class, 0xC000 cannot understand, 0x0110 processing failure. Success (0x0000) is answered only after
``Ingest`` has made the instance durable.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dcmnode.config import Settings
from dcmnode.core.ingest import Ingest
from dcmnode.core.parse import Expected
from dcmnode.errors import DcmnodeError
from dcmnode.model import Source, SourceKind

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110


def build_ae(settings: Settings) -> AE:
    dimse = settings.dimse
    ae = AE(ae_title=settings.node.ae_title)
    ae.maximum_associations = dimse.max_associations
    ae.maximum_pdu_size = dimse.max_pdu
    ae.acse_timeout = dimse.acse_timeout
    ae.dimse_timeout = dimse.dimse_timeout
    ae.network_timeout = dimse.network_timeout
    callers = list(dimse.allowed_callers)
    if dimse.require_known_callers:
        callers += list(settings.peers)
    if callers:
        ae.require_calling_aet = sorted(set(callers))
    ae.add_supported_context(Verification)
    # Every storage SOP class, every transfer syntax pynetdicom knows: stored as received, never transcoded.
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


def start(settings: Settings, ingest: Ingest) -> ThreadedAssociationServer:
    """Start the SCP on its own threads (one per association) and return the running server."""
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, handle_open),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingest]),
        (evt.EVT_ESTABLISHED, handle_established),
        (evt.EVT_REJECTED, handle_rejected),
    ]
    server = ae.start_server((settings.dimse.host, settings.dimse.port), block=False, evt_handlers=handlers)
    assert server is not None
    return server


def handle_open(event: evt.Event) -> None:
    # Nagle + delayed ACK add ~40 ms to every DIMSE round trip (what stock Orthanc suffers, shared/bench).
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_established(event: evt.Event) -> None:
    requestor = event.assoc.requestor
    log.info("association from %s (%s:%s)", requestor.ae_title, requestor.address, requestor.port)


def handle_rejected(event: evt.Event) -> None:
    requestor = event.assoc.requestor
    log.warning("association from %s (%s) rejected", requestor.ae_title, requestor.address)


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, ingest: Ingest) -> int | Dataset:
    requestor = event.assoc.requestor
    source = Source(SourceKind.DIMSE, ae_title=requestor.ae_title, address=str(requestor.address))
    expected = Expected(
        sop_class=str(event.context.abstract_syntax),
        sop_instance=str(event.request.AffectedSOPInstanceUID or "") or None,
    )
    try:
        ingest.store_bytes(event.encoded_dataset(), source, expected)
    except DcmnodeError as err:
        log.warning("C-STORE from %s refused 0x%04X: %s", source, err.status, err.reason)
        return _status(err.status, err.reason)
    except Exception:
        log.exception("C-STORE from %s failed", source)
        return _status(PROCESSING_FAILURE, "internal error while storing; see the node's log")
    return SUCCESS


def _status(code: int, reason: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = reason[:64]  # LO: at most 64 characters
    return status
