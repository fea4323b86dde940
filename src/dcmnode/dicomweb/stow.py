"""STOW-RS (PS3.18 §10.5): POST /studies and /studies/{study}, multipart/related; type="application/dicom".

The body is streamed to temp files part by
part (a 2 GB request never sits in memory); once the closing boundary is in, each part goes through ``core.ingest``
and its outcome lands in ReferencedSOPSequence or FailedSOPSequence (FailureReason = the PS3.4 status a C-STORE of
the part would answer, ``status.stow_reason(err)``).

Vendor extension: ``?label=a&label=b`` labels every study the request stores (per-study access; ``core.labels``).
A principal limited to groups may only set labels among them; an instance of a stored study it does not see fails
with FailureReason 0x0110 and the Error Comment "not authorized: ..." (``errors.HiddenStudy``; 202 when others
were stored, 409 when none was); a new study it stores without ``label`` carries its groups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from dcmnode.core import labels
from dcmnode.core.audit import Transfers
from dcmnode.core.ingest import Ingest
from dcmnode.core.params import content_length
from dcmnode.core.parse import Expected
from dcmnode.core.query import study_filter
from dcmnode.dicomweb import audit
from dcmnode.dicomweb.context import StowLimits, groups, services
from dcmnode.dicomweb.multipart import Part, PartSpooler, parse_media_type
from dcmnode.dicomweb.paths import base_url, path_uid
from dcmnode.errors import DcmnodeError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from dcmnode.model import Source, SourceKind, StoredInstance
from dcmnode.status import CANNOT_UNDERSTAND, PROCESSING_FAILURE, stow_reason

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    reason: str
    sop_class: str | None = None
    sop_instance: str | None = None


async def store(request: Request) -> Response:
    ingest = services(request).ingest
    limits = services(request).stow
    study = request.path_params.get("study")
    if study is not None:
        study = path_uid(study, "StudyInstanceUID")
    asked = labels.checked(request.query_params.getlist("label"))
    labels.allowed_for(asked, groups(request))
    boundary = _check_content_type(request.headers.get("content-type"))
    declared = content_length(request.headers.get("content-length"))
    if declared is not None and declared > limits.max_request_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limits.max_request_bytes}")
    parts = await _spool(request, boundary, ingest, limits)
    if not parts:
        raise InvalidRequest("the multipart body holds no parts")
    transfers = services(request).audit.transfer_in(audit.actor(request), "STOW-RS")
    source = _source(request, asked, study_filter(groups(request)))
    stored, failed = await run_in_threadpool(_ingest_parts, ingest, parts, study, source, transfers)
    await run_in_threadpool(transfers.close)  # one record per study; AuditUnavailable (503) with fail_closed
    base = base_url(request)
    return JSONResponse(
        _response_body(stored, failed, study, base), status_code=_http_status(stored, failed), media_type=DICOM_JSON
    )


def _check_content_type(header: str | None) -> str:
    media = parse_media_type(header)
    if media.type != "multipart/related":
        raise UnsupportedMediaType(f'STOW-RS needs multipart/related; type="{DICOM}", not {header or "nothing"}')
    part_type = media.params.get("type")
    if part_type is not None and part_type.lower() != DICOM:
        raise UnsupportedMediaType(f"only {DICOM} parts are supported (type={part_type})")
    boundary = media.params.get("boundary")
    if not boundary:
        raise InvalidRequest("multipart/related Content-Type without a boundary parameter")
    return boundary


SPOOL_BATCH = 1024 * 1024  # body bytes handed to the spooler per worker-thread hop


async def _spool(request: Request, boundary: str, ingest: Ingest, limits: StowLimits) -> list[Part]:
    """The body's parts in temp files: chunks go to the spooler's parser about a megabyte per worker-thread hop
    (a hop per chunk the server hands over was ~100 hops for a 25 MB request); the parts are durable when this
    returns (``PartSpooler``: fsynced in the background as they end)."""
    spooler = PartSpooler(boundary, ingest.tmp_dir, limits.max_part_bytes, limits.fsync, limits.max_parts)
    received = 0
    pending: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {limits.max_request_bytes} bytes")
            if chunk:
                pending.append(chunk)
                size += len(chunk)
            if size >= SPOOL_BATCH:
                await anyio.to_thread.run_sync(spooler.write_all, pending)
                pending, size = [], 0
        if pending:
            await anyio.to_thread.run_sync(spooler.write_all, pending)
        return await anyio.to_thread.run_sync(spooler.finish)
    except ClientDisconnect:
        await anyio.to_thread.run_sync(spooler.discard)
        log.warning("STOW-RS client went away after %d bytes: nothing stored", received)
        raise
    except BaseException:
        await anyio.to_thread.run_sync(spooler.discard)
        raise


def _source(
    request: Request, study_labels: tuple[str, ...] = (), writer_groups: frozenset[str] | None = None
) -> Source:
    host = request.client.host if request.client else ""
    return Source(SourceKind.STOW, address=host, labels=study_labels, groups=writer_groups)


def _ingest_parts(
    ingest: Ingest, parts: list[Part], study: str | None, source: Source, transfers: Transfers | None = None
) -> tuple[list[StoredInstance], list[Failure]]:
    stored: list[StoredInstance] = []
    failed: list[Failure] = []
    expected = Expected(study=study)
    for number, part in enumerate(parts, start=1):
        if part.content_type not in (None, DICOM):
            ingest.discard_temp(part.path)
            failed.append(Failure(CANNOT_UNDERSTAND, f"Content-Type {part.content_type} is not {DICOM}"))
            if transfers is not None:
                transfers.fail(study or "")
            continue
        try:
            stored.append(ingest.store_temp(part.path, source, expected))
            if transfers is not None:
                transfers.add(stored[-1])
        except DcmnodeError as err:
            log.warning("STOW-RS part %d refused 0x%04X: %s", number, err.status, err.reason)
            failed.append(Failure(stow_reason(err), err.reason, err.sop_class, err.sop_instance))
            if transfers is not None:
                transfers.fail(study or "")
        except Exception:
            log.exception("STOW-RS part %d failed", number)
            failed.append(Failure(PROCESSING_FAILURE, "internal error; see the node's log"))
            if transfers is not None:
                transfers.fail(study or "")
    return stored, failed


def _http_status(stored: list[StoredInstance], failed: list[Failure]) -> int:
    """PS3.18 §10.5.3 Table 10.5.3-1."""
    if not failed:
        return 200
    if stored:
        return 202  # some stored, some failed
    if all(f.status == CANNOT_UNDERSTAND for f in failed):
        return 400  # none stored because of bad syntax
    return 409  # none stored: a conflict (study mismatch, duplicate, SOP class) or a mixture of reasons


def _response_body(stored: list[StoredInstance], failed: list[Failure], study: str | None, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    studies = {s.key.study for s in stored}
    if study or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study or studies.pop()}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed_item(f) for f in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced_item(s, base) for s in stored]}
    return body


def _referenced_item(s: StoredInstance, base: str) -> dict[str, Any]:
    url = f"{base}/studies/{s.key.study}/series/{s.key.series}/instances/{s.key.sop}"
    return {
        "00081150": {"vr": "UI", "Value": [s.sop_class]},
        "00081155": {"vr": "UI", "Value": [s.key.sop]},
        "00081190": {"vr": "UR", "Value": [url]},
    }


def _failed_item(f: Failure) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [f.sop_class]} if f.sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [f.sop_instance]} if f.sop_instance else {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [f.status]},
        # Error Comment (0000,0902) carries the reason in words, as a C-STORE response would.
        "00000902": {"vr": "LO", "Value": [f.reason[:64]]},
    }
    return item
