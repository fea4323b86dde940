"""WADO-RS rendered and thumbnail resources (PS3.18 §8.3.5, §10.4.1.1.3-4) and WADO-URI images (§9).

``/rendered`` of an instance or a frame is one image;
of a series or a study, ``multipart/related`` with one image per instance (its first frame). ``/thumbnail`` is one
small image at every level: a study's and a series' show their middle instance. Query parameters:
``window=center,width[,function]``, ``viewport=vw,vh[,sx,sy,sw,sh]``, ``quality=1-100``, and the vendor extension
``enhance=op[:arg...][,op...]`` (``core/render.py``, ``imaging/enhance.py`` lists the operators).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from dcmnode.core import export as exporting
from dcmnode.core import params as checked
from dcmnode.core import render
from dcmnode.core.catalog import Catalog
from dcmnode.core.retrieve import StoredFile
from dcmnode.dicomweb import accept, throttle
from dcmnode.dicomweb.context import HttpServices, groups, services
from dcmnode.dicomweb.paths import etag_matches, resource_uids
from dcmnode.errors import InvalidRequest, NotAcceptable

THUMBNAIL_SIZE = 128
MAX_FRAME = 2**31 - 1  # NumberOfFrames is IS: at most 2**31 - 1 (PS3.5 Table 6.2-1)
CACHE_CONTROL = "private, max-age=3600"


def media_type(header: str | None, default: str = "image/jpeg") -> str:
    for media in accept.parse(header):
        if media.type in render.MEDIA_TYPES:
            return media.type
        if media.type in ("*/*", "image/*"):
            return default
    raise NotAcceptable(f"rendered images are {', '.join(render.MEDIA_TYPES)}; the request accepts only {header}")


def request_from(request: Request, frame: int = 1, thumbnail: bool = False) -> render.RenderRequest:
    return job_from(request.query_params, request.headers.get("accept"), frame, thumbnail)


def job_from(
    params: Mapping[str, str], accept_header: str | None, frame: int = 1, thumbnail: bool = False
) -> render.RenderRequest:
    """The render job a rendered/thumbnail request names: its query parameters and Accept header (an ``accept``
    query parameter, PS3.18 8.3.3.1, stands in for the header: OHIF's thumbnails send ``?accept=image/jpeg``)."""
    known = {"window", "viewport", "quality", "enhance", "annotation", "charset", "accept"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s) for a rendered resource: {', '.join(unknown)}")
    quality = checked.integer("quality", params.get("quality", "90"), 1, 100)
    viewport = render.parse_viewport(params.get("viewport"))
    if thumbnail and viewport is None:
        viewport = render.Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    return render.RenderRequest(
        media_type=media_type(params.get("accept") or accept_header),
        frame=frame,
        window=render.parse_window(params.get("window")),
        viewport=viewport,
        enhance=tuple(render.parse_enhance(params.get("enhance"))),
        quality=quality,
    )


async def _image(request: Request, uids: tuple[str, str | None, str | None], job: render.RenderRequest) -> Response:
    catalog = services(request).catalog
    renderer = services(request).renderer
    wanted = request.headers.get("if-none-match")
    charge = throttle.charge(request, "enhanced rendering") if job.enhance else None  # only renders not cached
    data, etag, item, fresh = await run_in_threadpool(
        find_and_render, catalog, renderer, uids, job, wanted, groups(request), charge
    )
    headers = {"ETag": f'"{etag}"', "Cache-Control": CACHE_CONTROL}
    if data is None:
        return Response(status_code=304, headers=headers)
    if fresh:
        keep_later(services(request), item, etag, job, data)
    return Response(data, media_type=job.media_type, headers=headers)


def keep_later(http: HttpServices, item: StoredFile, etag: str, job: render.RenderRequest, data: bytes) -> None:
    """A new image goes to the cache beside the answer, not before it (nor before the next request)."""
    http.cache_writer.submit(http.renderer.keep, item, etag, job, data)


def find_and_render(
    catalog: Catalog,
    renderer: render.Renderer,
    uids: tuple[str, str | None, str | None],
    job: render.RenderRequest,
    wanted: str | None,
    seen_by: frozenset[str] | None = None,
    charge: Callable[[], None] | None = None,
) -> tuple[bytes | None, str, StoredFile, bool]:
    """In one worker-thread hop: the instance (the middle one of a study or series), its ETag, its image;
    NotFound for a study outside the principal's groups ``seen_by``; ``charge`` is called before an image that
    is not in the cache is made (``dicomweb/throttle.py``)."""
    items = catalog.resource(*uids, groups=seen_by)
    item = items[len(items) // 2]
    etag = renderer.etag(item, job)
    if etag_matches(wanted, f'"{etag}"'):
        return None, etag, item, False
    data, etag, fresh = renderer.render_deferred(item, job, charge)
    return data, etag, item, fresh


async def instance(request: Request) -> Response:
    return await _image(request, resource_uids(request), request_from(request))


async def frames(request: Request) -> Response:
    return await _image(request, resource_uids(request), request_from(request, frame=_frame_number(request)))


async def frame_thumbnail(request: Request) -> Response:
    return await _image(
        request, resource_uids(request), request_from(request, frame=_frame_number(request), thumbnail=True)
    )


def _frame_number(request: Request) -> int:
    return frame_number(request.path_params["frames"])


def frame_number(text: str, name: str = "frame") -> int:
    """One frame number from 1 (a rendered frame is one frame; its upper bound is the instance's frame count,
    checked by the renderer)."""
    return checked.integer(name, text, 1, MAX_FRAME)


async def collection(request: Request) -> Response:
    """A study's or series' /rendered: one image per instance, multipart/related (an expensive request)."""
    job = request_from(request)
    throttle.charge(request, "rendered study or series")()
    catalog = services(request).catalog
    items = await run_in_threadpool(catalog.resource, *resource_uids(request), groups=groups(request))
    renderer = services(request).renderer
    boundary = secrets.token_hex(16)
    parts = []
    for item in items:
        try:
            data, _ = await run_in_threadpool(renderer.render, item, job)
        except NotAcceptable:
            continue  # instances without an image (SR, PDF...) are left out of a rendered series
        parts.append(f"--{boundary}\r\nContent-Type: {job.media_type}\r\n\r\n".encode() + data + b"\r\n")
    if not parts:
        raise NotAcceptable("nothing here renders as an image")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return Response(body, media_type=f'multipart/related; type="{job.media_type}"; boundary={boundary}')


async def thumbnail(request: Request) -> Response:
    return await _image(request, resource_uids(request), request_from(request, thumbnail=True))


async def wado_uri_image(request: Request, item: StoredFile, content_type: str) -> Response:
    """WADO-URI image parameters (PS3.18 §9.1.2): windowCenter/windowWidth, rows/columns, region, frameNumber."""
    p = request.query_params
    window = None
    if p.get("windowCenter") or p.get("windowWidth"):
        if not (p.get("windowCenter") and p.get("windowWidth")):
            raise InvalidRequest("windowCenter and windowWidth go together")
        center, width = render.numbers("window", f"{p['windowCenter']},{p['windowWidth']}", (2,))
        window = render.Window(center, width)
    viewport = None
    if p.get("rows") or p.get("columns"):
        rows = int(checked.real("rows", p.get("rows", "16384"), 1, render.MAX_SIDE))
        columns = int(checked.real("columns", p.get("columns", "16384"), 1, render.MAX_SIDE))
        viewport = render.Viewport(columns, rows)
    region = None
    if p.get("region"):
        x1, y1, x2, y2 = render.numbers("region", p["region"], (4,))
        if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
            raise InvalidRequest("region=x1,y1,x2,y2: fractions with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
        region = (x1, y1, x2, y2)
    frame = frame_number(p.get("frameNumber", "1"), "frameNumber")
    quality = checked.integer("imageQuality", p.get("imageQuality", "90"), 1, 100)
    job = render.RenderRequest(
        media_type=content_type,
        frame=frame,
        window=window,
        viewport=viewport,
        fraction_region=region,
        enhance=tuple(render.parse_enhance(p.get("enhance"))),
        quality=quality,
    )
    return await _image(request, (item.study, item.series, item.sop), job)


async def export(request: Request) -> Response:
    """``GET .../series/{se}/export?format=zip|nifti`` (vendor extension): the series as a ZIP of DICOM files and
    PNG renders, or as a NIfTI volume."""
    fmt = request.query_params.get("format", "zip")
    if fmt not in exporting.FORMATS:
        raise InvalidRequest(f"format={fmt!r}: one of {', '.join(exporting.FORMATS)}")
    throttle.charge(request, "series export")()
    catalog = services(request).catalog
    study, series, _ = resource_uids(request)
    items = await run_in_threadpool(catalog.resource, study, series, groups=groups(request))
    renderer = services(request).renderer
    out = renderer.tmp_dir / f"export-{secrets.token_hex(8)}.{'zip' if fmt == 'zip' else 'nii.gz'}"
    writer = exporting.write_zip if fmt == "zip" else exporting.write_nifti
    try:
        await run_in_threadpool(writer, items, out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    media = "application/zip" if fmt == "zip" else "application/gzip"
    name = f"{series}.{'zip' if fmt == 'zip' else 'nii.gz'}"
    return FileResponse(out, media_type=media, filename=name, background=BackgroundTask(out.unlink, missing_ok=True))
