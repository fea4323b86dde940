"""The built-in viewer under hostile DICOM text and its security headers (issue 17).

- DICOM text is shown as text: patient names, IDs, study and series descriptions like
  ``<img src=x onerror=alert(1)>``, ``"><svg onload=alert(1)>`` and ``javascript:alert(1)``, and an SR job's error
  text, appear character for character (``textContent``) in the study list, the viewer's title, series selector
  and overlay, the tag browser, the SR panel, the Jobs page and an upload's report (a member's name); no dialog
  opens and no element is made of them.
  (Stored XSS through DICOM text: mercure-imaging/mercure#90.)
- The headers of ``dicomweb/headers.py`` are on the viewer's pages and files (CSP, ``nosniff``, no framing, no
  referrer) and ``nosniff`` on DICOMweb and ``/api`` answers, the fast path's images and 401s included.
- The viewer works under its CSP: loading the study list, a study, its images, the enhancement, SR and tag panels,
  an upload (``EventSource``) and the Jobs page reports no ``securitypolicyviolation`` event and no CSP console
  message; an inline script injected at the end is refused and reported, which shows the listener hears them.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from dcmnode.core.jobs.queue import worker_id
from dcmnode.model import Source, SourceKind
from tests import test_viewer
from tests.conftest import LiveServer
from tests.factories import ct_series, part10
from tests.test_viewer import Session, open_viewer, seed

browser = test_viewer.browser  # the Playwright fixtures, shared with the viewer's other tests
session = test_viewer.session

IMG = "<img src=x onerror=alert(1)>"
SVG = '"><svg onload=alert(1)>'
JS_URL = "javascript:alert(1)"
BOLD = "<b>acc</b>"  # SH: 16 characters at most
# "=" separates a person name's component groups (PS3.5 6.2.1): the node's DICOM JSON gives the first as
# "Alphabetic", the text the viewer shows. A name without "=" arrives whole.
IMG_NAME_SHOWN = IMG.split("=")[0]  # "<img src"
TAGGED_NAME = "<b>Bold</b>^<i>Given</i>"
TAGGED_NAME_SHOWN = "<b>Bold</b>, <i>Given</i>"  # the study list's "Family, Given"
JOB_ERROR = f"{IMG} {SVG} {JS_URL} </td></tr><tr><td>"
# Any element made of the hostile text, or any handler attribute: none may exist in the page.
NO_INJECTED = """() => document.querySelectorAll(
  'img[src="x"], svg, script:not([src]), [onerror], [onload], a[href^="javascript"], tr td b, tr td i').length"""
CSP_LISTENER = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));"""


def hostile_series(live: LiveServer) -> list[Dataset]:
    series = ct_series(3, rows=64, cols=64, patient_name=IMG, phantom=True)
    for ds in series:
        ds.PatientID, ds.StudyDescription, ds.SeriesDescription, ds.AccessionNumber = IMG, SVG, JS_URL, BOLD
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    return series


def failed_job(live: LiveServer, series: str, error: str) -> int:
    """A super-resolution job of ``series`` that failed with ``error``: queued, claimed and failed through the
    job queue, as the worker does (``core/jobs/worker.py`` stores its exception's text)."""
    jobs = live.node.services.jobs
    job = jobs.submit(series, factor=2, method="classical")
    claimed = jobs.claim(worker_id(), job.id)
    assert claimed is not None and claimed.id == job.id
    jobs.fail(job.id, error)
    return job.id


def watch_dialogs(s: Session) -> list[str]:
    fired: list[str] = []

    def on_dialog(dialog: Any) -> None:
        fired.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    s.page.on("dialog", on_dialog)
    return fired


def text_of(s: Session, selector: str) -> str:
    return str(s.page.locator(selector).first.evaluate("el => el.textContent"))


@pytest.mark.browser
def test_hostile_dicom_text_and_job_errors_show_as_text(live: LiveServer, session: Callable[..., Session]) -> None:
    series = hostile_series(live)
    seed(live, 2, patient_name=TAGGED_NAME, patient_id="TAGGED-2", seed=2)
    job = failed_job(live, series[0].SeriesInstanceUID, JOB_ERROR)
    s = session(live)
    dialogs = watch_dialogs(s)

    s.goto()  # the study list
    row = s.page.locator(f'#study-table tbody tr[data-study="{series[0].StudyInstanceUID}"]')
    row.wait_for()
    cells = row.locator("td").evaluate_all("tds => tds.map(td => td.textContent)")
    assert cells[:2] == [IMG_NAME_SHOWN, IMG] and cells[3:5] == [BOLD, SVG], cells
    tagged = s.page.locator("#study-table tbody tr", has_text="TAGGED-2")
    assert tagged.locator("td").first.evaluate("td => td.textContent") == TAGGED_NAME_SHOWN
    assert s.page.evaluate(NO_INJECTED) == 0

    open_viewer(s, series[0])  # title, series selector, the four corners of the overlay
    assert text_of(s, "#viewer-title") == f"{IMG_NAME_SHOWN} — {SVG}"
    assert text_of(s, ".series-item .desc") == JS_URL
    assert text_of(s, ".pane .tl").split("\n")[:2] == [IMG_NAME_SHOWN, IMG]
    assert text_of(s, ".pane .tr").split("\n")[0] == SVG
    assert text_of(s, ".pane .tr").split("\n")[2] == f"Acc {BOLD}"
    assert text_of(s, ".pane .bl").split("\n")[0] == f"Se {series[0].SeriesNumber}: {JS_URL}  CT"

    s.page.keyboard.press("t")  # the tag browser: the value column of each row
    for tag, shown in (("00100010", IMG_NAME_SHOWN), ("00100020", IMG), ("00081030", SVG), ("0008103E", JS_URL)):
        value = s.page.locator(f'table.tags tr[data-tag="{tag}"] td').nth(3)
        value.wait_for()
        assert value.evaluate("td => td.textContent") == shown, tag

    s.page.locator("[data-panel=sr]").click()  # the SR panel lists this series' failed job with its error
    error = s.page.locator("[data-panel-body=sr] .job p.status-failed")
    error.wait_for()
    assert error.evaluate("p => p.textContent") == JOB_ERROR
    assert s.page.evaluate(NO_INJECTED) == 0

    s.goto("#/jobs")
    status = s.page.locator(f'#jobs-table tr[data-job="{job}"] td.status-failed')
    status.wait_for()
    assert status.evaluate("td => td.textContent") == f"failed: {JOB_ERROR}"
    assert s.page.locator("#jobs-table tbody tr").count() == 1  # the error's "</td></tr><tr>" made no row
    assert s.page.evaluate(NO_INJECTED) == 0
    assert dialogs == []


@pytest.mark.browser
def test_the_viewer_works_under_its_content_security_policy(
    live: LiveServer, session: Callable[..., Session], tmp_path: Path
) -> None:
    series = seed(live, 4, size=64, patient_name="Policy^Probe", patient_id="CSP-1")
    s = session(live, console_errors_allowed=True)  # the injected script at the end logs its refusal
    s.page.add_init_script(CSP_LISTENER)
    policies: list[str] = []
    s.page.on(
        "response",
        lambda r: (
            policies.append(r.headers.get("content-security-policy", "")) if r.request.is_navigation_request() else None
        ),
    )

    s.goto()
    s.page.locator("#study-table tbody tr", has_text="CSP-1").wait_for()
    assert policies and all("default-src 'self'" in p and "frame-ancestors 'none'" in p for p in policies), policies
    stats = open_viewer(s, series[0])
    assert stats["lit"] > 0.05, stats
    s.page.locator(".series-item img").first.evaluate("img => img.decode()")  # a thumbnail (img-src)
    s.page.keyboard.press("e")  # enhancement: a toggle re-renders through fetch
    s.page.locator("[data-panel-body=enhance] input[type=checkbox]").first.check()
    s.drawn("d.url.includes('enhance=')")
    s.page.locator("[data-panel=tags]").click()
    s.page.locator('table.tags tr[data-tag="00100010"]').wait_for()
    s.page.keyboard.press("ArrowDown")
    s.drawn("d.index === 1")
    s.goto("#/jobs")
    s.page.locator("#jobs-empty").wait_for()

    archive = tmp_path / "more.zip"  # an upload: its progress comes over EventSource (connect-src)
    with zipfile.ZipFile(archive, "w") as z:
        for ds in ct_series(2, rows=32, cols=32, patient_name="Upload^Probe", seed=5):
            z.writestr(f"{ds.SOPInstanceUID}.dcm", part10(ds))
        z.writestr(f"notes/{IMG}.txt", "not DICOM")  # a member name is hostile text too: the report shows it
    test_viewer.upload(s, archive)
    status = s.page.locator("#upload-status")
    assert status.locator("[data-stat=stored] dd").inner_text() == "2"
    reported = status.locator("table[data-report] tbody td:first-child").evaluate_all(
        "tds => tds.map(t => t.textContent)"
    )
    assert reported == [f"more.zip/notes/{IMG}.txt"], reported
    assert s.page.evaluate(NO_INJECTED) == 0

    csp_console = [m for m in s.console_errors if "Content Security Policy" in m]
    assert s.page.evaluate("() => window.__csp") == [] and csp_console == [], (
        s.page.evaluate("window.__csp"),
        csp_console,
    )

    # The listener hears a violation: an inline script added now is refused, reported, and does not run.
    s.page.evaluate(
        "() => document.body.append(Object.assign(document.createElement('script'), {textContent: 'window.__ran = 1'}))"
    )
    s.page.wait_for_function("() => window.__csp.length > 0")
    assert s.page.evaluate("() => window.__ran") is None
    assert s.page.evaluate("() => window.__csp")[0].startswith("script-src"), s.page.evaluate("window.__csp")
    assert any("Content Security Policy" in m for m in s.console_errors), s.console_errors
    s.console_errors.clear()  # the one console error this test caused on purpose


# -- the headers, without a browser ----------------------------------------------------------------------------------
VIEWER_FILES = ["/", "/index.html", "/app.js", "/style.css", "/dicom-dictionary.js", "/no-such-file.js"]


def assert_viewer_headers(response: httpx.Response) -> None:
    h = response.headers
    policy = {d.split()[0]: d.split()[1:] for d in h["content-security-policy"].split("; ")}
    assert policy["default-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"], policy
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"], policy
    assert not any("'unsafe-inline'" in v or "'unsafe-eval'" in v for v in policy.values()), policy
    assert "script-src" not in policy and "style-src" not in policy  # both 'self' only, from default-src
    assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"
    assert h["x-frame-options"] == "DENY"


def test_the_viewer_pages_and_files_carry_the_security_headers(live: LiveServer) -> None:
    for path in VIEWER_FILES:
        response = httpx.get(f"{live.url}{path}")
        assert response.status_code == (404 if "no-such" in path else 200), path
        assert_viewer_headers(response)
    assert httpx.get(f"{live.url}/app.js").headers["content-type"].startswith("text/javascript")


def test_dicomweb_and_api_answers_are_nosniff_without_the_page_policy(live: LiveServer) -> None:
    ds = seed(live, 1, size=32)[0]
    instance = f"{live.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    answers = [
        httpx.get(f"{live.url}/dicom-web/studies"),
        httpx.get(f"{instance}/metadata"),
        httpx.get(f"{instance}/instances/{ds.SOPInstanceUID}/rendered"),  # the fast path
        httpx.get(f"{instance}/instances/{ds.SOPInstanceUID}/rendered", headers={"Origin": live.url}),  # the app
        httpx.get(f"{live.url}/dicom-web/studies/1.2/series/3.4/instances/5.6/rendered"),  # an error
        httpx.get(f"{live.url}/api/status"),
        httpx.get(f"{live.url}/api/sr/jobs/99999"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 404, 200, 404]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["referrer-policy"] == "no-referrer", r.url
        assert "content-security-policy" not in r.headers, r.url


def test_with_auth_on_the_sign_in_page_and_refusals_carry_them_too(live_factory: Callable[..., LiveServer]) -> None:
    live = live_factory(http={"auth": "on"})
    page = httpx.get(f"{live.url}/")
    assert page.status_code == 200 and 'id="signin-form"' in page.text
    assert_viewer_headers(page)
    for path in ("/api/status", "/dicom-web/studies"):
        refused = httpx.get(f"{live.url}{path}")
        assert refused.status_code == 401, path
        assert (
            refused.headers["x-content-type-options"] == "nosniff" and "content-security-policy" not in refused.headers
        )
