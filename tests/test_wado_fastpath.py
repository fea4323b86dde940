"""The WADO-RS byte fast path (``dicomweb/fastpath.py`` ``BytesFastPath``) answers like the full app.

Each request is sent twice to a real uvicorn server: as is (the fast path answers in front of Starlette) and with an
``Origin`` header (CORS is the full app's job: the request goes through the router and the DICOMweb middleware).
A wrapper around the full app counts which requests reached it. The answers must be the same bytes (the random
multipart boundary aside) with the same headers, for instances, series, studies and frames, as stored and
transcoded, native, byte-swapped and compressed (JPEG baseline, RLE), multi-frame and frame lists, HEAD and 304;
failures (400, 404, 406) are left to the full app. With ``http.auth = "on"`` the access check stands in front (401,
403, a hidden study 404), and every fast answer leaves its audit record.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dcmnode.core.access import Scope
from dcmnode.dicomweb import multipart
from dcmnode.dicomweb import routes as dicomweb_routes
from dcmnode.dicomweb.access import ROUTE_SCOPES, RouteTable
from dcmnode.dicomweb.fastpath import BYTES_ENDPOINTS, FAST_ENDPOINTS, RENDERED_ENDS, BytesFastPath
from dcmnode.model import Source, SourceKind
from tests.conftest import LiveServer, stored_files
from tests.factories import bundled, ct_series, part10
from tests.test_audit import records
from tests.test_auth_http import concrete
from tests.test_wado import parts

BUNDLED = {
    "jpeg": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline (1.2.840.10008.1.2.4.50), YBR_FULL
    "rle": "SC_rgb_rle_2frame.dcm",  # RLE lossless, RGB, 2 frames
    "bigendian": "MR_small_bigendian.dcm",  # explicit VR big endian, 16 bits: frames are byte-swapped
    "implicit": "MR_small_implicit.dcm",
}
DICOM = 'multipart/related; type="application/dicom"'
OCTETS = "multipart/related; type=application/octet-stream"
COMPARED = (
    "content-type",
    "content-length",
    "transfer-encoding",
    "etag",
    "cache-control",
    "cross-origin-resource-policy",
    "x-content-type-options",
    "referrer-policy",
    "access-control-allow-origin",
)


class Counted:
    """Wraps the full app behind the fast path and notes the paths of the requests that reach it."""

    def __init__(self, fast: BytesFastPath) -> None:
        self.full, self.seen = fast.app, []  # type: ignore[var-annotated]
        fast.app = self

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen.append(scope["path"])
        await self.full(scope, receive, send)


def byte_path(live: LiveServer) -> BytesFastPath:
    app: Any = live.server.config.app
    while not isinstance(app, BytesFastPath):
        app = app.app
    return app


def multiframe() -> pydicom.Dataset:
    """A native 16-bit grey image with 3 frames (the index's render summary locates its frames)."""
    ds = ct_series(1, rows=16, cols=16, seed=5)[0]
    frames = np.stack(
        [np.full((16, 16), 100 * (k + 1), dtype=np.int16) + np.arange(16, dtype=np.int16) for k in range(3)]
    )
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    return ds


@pytest.fixture
def stored(tmp_path: Path) -> dict[str, pydicom.Dataset]:
    """The test's instances by name: a 3-slice CT series, a 3-frame native image, and bundled files in their own
    transfer syntaxes (fresh UIDs)."""
    found: dict[str, pydicom.Dataset] = {}
    for number, ds in enumerate(ct_series(3, rows=32, cols=32)):
        found[f"ct{number}"] = ds
    found["frames3"] = multiframe()
    for name, file in BUNDLED.items():
        ds = pydicom.dcmread(bundled(file))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        found[name] = ds
    return found


def load(live: LiveServer, stored: dict[str, pydicom.Dataset], tmp_path: Path) -> None:
    for name, ds in stored.items():
        if name in BUNDLED:
            path = tmp_path / f"{name}.dcm"
            ds.save_as(path)
            live.node.services.ingest.store_path(path, Source(SourceKind.IMPORT))
        else:
            live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))


@pytest.fixture
def served(
    live_factory: Callable[..., LiveServer], stored: dict[str, pydicom.Dataset], tmp_path: Path
) -> tuple[LiveServer, Counted]:
    live = live_factory()
    load(live, stored, tmp_path)
    return live, Counted(byte_path(live))


def address(ds: pydicom.Dataset, level: str = "instance", suffix: str = "") -> str:
    out = f"/dicom-web/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        out += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        out += f"/instances/{ds.SOPInstanceUID}"
    return out + suffix


def normalized(response: httpx.Response) -> tuple[int, dict[str, str | None], bytes]:
    """Status, the headers that matter and the body, with the multipart boundary replaced by a fixed one."""
    headers = {name: response.headers.get(name) for name in COMPARED}
    body = response.content
    found = re.search(r"boundary=([^;\s]+)", response.headers.get("content-type", ""))
    if found:
        boundary = found[1]
        headers["content-type"] = (headers["content-type"] or "").replace(boundary, "BOUNDARY")
        body = body.replace(boundary.encode(), b"BOUNDARY")
    headers.pop("access-control-allow-origin")  # only the CORS request has it
    return response.status_code, headers, body


def both(
    live: LiveServer, counted: Counted, method: str, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    """The request answered by the fast path (checked: the full app did not see it), then by the full app."""
    counted.seen.clear()
    fast = httpx.request(method, live.url + path, headers=headers)
    assert counted.seen == [], f"{method} {path}: the full app answered, not the fast path"
    slow = httpx.request(method, live.url + path, headers={**headers, "Origin": "http://localhost:3000"})
    assert counted.seen == [path], f"{method} {path} with Origin did not reach the full app"
    return fast, slow


CASES = [
    # (instance name, level, suffix, Accept)
    ("ct0", "instance", "", DICOM),
    ("ct1", "instance", "", "application/dicom"),
    ("ct2", "instance", "", f"{DICOM}; transfer-syntax={ImplicitVRLittleEndian}"),  # transcoded
    ("ct0", "series", "", DICOM),
    ("ct0", "study", "", "*/*"),
    ("jpeg", "instance", "", f"{DICOM}; transfer-syntax=*"),  # as stored
    ("jpeg", "instance", "", DICOM),  # decompressed to explicit VR little endian
    ("jpeg", "instance", "", "application/dicom"),  # one part, decompressed
    ("rle", "instance", "", f"{DICOM}; transfer-syntax=*"),
    ("rle", "series", "", DICOM),
    ("implicit", "instance", "", f"{DICOM}; transfer-syntax=*"),
    ("ct0", "instance", "/frames/1", OCTETS),
    ("ct0", "instance", "/frames/1", f"{OCTETS}; transfer-syntax=*"),
    ("frames3", "instance", "/frames/1,3", OCTETS),
    ("frames3", "instance", "/frames/3,1,2", OCTETS),
    ("bigendian", "instance", "/frames/1", OCTETS),  # byte-swapped to little endian
    ("implicit", "instance", "/frames/1", OCTETS),
    ("rle", "instance", "/frames/2", f"{OCTETS}; transfer-syntax=*"),  # the stored RLE bitstream
    ("rle", "instance", "/frames/1,2", OCTETS),  # decoded
    ("rle", "instance", "/frames/2,1", "multipart/related; type=image/dicom-rle"),
    ("jpeg", "instance", "/frames/1", "multipart/related; type=image/jpeg"),
    ("jpeg", "instance", "/frames/1", OCTETS),  # decoded
]


@pytest.mark.parametrize(("name", "level", "suffix", "accept"), CASES)
def test_fast_and_full_app_send_the_same_bytes(
    served: tuple[LiveServer, Counted],
    stored: dict[str, pydicom.Dataset],
    name: str,
    level: str,
    suffix: str,
    accept: str,
) -> None:
    live, counted = served
    path = address(stored[name], level, suffix)
    fast, slow = both(live, counted, "GET", path, {"Accept": accept})
    assert fast.status_code == 200, fast.text[:300]
    assert normalized(fast) == normalized(slow)
    if fast.headers["content-type"].startswith("multipart/"):
        assert len(parts(fast)) >= 1
    else:
        assert fast.content[128:132] == b"DICM"


def test_the_answers_are_the_stored_bytes(
    served: tuple[LiveServer, Counted], stored: dict[str, pydicom.Dataset]
) -> None:
    """What the fast path sends, checked against the files and pixel data (not only against the full app)."""
    live, counted = served
    files = {p.stem: p for p in stored_files(live.node.settings.data_dir)}
    for name in ("ct0", "jpeg", "rle", "bigendian"):
        ds = stored[name]
        response = httpx.get(live.url + address(ds), headers={"Accept": f"{DICOM}; transfer-syntax=*"})
        [(headers, payload)] = parts(response)
        assert payload == files[ds.SOPInstanceUID].read_bytes(), name
        assert int(response.headers["content-length"]) == len(response.content)
    frames = stored["frames3"]
    response = httpx.get(live.url + address(frames, suffix="/frames/3,1"), headers={"Accept": OCTETS})
    got = parts(response)
    expected = frames.pixel_array
    assert [payload for _, payload in got] == [expected[2].tobytes(), expected[0].tobytes()]
    location = got[0][0]["Content-Location"]
    assert location == live.url + address(frames, suffix="/frames/3")
    big = stored["bigendian"]
    [(headers, payload)] = parts(httpx.get(live.url + address(big, suffix="/frames/1"), headers={"Accept": OCTETS}))
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    assert payload == big.pixel_array.astype("<i2" if big.PixelRepresentation else "<u2").tobytes()
    rle = stored["rle"]
    [(_, payload)] = parts(
        httpx.get(live.url + address(rle, suffix="/frames/2"), headers={"Accept": f"{OCTETS}; transfer-syntax=*"})
    )
    assert payload == pydicom.encaps.get_frame(rle.PixelData, 1, number_of_frames=2)
    jpeg = stored["jpeg"]  # decompressed for a client that takes native data only: the same instance, the same bytes
    first, again = (httpx.get(live.url + address(jpeg), headers={"Accept": DICOM}) for _ in range(2))
    assert parts(first)[0][1] == parts(again)[0][1] and first.headers["etag"] == again.headers["etag"]
    decoded = pydicom.dcmread(io.BytesIO(parts(first)[0][1]))
    assert decoded.SOPInstanceUID == decoded.file_meta.MediaStorageSOPInstanceUID == jpeg.SOPInstanceUID
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(decoded.pixel_array, jpeg.pixel_array)
    series = httpx.get(live.url + address(stored["ct0"], "series"), headers={"Accept": DICOM})
    got_uids = sorted(pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for _, p in parts(series))
    assert got_uids == sorted(stored[f"ct{k}"].SOPInstanceUID for k in range(3))
    assert counted.seen == []


def test_head_and_not_modified_answer_as_the_full_app(
    served: tuple[LiveServer, Counted], stored: dict[str, pydicom.Dataset]
) -> None:
    live, counted = served
    for path, accept in (
        (address(stored["ct0"]), DICOM),
        (address(stored["ct0"], "series"), DICOM),
        (address(stored["frames3"], suffix="/frames/2"), OCTETS),
        (address(stored["jpeg"]), DICOM),
    ):
        get = httpx.get(live.url + path, headers={"Accept": accept})
        fast, slow = both(live, counted, "HEAD", path, {"Accept": accept})
        assert fast.status_code == slow.status_code == 200 and fast.content == slow.content == b""
        assert normalized(fast)[1] == normalized(slow)[1]
        assert fast.headers.get("content-length") == get.headers.get("content-length"), path
        assert fast.headers["etag"] == get.headers["etag"]
        revalidate = {"Accept": accept, "If-None-Match": get.headers["etag"]}
        fast, slow = both(live, counted, "GET", path, revalidate)
        assert fast.status_code == slow.status_code == 304 and fast.content == b""
        assert normalized(fast) == normalized(slow)


def test_failures_are_left_to_the_full_app(
    served: tuple[LiveServer, Counted], stored: dict[str, pydicom.Dataset]
) -> None:
    live, counted = served
    ct, jpeg = stored["ct0"], stored["jpeg"]
    jpeg2000 = "1.2.840.10008.1.2.4.90"
    for path, accept, status in (
        ("/dicom-web/studies/1.2.3/series/4.5/instances/6.7", DICOM, 404),
        (f"/dicom-web/studies/{ct.StudyInstanceUID}/series/4.5", DICOM, 404),
        ("/dicom-web/studies/1.2.x", DICOM, 400),
        (address(ct), f"{DICOM}; transfer-syntax={jpeg2000}", 406),
        (address(ct), "image/png", 406),
        (address(ct, suffix="/frames/0"), OCTETS, 400),
        (address(ct, suffix="/frames/1,1"), OCTETS, 400),
        (address(ct, suffix="/frames/2"), OCTETS, 404),
        (address(stored["frames3"], suffix="/frames/1,4"), OCTETS, 404),
        (address(jpeg, suffix="/frames/1"), "multipart/related; type=image/jp2", 406),
    ):
        counted.seen.clear()
        first = httpx.get(live.url + path, headers={"Accept": accept})
        assert counted.seen == [path], path  # the fast path handed it over
        again = httpx.get(live.url + path, headers={"Accept": accept, "Origin": "http://localhost:3000"})
        assert first.status_code == again.status_code == status, (path, first.text)
        assert first.json() == again.json()


def test_cross_origin_policy_header_as_the_middleware_adds_it(
    live_factory: Callable[..., LiveServer], stored: dict[str, pydicom.Dataset], tmp_path: Path
) -> None:
    live = live_factory(http={"cors_origins": ["http://localhost:3000"]})
    load(live, stored, tmp_path)
    counted = Counted(byte_path(live))
    for path, accept in ((address(stored["ct0"]), DICOM), (address(stored["rle"], suffix="/frames/1"), OCTETS)):
        fast, slow = both(live, counted, "GET", path, {"Accept": accept})
        assert fast.headers["cross-origin-resource-policy"] == "cross-origin"
        assert slow.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert normalized(fast) == normalized(slow)


def test_a_series_larger_than_a_read_batch_streams_whole(live_factory: Callable[..., LiveServer]) -> None:
    """Instances larger than one read batch (cut into several reads) in a series of several batches."""
    live = live_factory()
    side = 1600  # 16-bit: 5 MB of pixel data per instance, more than multipart.READ_BATCH
    assert side * side * 2 > multipart.READ_BATCH
    series = ct_series(3, rows=side, cols=side, seed=9)
    for ds in series:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    counted = Counted(byte_path(live))
    files = {p.stem: p.read_bytes() for p in stored_files(live.node.settings.data_dir)}
    with httpx.stream("GET", live.url + address(series[0], "series"), headers={"Accept": DICOM}) as response:
        assert response.status_code == 200 and "content-length" not in response.headers  # streamed
        body = b"".join(response.iter_bytes())
    response._content = body
    got = parts(response)
    assert sorted(p for _, p in got) == sorted(files[ds.SOPInstanceUID] for ds in series)
    one = httpx.get(live.url + address(series[1]), headers={"Accept": DICOM})
    assert int(one.headers["content-length"]) == len(one.content)
    assert parts(one)[0][1] == files[series[1].SOPInstanceUID]
    assert counted.seen == []


def test_access_control_audit_and_hidden_studies(
    live_factory: Callable[..., LiveServer], stored: dict[str, pydicom.Dataset], tmp_path: Path
) -> None:
    live = live_factory(http={"auth": "on"})
    load(live, stored, tmp_path)
    counted = Counted(byte_path(live))
    node = live.node
    seen, hidden = stored["ct0"], stored["rle"]
    node.services.labels.add(seen.StudyInstanceUID, "cardiology")
    node.services.labels.add(hidden.StudyInstanceUID, "neuro")
    auth = node.services.auth
    cardiology = {
        "Authorization": "Bearer " + auth.create_token("card", frozenset({Scope.READ}), frozenset({"cardiology"}))
    }
    writer = {"Authorization": "Bearer " + auth.create_token("writer", frozenset({Scope.WRITE}), frozenset({"*"}))}
    data = node.settings.data_dir
    before = len(records(data))
    for path, accept in (
        (address(seen), DICOM),
        (address(seen, suffix="/frames/1"), OCTETS),
        (address(seen, "series"), DICOM),
    ):
        counted.seen.clear()
        assert httpx.get(live.url + path, headers={"Accept": accept}).status_code == 401
        assert httpx.get(live.url + path, headers={"Accept": accept, **writer}).status_code == 403
        assert counted.seen == []  # refused in front of the fast path and of the full app
        fast, slow = both(live, counted, "GET", path, {"Accept": accept, **cardiology})
        assert fast.status_code == 200 and normalized(fast) == normalized(slow)
    for path, accept in (
        (address(hidden), DICOM),
        (address(hidden, suffix="/frames/1"), OCTETS),
        (address(hidden, "study"), DICOM),
    ):
        counted.seen.clear()
        refused = httpx.get(live.url + path, headers={"Accept": accept, **cardiology})
        assert refused.status_code == 404 and refused.json()["error"].endswith("is not stored here"), path
        assert counted.seen == [path]  # answered by the full app: the fast path does not serve a hidden study
    new = [r for r in records(data)[before:] if r["event"]["code"] in ("110103", "110104")]
    answered = [(r["event"]["code"], r["detail"]["path"], r["detail"]["status"], r["outcome"]) for r in new]
    expected = []
    for code, path in (
        ("110104", address(seen)),
        ("110103", address(seen, suffix="/frames/1")),
        ("110104", address(seen, "series")),
    ):
        expected += [(code, path, 200, 0)] * 2  # the fast path's answer and the full app's
    for code, path in (
        ("110104", address(hidden)),
        ("110103", address(hidden, suffix="/frames/1")),
        ("110104", address(hidden, "study")),
    ):
        expected.append((code, path, 404, 4))
    assert answered == expected
    for record in new[:6]:  # the study and its patient, the principal as the requestor
        assert [(o["type"], o["id"]) for o in record["objects"]] == [(2, seen.StudyInstanceUID), (1, seen.PatientID)]
        assert [p["id"] for p in record["participants"] if p["requestor"]] == ["card"]


def test_the_fast_paths_answer_only_read_routes_of_the_table(live: LiveServer) -> None:
    """Every URL the byte fast path takes is a route of the app that ``ROUTE_SCOPES`` asks the read scope for (the
    access check in front of it decides as for the routed request), and the rendered fast path's quick test of the
    path's end lets each of its routes through."""
    table = RouteTable(ROUTE_SCOPES)
    fast = byte_path(live)
    assert {endpoint for _, endpoint in fast.patterns} == set(BYTES_ENDPOINTS)
    for pattern, _ in fast.patterns:
        urls = [concrete(p) for (m, p) in ROUTE_SCOPES if m == "GET" and pattern.fullmatch(concrete(p))]
        assert urls and all(table.decide("GET", u) == (True, Scope.READ) for u in urls), pattern.pattern
        assert all(table.decide("HEAD", u) == (True, Scope.READ) for u in urls), pattern.pattern
    for route in dicomweb_routes.routes():
        if route.endpoint in FAST_ENDPOINTS:
            assert route.path.endswith(RENDERED_ENDS), route.path
