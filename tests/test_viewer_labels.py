"""The study's labels in the viewer, in headless Chromium: chips beside the title, Add and × (PUT and DELETE
``/api/studies/{uid}/labels/...``), the node's reason shown as text for a label it refuses, the labels in the
index afterwards and again after a reload; no editing offered when ``/api/status`` says the principal may not write.
"""

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

CHIPS = "#study-labels .label-chip"
SHOWN = f"""(want) => JSON.stringify([...document.querySelectorAll('{CHIPS}')].map(c => c.dataset.label))
  === JSON.stringify(want)"""


def shown(s: Session, labels: list[str]) -> None:
    """Wait until the chips are exactly ``labels``, in that order."""
    s.settle(SHOWN, labels)


def only_failed_loads(s: Session, n: int) -> bool:
    """The console errors are the browser's own line for each of ``n`` refused requests, nothing else."""
    return len(s.console_errors) == n and all("Failed to load resource" in e for e in s.console_errors)


def add(s: Session, label: str) -> None:
    s.page.locator("#study-labels input[name=label]").fill(label)
    s.page.locator("#study-labels form.label-add button[type=submit]").click()


def test_add_and_remove_labels_and_see_the_nodes_reason(live: LiveServer, session: Callable[..., Session]) -> None:
    study = seed(live, 2, patient_name="Label^Me", patient_id="LAB-1")
    uid = study[0].StudyInstanceUID
    s = session(live, console_errors_allowed=True)  # the refused PUT logs its 400 as a console error
    s.goto(viewer_url(study[0]))
    s.page.locator("#series-strip .series-item").first.wait_for()
    s.page.locator("#study-labels form.label-add").wait_for()  # offered: the default principal may write
    assert s.page.locator(CHIPS).count() == 0

    add(s, "cardiology")
    s.page.locator(f'{CHIPS}[data-label="cardiology"]').wait_for()
    assert s.page.locator("#study-labels input[name=label]").input_value() == ""
    add(s, "research.2024")
    shown(s, ["cardiology", "research.2024"])
    assert live.node.services.labels.of(uid) == ["cardiology", "research.2024"]
    s.shot("labels-01-two")

    error = s.page.locator("#study-labels .label-error")
    add(s, "bad label!")
    error.wait_for()
    assert "1-64 characters of letters, digits" in error.inner_text(), error.inner_text()
    assert "bad label!" in error.inner_text()
    assert s.page.locator(CHIPS).count() == 2  # nothing added
    s.shot("labels-02-refused")

    s.page.locator(f'{CHIPS}[data-label="cardiology"] button[data-action=remove-label]').click()
    shown(s, ["research.2024"])
    assert error.is_hidden()  # the next change cleared the old reason
    assert live.node.services.labels.of(uid) == ["research.2024"]
    puts = [u for u in s.requests if "/labels/" in u]
    assert len(puts) == 4, puts  # two adds, the refused one, one remove

    s.page.reload(wait_until="domcontentloaded")
    shown(s, ["research.2024"])
    s.shot("labels-03-reloaded")
    assert only_failed_loads(s, 1), s.console_errors


def test_a_label_gone_elsewhere_shows_not_found(live: LiveServer, session: Callable[..., Session]) -> None:
    study = seed(live, 2, patient_name="Gone^Label", patient_id="LAB-2")
    uid = study[0].StudyInstanceUID
    live.node.services.labels.add(uid, "oncology")
    s = session(live, console_errors_allowed=True)  # the 404 is logged as a console error
    s.goto(viewer_url(study[0]))
    shown(s, ["oncology"])
    live.node.services.labels.remove(uid, "oncology")  # removed by someone else meanwhile
    s.page.locator(f'{CHIPS}[data-label="oncology"] button[data-action=remove-label]').click()
    error = s.page.locator("#study-labels .label-error")
    error.wait_for()
    assert "Not found" in error.inner_text() and "oncology" in error.inner_text(), error.inner_text()
    assert only_failed_loads(s, 1), s.console_errors


def test_no_label_editing_without_write(live: LiveServer, session: Callable[..., Session]) -> None:
    study = seed(live, 2, patient_name="Read^Labels", patient_id="LAB-3")
    live.node.services.labels.add(study[0].StudyInstanceUID, "visible")
    s = session(live)

    def status(route: Any) -> None:
        answer = route.fetch()
        body = answer.json()
        body["can"]["write"] = False
        route.fulfill(response=answer, body=json.dumps(body))

    s.page.route("**/api/status", status)
    s.goto(viewer_url(study[0]))
    shown(s, ["visible"])  # reading them needs only read
    assert s.page.locator("#study-labels form.label-add").is_hidden()
    assert s.page.locator("#study-labels button[data-action=remove-label]").count() == 0
