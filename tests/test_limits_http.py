"""Per-client limits over HTTP against the running node: the rate of expensive requests (enhanced renders,
study/series /rendered, exports: 429 with Retry-After, cheap requests never limited), open import jobs and SR
jobs per client (429), the SR running cap (extra jobs stay queued). Clients are told apart by address (auth off:
httpx bound to 127.0.0.1 and 127.0.0.2) and by principal (auth on: two API tokens)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pydicom
import pytest

from dcmnode.core.access import Scope
from dcmnode.core.jobs.queue import Status
from dcmnode.model import Source, SourceKind
from tests.conftest import LiveServer
from tests.factories import ct_series, part10

OTHER_ADDRESS = "127.0.0.2"  # a second client on the loopback network


@pytest.fixture
def clients() -> Iterator[tuple[httpx.Client, httpx.Client]]:
    one = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1"), timeout=30)
    two = httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER_ADDRESS), timeout=30)
    yield one, two
    one.close()
    two.close()


def stocked(live_factory: Callable[..., LiveServer], n: int = 6, **sections: dict[str, Any]) -> Any:
    live = live_factory(**sections)
    series = ct_series(n)
    for ds in series:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    return live, series


def url(live: LiveServer, ds: pydicom.Dataset, suffix: str = "", level: str = "instance") -> str:
    out = f"{live.url}/dicom-web/studies/{ds.StudyInstanceUID}"
    if level != "study":
        out += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        out += f"/instances/{ds.SOPInstanceUID}"
    return out + suffix


def alerts(live: LiveServer) -> list[str]:
    folder = live.node.settings.data_dir / "audit"
    lines = [line for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
    return [r["detail"]["alert"] for r in map(json.loads, lines) if r["event"]["code"] == "110113"]


def refused(response: httpx.Response) -> int:
    """The Retry-After of a 429 (whole seconds), after checking the answer says why."""
    assert response.status_code == 429, response.text
    assert "too many" in response.json()["error"] or "already" in response.json()["error"]
    return int(response.headers["retry-after"])


# -- the rate of expensive requests -------------------------------------------------------------------------------
def test_a_burst_of_enhanced_renders_is_429_with_retry_after_and_served_again_after_it(
    live_factory: Callable[..., LiveServer],
    clients: tuple[httpx.Client, httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    live, series = stocked(live_factory, http={"expensive_per_second": 0.5, "expensive_burst": 3})
    one, two = clients
    enhanced = [one.get(url(live, ds, "/rendered"), params={"enhance": "clahe:0.02"}) for ds in series[:3]]
    assert [r.status_code for r in enhanced] == [200, 200, 200]
    over = one.get(url(live, series[3], "/rendered"), params={"enhance": "clahe:0.02"})
    wait = refused(over)
    assert 1 <= wait <= 2  # one token back at 0.5 per second
    assert "http.expensive_per_second" in over.json()["error"]
    # cheap requests of the same client are not limited: plain renders (the fast path), QIDO, WADO, metadata
    assert one.get(url(live, series[3], "/rendered")).status_code == 200
    assert one.get(url(live, series[3], "/frames/1/rendered")).status_code == 200
    assert one.get(f"{live.url}/dicom-web/studies").status_code == 200
    assert one.get(url(live, series[3])).status_code == 200
    assert one.get(url(live, series[3], "/metadata")).status_code == 200
    # a rendering the client has already (If-None-Match) costs nothing
    etag = enhanced[0].headers["etag"]
    revalidate = {"If-None-Match": etag}
    again = one.get(url(live, series[0], "/rendered"), params={"enhance": "clahe:0.02"}, headers=revalidate)
    assert again.status_code == 304
    # another client is served
    assert two.get(url(live, series[4], "/rendered"), params={"enhance": "clahe:0.02"}).status_code == 200
    # after Retry-After the first client is served again
    time.sleep(wait)
    assert one.get(url(live, series[3], "/rendered"), params={"enhance": "clahe:0.02"}).status_code == 200
    # the refusal: a log line each, one 110113 for the burst
    assert sum("-> 429" in r.getMessage() for r in caplog.records) == 1
    assert [a for a in alerts(live) if a.startswith("rate limit")] == [
        "rate limit: enhanced rendering refused (http.expensive_per_second = 0.5, expensive_burst = 3)"
    ]


def test_study_and_series_rendered_and_exports_are_expensive_per_principal(
    live_factory: Callable[..., LiveServer],
) -> None:
    live, series = stocked(live_factory, 2, http={"auth": "on", "expensive_per_second": 0.01, "expensive_burst": 2})
    auth = live.node.services.auth
    scopes, every = frozenset({Scope.READ}), frozenset({"*"})
    alice, bob = (
        {"Authorization": f"Bearer {auth.create_token(n, scopes, every)}"} for n in ("alice", "bob")
    )  # two principals from one address
    ds = series[0]
    assert httpx.get(url(live, ds, "/export", "series"), headers=alice, params={"format": "zip"}).status_code == 200
    assert httpx.get(url(live, ds, "/rendered", "study"), headers=alice).status_code == 200
    refused(httpx.get(url(live, ds, "/rendered", "series"), headers=alice))
    refused(httpx.get(url(live, ds, "/export", "series"), headers=alice, params={"format": "zip"}))
    assert httpx.get(url(live, ds, "/rendered", "series"), headers=bob).status_code == 200
    assert httpx.get(url(live, ds, "/rendered"), headers=alice).status_code == 200  # a plain render is cheap
    assert httpx.get(url(live, ds, "/thumbnail", "series"), headers=alice).status_code == 200
    alert = next(a for a in alerts(live) if a.startswith("rate limit"))
    assert "rendered study or series" in alert


def test_the_default_rate_lets_a_viewer_scroll_an_enhanced_series(
    live_factory: Callable[..., LiveServer],
) -> None:
    live, series = stocked(live_factory, 40)
    assert live.node.settings.http.expensive_burst == 200
    with httpx.Client(timeout=30) as viewer:
        for ds in series:
            response = viewer.get(url(live, ds, "/rendered"), params={"enhance": "clahe:0.02"})
            assert response.status_code == 200


# -- open import jobs per client ----------------------------------------------------------------------------------
def test_open_imports_per_client_beyond_the_limit_are_429_and_other_clients_unaffected(
    live_factory: Callable[..., LiveServer], clients: tuple[httpx.Client, httpx.Client]
) -> None:
    live = live_factory(http={"max_imports_per_client": 2})
    one, two = clients
    opened = [one.post(f"{live.url}/api/imports", json={"name": f"upload {n}"}) for n in range(2)]
    assert [r.status_code for r in opened] == [201, 201]
    over = one.post(f"{live.url}/api/imports", json={"name": "one more"})
    assert refused(over) == 10
    assert "http.max_imports_per_client = 2" in over.json()["error"]
    assert two.post(f"{live.url}/api/imports", json={"name": "other"}).status_code == 201
    done = one.post(f"{live.url}/api/imports/{opened[0].json()['id']}/finish")
    assert done.status_code == 202
    deadline = time.monotonic() + 20
    while one.get(f"{live.url}/api/imports/{opened[0].json()['id']}").json()["state"] == "open":
        assert time.monotonic() < deadline, "the finished import did not end"
        time.sleep(0.05)
    assert one.post(f"{live.url}/api/imports", json={"name": "now"}).status_code == 201
    assert [a for a in alerts(live) if a.startswith("import refused")] == [
        "import refused: 2 import jobs open already (http.max_imports_per_client = 2); retry once one has ended"
    ]
    listed = one.get(f"{live.url}/api/imports").json()
    assert len(listed) == 4  # nothing half-made for the refused one


# -- SR jobs --------------------------------------------------------------------------------------------------------
def test_sr_jobs_per_client_beyond_the_limit_are_429_and_a_cancelled_one_frees_its_place(
    live_factory: Callable[..., LiveServer], clients: tuple[httpx.Client, httpx.Client]
) -> None:
    live, series = stocked(live_factory, 2, sr={"max_jobs_per_client": 1})
    one, two = clients
    job = {"series": series[0].SeriesInstanceUID, "factor": 2, "method": "classical"}
    first = one.post(f"{live.url}/api/sr/jobs", json=job)
    assert first.status_code == 202
    over = one.post(f"{live.url}/api/sr/jobs", json=job)
    assert refused(over) == 60 and "sr.max_jobs_per_client = 1" in over.json()["error"]
    assert two.post(f"{live.url}/api/sr/jobs", json=job).status_code == 202
    assert one.delete(f"{live.url}/api/sr/jobs/{first.json()['id']}").status_code == 200  # queued: cancelled now
    assert one.post(f"{live.url}/api/sr/jobs", json=job).status_code == 202
    assert len(live.node.services.jobs.find(limit=10)) == 3  # the refused one was never queued
    assert any(a.startswith("SR job refused") for a in alerts(live))


def test_sr_jobs_beyond_max_running_stay_queued_until_one_ends(live_factory: Callable[..., LiveServer]) -> None:
    live, series = stocked(live_factory, 2, sr={"max_running": 1})
    jobs = live.node.services.jobs
    queued = [jobs.submit(series[0].SeriesInstanceUID, 2, "classical", "-", origin="api") for _ in range(3)]
    running = jobs.claim("worker-a")
    assert running is not None and running.id == queued[0].id
    assert jobs.claim("worker-b") is None  # one runs: the others wait
    assert jobs.get(queued[1].id).status == Status.QUEUED
    mine = jobs.claim("cli", queued[2].id)  # dcmnode sr --here: the operator's own run is not held back
    assert mine is not None and mine.status == Status.RUNNING
    jobs.finish(running.id, {})
    jobs.finish(mine.id, {})
    nxt = jobs.claim("worker-b")
    assert nxt is not None and nxt.id == queued[1].id
