"""Deleting studies, series and instances: DICOMweb ``DELETE`` (httpx and dicomweb-client against a live node),
``dcmnode delete``, what C-FIND and QIDO see afterwards, the caches (metadata, rendered) after a delete and a
re-store of changed content under the same UIDs, and a process killed between its COMMIT and its unlinks."""

from __future__ import annotations

import copy
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE

from dcmnode.core.services import Services
from dcmnode.model import Source, SourceKind
from tests.conftest import HOST, LiveServer, make_settings, run_cli, stored_files
from tests.factories import CT_IMAGE_STORAGE, ct_series, part10, write_series
from tests.test_query import find


def seed(live: LiveServer, datasets: list[Dataset]) -> None:
    for ds in datasets:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))


def rows(data: Path, table: str, column: str, uid: str) -> int:
    """Index rows with ``column = uid`` (read with sqlite3 itself: the test must not open the store, whose
    opening finishes interrupted deletes)."""
    with sqlite3.connect(data / "index.sqlite") as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (uid,)).fetchone()[0])


def web(live: LiveServer, path: str, method: str = "GET", **kw: object) -> httpx.Response:
    return httpx.request(method, f"{live.url}/dicom-web{path}", timeout=30, **kw)  # type: ignore[arg-type]


def test_delete_at_each_level_over_http(live: LiveServer) -> None:
    first = ct_series(3, patient_id="DEL-0001")
    second = ct_series(2, study=first[0].StudyInstanceUID, patient_id="DEL-0001", seed=1)
    other = ct_series(2, patient_id="KEEP-0002", seed=2)
    seed(live, first + second + other)
    data = live.node.settings.data_dir
    study, s1, s2 = first[0].StudyInstanceUID, first[0].SeriesInstanceUID, second[0].SeriesInstanceUID
    assert len(stored_files(data)) == 7

    # an instance, with httpx: 204, its row and file gone, its series and study still there
    sop = first[0].SOPInstanceUID
    gone = web(live, f"/studies/{study}/series/{s1}/instances/{sop}", "DELETE")
    assert gone.status_code == 204 and gone.content == b""
    assert not (data / "dicom" / study / s1 / f"{sop}.dcm").exists()
    assert rows(data, "instances", "SOPInstanceUID", sop) == 0
    assert web(live, f"/studies/{study}/series/{s1}/instances/{sop}").status_code == 404
    left = web(live, f"/studies/{study}/series/{s1}/instances").json()
    assert len(left) == 2
    again = web(live, f"/studies/{study}/series/{s1}/instances/{sop}", "DELETE")
    assert again.status_code == 404 and "not stored" in again.json()["error"]

    # a series named under another study matches nothing, and nothing goes
    wrong = web(live, f"/studies/{other[0].StudyInstanceUID}/series/{s2}", "DELETE")
    assert wrong.status_code == 404
    assert rows(data, "instances", "SeriesInstanceUID", s2) == 2
    assert web(live, "/studies/1.2.3.4.5.6.7.8.9", "DELETE").status_code == 404
    assert web(live, "/studies/not-a-uid", "DELETE").status_code == 400

    # a series with dicomweb-client: the study keeps its other series
    client = DICOMwebClient(f"{live.url}/dicom-web")
    client.delete_series(study, s1)
    assert rows(data, "series", "SeriesInstanceUID", s1) == 0
    assert not (data / "dicom" / study / s1).exists()  # its folder pruned
    assert [s["0020000E"]["Value"][0] for s in client.search_for_series(study)] == [s2]

    # the study: its last series, its patient row; the other patient's study stays
    client.delete_study(study)
    assert rows(data, "studies", "StudyInstanceUID", study) == 0
    assert rows(data, "patients", "PatientID", "DEL-0001") == 0
    assert not (data / "dicom" / study).exists()
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [other[0].StudyInstanceUID]
    assert live.node.services.catalog.counts() == {
        "patients": 1,
        "studies": 1,
        "series": 1,
        "instances": 2,
        "bytes": sum(p.stat().st_size for p in stored_files(data)),
    }
    assert find(live, "STUDY", {"StudyInstanceUID": study}) == []
    assert len(find(live, "STUDY", {"StudyInstanceUID": other[0].StudyInstanceUID})) == 1
    assert not list((data / "deleting").iterdir())  # each delete's note went with its files


def test_cors_allows_delete_and_status_says_who_may(live: LiveServer) -> None:
    preflight = web(
        live,
        "/studies/1.2.3",
        "OPTIONS",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "DELETE"},
    )
    assert preflight.status_code == 200
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    status = httpx.get(f"{live.url}/api/status", timeout=30).json()
    assert status["can"] == {
        "read": True,
        "write": True,
        "delete": True,
        "sr": True,
        "deidentify": True,
        "admin": True,
    }


def changed(datasets: list[Dataset]) -> list[Dataset]:
    """The same UIDs with other content of the same size: other pixels, another description."""
    out = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        pixels = np.frombuffer(ds.PixelData, dtype=np.int16)
        new.PixelData = (2000 - pixels).astype(np.int16).tobytes()
        new.SeriesDescription = "Again"  # as long as "Axial": the files keep their size
        out.append(new)
    return out


def cstore(port: int, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT_IMAGE_STORAGE)
    assoc = ae.associate(HOST, port, ae_title="DCMNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@pytest.mark.parametrize("transport", ["cstore", "stow"])
def test_a_deleted_series_stored_again_is_served_fresh(live: LiveServer, transport: str) -> None:
    series = ct_series(3, rows=32, cols=32, patient_id="AGAIN-01")
    study, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    client = DICOMwebClient(f"{live.url}/dicom-web")

    def store(datasets: list[Dataset]) -> None:
        if transport == "cstore":  # on_duplicate = "keep" (the default): a deleted row is no duplicate
            assert cstore(live.node.dimse_port, datasets) == [0] * len(datasets)
        else:
            client.store_instances(datasets)

    store(series)
    data = live.node.settings.data_dir
    sop = series[1].SOPInstanceUID
    rendered_url = f"/studies/{study}/series/{uid}/instances/{sop}/rendered"
    before = web(live, rendered_url)
    metadata = web(live, f"/studies/{study}/series/{uid}/metadata")
    assert before.status_code == 200 and metadata.status_code == 200
    assert metadata.json()[0]["0008103E"]["Value"] == ["Axial"]
    cache = data / "cache"
    live.node.http.cache_writer.submit(lambda: None).result(30)  # the rendering handed to the cache is written
    assert list((cache / "metadata").glob(f"{uid}.*.json"))
    assert list((cache / "rendered").rglob(f"{sop}.*"))
    size_before = (data / "dicom" / study / uid / f"{sop}.dcm").stat().st_size

    assert web(live, f"/studies/{study}", "DELETE").status_code == 204
    assert web(live, f"/studies/{study}/series/{uid}/metadata").status_code == 404
    assert web(live, rendered_url).status_code == 404
    assert not list((cache / "metadata").glob(f"{uid}.*.json"))
    assert not list((cache / "rendered").rglob(f"{sop}.*"))

    store(changed(series))  # same UIDs, other content of the same size
    assert (data / "dicom" / study / uid / f"{sop}.dcm").stat().st_size == size_before
    fresh = web(live, f"/studies/{study}/series/{uid}/metadata")
    assert [item["0008103E"]["Value"] for item in fresh.json()] == [["Again"]] * 3
    assert fresh.headers["etag"] != metadata.headers["etag"]
    after = web(live, rendered_url, headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert after.content != before.content


def test_the_cli_deletes_by_uid_at_the_level_it_finds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    one = ct_series(3, patient_id="CLI-0001")
    two = ct_series(2, patient_id="CLI-0002", seed=1)
    write_series(tmp_path / "in", one + two)
    assert run_cli("import", "--data", str(data), "--no-progress", str(tmp_path / "in")).returncode == 0

    sop = one[0].SOPInstanceUID
    done = run_cli("delete", "--data", str(data), sop)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"deleted instance {sop}: 1 instance(s) in 1 series"
    series = one[0].SeriesInstanceUID
    wrong_level = run_cli("delete", "--data", str(data), "--level", "study", series)
    assert wrong_level.returncode == 1 and f"no study {series}" in wrong_level.stderr
    done = run_cli("delete", "--data", str(data), "--level", "series", series, two[0].StudyInstanceUID)
    assert done.returncode == 1  # the second UID is a study, not a series
    assert done.stdout.strip() == f"deleted series {series}: 2 instance(s) in 1 series"
    study = two[0].StudyInstanceUID
    done = run_cli("delete", "--data", str(data), study)
    assert done.returncode == 0 and done.stdout.strip() == f"deleted study {study}: 2 instance(s) in 1 series"
    assert stored_files(data) == []
    missing = run_cli("delete", "--data", str(data), study)
    assert missing.returncode == 1 and "not found" in missing.stderr
    status = run_cli("status", "--json", "--data", str(data))
    assert '"instances": 0' in status.stdout and '"patients": 0' in status.stdout


# A process that deletes a study and is killed (SIGKILL: nothing runs after it) at a given point of the delete.
CRASH = """
import os, signal, sys
from dcmnode import config
from dcmnode.core.services import Services
from dcmnode.store import files

point = sys.argv[2]
original = getattr(files.Files, point)

def crash(self, *args):
    if point == "write_journal":
        original(self, *args)  # the note is on disk, the transaction not committed
    os.kill(os.getpid(), signal.SIGKILL)

setattr(files.Files, point, crash)
settings = config.load(None, {}, {"node": {"data_dir": sys.argv[1]}})
with Services.open(settings) as services:
    services.deletion.delete(sys.argv[3])
"""


@pytest.mark.parametrize("point", ["remove_many", "write_journal"])
def test_a_delete_killed_midway_never_leaves_a_row_without_its_file(tmp_path: Path, point: str) -> None:
    data = tmp_path / "data"
    series = ct_series(3, patient_id="CRASH-01")
    study = series[0].StudyInstanceUID
    with Services.open(make_settings(data)) as services:
        for ds in series:
            services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    files = stored_files(data)
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASH), str(data), point, study],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert killed.returncode == -9, killed.stderr
    assert len(list((data / "deleting").iterdir())) == 1  # the delete's note of its files
    assert stored_files(data) == files  # no file removed yet
    if point == "remove_many":  # killed after the COMMIT: rows gone, files left without rows
        assert rows(data, "instances", "StudyInstanceUID", study) == 0
        assert rows(data, "studies", "StudyInstanceUID", study) == 0
    else:  # killed before the COMMIT: the rows and their files are all still there
        assert rows(data, "instances", "StudyInstanceUID", study) == 3

    status = run_cli("status", "--json", "--data", str(data))  # the next opening finishes the delete
    assert status.returncode == 0, status.stderr
    assert not list((data / "deleting").iterdir())
    if point == "remove_many":
        assert stored_files(data) == []
        assert "removed 3 file(s) an interrupted delete left without an index row" in status.stderr
        assert '"instances": 0' in status.stdout
    else:
        assert stored_files(data) == files
        assert '"instances": 3' in status.stdout


def test_forgetting_a_series_keeps_the_caches_of_uids_that_extend_it(tmp_path: Path) -> None:
    """A cache file is named after its series or instance UID; 1.2.3's must not take 1.2.3.4's with it."""
    with Services.open(make_settings(tmp_path / "data")) as services:
        metadata = services.catalog.metadata
        for name in ("1.2.3.0123456789abcdef.json", "1.2.3.4.0123456789abcdef.json"):
            (metadata.folder / name).write_bytes(b"[]")
        assert metadata.forget("1.2.3") == 1
        assert [p.name for p in metadata.folder.glob("*.json")] == ["1.2.3.4.0123456789abcdef.json"]
        renderer = services.renderer
        folder = renderer.cache_dir / "23"
        folder.mkdir(parents=True)
        for name in ("1.23.aaaa.jpg", "1.23.23.bbbb.jpg"):
            (folder / name).write_bytes(b"x")
        assert renderer.forget(["1.23"]) == 1
        assert [p.name for p in folder.iterdir()] == ["1.23.23.bbbb.jpg"]
