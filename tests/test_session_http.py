"""The viewer's sign-in over HTTP (``nodeapi/session.py``, the cookie source in ``dicomweb/access.py``) against a
live node with ``http.auth = "on"``: the cookie's flags, a wrong password, the same-origin rule for unsafe requests
(a bearer token is not subject to it), sign-out, expiry, and a user removed or whose password changed from another
process (the CLI beside the node) losing its sessions within the decision cache's 10 s."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dcmnode.core.access import Scope
from dcmnode.dicomweb.access import SESSION_COOKIE
from dcmnode.model import Source, SourceKind
from tests.conftest import LiveServer, run_cli
from tests.factories import ct_series, part10
from tests.test_auth_tokens import cli_with_input

PASSWORD = "correct horse"
ALL = frozenset({Scope.READ, Scope.WRITE, Scope.DELETE, Scope.SR})


def secured(live_factory: Callable[..., LiveServer], **http: Any) -> LiveServer:
    live = live_factory(http={"auth": "on", **http})
    live.node.services.auth.add_user("alice", PASSWORD, ALL, frozenset({"*"}))
    return live


def sign_in(live: LiveServer, name: str = "alice", password: str = PASSWORD, **headers: str) -> httpx.Response:
    return httpx.post(f"{live.url}/api/session", json={"name": name, "password": password}, headers=headers)


@contextlib.contextmanager
def signed_in(live: LiveServer) -> Iterator[httpx.Client]:
    """A client holding alice's session cookie that sends the node's own Origin."""
    with httpx.Client(base_url=live.url, headers={"Origin": live.url}) as client:
        answer = client.post("/api/session", json={"name": "alice", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        yield client


def seed_study(live: LiveServer) -> str:
    ds = ct_series(1, rows=16, cols=16)[0]
    live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    return str(ds.StudyInstanceUID)


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.2)


def test_sign_in_sets_a_strict_http_only_cookie_and_opens_every_door(live_factory: Any) -> None:
    live = secured(live_factory)
    seed_study(live)
    assert httpx.get(f"{live.url}/dicom-web/studies").status_code == 401
    answer = sign_in(live, Origin=live.url)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "name": "alice",
        "kind": "user",
        "scopes": ["delete", "read", "sr", "write"],
        "groups": ["*"],
    }
    cookie = answer.headers["set-cookie"]
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert cookie.startswith(f"{SESSION_COOKIE}=") and len(cookie.split(";")[0]) > len(SESSION_COOKIE) + 40
    assert "httponly" in flags and flags["samesite"].lower() == "samesite=strict" and flags["path"] == "Path=/"
    assert "secure" not in flags  # plain HTTP
    assert flags["max-age"] == f"Max-Age={12 * 3600}"
    session = answer.cookies[SESSION_COOKIE]
    jar = {SESSION_COOKIE: session}
    studies = httpx.get(f"{live.url}/dicom-web/studies", cookies=jar)
    assert studies.status_code == 200 and len(studies.json()) == 1
    who = httpx.get(f"{live.url}/api/session", cookies=jar)
    assert who.status_code == 200 and who.json()["name"] == "alice"
    assert httpx.get(f"{live.url}/api/status", cookies=jar).json()["can"]["admin"] is False
    assert httpx.get(f"{live.url}/api/session").status_code == 401
    # only a hash of the id is kept: the id itself is nowhere in the index
    index = [f.read_bytes() for f in Path(live.node.settings.node.data_dir).glob("index.sqlite*")]
    assert index and not any(session.encode() in content for content in index)


def test_over_https_the_cookie_is_secure(live_factory: Any) -> None:
    live = secured(live_factory)
    origin = live.url.replace("http://", "https://")
    # uvicorn trusts X-Forwarded-Proto from loopback (a TLS-terminating proxy in front): the request is HTTPS
    answer = sign_in(live, Origin=origin, **{"X-Forwarded-Proto": "https"})
    assert answer.status_code == 200, answer.text
    assert "secure" in answer.headers["set-cookie"].lower().replace(" ", "").split(";")
    assert sign_in(live, Origin=live.url, **{"X-Forwarded-Proto": "https"}).status_code == 403  # http:// origin


def test_a_wrong_password_or_user_is_401_without_saying_which(live_factory: Any) -> None:
    live = secured(live_factory)
    wrong, nobody = sign_in(live, password="not the one", Origin=live.url), sign_in(live, "bob", Origin=live.url)
    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json() == nobody.json() == {"error": "wrong user name or password", "status": 401}
    assert "set-cookie" not in wrong.headers and "set-cookie" not in nobody.headers
    form = httpx.post(
        f"{live.url}/api/session", data={"name": "alice", "password": PASSWORD}, headers={"Origin": live.url}
    )
    assert form.status_code == 200 and SESSION_COOKIE in form.cookies
    assert sign_in(live, password="").status_code == 403  # no Origin: refused before the body is read
    assert httpx.post(f"{live.url}/api/session", json=[1], headers={"Origin": live.url}).status_code == 400


def test_unsafe_requests_by_cookie_need_the_nodes_own_origin(live_factory: Any) -> None:
    live = secured(live_factory)
    study = seed_study(live)
    label = f"/api/studies/{study}/labels/cardio"
    with signed_in(live) as client:
        jar = {SESSION_COOKIE: client.cookies[SESSION_COOKIE]}
        evil = httpx.put(f"{live.url}{label}", cookies=jar, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "origin" in evil.json()["error"].lower()
        port = httpx.put(f"{live.url}{label}", cookies=jar, headers={"Origin": "http://127.0.0.1:1"})
        assert port.status_code == 403
        assert httpx.put(f"{live.url}{label}", cookies=jar).status_code == 403  # no Origin at all
        assert live.node.services.labels.of(study, frozenset({"*"})) == []
        assert client.put(label).status_code == 201  # same origin
        assert httpx.get(f"{live.url}{label.rsplit('/', 1)[0]}", cookies=jar).status_code == 200  # GET: no check
        # login CSRF: a sign-in from another origin is refused too
        assert sign_in(live, Origin="http://evil.example").status_code == 403
        # a bearer token is not subject to the check (a browser never sends it by itself)
        token = live.node.services.auth.create_token("ci", frozenset({Scope.READ, Scope.WRITE}), frozenset({"*"}))
        headers = {"Authorization": f"Bearer {token}", "Origin": "http://evil.example"}
        assert httpx.put(f"{live.url}/api/studies/{study}/labels/neuro", headers=headers).status_code == 201


def test_signed_out_and_expired_sessions_are_401(live_factory: Any) -> None:
    live = secured(live_factory)
    with signed_in(live) as client:
        session = client.cookies[SESSION_COOKIE]
        assert client.get("/api/status").status_code == 200
        out = client.delete("/api/session")
        assert out.status_code == 200 and out.json() == {"signed_out": True}
        assert f"{SESSION_COOKIE}=" in out.headers["set-cookie"] and "max-age=0" in out.headers["set-cookie"].lower()
    stale = httpx.get(f"{live.url}/api/status", cookies={SESSION_COOKIE: session})
    assert stale.status_code == 401 and 'error="invalid_token"' in stale.headers["www-authenticate"]
    assert httpx.get(f"{live.url}/api/session", cookies={SESSION_COOKIE: session}).status_code == 401
    short = secured(live_factory, session_hours=2 / 3600)  # two seconds
    with signed_in(short) as client:
        assert client.get("/api/status").status_code == 200
        wait_until(lambda: client.get("/api/status").status_code == 401)
        assert client.get("/api/session").status_code == 401


@pytest.mark.parametrize("change", ["remove", "passwd"])
def test_a_user_removed_or_whose_password_changed_elsewhere_loses_its_sessions(live_factory: Any, change: str) -> None:
    live = secured(live_factory)
    data = str(live.node.settings.node.data_dir)
    with signed_in(live) as client:
        assert client.get("/dicom-web/studies").status_code == 200  # decided: cached for up to 10 s
        if change == "remove":
            done = run_cli("user", "remove", "alice", "--data", data)
        else:
            done = cli_with_input("battery staple\n", "user", "passwd", "alice", "--data", data)
        assert done.returncode == 0, done.stderr
        # the node's decision cache forgets within 10 s; the wait allows three times that for a loaded machine
        wait_until(lambda: client.get("/dicom-web/studies").status_code == 401)
        assert client.get("/api/session").status_code == 401
