"""The viewer's Delete actions in headless Chromium: a study from the study list, a series from the series selector,
each after a confirmation (a dismissed one deletes nothing), and no Delete offered when ``/api/status`` says the
principal may not delete."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests import test_viewer
from tests.conftest import LiveServer
from tests.test_viewer import Session, seed, viewer_url

browser = test_viewer.browser  # the Playwright fixtures, shared with the viewer's other tests
session = test_viewer.session

pytestmark = pytest.mark.browser


def deletes(s: Session) -> list[str]:
    return [u for u in s.requests if u.startswith("DELETE ")]


def track_deletes(s: Session) -> None:
    s.page.on("request", lambda r: s.requests.append(f"DELETE {r.url}") if r.method == "DELETE" else None)


def test_delete_a_study_from_the_list_and_a_series_from_the_selector(
    live: LiveServer, session: Callable[..., Session]
) -> None:
    keep = seed(live, 4, patient_name="Keep^Study", patient_id="KEEP-1")
    extra = seed(live, 3, patient_name="Keep^Study", patient_id="KEEP-1", study=keep[0].StudyInstanceUID, seed=3)
    doomed = seed(live, 2, patient_name="Doomed^Study", patient_id="DOOM-2", seed=1)
    # A slice prefetched (or a header asked for) just as its series is deleted may be answered 404: that is the
    # right answer, and the only failed request this test accepts (checked at the end, URL by URL).
    s = session(live, console_errors_allowed=True)
    track_deletes(s)
    failed: list[str] = []
    s.page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    dialogs: list[str] = []
    answer = {"accept": False}

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept() if answer["accept"] else dialog.dismiss()

    s.page.on("dialog", on_dialog)
    s.goto()
    rows = s.page.locator("#study-table tbody tr")
    rows.filter(has_text="DOOM-2").wait_for()
    assert rows.count() == 2
    button = rows.filter(has_text="DOOM-2").locator("button[data-action=delete]")
    button.click()  # dismissed: nothing happens
    assert len(dialogs) == 1 and "Doomed, Study" in dialogs[0] and "2 images" in dialogs[0], dialogs
    assert deletes(s) == [] and rows.count() == 2
    answer["accept"] = True
    button.click()
    rows.filter(has_text="DOOM-2").wait_for(state="detached")
    rows.filter(has_text="KEEP-1").wait_for()  # the list is searched again: wait for its answer, not "Searching…"
    assert deletes(s) == [f"DELETE {live.url}/dicom-web/studies/{doomed[0].StudyInstanceUID}"]
    assert rows.count() == 1 and "KEEP-1" in rows.first.inner_text()
    counts = "1 patients · 1 studies · 2 series · 7 instances"
    s.settle("(text) => document.querySelector('#node-counts').innerText.includes(text)", counts)
    s.shot("delete-01-study-list")
    assert live.node.services.store.index.locate(doomed[0].StudyInstanceUID) is None

    s.goto(viewer_url(keep[0]))
    items = s.page.locator("#series-strip .series-item")
    items.nth(1).wait_for()
    assert items.locator("button[data-action=delete]").count() == 2
    shown = s.page.locator(f'#series-strip .series-item[data-series="{keep[0].SeriesInstanceUID}"]')
    shown.locator("button[data-action=delete]").click()  # the series on screen
    s.page.locator(f'#series-strip .series-item[data-series="{keep[0].SeriesInstanceUID}"]').wait_for(state="detached")
    assert items.count() == 1
    s.settle(
        "(uid) => document.querySelector('.series-item[aria-selected=true]')?.dataset.series === uid",
        extra[0].SeriesInstanceUID,
    )
    assert extra[0].SeriesInstanceUID in s.page.evaluate("location.hash")
    assert deletes(s)[-1] == (
        f"DELETE {live.url}/dicom-web/studies/{keep[0].StudyInstanceUID}/series/{keep[0].SeriesInstanceUID}"
    )
    assert "Delete the series Axial (4 images)?" in dialogs[-1], dialogs
    s.shot("delete-02-series")
    assert live.node.services.store.index.locate(keep[0].SeriesInstanceUID) is None
    assert live.node.services.catalog.counts()["instances"] == 3
    gone = (doomed[0].StudyInstanceUID, keep[0].SeriesInstanceUID)
    assert all(f.startswith("404 ") and any(uid in f for uid in gone) for f in failed), failed
    loads = [
        e
        for e in s.console_errors
        if e.startswith("Failed to load resource: the server responded with a status of 404")
    ]
    assert loads == s.console_errors and len(loads) <= len(failed), (s.console_errors, failed)  # only those 404s


def test_no_delete_offered_when_the_node_says_no(live: LiveServer, session: Callable[..., Session]) -> None:
    study = seed(live, 2, patient_name="Read^Only", patient_id="RO-1")
    s = session(live)

    def status(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        body["can"]["delete"] = False
        route.fulfill(response=answer, body=json.dumps(body))

    s.page.route("**/api/status", status)
    s.goto()
    s.page.locator("#study-table tbody tr").filter(has_text="RO-1").wait_for()
    assert s.page.locator("#study-table button[data-action=delete]").count() == 0
    assert s.page.locator("#study-table th[data-can=delete]").is_hidden()
    s.goto(viewer_url(study[0]))
    s.page.locator("#series-strip .series-item").first.wait_for()
    assert s.page.locator("#series-strip button[data-action=delete]").count() == 0
