"""WADO-RS /rendered and /thumbnail, and WADO-URI images, over a real uvicorn server."""

from __future__ import annotations

import email.parser
import email.policy
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from dcmnode.core import render
from dcmnode.dicomweb.fastpath import RenderedFastPath
from dcmnode.dicomweb.headers import SecurityHeaders
from dcmnode.imaging import pipeline
from dcmnode.model import Source, SourceKind
from tests.conftest import LiveServer
from tests.factories import bundled, ct_series, part10


@pytest.fixture
def rendered_live(live_factory: Callable[..., LiveServer]) -> tuple[LiveServer, list[pydicom.Dataset]]:
    live = live_factory()
    series = ct_series(5, rows=64, cols=64, phantom=True)
    for ds in series:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    live.node.services.ingest.store_path(bundled("SC_rgb_rle_2frame.dcm"), Source(SourceKind.IMPORT))
    return live, series


def url(live: LiveServer, ds: Any, suffix: str, level: str = "instance") -> str:
    out = f"{live.url}/dicom-web/studies/{ds.StudyInstanceUID}"
    if level != "study":
        out += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        out += f"/instances/{ds.SOPInstanceUID}"
    return out + suffix


def image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_instance_png_is_the_pipeline_output(rendered_live: Any) -> None:
    live, series = rendered_live
    response = httpx.get(url(live, series[2], "/rendered"), headers={"Accept": "image/png"})
    assert response.headers["content-type"] == "image/png"
    expected = pipeline.render(series[2], 1)  # the stored first window, W400/C40
    assert np.array_equal(image(response), expected)


def test_single_images_skip_the_router_and_answer_like_the_full_app(rendered_live: Any) -> None:
    """``dicomweb/fastpath.py`` answers plain single-image requests in front of Starlette; the same request with an
    Origin header (CORS: the full app's job) must get the same image and headers, and failures go to the full app
    for their usual status and reason."""
    live, series = rendered_live
    headers = live.server.config.app
    assert isinstance(headers, SecurityHeaders)  # outermost (dicomweb/headers.py), then the RequestGuard
    fast = headers.app.app
    assert isinstance(fast, RenderedFastPath)
    full, seen = fast.app, []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await full(scope, receive, send)

    fast.app = counting
    origin = {"Origin": live.url}
    ds = series[1]
    for suffix, accept in (("/rendered", "image/jpeg"), ("/frames/1/rendered", "image/png"), ("/thumbnail", "*/*")):
        for params in ({}, {"window": "0,300", "viewport": "32,32"}):
            quick = httpx.get(url(live, ds, suffix), params=params, headers={"Accept": accept})
            assert quick.status_code == 200 and seen == [], (suffix, quick.text)
            routed = httpx.get(url(live, ds, suffix), params=params, headers={"Accept": accept, **origin})
            assert seen and routed.headers["access-control-allow-origin"] == live.url
            seen.clear()
            assert quick.content == routed.content
            for header in ("content-type", "etag", "cache-control", "cross-origin-resource-policy"):
                assert quick.headers.get(header) == routed.headers.get(header), header
            revalidate = {"Accept": accept, "If-None-Match": quick.headers["etag"]}
            again = httpx.get(url(live, ds, suffix), params=params, headers=revalidate)
            assert again.status_code == 304 and seen == []
    missing = httpx.get(f"{live.url}/dicom-web/studies/1.2/series/3.4/instances/5.6/rendered")
    assert missing.status_code == 404 and "not stored" in missing.json()["error"] and len(seen) == 1
    bad = httpx.get(url(live, ds, "/frames/9/rendered"))
    assert bad.status_code == 400 and "frame 9" in bad.json()["error"] and len(seen) == 2


def test_jpeg_by_default_window_quality_and_viewport(rendered_live: Any) -> None:
    live, series = rendered_live
    default = httpx.get(url(live, series[0], "/rendered"))
    assert default.headers["content-type"] == "image/jpeg" and image(default).shape == (64, 64)
    lung = image(httpx.get(url(live, series[0], "/rendered"), params={"window": "-600,1500"}))
    soft = image(default)
    assert lung[32, 10].astype(int) - soft[32, 10].astype(int) > 30  # lung window shows the lung grey, not black
    small = httpx.get(url(live, series[0], "/rendered"), params={"quality": "10"})
    assert len(small.content) < len(default.content)
    fitted = image(httpx.get(url(live, series[0], "/rendered"), params={"viewport": "200,100"}))
    assert fitted.shape == (100, 100)  # fitted inside 200x100, aspect kept
    crop = image(httpx.get(url(live, series[0], "/rendered"), params={"viewport": "32,32,0,0,32,32"}))
    assert crop.shape == (32, 32)


def test_frames_of_a_multi_frame_colour_image(rendered_live: Any) -> None:
    live, _ = rendered_live
    ds = pydicom.dcmread(bundled("SC_rgb_rle_2frame.dcm"))
    expected = ds.pixel_array
    for frame in (1, 2):
        got = image(httpx.get(url(live, ds, f"/frames/{frame}/rendered"), headers={"Accept": "image/png"}))
        assert np.array_equal(got, expected[frame - 1])
    assert httpx.get(url(live, ds, "/frames/3/rendered")).status_code == 400


def test_thumbnails_at_every_level(rendered_live: Any) -> None:
    live, series = rendered_live
    for level in ("study", "series", "instance"):
        thumb = image(httpx.get(url(live, series[0], "/thumbnail", level)))
        assert max(thumb.shape[:2]) == 128
    sized = image(httpx.get(url(live, series[0], "/thumbnail", "series"), params={"viewport": "64,64"}))
    assert sized.shape == (64, 64)
    frame = image(httpx.get(url(live, series[0], "/frames/1/thumbnail")))
    assert max(frame.shape[:2]) == 128


def test_series_rendered_is_one_image_per_instance(rendered_live: Any) -> None:
    live, series = rendered_live
    response = httpx.get(url(live, series[0], "/rendered", "series"), headers={"Accept": "image/png"})
    assert response.headers["content-type"].startswith('multipart/related; type="image/png"')
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    parts = [np.asarray(Image.open(io.BytesIO(p.get_payload(decode=True)))) for p in message.iter_parts()]
    assert len(parts) == 5 and all(p.shape == (64, 64) for p in parts)


def test_cached_and_not_modified(rendered_live: Any) -> None:
    live, series = rendered_live
    first = httpx.get(url(live, series[1], "/rendered"), params={"enhance": "clahe:0.02"})
    cache = live.node.settings.data_dir / "cache" / "rendered"
    deadline = time.monotonic() + 10  # the cache is written just after the answer has left
    while not any(cache.rglob("*.jpg")):
        assert time.monotonic() < deadline, "the rendering was not cached"
        time.sleep(0.02)
    again = httpx.get(url(live, series[1], "/rendered"), params={"enhance": "clahe:0.02"})
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    other = httpx.get(url(live, series[1], "/rendered"), params={"enhance": "clahe:0.05"})
    assert other.headers["etag"] != first.headers["etag"]
    revalidate = {"If-None-Match": first.headers["etag"]}
    unchanged = httpx.get(url(live, series[1], "/rendered"), params={"enhance": "clahe:0.02"}, headers=revalidate)
    assert unchanged.status_code == 304


def test_enhance_changes_the_rendering(rendered_live: Any) -> None:
    live, series = rendered_live
    plain = image(httpx.get(url(live, series[0], "/rendered"), headers={"Accept": "image/png"}))
    edges = image(
        httpx.get(url(live, series[0], "/rendered"), params={"enhance": "edges"}, headers={"Accept": "image/png"})
    )
    assert edges.shape == (64, 64, 3) and (edges[..., 0].astype(int) - edges[..., 1] > 100).any()
    zoomed = image(httpx.get(url(live, series[0], "/rendered"), params={"enhance": "zoom:2"}))
    assert zoomed.shape == (128, 128) and plain.shape == (64, 64)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"window": "40"}, "window"),
        ({"window": "40,0"}, "width"),
        ({"viewport": "0,10"}, "viewport"),
        ({"quality": "x"}, "quality"),
        ({"enhance": "sharpen"}, "unknown operator"),
        ({"colour": "red"}, "unknown query parameter"),
    ],
)
def test_bad_parameters(rendered_live: Any, params: dict[str, str], reason: str) -> None:
    live, series = rendered_live
    response = httpx.get(url(live, series[0], "/rendered"), params=params)
    assert response.status_code == 400 and reason in response.json()["error"]


def test_unsupported_media_type_and_missing(rendered_live: Any) -> None:
    live, series = rendered_live
    assert httpx.get(url(live, series[0], "/rendered"), headers={"Accept": "image/tiff"}).status_code == 406
    assert httpx.get(f"{live.url}/dicom-web/studies/1.2/series/3.4/instances/5.6/rendered").status_code == 404


def test_accept_query_parameter_stands_in_for_the_header(rendered_live: Any) -> None:
    """PS3.18 8.3.3.1: OHIF's thumbnails ask ``/thumbnail?accept=image/jpeg`` beside an Accept of its own."""
    live, series = rendered_live
    thumb = url(live, series[0], "/thumbnail")
    multipart = {"Accept": 'multipart/related; type="application/octet-stream"'}
    jpeg = httpx.get(thumb, params={"accept": "image/jpeg"}, headers=multipart)
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    png = httpx.get(url(live, series[0], "/rendered"), params={"accept": "image/png"}, headers={"Accept": "image/jpeg"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert httpx.get(thumb, params={"accept": "image/tiff"}).status_code == 406


def test_wado_uri_images(rendered_live: Any) -> None:
    live, series = rendered_live
    ds = series[3]
    base = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID}
    base |= {"objectUID": ds.SOPInstanceUID}
    jpeg = httpx.get(f"{live.url}/dicom-web/wado", params=base)  # contentType defaults to image/jpeg
    assert jpeg.headers["content-type"] == "image/jpeg" and image(jpeg).shape == (64, 64)
    png = httpx.get(
        f"{live.url}/dicom-web/wado",
        params=base | {"contentType": "image/png", "windowCenter": "-600", "windowWidth": "1500"},
    )
    assert np.array_equal(image(png), pipeline.render(ds, 1, pipeline.Window(-600, 1500)))
    sized = image(httpx.get(f"{live.url}/dicom-web/wado", params=base | {"rows": "32", "columns": "32"}))
    assert sized.shape == (32, 32)
    region = image(
        httpx.get(f"{live.url}/dicom-web/wado", params=base | {"contentType": "image/png", "region": "0,0,0.5,0.5"})
    )
    assert np.array_equal(region, pipeline.render(ds, 1)[:32, :32])
    bad = httpx.get(f"{live.url}/dicom-web/wado", params=base | {"region": "0.5,0,0.2,1"})
    assert bad.status_code == 400


def test_render_file_reads_one_frame_of_a_multi_frame_file() -> None:
    ds = pydicom.dcmread(bundled("SC_rgb_rle_2frame.dcm"))
    second = render.render_file(bundled("SC_rgb_rle_2frame.dcm"), render.RenderRequest("image/png", frame=2))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(second))), ds.pixel_array[1])


def test_the_render_cache_stays_within_its_size(tmp_path: Path) -> None:
    from dcmnode.core.retrieve import StoredFile

    renderer = render.Renderer(tmp_path / "cache", tmp_path, cache_bytes=20_000)
    for n, ds in enumerate(ct_series(12, rows=64, cols=64)):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(part10(ds))
        item = StoredFile(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, "", path, 1)
        renderer.render(item, render.RenderRequest("image/png"))
    kept = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert 0 < kept <= 20_000
