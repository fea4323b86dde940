"""The real OHIF viewer (@ohif/app 3.13.2) against ``dcmnode serve`` with ``http.auth = "on"``: a read-only API
token made with ``dcmnode token create``, OHIF on another origin configured with it, the study list and a CT
series displayed, and not one 401 in the node's log while OHIF runs (OHIF issues #1870, #4403, #3830 were frame,
thumbnail and metadata requests sent without the header).

How OHIF 3.13.2 sends a token: its DICOMweb data source, the cornerstone image loader's ``beforeSend``, the
thumbnail and rendered fetches all take ``Authorization`` from ``userAuthenticationService.getAuthorizationHeader()``
and nothing else (the data source's ``requestOptions.auth`` of OHIF v2 is no longer read). The service is set by
OHIF's OIDC routes, by a ``?token=`` in a /viewer URL (the Mode route only: not the study list), or by the
deployment: ``window.config`` may be a function of ``{servicesManager}``, and a data source's
``configuration.onConfiguration`` runs in its ``initialize``, before the study list's first query. The test uses
that last form (the one README.md documents) for the study list and the viewer, and the ``?token=`` form for a
viewer link.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HOST, CliServer, run_cli
from tests.factories import ct_series, write_series
from tests.test_ohif import (
    CANVAS_STATS,
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    ohif_config,
    ohif_server,
    require_ohif,
)

pytestmark = pytest.mark.browser

# Sets OHIF's userAuthenticationService from the data source's initialize (see the module's docstring).
TOKEN_CONFIG = """window.config = ({ servicesManager }) => {
  const config = %(config)s;
  const token = %(token)s;
  config.dataSources[0].configuration.onConfiguration = (configuration) => {
    servicesManager.services.userAuthenticationService.setServiceImplementation({
      getAuthorizationHeader: () => ({ Authorization: 'Bearer ' + token }),
    });
    return configuration;
  };
  return config;
};
"""
REFUSED = re.compile(r"-> 40[13]\b")  # dicomweb/access.py logs every refusal as "METHOD PATH -> STATUS: why"


def log_holding(server: CliServer, pattern: re.Pattern[str]) -> str:
    """The node's log, which holds ``pattern`` (a refusal is logged, on stderr, before its answer is sent)."""
    text = server.log.read_text()
    assert pattern.search(text), text[-2000:]
    return text


@pytest.fixture
def secured_node(tmp_path: Path, cli_server_factory: Callable[..., CliServer]) -> tuple[CliServer, str, str]:
    """``dcmnode serve`` with auth on over a data folder holding a 20-slice CT study; a read-only token."""
    require_ohif()
    data = tmp_path / "data"
    data.mkdir()
    series = ct_series(20, rows=128, cols=128, patient_name="Ohif^Auth", patient_id="OHIF-AUTH", phantom=True)
    files = write_series(tmp_path / "files", series)
    imported = run_cli("import", "--no-progress", "--data", str(data), *map(str, files))
    assert imported.returncode == 0, imported.stderr
    made = run_cli("token", "create", "ohif", "--scopes", "read", "--data", str(data))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    env = {"DCMNODE_HTTP_AUTH": "on", "DCMNODE_HTTP_METADATA_WORKERS": "0"}
    return cli_server_factory(data, env=env), token, series[0].StudyInstanceUID


def run_ohif(
    viewer: str, dicomweb: str, study: str, list_studies: bool, url_token: str | None = None
) -> tuple[list[tuple[str, str, int, str]], list[str], dict[str, Any]]:
    """OHIF in Chromium: the study list (when asked), then the viewer on ``study`` until the CT series is drawn.

    Returns every answer of the node (method, path, status, the request's Authorization), the node's requests
    that failed in the browser (CORS refusals show up there), and the canvas statistics."""
    from playwright.sync_api import sync_playwright

    seen: list[Any] = []
    failed: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
            context.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
            page = context.new_page()
            page.on("response", lambda r: seen.append(r) if r.url.startswith(dicomweb) else None)
            page.on("requestfailed", lambda r: failed.append(r.url) if r.url.startswith(dicomweb) else None)

            if list_studies:
                page.goto(viewer + "/", wait_until="domcontentloaded")
                row = page.locator("tr", has_text="Ohif, Auth")
                row.first.wait_for(state="visible", timeout=TIMEOUT_MS)
                assert "20" in row.first.inner_text()  # NumberOfStudyRelatedInstances from QIDO

            link = f"{viewer}/viewer?StudyInstanceUIDs={study}" + (f"&token={url_token}" if url_token else "")
            page.goto(link, wait_until="domcontentloaded")
            stats = page.wait_for_function(
                f"(() => {{ const s = ({CANVAS_STATS})(); return s && s.lit > 0.05 && s.levels > 16 ? s : null; }})",
                timeout=TIMEOUT_MS,
                polling=250,
            ).json_value()
            overlay = page.locator('[data-cy="viewport-overlay-bottom-right"]').filter(has_text="(1/20)")
            overlay.first.wait_for(timeout=TIMEOUT_MS)
            calls = []
            for response in seen:
                headers = response.request.all_headers()  # all_headers: the CORS-safelisted view hides it
                path = response.url[len(dicomweb) :]
                calls.append((response.request.method, path, response.status, headers.get("authorization", "")))
        finally:
            browser.close()
    return calls, failed, stats


def check_run(server: CliServer, token: str, before: int, calls: list[tuple[str, str, int, str]]) -> None:
    bad = [c[:3] for c in calls if not 200 <= c[2] < 300 or c[3] != f"Bearer {token}"]
    assert bad == [], bad
    paths = [c[1] for c in calls]
    assert any(p.endswith("/metadata") for p in paths)
    assert any("/frames/" in p for p in paths)
    log = server.log.read_text()
    refused = [line for line in log[before:].splitlines() if REFUSED.search(line)]
    assert refused == [], refused  # the paths of any request OHIF sent without (or with a refused) token
    assert token not in log and token[4:16] not in log


def test_ohif_with_a_bearer_token_lists_and_displays_with_auth_on(secured_node: tuple[CliServer, str, str]) -> None:
    server, token, study = secured_node
    node = f"http://{HOST}:{server.http_port}"
    dicomweb = f"{node}/dicom-web"
    # the node refuses a request without credentials, and its log says so: the check below can see a 401
    assert httpx.get(f"{dicomweb}/studies").status_code == 401
    assert httpx.get(f"{dicomweb}/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    before = len(log_holding(server, REFUSED))
    config = TOKEN_CONFIG % {"config": json.dumps(ohif_config(dicomweb)), "token": json.dumps(token)}
    with ohif_server(config) as viewer:
        # the CORS preflight a browser sends before a request with Authorization: answered without credentials
        preflight = httpx.options(
            f"{dicomweb}/studies/{study}/metadata",
            headers={
                "Origin": viewer,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "accept,authorization",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert preflight.headers["access-control-allow-origin"] == viewer
        calls, failed, stats = run_ohif(viewer, dicomweb, study, list_studies=True)
    assert stats["lit"] > 0.05 and stats["levels"] > 16, stats
    assert failed == [], failed
    assert any(c[1].startswith("/studies?") for c in calls)
    check_run(server, token, before, calls)


def test_ohif_viewer_link_with_a_token_in_the_url(secured_node: tuple[CliServer, str, str]) -> None:
    """OHIF's own ``/viewer?StudyInstanceUIDs=...&token=...`` (a link from a portal), no token in the config;
    thumbnails from the node's /thumbnail (``thumbnailRendering: 'thumbnail'``: an XHR with the header, where
    ``'thumbnailDirect'`` would be an ``<img src>`` without it)."""
    server, token, study = secured_node
    dicomweb = f"http://{HOST}:{server.http_port}/dicom-web"
    assert httpx.get(f"{dicomweb}/studies").status_code == 401
    before = len(log_holding(server, REFUSED))
    config = ohif_config(dicomweb)
    config["dataSources"][0]["configuration"]["thumbnailRendering"] = "thumbnail"
    with ohif_server("window.config = " + json.dumps(config) + ";\n") as viewer:
        calls, failed, stats = run_ohif(viewer, dicomweb, study, list_studies=False, url_token=token)
    assert stats["lit"] > 0.05 and stats["levels"] > 16, stats
    assert failed == [], failed
    assert any(c[1].split("?")[0].endswith("/thumbnail") for c in calls), calls
    check_run(server, token, before, calls)
