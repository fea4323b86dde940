"""A writer limited to groups cannot reach a study it does not see (issue 16, per-study access): STOW-RS and
imports over real HTTP with API tokens (``http.auth = "on"``). Knowing a hidden study's Study Instance UID is not a
way in: its instances are refused (FailureReason 0x0110, "not authorized"), nothing is stored or labelled, and a new
study such a writer stores carries the labels it asked for, else its groups."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dcmnode.core.access import Scope
from tests.conftest import LiveServer
from tests.factories import ct_series, part10
from tests.test_stow import BOUNDARY, body

CTYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
READ_WRITE = frozenset({Scope.READ, Scope.WRITE})


class World:
    def __init__(self, live: LiveServer) -> None:
        self.live = live
        auth = live.node.services.auth
        self.admin = auth.create_token("admin", READ_WRITE, frozenset({"*"}))
        self.cardio = auth.create_token("cardio", READ_WRITE, frozenset({"cardiology"}))
        self.two = auth.create_token("two", READ_WRITE, frozenset({"cardiology", "research"}))
        self.hidden = ct_series(2, seed=41)  # neuro's study: cardio does not see it
        self.unlabelled = ct_series(1, seed=42)  # no label: only '*' sees it
        self.own = ct_series(1, seed=43)  # cardiology's study
        assert self.stow(self.admin, *self.hidden[:1], query="?label=neuro").status_code == 200
        assert self.stow(self.admin, *self.unlabelled).status_code == 200
        assert self.stow(self.admin, *self.own, query="?label=cardiology").status_code == 200

    def stow(self, token: str, *datasets: Any, query: str = "") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": CTYPE}
        data = body(*(part10(ds) for ds in datasets))
        return httpx.post(f"{self.live.url}/dicom-web/studies{query}", content=data, headers=headers, timeout=60)

    def get(self, token: str, path: str) -> httpx.Response:
        return httpx.get(f"{self.live.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def send(self, method: str, token: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.live.url}{path}", headers=headers, timeout=60, **kw)

    def labels(self, study: str) -> list[str]:
        answer = self.get(self.admin, f"/api/studies/{study}/labels")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["labels"])

    def instances(self, token: str, study: str) -> set[str]:
        answer = self.get(token, f"/dicom-web/studies/{study}/instances")
        if answer.status_code == 204:
            return set()
        assert answer.status_code == 200, answer.text
        return {item["00080018"]["Value"][0] for item in answer.json()}


@pytest.fixture
def world(live_factory: Any) -> World:
    return World(live_factory(http={"auth": "on"}))


def failures(answer: httpx.Response) -> list[tuple[int, str]]:
    items = answer.json().get("00081198", {}).get("Value", [])
    return [(item["00081197"]["Value"][0], item["00000902"]["Value"][0]) for item in items]


def test_stow_into_a_hidden_study_is_refused_and_labels_nothing(world: World) -> None:
    hidden = world.hidden[0].StudyInstanceUID
    before = world.instances(world.admin, hidden)
    for query in ("", "?label=cardiology"):  # with its own label it would have made the study visible to itself
        answer = world.stow(world.cardio, world.hidden[1], query=query)
        assert answer.status_code == 409, answer.text
        assert failures(answer) == [(0x0110, "not authorized: the study is not visible to you")]
        assert "00081199" not in answer.json()
    assert world.labels(hidden) == ["neuro"]
    assert world.instances(world.admin, hidden) == before
    assert world.get(world.cardio, f"/dicom-web/studies/{hidden}/metadata").status_code == 404
    # a study without labels is hidden from a restricted writer too, and so is a re-sent (duplicate) instance
    unlabelled = world.unlabelled[0]
    more = ct_series(1, study=unlabelled.StudyInstanceUID, seed=44)
    for ds in (more[0], unlabelled, world.hidden[0]):
        answer = world.stow(world.cardio, ds)
        assert answer.status_code == 409 and failures(answer)[0][0] == 0x0110, answer.text
    assert world.labels(unlabelled.StudyInstanceUID) == []
    assert world.instances(world.admin, unlabelled.StudyInstanceUID) == {unlabelled.SOPInstanceUID}
    # the same instances from a principal that sees every study are stored as before, labels untouched
    answer = world.stow(world.admin, world.hidden[1], more[0])
    assert answer.status_code == 200, answer.text
    assert world.labels(hidden) == ["neuro"] and world.labels(unlabelled.StudyInstanceUID) == []


def test_a_restricted_writer_sees_what_it_stores(world: World) -> None:
    fresh = ct_series(2, seed=45)
    answer = world.stow(world.cardio, fresh[0], world.hidden[1])  # one new study, one hidden: 202
    assert answer.status_code == 202, answer.text
    assert failures(answer) == [(0x0110, "not authorized: the study is not visible to you")]
    assert len(answer.json()["00081199"]["Value"]) == 1
    study = fresh[0].StudyInstanceUID
    assert world.labels(study) == ["cardiology"]  # asked for none: its groups
    assert world.instances(world.cardio, study) == {fresh[0].SOPInstanceUID}
    listed = world.get(world.cardio, "/dicom-web/studies").json()
    assert {s["0020000D"]["Value"][0] for s in listed} == {study, world.own[0].StudyInstanceUID}
    # its own visible study takes more instances; no label is added to a study that exists
    assert world.stow(world.cardio, fresh[1]).status_code == 200
    own_more = ct_series(1, study=world.own[0].StudyInstanceUID, seed=46)
    assert world.stow(world.cardio, *own_more).status_code == 200
    assert world.labels(world.own[0].StudyInstanceUID) == ["cardiology"]
    # the labels it asks for, when it asks: only those
    other = ct_series(1, seed=47)
    assert world.stow(world.two, *other, query="?label=research").status_code == 200
    assert world.labels(other[0].StudyInstanceUID) == ["research"]
    both = ct_series(1, seed=48)
    assert world.stow(world.two, *both).status_code == 200
    assert world.labels(both[0].StudyInstanceUID) == ["cardiology", "research"]


def test_an_import_by_a_restricted_writer(world: World) -> None:
    created = world.send("POST", world.cardio, "/api/imports", json={"name": "cardio upload"})
    assert created.status_code == 201, created.text
    job = created.json()["id"]
    fresh = ct_series(1, seed=49)
    files = {"hidden.dcm": world.hidden[1], "fresh.dcm": fresh[0]}
    results = {}
    for name, ds in files.items():
        put = world.send("PUT", world.cardio, f"/api/imports/{job}/files/{name}", content=part10(ds))
        assert put.status_code == 200, put.text
        results[name] = put.json()
    assert results["hidden.dcm"] == {
        "path": "hidden.dcm",
        "status": "failed",
        "reason": "not authorized: the study is not visible to you",
    }
    assert results["fresh.dcm"]["status"] == "stored"
    assert world.send("POST", world.cardio, f"/api/imports/{job}/finish").status_code == 202
    report = world.get(world.cardio, f"/api/imports/{job}").json()
    assert [f["path"] for f in report["failed"]] == ["hidden.dcm"], report
    assert world.labels(world.hidden[0].StudyInstanceUID) == ["neuro"]
    assert world.instances(world.admin, world.hidden[0].StudyInstanceUID) == {world.hidden[0].SOPInstanceUID}
    assert world.labels(fresh[0].StudyInstanceUID) == ["cardiology"]
    assert world.instances(world.cardio, fresh[0].StudyInstanceUID) == {fresh[0].SOPInstanceUID}
