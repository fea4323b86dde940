"""Domain errors. Each carries the DICOM status an adapter answers with.

Adapters map these in exactly one place each: DIMSE statuses and STOW-RS FailureReason in
``status.py`` (``err.status`` where the service may answer it, else its "unable to process" code; 0xA900 for a
bad C-FIND/C-MOVE/C-GET identifier), HTTP codes in ``app.py`` (``HTTP_STATUS``).

    DcmnodeError                 0x0110 Processing failure (PS3.7 Annex C)
    ├── InvalidInstance          0xC000 Cannot understand (not DICOM, truncated, missing/invalid UIDs)
    │   ├── SopClassMismatch     0xA900 Data Set does not match SOP Class
    │   └── UnsupportedTransferSyntax 0xC122 the File Meta names a transfer syntax no reader here decodes
    ├── DuplicateInstance        0x0111 Duplicate SOP Instance (PS3.7 C.4), on_duplicate = "reject"
    ├── Conflict                 0x0110 e.g. STOW study UID differs from the request path
    ├── StorageFull              0xA700 Refused: Out of resources
    ├── NotFound
    ├── InvalidRequest           bad HTTP request syntax (400); a bad query/retrieve identifier (0xA900)
    ├── UnsupportedMediaType     (415)
    ├── NotAcceptable            no media type / transfer syntax in the Accept header can be served (406)
    ├── PayloadTooLarge          (413)
    ├── TooManyRequests          0xA700 a client over one of its limits (429 with Retry-After, ``core/limits.py``)
    ├── AuditUnavailable         0xA700 (0xA702 on C-MOVE/C-GET, 503): audit.fail_closed and no record written
    ├── Cancelled                0x0110 (0xFE00 Cancel on C-FIND/C-MOVE/C-GET): stopped on a cancel request
    ├── ConfigError              invalid settings (startup only)
    ├── Unauthorized             0x0124 no or invalid credentials (401)
    └── Forbidden                0x0124 Refused: Not Authorized, a scope is missing (403)
        └── HiddenStudy          0x0124 a writer limited to groups sent an instance of a stored study it does not
                                 see (STOW-RS FailureReason 0x0110, ``status.stow_reason``)
"""

from __future__ import annotations


class DcmnodeError(Exception):
    """Base class; ``status`` is the DICOM status for this failure."""

    status: int = 0x0110

    def __init__(self, reason: str, sop_class: str | None = None, sop_instance: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sop_class = sop_class  # the instance concerned, where known (STOW FailedSOPSequence)
        self.sop_instance = sop_instance


class InvalidInstance(DcmnodeError):
    status = 0xC000


class SopClassMismatch(InvalidInstance):
    status = 0xA900


class DeidentificationRefused(DcmnodeError):
    """An instance the de-identification profile cannot make safe as asked (``deid/``): pixels that may carry
    burned-in text without Clean Pixel Data, text still recognised after masking, no OCR engine to look with.
    Nothing of it is written or sent; the job's report names it with the reason."""

    status = 0x0110  # Processing failure (on a send to a coerced peer: the instance is not sent)


class UnsupportedTransferSyntax(InvalidInstance):
    """The File Meta Information declares a Transfer Syntax UID that no reader here knows (not a DICOM transfer
    syntax in pydicom's dictionary): the data set could not be decoded, nor served to anyone who could. 0xC122 is
    "Referenced Transfer Syntax not supported" (PS3.18 Table 10.5.3-2 FailureReason; PS3.4 Annex B lets C-STORE
    answer any Cxxx "cannot understand")."""

    status = 0xC122


class DuplicateInstance(DcmnodeError):
    status = 0x0111


class Conflict(DcmnodeError):
    status = 0x0110


class StorageFull(DcmnodeError):
    status = 0xA700


class NotFound(DcmnodeError):
    pass


class InvalidRequest(DcmnodeError):
    pass


class UnsupportedMediaType(DcmnodeError):
    pass


class NotAcceptable(DcmnodeError):
    pass


class PayloadTooLarge(DcmnodeError):
    pass


class TooManyRequests(DcmnodeError):
    """A client is over one of its limits (``core/limits.py``): HTTP 429 with ``Retry-After`` (RFC 6585 §4), the
    seconds after which asking again is served (or may be, for a count that waits on other work ending)."""

    status = 0xA700  # Refused: Out of resources

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class AuditUnavailable(DcmnodeError):
    """The audit record of a request could not be written and ``audit.fail_closed`` is on: the request is
    refused."""

    status = 0xA700


class Cancelled(DcmnodeError):
    """Work stopped because a cancel was asked for (raised from inside an SR run when ``should_stop()`` says so);
    the Q/R services answer it 0xFE00 Cancel (``status.TABLE``)."""


class ConfigError(DcmnodeError):
    pass


class Unauthorized(DcmnodeError):
    """No credentials, or credentials that do not prove who is asking (HTTP 401 with ``WWW-Authenticate``)."""

    status = 0x0124  # Refused: Not Authorized


class Forbidden(DcmnodeError):
    """The principal is known but lacks the scope the request needs (HTTP 403)."""

    status = 0x0124  # Refused: Not Authorized


class HiddenStudy(Forbidden):
    """A principal limited to groups sent an instance of a stored study it does not see (or one that would replace
    an instance of such a study): refused, so that knowing a Study Instance UID is not a way into it."""

    status = 0x0124  # Refused: Not Authorized
