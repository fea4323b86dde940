"""WADO-RS and WADO-URI over a real uvicorn server: dicomweb-client and raw HTTP, checked against the files."""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dcmnode.model import Source, SourceKind
from tests.conftest import LiveServer, stored_files
from tests.factories import bundled, ct_series, part10

COMPRESSED = ["JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", "MR_small_jpeg_ls_lossless.dcm"]
UNCOMPRESSED = ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "CT_small.dcm"]


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled files with fresh UIDs (pydicom's MR_small_* share one SOP Instance UID), each still in
    its own transfer syntax."""
    folder = tmp_path_factory.mktemp("copies")
    out = {}
    for name in COMPRESSED + UNCOMPRESSED:
        ds = pydicom.dcmread(bundled(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out[name] = folder / name
        ds.save_as(out[name])
    return out


@pytest.fixture
def wado_live(
    live_factory: Callable[..., LiveServer], copies: dict[str, Path]
) -> tuple[LiveServer, list[pydicom.Dataset]]:
    live = live_factory()
    series = ct_series(3, rows=32, cols=32)
    for ds in series:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    for path in copies.values():
        live.node.services.ingest.store_path(path, Source(SourceKind.IMPORT))
    return live, series


def url(live: LiveServer, ds: pydicom.Dataset, suffix: str = "", level: str = "instance") -> str:
    out = f"{live.url}/dicom-web/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        out += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        out += f"/instances/{ds.SOPInstanceUID}"
    return out + suffix


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related body into (headers, payload) with the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    assert message.is_multipart()
    out = []
    for part in message.iter_parts():
        syntax = part.get_param("transfer-syntax")
        content_type = part.get_content_type() + (f"; transfer-syntax={syntax}" if syntax else "")
        out.append(({**dict(part.items()), "Content-Type": content_type}, part.get_payload(decode=True)))
    return out


def stored_path(live: LiveServer, sop: str) -> Path:
    [path] = [p for p in stored_files(live.node.settings.data_dir) if p.stem == sop]
    return path


def test_series_retrieve_as_stored_is_byte_identical(wado_live: Any) -> None:
    live, series = wado_live
    response = httpx.get(
        url(live, series[0], level="series"),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    got = parts(response)
    assert len(got) == 3
    for headers, payload in got:
        ds = pydicom.dcmread(io.BytesIO(payload))
        assert payload == stored_path(live, ds.SOPInstanceUID).read_bytes()
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"


@pytest.mark.parametrize("name", COMPRESSED + UNCOMPRESSED)
def test_every_transfer_syntax_as_stored_and_as_explicit_little_endian(
    wado_live: Any, copies: dict[str, Path], name: str
) -> None:
    live, _ = wado_live
    original = pydicom.dcmread(copies[name])
    as_stored = httpx.get(
        url(live, original), headers={"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"}
    )
    [(headers, payload)] = parts(as_stored)
    assert payload == stored_path(live, original.SOPInstanceUID).read_bytes()
    assert headers["Content-Type"].endswith(f"transfer-syntax={original.file_meta.TransferSyntaxUID}")
    # No transfer-syntax parameter: explicit VR little endian (PS3.18 Table 8.7.3-2), decompressed if need be.
    default = httpx.get(url(live, original), headers={"Accept": 'multipart/related; type="application/dicom"'})
    [(headers, payload)] = parts(default)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    ds = pydicom.dcmread(io.BytesIO(payload))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, original.pixel_array)
    implicit = httpx.get(
        url(live, original),
        headers={"Accept": f"multipart/related; type=application/dicom; transfer-syntax={ImplicitVRLittleEndian}"},
    )
    ds = pydicom.dcmread(io.BytesIO(parts(implicit)[0][1]))
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_406_when_the_requested_transfer_syntax_cannot_be_made(wado_live: Any) -> None:
    live, series = wado_live
    jpeg2000 = "1.2.840.10008.1.2.4.90"
    response = httpx.get(
        url(live, series[0], level="series"),
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={jpeg2000}'},
    )
    assert response.status_code == 406
    assert jpeg2000 in response.json()["error"]
    listed = httpx.get(
        url(live, series[0], level="series"),
        headers={"Accept": f"multipart/related; type=application/dicom; transfer-syntax={jpeg2000}, */*;q=0.1"},
    )
    assert listed.status_code == 200  # the second choice is served
    assert httpx.get(url(live, series[0]), headers={"Accept": "image/png"}).status_code == 406


def test_single_part_instance_and_unknown_uids(wado_live: Any) -> None:
    live, series = wado_live
    single = httpx.get(url(live, series[1]), headers={"Accept": "application/dicom"})
    assert single.status_code == 200 and single.headers["content-type"].startswith("application/dicom")
    assert single.content == stored_path(live, series[1].SOPInstanceUID).read_bytes()
    missing = httpx.get(f"{live.url}/dicom-web/studies/1.2.3/series/4.5.6")
    assert missing.status_code == 404 and "not stored" in missing.json()["error"]
    bad = httpx.get(f"{live.url}/dicom-web/studies/1.2.x")
    assert bad.status_code == 400


def test_etag_and_not_modified(wado_live: Any) -> None:
    live, series = wado_live
    first = httpx.get(url(live, series[0]), headers={"Accept": "application/dicom"})
    etag = first.headers["etag"]
    assert first.headers["cache-control"].startswith("private")
    again = httpx.get(url(live, series[0]), headers={"Accept": "application/dicom", "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = httpx.get(url(live, series[1]), headers={"Accept": "application/dicom", "If-None-Match": etag})
    assert other.status_code == 200


def test_dicomweb_client_retrieve(wado_live: Any) -> None:
    live, series = wado_live
    client = DICOMwebClient(url=f"{live.url}/dicom-web")
    instances = client.retrieve_series(series[0].StudyInstanceUID, series[0].SeriesInstanceUID)
    assert sorted(ds.SOPInstanceUID for ds in instances) == sorted(ds.SOPInstanceUID for ds in series)
    one = client.retrieve_instance(series[0].StudyInstanceUID, series[0].SeriesInstanceUID, series[2].SOPInstanceUID)
    assert np.array_equal(one.pixel_array, series[2].pixel_array)
    meta = client.retrieve_series_metadata(series[0].StudyInstanceUID, series[0].SeriesInstanceUID)
    assert sorted(m["00080018"]["Value"][0] for m in meta) == sorted(ds.SOPInstanceUID for ds in series)
    [frame] = client.retrieve_instance_frames(
        series[0].StudyInstanceUID, series[0].SeriesInstanceUID, series[0].SOPInstanceUID, frame_numbers=[1]
    )
    assert frame == series[0].PixelData


def test_series_metadata_is_complete_cached_and_follows_new_instances(wado_live: Any) -> None:
    live, series = wado_live
    response = httpx.get(url(live, series[0], "/metadata", level="series"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/dicom+json")
    meta = response.json()
    assert {m["00080018"]["Value"][0] for m in meta} == {ds.SOPInstanceUID for ds in series}
    first = meta[0]
    assert first["00020010"]["Value"] == [ExplicitVRLittleEndian]  # viewers choose their decoder by it
    assert first["00280010"]["Value"] == [32] and first["00281053"]["Value"] == [1]  # Rows, RescaleSlope
    assert first["00100010"]["Value"] == [{"Alphabetic": "Generated^Patient"}]
    pixel_uri = first["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith(live.url)
    sop = first["00080018"]["Value"][0]
    bulk = httpx.get(pixel_uri, headers={"Accept": "application/octet-stream"})
    assert bulk.status_code == 200 and bulk.content == next(d for d in series if d.SOPInstanceUID == sop).PixelData

    etag = response.headers["etag"]
    cached = httpx.get(url(live, series[0], "/metadata", level="series"), headers={"If-None-Match": etag})
    assert cached.status_code == 304
    extra = ct_series(1, rows=32, cols=32)[0]
    extra.StudyInstanceUID, extra.SeriesInstanceUID = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    live.node.services.ingest.store_bytes(part10(extra), Source(SourceKind.IMPORT))
    grown = httpx.get(url(live, series[0], "/metadata", level="series"), headers={"If-None-Match": etag})
    assert grown.status_code == 200 and len(grown.json()) == 4


def test_metadata_gzip_and_other_levels(wado_live: Any) -> None:
    live, series = wado_live
    raw = httpx.get(url(live, series[0], "/metadata", level="series"), headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip"  # httpx inflated it for us
    assert len(raw.json()) == 3
    with httpx.stream("GET", url(live, series[0], "/metadata", level="series")) as stream:
        body = b"".join(stream.iter_raw())
    assert gzip.decompress(body).startswith(b"[{")
    study = httpx.get(url(live, series[0], "/metadata", level="study")).json()
    assert len(study) == 3
    instance = httpx.get(url(live, series[1], "/metadata")).json()
    assert [m["00080018"]["Value"][0] for m in instance] == [series[1].SOPInstanceUID]
    assert httpx.get(f"{live.url}/dicom-web/studies/1.2.3/metadata").status_code == 404


@pytest.mark.parametrize("name", COMPRESSED + UNCOMPRESSED)
def test_frames_native_and_as_stored(wado_live: Any, copies: dict[str, Path], name: str) -> None:
    live, _ = wado_live
    original = pydicom.dcmread(copies[name])
    frames = int(original.get("NumberOfFrames") or 1)
    numbers = ",".join(str(n) for n in range(1, frames + 1))
    native = httpx.get(
        url(live, original, f"/frames/{numbers}"),
        headers={"Accept": "multipart/related; type=application/octet-stream"},
    )
    assert native.status_code == 200, native.text
    got = parts(native)
    assert len(got) == frames
    expected = original.pixel_array[None] if frames == 1 else original.pixel_array
    for (headers, payload), array in zip(got, expected, strict=True):
        assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
        assert np.array_equal(np.frombuffer(payload, dtype=array.dtype.newbyteorder("<")).reshape(array.shape), array)
    as_stored = httpx.get(
        url(live, original, "/frames/1"),
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    [(headers, payload)] = parts(as_stored)
    syntax = str(original.file_meta.TransferSyntaxUID)
    if original.file_meta.TransferSyntaxUID.is_compressed:
        assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={syntax}"
        first = pydicom.encaps.get_frame(original.PixelData, 0, number_of_frames=frames)
        assert payload == first
    else:
        assert payload == got[0][1]


def test_frames_in_the_compressed_media_type_and_errors(wado_live: Any, copies: dict[str, Path]) -> None:
    live, series = wado_live
    jp2 = pydicom.dcmread(copies["JPEG2000.dcm"])
    response = httpx.get(url(live, jp2, "/frames/1"), headers={"Accept": 'multipart/related; type="image/jp2"'})
    [(headers, payload)] = parts(response)
    assert headers["Content-Type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert payload == pydicom.encaps.get_frame(jp2.PixelData, 0, number_of_frames=1)
    jpeg = httpx.get(url(live, jp2, "/frames/1"), headers={"Accept": "multipart/related; type=image/jpeg"})
    assert jpeg.status_code == 406 and "image/jp2" in jpeg.json()["error"]
    assert httpx.get(url(live, series[0], "/frames/2")).status_code == 404
    assert httpx.get(url(live, series[0], "/frames/0")).status_code == 400
    assert httpx.get(url(live, series[0], "/frames/a,b")).status_code == 400
    repeated = httpx.get(url(live, series[0], "/frames/" + ",".join(["1"] * 1000)))  # not 1000 copies of a frame
    assert repeated.status_code == 400 and "more than once" in repeated.json()["error"]
    # OHIF's unquoted Accept header (omitQuotationForMultipartRequest)
    ohif = httpx.get(
        url(live, series[0], "/frames/1"),
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert parts(ohif)[0][1] == series[0].PixelData


def test_wado_uri(wado_live: Any, copies: dict[str, Path]) -> None:
    live, series = wado_live
    ds = series[0]
    params = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID}
    params |= {"objectUID": ds.SOPInstanceUID, "contentType": "application/dicom"}
    response = httpx.get(f"{live.url}/dicom-web/wado", params=params)
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    assert response.content == stored_path(live, ds.SOPInstanceUID).read_bytes()
    jp2 = pydicom.dcmread(copies["JPEG2000.dcm"])
    decompressed = httpx.get(
        f"{live.url}/dicom-web/wado",
        params={
            "requestType": "WADO",
            "studyUID": jp2.StudyInstanceUID,
            "seriesUID": jp2.SeriesInstanceUID,
            "objectUID": jp2.SOPInstanceUID,
            "contentType": "application/dicom",
            "transferSyntax": ExplicitVRLittleEndian,
        },
    )
    assert np.array_equal(pydicom.dcmread(io.BytesIO(decompressed.content)).pixel_array, jp2.pixel_array)
    missing = httpx.get(f"{live.url}/dicom-web/wado", params={"requestType": "WADO", "studyUID": ds.StudyInstanceUID})
    assert missing.status_code == 400 and "seriesUID" in missing.json()["error"]
    text = httpx.get(f"{live.url}/dicom-web/wado", params=params | {"contentType": "text/plain"})
    assert text.status_code == 406  # images are tested with the rendering (test_rendered.py)


def test_study_retrieve_streams_every_series(wado_live: Any) -> None:
    live, series = wado_live
    other = ct_series(2, rows=16, cols=16, study=series[0].StudyInstanceUID)
    for ds in other:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    with httpx.stream("GET", url(live, series[0], level="study"), headers={"Accept": "*/*"}) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers  # streamed, not assembled in memory
        body = b"".join(response.iter_bytes())
    response._content = body
    got = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for _, p in parts(response)}
    assert got == {ds.SOPInstanceUID for ds in series + other}


def test_metadata_is_precomputed_for_quiet_series(wado_live: Any) -> None:
    live, series = wado_live
    cache = live.node.services.catalog.metadata
    cached = lambda: sorted(p.name for p in cache.folder.glob(f"{series[0].SeriesInstanceUID}.*.json"))  # noqa: E731
    assert cache.precompute_changed("", quiet=3600) == ""  # nothing has been quiet that long
    assert cached() == []
    watermark = cache.precompute_changed("", quiet=0)
    first = cached()
    assert len(first) == 1 and watermark
    extra = ct_series(1, rows=32, cols=32)[0]
    extra.StudyInstanceUID, extra.SeriesInstanceUID = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    live.node.services.ingest.store_bytes(part10(extra), Source(SourceKind.IMPORT))
    assert cache.precompute_changed(watermark, quiet=0) > watermark
    second = cached()
    assert len(second) == 1 and second != first  # the new version replaced the old one
    served = httpx.get(url(live, series[0], "/metadata", level="series")).json()
    assert len(served) == 4


def test_large_series_metadata_is_built_in_worker_processes(live_factory: Callable[..., LiveServer]) -> None:
    live = live_factory(http={"metadata_workers": 2})
    series = ct_series(70, rows=8, cols=8)  # over POOL_MIN_INSTANCES: split across the worker processes
    for ds in series:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    meta = httpx.get(url(live, series[0], "/metadata", level="series"), timeout=60).json()
    assert [m["00200013"]["Value"][0] for m in meta] == list(range(1, 71))  # every instance, in order
    assert [m["00080018"]["Value"][0] for m in meta] == [ds.SOPInstanceUID for ds in series]
    assert live.node.services.catalog.metadata._pool is not None
