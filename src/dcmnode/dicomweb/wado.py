"""WADO-RS (PS3.18 §10.4) and WADO-URI (§9).

- Instances, series and studies as ``multipart/related; type="application/dicom"``, each stored file sent as its
  bytes (``multipart.PiecesResponse``: read in batches of 4 MB in worker threads, no parse; one instance with a
  Content-Length, a study or series chunked; a 2 GB study never sits in memory). ``transfer-syntax=*`` sends
  every file as stored; explicit or implicit VR little endian on request (decompressing where needed); anything
  else is 406.
  Without a transfer-syntax parameter the default is explicit VR little endian (Table 8.7.3-2).
- ``/metadata`` at study, series and instance level from the per-series cache (``core.metadata``), gzip
  prepared once per series version.
- ``/frames/{list}``: one part per frame; ``application/octet-stream`` (uncompressed, or the stored bitstream
  with ``transfer-syntax=*``) or the compressed media types (``image/jpeg``, ``image/jls``, ``image/jp2``...)
  when that is how the frame is stored; the part Content-Type names the transfer syntax actually sent.
- ``/bulkdata/{tag}`` for the BulkDataURIs the metadata hands out.
- ETag + Cache-Control everywhere; ``If-None-Match`` answers 304.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dcmnode.core import metadata as meta
from dcmnode.core import retrieve
from dcmnode.core.catalog import Catalog
from dcmnode.dicomweb import accept, multipart, rendered
from dcmnode.dicomweb.context import groups, services
from dcmnode.dicomweb.paths import base_url, etag_matches, path_uid, resource_uids
from dcmnode.errors import InvalidRequest, NotAcceptable
from dcmnode.part10 import frames as frame_io
from dcmnode.part10 import pixel_header

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET = "application/octet-stream"
ANY = "*"
INSTANCE_CACHE = "private, max-age=3600"
COLLECTION_CACHE = "private, no-cache"  # a series can grow: always revalidate (cheap with the ETag)
_REENCODE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}  # where an index render summary locates the frames


# -- negotiation -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DicomChoice:
    multipart: bool
    syntax: str  # ANY = as stored


def negotiate_dicom(header: str | None, stored: set[str], single_allowed: bool) -> DicomChoice:
    """Pick how to send DICOM instances (PS3.18 §8.7.3.5.2): first acceptable media range wins."""
    reasons = []
    for media in accept.parse(header):
        if media.type in ("multipart/related", "multipart/*", "*/*"):
            part_type = media.params.get("type", DICOM).lower()
            if part_type not in (DICOM, "*/*", "application/*"):
                reasons.append(f"parts of type {part_type}")
                continue
            multipart = True
        elif media.type in (DICOM, "application/*") and single_allowed:
            multipart = False
        else:
            reasons.append(media.type)
            continue
        default = ANY if media.type in ("*/*", "multipart/*") else ExplicitVRLittleEndian
        syntax = media.params.get("transfer-syntax", default)
        if syntax == ANY or syntax in _REENCODE or stored == {syntax}:
            return DicomChoice(multipart, syntax)
        reasons.append(f"transfer syntax {syntax}")
    raise NotAcceptable(
        "cannot send these instances as requested ("
        + ", ".join(reasons)
        + '); ask for multipart/related; type="application/dicom" with transfer-syntax=* (as stored) or '
        + f"{ExplicitVRLittleEndian} / {ImplicitVRLittleEndian}"
    )


# -- instances ---------------------------------------------------------------------------------------------------
async def retrieve_study(request: Request) -> Response:
    return await _retrieve(request, resource_uids(request))


async def retrieve_series(request: Request) -> Response:
    return await _retrieve(request, resource_uids(request))


async def retrieve_instance(request: Request) -> Response:
    return await _retrieve(request, resource_uids(request))


async def _retrieve(request: Request, uids: tuple[str, str | None, str | None]) -> Response:
    answer = await run_in_threadpool(
        plan_retrieve,
        services(request).catalog,
        uids,
        request.headers.get("accept"),
        request.headers.get("if-none-match"),
        groups(request),
        request.method != "HEAD",
    )
    return answer.response()


@dataclass(frozen=True, slots=True)
class Answer:
    """A WADO-RS answer as planned (in a worker thread, by the Starlette handler or ``dicomweb/fastpath.py``, so
    that both send the same bytes): 304 without a body, or 200 with its pieces (``multipart.Body``)."""

    status: int
    headers: dict[str, str]
    media_type: str | None = None
    body: multipart.Body | None = None

    def response(self) -> Response:
        if self.body is None:
            return Response(status_code=self.status, headers=self.headers)
        return multipart.PiecesResponse(self.body, self.status, self.headers, self.media_type)


def plan_retrieve(
    catalog: Catalog,
    uids: tuple[str, str | None, str | None],
    accept_header: str | None,
    if_none_match: str | None,
    seen_by: frozenset[str] | None,
    preread: bool = True,
) -> Answer:
    """A study, series or instance as DICOM: one lookup in the index, files sent as stored straight from their
    bytes (no parse), transcoded ones made as the body reaches them. NotFound (also for a study outside
    ``seen_by``), NotAcceptable; ``preread``: read the first files now (the caller is in a worker thread)."""
    files = catalog.resource(*uids, groups=seen_by)
    single = uids[2] is not None
    choice = negotiate_dicom(accept_header, {f.transfer_syntax for f in files}, single)
    etag = _etag(*(f"{f.sop}:{f.size}:{f.transfer_syntax}" for f in files), choice.syntax)
    headers = {"ETag": etag, "Cache-Control": INSTANCE_CACHE if single else COLLECTION_CACHE}
    if etag_matches(if_none_match, etag):
        return Answer(304, headers)
    if not choice.multipart:
        item = files[0]
        syntax = _syntax_for(item, choice.syntax)
        piece = _as_stored(item) if syntax == item.transfer_syntax else _instance_bytes(item, syntax)
        body = multipart.Body.of([piece], preread)
        return Answer(200, headers, f"{DICOM}; transfer-syntax={syntax}", body)
    boundary = secrets.token_hex(16)
    pieces: list[multipart.Piece] = []
    for item in files:
        syntax = _syntax_for(item, choice.syntax)
        pieces.append(multipart.part_head(boundary, f"{DICOM}; transfer-syntax={syntax}"))
        if syntax == item.transfer_syntax:
            pieces.append(_as_stored(item))
        else:
            pieces.append(multipart.Lazy(functools.partial(_instance_bytes, item, syntax)))
        pieces.append(b"\r\n")
    pieces.append(multipart.closing(boundary))
    media_type = f'multipart/related; type="{DICOM}"; boundary={boundary}'
    # a study or series is streamed without a Content-Length (chunked), as before; one instance announces its size
    return Answer(200, headers, media_type, multipart.Body.of(pieces, preread, sized=single))


def _as_stored(item: retrieve.StoredFile) -> multipart.FileSpan:
    return multipart.FileSpan(item.path, 0, item.size, whole=True)


def _syntax_for(item: retrieve.StoredFile, requested: str) -> str:
    return item.transfer_syntax if requested in (ANY, item.transfer_syntax) else requested


def _instance_bytes(item: retrieve.StoredFile, syntax: str) -> bytes:
    if syntax == item.transfer_syntax:
        return item.path.read_bytes()
    return retrieve.encode(retrieve.dataset(item, retrieve.DECOMPRESS), syntax)


# -- metadata ----------------------------------------------------------------------------------------------------
async def series_metadata(request: Request) -> Response:
    study, series, _ = resource_uids(request)
    assert series is not None
    accept.require_json(request.headers.get("accept"))
    catalog = services(request).catalog
    data, version = await run_in_threadpool(catalog.series_metadata, study, series, groups(request))
    return await _json(request, data, _etag(version))


async def study_metadata(request: Request) -> Response:
    study, _, _ = resource_uids(request)
    accept.require_json(request.headers.get("accept"))
    catalog = services(request).catalog
    data, versions = await run_in_threadpool(_study_json, catalog, study, groups(request))
    return await _json(request, data, _etag(*versions))


def _study_json(catalog: Catalog, study: str, seen_by: frozenset[str]) -> tuple[bytes, list[str]]:
    """The study's metadata (its series' arrays joined) and the version keys of those series."""
    series = catalog.study_series(study)
    if not series or not catalog.visible(study, seen_by):
        catalog.resource(study, groups=seen_by)  # raises NotFound with the reason
    found = [catalog.series_metadata(study, s, seen_by) for s in series]
    parts = [data[1:-1] for data, _ in found]
    return b"[" + b",".join(p for p in parts if p) + b"]", [version for _, version in found]


async def instance_metadata(request: Request) -> Response:
    study, series, sop = resource_uids(request)
    accept.require_json(request.headers.get("accept"))
    catalog = services(request).catalog
    [item] = await run_in_threadpool(catalog.resource, study, series, sop, groups=groups(request))
    obj = await run_in_threadpool(meta.instance_json, item.path, item.study, item.series, item.sop)
    data = json.dumps([obj], ensure_ascii=False, separators=(",", ":")).encode()
    return await _json(request, data, _etag(item.sop, str(item.size)), cache=INSTANCE_CACHE)


async def _json(request: Request, data: bytes, etag: str, cache: str = COLLECTION_CACHE) -> Response:
    base = base_url(request)
    etag = _etag(etag, base)
    headers = {"ETag": etag, "Cache-Control": cache, "Vary": "Accept-Encoding"}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    gzipped = {**headers, "Content-Encoding": "gzip"}
    wants_gzip = "gzip" in request.headers.get("accept-encoding", "")
    if wants_gzip and (packed := services(request).gzip.find(etag)) is not None:
        return Response(packed, media_type=DICOM_JSON, headers=gzipped)  # this version, packed before
    body = meta.with_base(data, base)
    if wants_gzip and len(body) > 4096:
        packed = await run_in_threadpool(services(request).gzip.add, etag, body)
        return Response(packed, media_type=DICOM_JSON, headers=gzipped)
    return Response(body, media_type=DICOM_JSON, headers=headers)


# -- frames and bulk data ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FrameChoice:
    media_type: str  # part media type
    syntax: str  # transfer syntax of the bytes sent
    decode: bool  # decode to native before sending


def negotiate_frames(header: str | None, stored: str) -> FrameChoice:
    """PS3.18 §8.7.3.3.2 / Table 8.7.3-5: octet-stream (uncompressed by default; the stored bitstream with
    transfer-syntax=*) or the media type of the stored compression."""
    compressed_type = frame_io.FRAME_MEDIA_TYPES.get(stored)
    reasons = []
    for media in accept.parse(header):
        inner = media.params.get("type", OCTET).lower() if media.type.startswith("multipart/") else media.type
        syntax = media.params.get("transfer-syntax")
        if inner in (OCTET, "*/*", "application/*") or media.type == "*/*":
            if syntax == ANY or (syntax is None and media.type == "*/*"):
                return FrameChoice(OCTET, stored if compressed_type else ExplicitVRLittleEndian, False)
            if syntax in (None, ExplicitVRLittleEndian):
                return FrameChoice(OCTET, ExplicitVRLittleEndian, compressed_type is not None)
            if syntax == stored:
                return FrameChoice(OCTET, stored, False)
            reasons.append(f"{inner} in {syntax}")
        elif compressed_type and (inner == compressed_type or inner == "image/*"):
            if syntax in (None, ANY, stored):
                return FrameChoice(compressed_type, stored, False)
            reasons.append(f"{inner} in {syntax}")
        else:
            reasons.append(inner)
    raise NotAcceptable(
        f"frames are stored as {stored}; cannot send {', '.join(reasons)}. Accept multipart/related; "
        f"type=application/octet-stream (with transfer-syntax=* for the stored encoding)"
        + (f" or type={compressed_type}" if compressed_type else "")
    )


def frame_list(text: str) -> list[int]:
    """``1,3,5`` (1-based, PS3.18 §10.4.1.1.5): each a frame number (``rendered.frame_number``); whether the
    instance has them is checked once it is found (404)."""
    numbers = [rendered.frame_number(n.strip(), "frame list") for n in text.split(",") if n.strip()]
    if not numbers:
        raise InvalidRequest(f"frame list {text[:40]!r}: expected comma-separated frame numbers from 1")
    seen: set[int] = set()
    for number in numbers:  # each frame once: a list of repeats would make the answer as large as one likes
        if number in seen:
            raise InvalidRequest(f"frame list: frame {number} is listed more than once")
        seen.add(number)
    return numbers


async def frames(request: Request) -> Response:
    uids = resource_uids(request)
    numbers = frame_list(request.path_params["frames"])
    answer = await run_in_threadpool(
        plan_frames,
        services(request).catalog,
        uids,
        numbers,
        request.headers.get("accept"),
        request.headers.get("if-none-match"),
        groups(request),
        base_url(request),
        request.method != "HEAD",
    )
    return answer.response()


def plan_frames(
    catalog: Catalog,
    uids: tuple[str, str | None, str | None],
    numbers: list[int],
    accept_header: str | None,
    if_none_match: str | None,
    seen_by: frozenset[str] | None,
    base: str,
    preread: bool = True,
) -> Answer:
    """Frames of one instance, one part each (``base``: the DICOMweb root as the client addressed it, for each
    part's Content-Location). Native little-endian frames are byte ranges of the file, located from the index's
    render summary when it has one (no read of the header), else from the header (read once per file:
    ``part10.frames.layout``)."""
    study, series, sop = uids
    [item] = catalog.resource(study, series, sop, groups=seen_by)
    choice = negotiate_frames(accept_header, item.transfer_syntax)
    etag = _etag(item.sop, str(item.size), item.transfer_syntax, ",".join(map(str, numbers)), choice.syntax)
    headers = {"ETag": etag, "Cache-Control": INSTANCE_CACHE}
    if etag_matches(if_none_match, etag):
        return Answer(304, headers)
    payloads = _frame_pieces(item, numbers, choice)
    boundary = secrets.token_hex(16)
    content_type = f"{choice.media_type}; transfer-syntax={choice.syntax}"
    location = f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/"
    pieces: list[multipart.Piece] = []
    for number, payload in zip(numbers, payloads, strict=True):
        pieces += [multipart.part_head(boundary, content_type, location + str(number)), payload, b"\r\n"]
    pieces.append(multipart.closing(boundary))
    media_type = f'multipart/related; type="{choice.media_type}"; boundary={boundary}'
    return Answer(200, headers, media_type, multipart.Body.of(pieces, preread))


def _frame_pieces(item: retrieve.StoredFile, numbers: list[int], choice: FrameChoice) -> list[multipart.Piece]:
    """Each frame asked for: a byte range of the file (native little endian), else its bytes (a compressed
    bitstream, a decoded or byte-swapped frame)."""
    plain = pixel_header.PlainImage.from_text(item.render) if item.transfer_syntax in NATIVE else None
    layout = frame_io.from_summary(item.transfer_syntax, plain) if plain is not None else frame_io.layout(item.path)
    frame_io.check_numbers(numbers, layout)
    if not layout.encapsulated and not layout.swapped:
        return [multipart.FileSpan(item.path, *frame_io.native_span(layout, n, item.size)) for n in numbers]
    read = frame_io.native_frame if choice.decode else frame_io.stored_frame
    return [read(item.path, layout, n) for n in numbers]


async def bulkdata(request: Request) -> Response:
    study, series, sop = resource_uids(request)
    tag_text = request.path_params["tag"]
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag_text):
        raise InvalidRequest(f"bulk data tag {tag_text[:40]!r}: expected 8 hex digits")
    tag = int(tag_text, 16)
    catalog = services(request).catalog
    [item] = await run_in_threadpool(catalog.resource, study, series, sop, groups=groups(request))
    etag = _etag(item.sop, str(item.size), tag_text)
    headers = {"ETag": etag, "Cache-Control": INSTANCE_CACHE}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    _, value = await run_in_threadpool(frame_io.element_value, item.path, tag)
    ranges = accept.parse(request.headers.get("accept"))
    single = any(r.type == OCTET for r in ranges) and not any(r.type.startswith("multipart/") for r in ranges)
    if single:
        return Response(value, media_type=OCTET, headers=headers)
    boundary = secrets.token_hex(16)
    body = multipart.part_head(boundary, f"{OCTET}; transfer-syntax={item.transfer_syntax}") + value
    body += f"\r\n--{boundary}--\r\n".encode()
    return Response(body, media_type=f'multipart/related; type="{OCTET}"; boundary={boundary}', headers=headers)


# -- WADO-URI ----------------------------------------------------------------------------------------------------
async def wado_uri(request: Request) -> Response:
    """PS3.18 §9: ``?requestType=WADO&studyUID=&seriesUID=&objectUID=&contentType=application/dicom``."""
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise InvalidRequest("requestType=WADO is required")
    missing = [k for k in ("studyUID", "seriesUID", "objectUID") if not params.get(k)]
    if missing:
        raise InvalidRequest(f"missing {', '.join(missing)}")
    study = path_uid(params["studyUID"], "studyUID")
    series = path_uid(params["seriesUID"], "seriesUID")
    sop = path_uid(params["objectUID"], "objectUID")
    content_types = [c.strip() for c in params.get("contentType", "image/jpeg").split(",")]  # §9.1.2.3.1 default
    catalog = services(request).catalog
    [item] = await run_in_threadpool(catalog.resource, study, series, sop, groups=groups(request))
    if DICOM not in content_types:
        images = [c for c in content_types if c in ("image/jpeg", "image/png", "image/gif")]
        if not images:
            raise NotAcceptable(f"contentType {', '.join(content_types)}: {DICOM}, image/jpeg, image/png or image/gif")
        return await rendered.wado_uri_image(request, item, images[0])
    syntax = params.get("transferSyntax", item.transfer_syntax)
    if syntax != item.transfer_syntax and syntax not in _REENCODE:
        raise NotAcceptable(f"transferSyntax {syntax}: only as stored or {ExplicitVRLittleEndian}")
    body = await run_in_threadpool(_instance_bytes, item, syntax)
    return Response(body, media_type=DICOM, headers={"ETag": _etag(item.sop, str(item.size), syntax)})


# -- helpers -----------------------------------------------------------------------------------------------------
def _etag(*parts: str) -> str:
    return '"' + hashlib.sha1("|".join(parts).encode()).hexdigest()[:20] + '"'


def _not_modified(request: Request, etag: str) -> bool:
    return etag_matches(request.headers.get("if-none-match"), etag)
