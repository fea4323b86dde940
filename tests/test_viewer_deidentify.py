"""The viewer's De-identify action in headless Chromium: from the study list, a dialog with the options as check
boxes, the project and a replacement Patient ID; the job's progress, then a link that opens the new study."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests import test_viewer
from tests.conftest import LiveServer
from tests.test_viewer import Session, seed

browser = test_viewer.browser
session = test_viewer.session

pytestmark = pytest.mark.browser


def test_deidentify_a_study_from_the_list(live: LiveServer, session: Callable[..., Session]) -> None:
    source = seed(live, 3, patient_name="Shown^Patient", patient_id="SHOWN-1")
    s = session(live)
    s.goto()
    row = s.page.locator("#study-table tbody tr").filter(has_text="SHOWN-1")
    row.locator("button[data-action=deidentify]").click()
    dialog = s.page.locator("#deid-dialog")
    dialog.wait_for()
    assert dialog.locator("input[name=option]").count() == 11
    dialog.locator("input[value=retain-longitudinal-modified-dates]").check()
    dialog.locator("input[name=project]").fill("viewer-test")
    dialog.locator("input[name=patient_id]").fill("SUBJ-9")
    dialog.locator("button[type=submit]").click()
    link = dialog.locator("a.deid-result")
    link.wait_for(state="visible", timeout=60000)
    assert "done: 3 of 3" in dialog.locator(".deid-status").text_content()
    jobs = live.node.http.deidentify.jobs(None) if live.node.http else []
    assert len(jobs) == 1 and jobs[0].request.patient_id == "SUBJ-9"
    new = jobs[0].studies[str(source[0].StudyInstanceUID)]
    assert link.get_attribute("href") == f"#/viewer/{new}"
    link.click()
    s.page.wait_for_url(f"**#/viewer/{new}**")
