"""DIMSE statuses (PS3.4): the constants, and the Status each domain error is answered with, per service.

A leaf, so that both adapters use it: DIMSE answers ``failure(err, service)``, STOW-RS
reports ``stow_reason(err)`` (``code(err, Service.STORE)``, 0x0124 as 0x0110) as the part's FailureReason
(PS3.18 §10.5.3).

``TABLE`` is the one table of error class x service. A cell it leaves blank is ``err.status`` where the service
may answer that code, else the service's "unable to process" code:

- C-STORE (PS3.4 Table B.2-1): A7xx out of resources, A9xx data set does not match SOP class, Cxxx cannot
  understand; and 0x0110 processing failure, 0x0111 duplicate SOP instance (PS3.7 Annex C), which dcmnode
  has always answered. So every C-STORE answer is ``err.status``.
- C-FIND (Table C.4-1): A700, A900 identifier does not match SOP class, Cxxx unable to process.
- C-MOVE (Table C.4-2): A701/A702 out of resources, A801 move destination unknown, A900, Cxxx.
- C-GET (Table C.4-3): A701/A702, A900, Cxxx.

The standard leaves the Cxxx value to the implementation; dcmnode uses pynetdicom's qrscp codes, 0xC320 (C-FIND),
0xC520 (C-MOVE) and 0xC420 (C-GET), distinct from the 0xC3x1/0xC4x1/0xC5x1 pynetdicom itself answers when a
handler fails. A bad identifier (``InvalidRequest`` on a query or retrieve) is 0xA900, as in qrscp.

A service the caller may not use (DIMSE access control, ``dimse/access.py``) is answered ``not_authorized``:
0x0124 Refused: Not Authorized (PS3.7 Annex C, a general failure status) with the reason as Error Comment, on
every service, C-ECHO included (pynetdicom's Verification status table is the general one, which holds it).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from pydicom.dataset import Dataset

from dcmnode.errors import AuditUnavailable, Cancelled, DcmnodeError, InvalidRequest, TooManyRequests

SUCCESS: Final = 0x0000
PENDING: Final = 0xFF00  # C-FIND: matches are continuing; C-MOVE/C-GET: sub-operations are continuing
CANCEL: Final = 0xFE00
SUB_OPERATIONS_WARNING: Final = 0xB000  # C-MOVE/C-GET: sub-operations complete, one or more failures
PROCESSING_FAILURE: Final = 0x0110  # PS3.7 Annex C
DUPLICATE_SOP_INSTANCE: Final = 0x0111  # PS3.7 Annex C
OUT_OF_RESOURCES: Final = 0xA700
OUT_OF_RESOURCES_MATCHES: Final = 0xA701  # unable to calculate the number of matches
OUT_OF_RESOURCES_SUB_OPERATIONS: Final = 0xA702  # unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900  # C-STORE: data set does not match SOP class
CANNOT_UNDERSTAND: Final = 0xC000
NOT_AUTHORIZED: Final = 0x0124  # PS3.7 Annex C: Refused: Not Authorized
ERROR_COMMENT_LENGTH: Final = 64  # Error Comment (0000,0902) is LO


class Service(StrEnum):
    ECHO = "C-ECHO"
    STORE = "C-STORE"
    FIND = "C-FIND"
    MOVE = "C-MOVE"
    GET = "C-GET"


def _codes(*codes: int | range) -> frozenset[int]:
    return frozenset(c for part in codes for c in (part if isinstance(part, range) else (part,)))


_A7XX, _A9XX, _CXXX = range(0xA700, 0xA800), range(0xA900, 0xAA00), range(0xC000, 0xD000)
ANSWERABLE: Final[Mapping[Service, frozenset[int]]] = {
    Service.ECHO: _codes(PROCESSING_FAILURE, NOT_AUTHORIZED),
    Service.STORE: _codes(_A7XX, _A9XX, _CXXX, PROCESSING_FAILURE, DUPLICATE_SOP_INSTANCE, NOT_AUTHORIZED),
    # Cancel (0xFE00) is no failure, but a final status the Q/R services may answer (PS3.4 C.4.1.1.4 ...)
    Service.FIND: _codes(OUT_OF_RESOURCES, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, _CXXX, CANCEL, NOT_AUTHORIZED),
    Service.MOVE: _codes(
        NOT_AUTHORIZED,
        OUT_OF_RESOURCES_MATCHES,
        OUT_OF_RESOURCES_SUB_OPERATIONS,
        MOVE_DESTINATION_UNKNOWN,
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        _CXXX,
        CANCEL,
    ),
    Service.GET: _codes(
        NOT_AUTHORIZED,
        OUT_OF_RESOURCES_MATCHES,
        OUT_OF_RESOURCES_SUB_OPERATIONS,
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
        _CXXX,
        CANCEL,
    ),
}
"""The failure codes each service may answer (PS3.4 Tables B.2-1, C.4-1, C.4-2, C.4-3; 0x0124 from PS3.7 Annex C)."""

UNABLE_TO_PROCESS: Final[Mapping[Service, int]] = {
    Service.ECHO: PROCESSING_FAILURE,
    Service.STORE: PROCESSING_FAILURE,
    Service.FIND: 0xC320,
    Service.MOVE: 0xC520,
    Service.GET: 0xC420,
}

_BAD_IDENTIFIER = IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
TABLE: Final[Mapping[type[DcmnodeError], Mapping[Service, int]]] = {
    InvalidRequest: {Service.FIND: _BAD_IDENTIFIER, Service.MOVE: _BAD_IDENTIFIER, Service.GET: _BAD_IDENTIFIER},
    # PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4: matching or sub-operations terminated due to a Cancel request
    Cancelled: {Service.FIND: CANCEL, Service.MOVE: CANCEL, Service.GET: CANCEL},
    # audit.fail_closed: out of resources (the audit trail) before any sub-operation
    AuditUnavailable: {Service.MOVE: OUT_OF_RESOURCES_SUB_OPERATIONS, Service.GET: OUT_OF_RESOURCES_SUB_OPERATIONS},
    # a client over one of its limits (core/limits.py): out of resources, as C-STORE's and C-FIND's A700
    TooManyRequests: {Service.MOVE: OUT_OF_RESOURCES_SUB_OPERATIONS, Service.GET: OUT_OF_RESOURCES_SUB_OPERATIONS},
}


def code(err: DcmnodeError, service: Service) -> int:
    """The Status ``service`` answers ``err`` with: its cell in ``TABLE`` (the first class ``err`` is an instance
    of: list a subclass before its base), else ``err.status`` where the service may answer it, else the service's
    "unable to process" code."""
    for cls, cells in TABLE.items():
        if isinstance(err, cls) and service in cells:
            return cells[service]
    return err.status if err.status in ANSWERABLE[service] else UNABLE_TO_PROCESS[service]


def stow_reason(err: DcmnodeError) -> int:
    """A STOW-RS part's FailureReason (PS3.18 Table 10.5.3-2): the C-STORE status, except 0x0124 Refused: Not
    Authorized, which that table does not list: 0x0110 Processing failure (the reason, in the Error Comment,
    says why)."""
    found = code(err, Service.STORE)
    return PROCESSING_FAILURE if found == NOT_AUTHORIZED else found


def failure(err: DcmnodeError, service: Service) -> Dataset:
    """The failure response's status: Status ``code(err, service)`` and the reason as Error Comment."""
    status = Dataset()
    status.Status = code(err, service)
    status.ErrorComment = err.reason[:ERROR_COMMENT_LENGTH]
    return status


def not_authorized(reason: str) -> Dataset:
    """The answer to a request the caller may not make: Status 0x0124 and the reason as Error Comment."""
    status = Dataset()
    status.Status = NOT_AUTHORIZED
    status.ErrorComment = reason[:ERROR_COMMENT_LENGTH]
    return status
