"""The viewer's sign-in in headless Chromium against a live node with ``http.auth = "on"`` (``web/app.js``,
``nodeapi/session.py``): signed out nothing loads and the sign-in page shows; signed in, the study list, the
thumbnails (``<img>``), the upload's progress (``EventSource``) and a window drag all work on the session cookie
alone; Sign out goes back to the sign-in page; a read-only user is offered no Upload, Delete or Super-res.

Chromium logs a failed request (the 401s of a signed-out page, the refused password) as a console error: those
alone are allowed here."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dcmnode.core.access import Scope
from dcmnode.dicomweb.access import SESSION_COOKIE
from tests import test_viewer
from tests.conftest import LiveServer
from tests.factories import ct_series, part10
from tests.test_viewer import Session, seed, viewer_url, window_of

browser = test_viewer.browser  # the Playwright fixtures, shared with the viewer's other tests
session = test_viewer.session

pytestmark = pytest.mark.browser

PASSWORD = "correct horse"
FETCH_STATUS = "(url) => fetch(url).then(r => r.status)"


def secured(live_factory: Callable[..., LiveServer]) -> LiveServer:
    live = live_factory(http={"auth": "on"})
    auth = live.node.services.auth
    auth.add_user("alice", PASSWORD, frozenset({Scope.READ, Scope.WRITE, Scope.DELETE, Scope.SR}), frozenset({"*"}))
    auth.add_user("reader", PASSWORD, frozenset({Scope.READ}), frozenset({"*"}))
    return live


def only_refusals(s: Session) -> None:
    """The console errors are the browser's notes of refused requests, nothing else."""
    assert all("401" in m or "403" in m for m in s.console_errors), s.console_errors


def sign_in(s: Session, name: str, password: str = PASSWORD) -> None:
    form = s.page.locator("#signin-form")
    form.locator("[name=name]").fill(name)
    form.locator("[name=password]").fill(password)
    form.locator("button[type=submit]").click()


def test_signed_out_nothing_loads_signed_in_everything_works_on_the_cookie(
    live_factory: Any, session: Callable[..., Session], tmp_path: Path
) -> None:
    live = secured(live_factory)
    series = seed(live, 6, size=256, patient_id="SIGN-1")
    s = session(live, console_errors_allowed=True)
    s.goto()
    s.page.locator("#view-signin").wait_for()
    assert s.page.locator("#view-studies").is_hidden() and s.page.locator("#main-nav").is_hidden()
    assert s.page.locator("#who").is_hidden()
    assert not [u for u in s.requests if "/dicom-web/" in u]  # the views did not start
    assert s.page.evaluate(FETCH_STATUS, "dicom-web/studies") == 401  # and the study list is refused
    s.shot("signin-01-signed-out")

    sign_in(s, "alice", "not the password")
    error = s.page.locator("#signin-error")
    error.wait_for()
    assert error.inner_text() == "wrong user name or password"
    assert s.page.locator("#view-signin").is_visible()

    sign_in(s, "alice")
    s.page.locator("#study-table tbody tr").filter(has_text="SIGN-1").wait_for()
    assert s.page.locator("#view-signin").is_hidden()
    assert s.page.locator("[data-testid=who]").inner_text() == "alice"
    assert s.page.locator("#sign-out").is_visible() and s.page.locator("[data-nav=upload]").is_visible()
    assert s.page.locator("#study-table button[data-action=delete]").count() == 1
    cookie = next(c for c in s.context.cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    s.shot("signin-02-studies")

    # the viewer: the series thumbnail (<img>, the cookie alone) and a window drag (rendered frames, the fast path)
    s.goto(viewer_url(series[0]))
    s.page.wait_for_function(
        "() => { const i = document.querySelector('#series-strip img'); return i && i.complete && i.naturalWidth > 0; }"
    )
    assert s.page.locator("[data-panel=sr]").is_visible()
    s.drawn()
    box = s.page.locator(".pane canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    s.page.mouse.move(x, y)
    s.page.mouse.down()
    s.page.mouse.move(x + 120, y - 80, steps=8)
    s.page.mouse.up()
    s.drawn("d.window !== ''")
    assert len({window_of(u) for u in s.rendered() if window_of(u)}) >= 2, s.rendered()
    s.shot("signin-03-window")

    # an upload: PUTs (same origin), then its progress over EventSource
    archive = tmp_path / "exam.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for n, ds in enumerate(ct_series(5, rows=16, cols=16, seed=3)):
            z.writestr(f"exam/IM{n}.dcm", part10(ds))
    s.goto("#/upload")
    s.page.locator("#file-input").set_input_files(str(archive))
    s.page.locator("#upload-status h2[data-state=done]").wait_for(timeout=90_000)
    assert s.page.locator("#upload-status [data-stat=stored] dd").inner_text() == "5"
    assert any(u.endswith("/events") for u in s.requests), s.requests

    s.page.locator("#sign-out").click()
    s.page.locator("#view-signin").wait_for()
    assert s.page.locator("#who").is_hidden()
    assert s.page.evaluate(FETCH_STATUS, "api/status") == 401
    assert not [c for c in s.context.cookies() if c["name"] == SESSION_COOKIE]
    assert httpx.get(f"{live.url}/api/status", cookies={SESSION_COOKIE: cookie["value"]}).status_code == 401
    s.shot("signin-04-signed-out-again")
    only_refusals(s)


def test_a_read_only_user_is_offered_no_upload_delete_or_super_resolution(
    live_factory: Any, session: Callable[..., Session]
) -> None:
    live = secured(live_factory)
    series = seed(live, 3, patient_id="RO-2")
    s = session(live, console_errors_allowed=True)
    s.goto()
    sign_in(s, "reader")
    s.page.locator("#study-table tbody tr").filter(has_text="RO-2").wait_for()
    assert s.page.locator("[data-testid=who]").inner_text() == "reader"
    assert s.page.locator("[data-nav=upload]").is_hidden()
    assert s.page.locator("[data-nav=studies]").is_visible()
    assert s.page.locator("#study-table button[data-action=delete]").count() == 0
    assert s.page.locator("#study-table th[data-can=delete]").is_hidden()
    s.goto(viewer_url(series[0]))
    s.page.locator("#series-strip .series-item").first.wait_for()
    s.drawn()
    assert s.page.locator("#series-strip button[data-action=delete]").count() == 0
    assert s.page.locator("[data-panel=sr]").is_hidden()
    assert s.page.locator("[data-panel=enhance]").is_visible()
    s.page.locator(".pane canvas").click()
    s.page.keyboard.press("s")  # the shortcut does not open what the button would not
    s.page.keyboard.press("t")
    s.page.locator("[data-panel-body=tags]").wait_for()
    assert s.page.locator("[data-panel-body=sr]").is_hidden()
    s.goto("#/upload")  # typed by hand: back to the study list
    s.page.wait_for_function("() => location.hash === '#/studies'")
    assert s.page.locator("#view-upload").is_hidden()
    s.shot("signin-05-read-only")
    only_refusals(s)
