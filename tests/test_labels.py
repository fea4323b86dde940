"""Per-study access: labels on studies, principals with groups that see only the studies carrying one of them.

Authentication is another part of issue 16; here the principal is put in the ASGI scope by a tiny wrapper around
``node.asgi()`` (the groups named by a test header), served by a real uvicorn server over loopback. DIMSE callers
get their groups from ``[peers.X] groups``.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from dcmnode.app import Node
from dcmnode.core.access import Kind, Principal
from dcmnode.core.access import Scope as AccessScope
from dcmnode.dicomweb.context import PRINCIPAL
from dcmnode.model import Source, SourceKind
from tests.conftest import HOST, run_cli
from tests.factories import ct_series, part10, write_series
from tests.test_retrieve_dimse import StorageScp
from tests.test_stow import BOUNDARY, body

GROUPS_HEADER = b"x-test-groups"


class AsPrincipal:
    """Sets ``scope["dcmnode.principal"]`` as authentication will: a principal with the groups the test names in
    ``X-Test-Groups`` (comma-separated); without the header, no principal (the node's anonymous default)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            named = dict(scope["headers"]).get(GROUPS_HEADER)
            if named is not None:
                groups = frozenset(g for g in named.decode().split(",") if g)
                scope = {**scope, PRINCIPAL: Principal("tester", Kind.TOKEN, frozenset(AccessScope), groups)}
        await self.app(scope, receive, send)


class Served:
    """An ASGI app on uvicorn over loopback (as conftest's LiveServer)."""

    def __init__(self, app: ASGIApp) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((HOST, 0))
        sock.listen(128)
        self.url = f"http://{HOST}:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def get(self, path: str, groups: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, groups, **kwargs)

    def request(self, method: str, path: str, groups: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if groups is not None:
            headers["X-Test-Groups"] = groups
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class World:
    """Patient P1 with study A (label cardiology) and B (neuro); patient P2 with study C (no label)."""

    def __init__(self, node: Node, http: Served, dest: StorageScp) -> None:
        self.node, self.http, self.dest = node, http, dest
        self.a = ct_series(2, patient_id="P1", patient_name="One^Patient", seed=1)
        self.b = ct_series(2, patient_id="P1", patient_name="One^Patient", seed=2)
        self.c = ct_series(3, patient_id="P2", patient_name="Two^Patient", seed=3)
        for ds in self.a + self.b + self.c:
            node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
        node.services.labels.add(self.study("a"), "cardiology")
        node.services.labels.add(self.study("b"), "neuro")

    def study(self, name: str) -> str:
        return str(getattr(self, name)[0].StudyInstanceUID)

    def series(self, name: str) -> str:
        return str(getattr(self, name)[0].SeriesInstanceUID)

    def instance(self, name: str) -> str:
        return str(getattr(self, name)[0].SOPInstanceUID)


@pytest.fixture
def world(node_factory: Callable[..., Node]) -> Iterator[World]:
    dest = StorageScp("DEST")
    peers = (
        f"[peers.DEST]\nhost = '{HOST}'\nport = {dest.port}\n"
        f"[peers.CARDSCU]\nhost = '{HOST}'\nport = {dest.port}\ngroups = ['cardiology']\n"
        f"[peers.PEERAE]\nhost = '{HOST}'\nport = {dest.port}\nlabels = ['cardiology', 'ct.lab']\n"
    )
    node = node_factory(peers_toml=peers)
    http = Served(AsPrincipal(node.asgi()))
    try:
        yield World(node, http, dest)
    finally:
        http.stop()
        dest.stop()


def uids(response: httpx.Response, tag: str) -> list[str]:
    assert response.status_code == 200, response.text
    return [item[tag]["Value"][0] for item in response.json()]


STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


# -- QIDO ------------------------------------------------------------------------------------------------------
def test_qido_shows_exactly_the_studies_of_the_groups_at_every_level(world: World) -> None:
    http, a, b, c = world.http, world.study("a"), world.study("b"), world.study("c")
    assert sorted(uids(http.get("/dicom-web/studies", "cardiology"), STUDY)) == [a]
    assert sorted(uids(http.get("/dicom-web/studies", "cardiology,neuro"), STUDY)) == sorted([a, b])
    assert sorted(uids(http.get("/dicom-web/studies", "*"), STUDY)) == sorted([a, b, c])
    assert sorted(uids(http.get("/dicom-web/studies"), STUDY)) == sorted([a, b, c])  # no principal: anonymous
    assert uids(http.get("/dicom-web/studies", "radiology"), STUDY) == []
    assert uids(http.get("/dicom-web/series", "cardiology"), SERIES) == [world.series("a")]
    assert sorted(uids(http.get("/dicom-web/instances", "cardiology"), SOP)) == sorted(
        x.SOPInstanceUID for x in world.a
    )
    # a hidden study's own resources: empty answers, never 403
    assert uids(http.get(f"/dicom-web/studies/{b}/series", "cardiology"), SERIES) == []
    assert uids(http.get(f"/dicom-web/studies/{b}/instances", "cardiology"), SOP) == []
    assert uids(http.get(f"/dicom-web/studies/{b}/series/{world.series('b')}/instances", "cardiology"), SOP) == []
    assert uids(http.get(f"/dicom-web/studies?StudyInstanceUID={b}", "cardiology"), STUDY) == []
    assert uids(http.get("/dicom-web/studies?PatientID=P1", "neuro"), STUDY) == [b]


def test_counts_limit_and_offset_apply_after_filtering(world: World) -> None:
    http, a, b = world.http, world.study("a"), world.study("b")
    seen = uids(http.get("/dicom-web/studies", "cardiology,neuro"), STUDY)
    assert sorted(seen) == sorted([a, b])
    pages = [uids(http.get(f"/dicom-web/studies?limit=1&offset={n}", "cardiology,neuro"), STUDY) for n in range(3)]
    assert pages == [[seen[0]], [seen[1]], []]
    [row] = http.get("/dicom-web/studies", "cardiology").json()
    assert row["00201208"]["Value"] == [2] and row["00201206"]["Value"] == [1]  # within the visible study
    [row] = http.get("/dicom-web/series?limit=5", "cardiology").json()
    assert row["00201209"]["Value"] == [2]


def find_patients(world: World, calling: str) -> dict[str, Dataset]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, world.node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    identifier.NumberOfPatientRelatedStudies = None
    identifier.NumberOfPatientRelatedSeries = None
    identifier.NumberOfPatientRelatedInstances = None
    try:
        found = [ds for status, ds in assoc.send_c_find(identifier, PatientRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()
    return {str(ds.PatientID): ds for ds in found if ds is not None}


def test_patient_level_cfind_counts_only_visible_studies(world: World) -> None:
    everyone = find_patients(world, "ANYSCU")  # not declared: every study
    assert sorted(everyone) == ["P1", "P2"]
    assert everyone["P1"].NumberOfPatientRelatedStudies == 2 and everyone["P1"].NumberOfPatientRelatedInstances == 4
    limited = find_patients(world, "CARDSCU")  # groups = ["cardiology"]
    assert sorted(limited) == ["P1"]
    p1 = limited["P1"]
    assert (p1.NumberOfPatientRelatedStudies, p1.NumberOfPatientRelatedSeries) == (1, 1)
    assert p1.NumberOfPatientRelatedInstances == 2


def test_findscu_study_level_from_a_peer_with_groups(world: World) -> None:
    result = subprocess.run(
        ["findscu", "-S", "-aet", "CARDSCU", "-aec", "DCMNODE", "-k", "QueryRetrieveLevel=STUDY",
         "-k", "StudyInstanceUID", HOST, str(world.node.dimse_port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert world.study("a") in output
    assert world.study("b") not in output and world.study("c") not in output


# -- retrieves -------------------------------------------------------------------------------------------------
def hidden_paths(world: World) -> dict[str, str]:
    b, se, i = world.study("b"), world.series("b"), world.instance("b")
    return {
        "study": f"/dicom-web/studies/{b}",
        "series": f"/dicom-web/studies/{b}/series/{se}",
        "instance": f"/dicom-web/studies/{b}/series/{se}/instances/{i}",
        "study metadata": f"/dicom-web/studies/{b}/metadata",
        "series metadata": f"/dicom-web/studies/{b}/series/{se}/metadata",
        "instance metadata": f"/dicom-web/studies/{b}/series/{se}/instances/{i}/metadata",
        "frames": f"/dicom-web/studies/{b}/series/{se}/instances/{i}/frames/1",
        "bulkdata": f"/dicom-web/studies/{b}/series/{se}/instances/{i}/bulkdata/7FE00010",
        "rendered": f"/dicom-web/studies/{b}/series/{se}/instances/{i}/rendered",
        "frame rendered": f"/dicom-web/studies/{b}/series/{se}/instances/{i}/frames/1/rendered",
        "thumbnail": f"/dicom-web/studies/{b}/series/{se}/instances/{i}/thumbnail",
        "series thumbnail": f"/dicom-web/studies/{b}/series/{se}/thumbnail",
        "study rendered": f"/dicom-web/studies/{b}/rendered",
        "export": f"/dicom-web/studies/{b}/series/{se}/export",
        "wado-uri": f"/dicom-web/wado?requestType=WADO&studyUID={b}&seriesUID={se}&objectUID={i}",
        "labels": f"/api/studies/{b}/labels",
    }


ACCEPT = {
    "study": "multipart/related; type=application/dicom; transfer-syntax=*",
    "series": "multipart/related; type=application/dicom; transfer-syntax=*",
    "instance": "multipart/related; type=application/dicom; transfer-syntax=*",
    "frames": "multipart/related; type=application/octet-stream; transfer-syntax=*",
    "bulkdata": "application/octet-stream",
}


def test_a_hidden_study_is_404_everywhere_and_a_visible_one_is_not(world: World) -> None:
    http = world.http
    # the series' metadata is in the cache (built for someone who sees it) before the limited principal asks
    assert http.get(hidden_paths(world)["series metadata"], "neuro").status_code == 200
    for what, path in hidden_paths(world).items():
        headers = {"Accept": ACCEPT[what]} if what in ACCEPT else {}
        allowed = http.get(path, "neuro", headers=headers)
        assert allowed.status_code == 200, (what, allowed.status_code, allowed.text[:200])
        hidden = http.get(path, "cardiology", headers=headers)
        assert hidden.status_code == 404, (what, hidden.status_code)
        assert hidden.json()["error"].endswith("is not stored here"), what  # what an unknown UID hears
        with_origin = http.get(path, "cardiology", headers={**headers, "Origin": "http://localhost:3000"})
        assert with_origin.status_code == 404, what  # the full app, not the rendered fast path


def test_sr_job_on_a_hidden_series_is_404(world: World) -> None:
    job = {"series": world.series("b"), "factor": 2, "method": "classical", "send_to": "-"}
    hidden = world.http.request("POST", "/api/sr/jobs", "cardiology", json=job)
    assert hidden.status_code == 404, hidden.text
    queued = world.http.request("POST", "/api/sr/jobs", "neuro", json=job)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    assert world.http.get(f"/api/sr/jobs/{job_id}", "cardiology").status_code == 404
    assert world.http.get("/api/sr/jobs", "cardiology").json() == []
    assert [j["id"] for j in world.http.get("/api/sr/jobs", "neuro").json()] == [job_id]


def move(world: World, calling: str, identifier: Dataset, model: Any) -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate(HOST, world.node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    try:
        return [int(status.Status) for status, _ in assoc.send_c_move(identifier, "DEST", model)]
    finally:
        assoc.release()


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_cmove_of_a_hidden_study_has_no_sub_operations(world: World) -> None:
    statuses = move(world, "CARDSCU", identifier("STUDY", StudyInstanceUID=world.study("b")),
                    StudyRootQueryRetrieveInformationModelMove)  # fmt: skip
    assert statuses[-1] == 0x0000 and world.dest.received == []
    statuses = move(world, "CARDSCU", identifier("STUDY", StudyInstanceUID=world.study("a")),
                    StudyRootQueryRetrieveInformationModelMove)  # fmt: skip
    assert statuses[-1] == 0x0000
    assert sorted(ds.SOPInstanceUID for ds, _ in world.dest.received) == sorted(x.SOPInstanceUID for x in world.a)


def test_cmove_of_a_patient_moves_only_its_visible_studies(world: World) -> None:
    move(world, "CARDSCU", identifier("PATIENT", PatientID="P1"), PatientRootQueryRetrieveInformationModelMove)
    assert {str(ds.StudyInstanceUID) for ds, _ in world.dest.received} == {world.study("a")}
    world.dest.received.clear()
    move(world, "ANYSCU", identifier("PATIENT", PatientID="P1"), PatientRootQueryRetrieveInformationModelMove)
    assert {str(ds.StudyInstanceUID) for ds, _ in world.dest.received} == {world.study("a"), world.study("b")}


def test_cget_of_a_hidden_study_has_no_sub_operations(world: World) -> None:
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.StudyInstanceUID))
        return 0x0000

    def get(calling: str, study: str) -> int:
        ae = AE(ae_title=calling)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate(
            HOST, world.node.dimse_port, ae_title="DCMNODE",
            ext_neg=[build_role(CTImageStorage, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_store)],
        )  # fmt: skip
        try:
            responses = list(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=study),
                                              StudyRootQueryRetrieveInformationModelGet))  # fmt: skip
        finally:
            assoc.release()
        return int(responses[-1][0].Status)

    assert get("CARDSCU", world.study("b")) == 0x0000 and received == []
    assert get("CARDSCU", world.study("a")) == 0x0000 and received == [world.study("a")] * 2


# -- the labels API --------------------------------------------------------------------------------------------
def test_labels_api(world: World) -> None:
    http, c = world.http, world.study("c")
    base = f"/api/studies/{c}/labels"
    assert http.get(base).json() == {"study": c, "labels": []}
    assert http.request("PUT", f"{base}/research.2024").status_code == 201
    again = http.request("PUT", f"{base}/research.2024")
    assert again.status_code == 200 and again.json()["labels"] == ["research.2024"]
    assert http.request("PUT", f"{base}/Ab_c-1").json()["labels"] == ["Ab_c-1", "research.2024"]
    assert uids(http.get("/dicom-web/studies", "research.2024"), STUDY) == [c]
    for bad in ("a%20b", "x" * 65, "%2A", "caf%C3%A9"):
        response = http.request("PUT", f"{base}/{bad}")
        assert response.status_code == 400, bad
        assert "1-64 characters" in response.json()["error"]
    assert http.request("PUT", "/api/studies/1.2.3.999/labels/x").status_code == 404
    assert http.get("/api/studies/1.2.3.999/labels").status_code == 404
    assert http.get("/api/studies/not-a-uid/labels").status_code == 400
    assert http.request("DELETE", f"{base}/research.2024").json()["labels"] == ["Ab_c-1"]
    assert http.request("DELETE", f"{base}/research.2024").status_code == 404
    assert uids(http.get("/dicom-web/studies", "research.2024"), STUDY) == []
    # a principal limited to groups: its own studies only, its own labels only
    a = world.study("a")
    assert http.get(f"/api/studies/{a}/labels", "cardiology").json()["labels"] == ["cardiology"]
    assert http.request("PUT", f"/api/studies/{a}/labels/neuro", "cardiology").status_code == 400
    assert http.request("PUT", f"/api/studies/{c}/labels/cardiology", "cardiology").status_code == 404


# -- labels at ingest ------------------------------------------------------------------------------------------
def test_storescu_from_a_peer_with_labels_labels_its_studies(world: World, tmp_path: Path) -> None:
    labelled, plain = ct_series(2, seed=7), ct_series(1, seed=8)
    for calling, datasets in (("PEERAE", labelled), ("OTHERAE", plain)):
        files = write_series(tmp_path / calling, datasets)
        result = subprocess.run(
            ["storescu", "-aet", calling, "-aec", "DCMNODE", HOST, str(world.node.dimse_port), *map(str, files)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    http = world.http
    assert http.get(f"/api/studies/{labelled[0].StudyInstanceUID}/labels").json()["labels"] == ["cardiology", "ct.lab"]
    assert http.get(f"/api/studies/{plain[0].StudyInstanceUID}/labels").json()["labels"] == []
    seen = uids(http.get("/dicom-web/studies", "ct.lab"), STUDY)
    assert seen == [labelled[0].StudyInstanceUID]


def test_storescu_from_a_peer_limited_to_groups_cannot_add_to_a_study_it_does_not_see(
    world: World, tmp_path: Path
) -> None:
    """CARDSCU sees only 'cardiology' studies: an instance for study b ('neuro') is refused 0x0124 and nothing of
    it is stored; a new study it sends carries its group, so that it sees what it stored."""
    intruder = ct_series(1, seed=21, study=world.study("b"))
    fresh = ct_series(1, seed=22)
    before = world.node.services.catalog.counts()["instances"]
    for name, datasets in (("intruder", intruder), ("fresh", fresh)):
        files = write_series(tmp_path / name, datasets)
        result = subprocess.run(
            ["storescu", "-aet", "CARDSCU", "-aec", "DCMNODE", HOST, str(world.node.dimse_port), *map(str, files)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == (1 if name == "intruder" else 0), result.stderr  # refused, then stored
    assert world.node.services.catalog.counts()["instances"] == before + 1
    assert world.node.services.labels.of(world.study("b")) == ["neuro"]
    assert world.node.services.labels.of(fresh[0].StudyInstanceUID) == ["cardiology"]


def test_stow_label_parameter_labels_the_stored_studies(world: World) -> None:
    first, second = ct_series(1, seed=11), ct_series(1, seed=12)
    data = body(part10(first[0]), part10(second[0]))
    ctype = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
    response = world.http.request(
        "POST", "/dicom-web/studies?label=trial-7&label=ct.lab", content=data, headers={"Content-Type": ctype}
    )
    assert response.status_code == 200, response.text
    for ds in (first[0], second[0]):
        assert world.http.get(f"/api/studies/{ds.StudyInstanceUID}/labels").json()["labels"] == ["ct.lab", "trial-7"]
    refused = world.http.request(
        "POST", "/dicom-web/studies?label=no%20spaces", content=data, headers={"Content-Type": ctype}
    )
    assert refused.status_code == 400
    foreign = world.http.request(
        "POST", "/dicom-web/studies?label=neuro", "cardiology", content=data, headers={"Content-Type": ctype}
    )
    assert foreign.status_code == 400 and "not among your groups" in foreign.json()["error"]


def test_import_labels_label_the_stored_studies(world: World) -> None:
    http = world.http
    created = http.request("POST", "/api/imports", json={"name": "with labels", "labels": ["research"]})
    assert created.status_code == 201, created.text
    job = created.json()["id"]
    datasets = ct_series(2, seed=21)
    for n, ds in enumerate(datasets):
        put = http.request("PUT", f"/api/imports/{job}/files/f{n}.dcm", content=part10(ds))
        assert put.status_code == 200 and put.json()["status"] == "stored", put.text
    assert http.get(f"/api/studies/{datasets[0].StudyInstanceUID}/labels").json()["labels"] == ["research"]
    for bad in ({"labels": "research"}, {"labels": ["a b"]}):
        assert http.request("POST", "/api/imports", json=bad).status_code == 400


def test_a_replaced_instance_keeps_its_study_labels(node_factory: Callable[..., Node]) -> None:
    node = node_factory(store={"on_duplicate": "replace"})
    [ds] = ct_series(1, seed=31)
    node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    node.services.labels.add(ds.StudyInstanceUID, "kept")
    node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT, labels=("added",)))
    assert node.services.labels.of(ds.StudyInstanceUID) == ["added", "kept"]
    node.services.ingest.remove([ds.SOPInstanceUID])  # the study row goes, and its labels with it
    node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    assert node.services.labels.of(ds.StudyInstanceUID) == []


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_label_cli_and_reindex_keeps_labels(tmp_path: Path) -> None:
    data = tmp_path / "data"
    datasets = ct_series(2, seed=41)
    files = write_series(tmp_path / "in", datasets)
    assert run_cli("import", "--data", str(data), "--no-progress", *map(str, files)).returncode == 0
    study = str(datasets[0].StudyInstanceUID)
    added = run_cli("label", "add", "--data", str(data), study, "neuro", "trial.1")
    assert added.returncode == 0, added.stderr
    assert added.stdout.split() == ["neuro", "trial.1"]
    assert run_cli("reindex", "--data", str(data)).returncode == 0
    listed = run_cli("label", "list", "--data", str(data), study)
    assert listed.returncode == 0 and listed.stdout.split() == ["neuro", "trial.1"]
    removed = run_cli("label", "remove", "--data", str(data), study, "neuro")
    assert removed.returncode == 0 and removed.stdout.split() == ["trial.1"]
    bad = run_cli("label", "add", "--data", str(data), study, "no good")
    assert bad.returncode == 2 and "1-64 characters" in bad.stderr
    unknown = run_cli("label", "list", "--data", str(data), "1.2.3.4")
    assert unknown.returncode == 2 and "not stored" in unknown.stderr
