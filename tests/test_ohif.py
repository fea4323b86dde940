"""The real OHIF viewer (npm @ohif/app 3.13.2, its prebuilt dist/) in headless Chromium (Debian's chromium,
driven by Playwright) against a live node: it lists the node's studies and displays a CT series.

OHIF is served from its own origin (a small static server here), so every DICOMweb call is cross-origin and
depends on the node's CORS answers, as in a real deployment. ``scripts/setup.sh --test`` fetches OHIF and
installs Chromium; without them the test fails under CI and is skipped on a developer machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from dcmnode.model import Source, SourceKind
from tests.conftest import HOST, LiveServer
from tests.factories import ct_series, part10

pytestmark = pytest.mark.browser

OHIF_VERSION = "3.13.2"
DIST = Path(__file__).resolve().parents[1] / ".cache" / "ohif" / OHIF_VERSION / "package" / "dist"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000
# A canvas (the visible one cornerstone3D draws into unless a selector is given): how much of it is not black, and
# how many grey levels. The built-in viewer's tests use it too, on their own canvases.
CANVAS_STATS = """(sel) => {
  const c = document.querySelector(sel || 'canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0; const levels = new Set();
  for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i+1] + d[i+2] > 30) lit++; levels.add(d[i]); }
  return {lit: lit / (c.width * c.height), levels: levels.size};
}"""


def ohif_config(dicomweb: str) -> dict[str, Any]:
    """OHIF's app configuration with one DICOMweb data source, the node's."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dcmnode",
        "configuration": {
            "friendlyName": "dcmnode",
            "name": "dcmnode",
            "qidoRoot": dicomweb,
            "wadoRoot": dicomweb,
            "wadoUriRoot": dicomweb,
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "defaultDataSourceName": "dcmnode",
        "dataSources": [source],
    }
    return config


def app_config(dicomweb: str) -> str:
    return "window.config = " + json.dumps(ohif_config(dicomweb)) + ";\n"


class SinglePageApp(StaticFiles):
    """OHIF's routes (/, /viewer?...) are answered with index.html; missing assets stay 404."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code == 404 and "." not in path.rsplit("/", 1)[-1]:
                return FileResponse(Path(str(self.directory)) / "index.html")
            raise


def require_ohif() -> None:
    if not (DIST / "index.html").is_file() or not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"OHIF ({DIST}) or Chromium ({CHROMIUM}) missing: scripts/setup.sh --test installs them")
        pytest.skip("OHIF dist or Chromium not installed (bash scripts/setup.sh --test)")


@contextlib.contextmanager
def ohif_server(config: str) -> Iterator[str]:
    """OHIF's dist served from its own origin with ``config`` as its app-config.js; yields the viewer's URL."""

    async def serve_config(_: Any) -> Response:
        return Response(config, media_type="text/javascript")

    app = Starlette(
        routes=[Route("/app-config.js", serve_config), Mount("/", app=SinglePageApp(directory=DIST, html=True))]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets NODELAY
    sock.bind((HOST, 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the OHIF static server did not start"
        time.sleep(0.01)
    try:
        yield f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def ohif(live: LiveServer) -> Iterator[tuple[str, LiveServer]]:
    require_ohif()
    with ohif_server(app_config(f"{live.url}/dicom-web")) as viewer:
        yield viewer, live


def test_ohif_lists_studies_and_displays_a_ct_series(ohif: tuple[str, LiveServer], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    viewer, live = ohif
    series = ct_series(20, rows=128, cols=128, patient_name="Ohif^Probe", patient_id="OHIF-1", phantom=True)
    for ds in series:
        live.node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))
    study = series[0].StudyInstanceUID
    dicomweb = f"{live.url}/dicom-web"
    calls: list[tuple[str, int, str]] = []

    def on_response(response: Any) -> None:
        if response.url.startswith(dicomweb):
            calls.append((response.url[len(dicomweb) :], response.status, response.request.headers.get("accept", "")))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
            context.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
            page = context.new_page()
            page.on("response", on_response)

            page.goto(viewer + "/", wait_until="domcontentloaded")
            row = page.locator("tr", has_text="Ohif, Probe")  # OHIF shows PN as "Family, Given"
            row.first.wait_for(state="visible", timeout=TIMEOUT_MS)
            assert "20" in row.first.inner_text()  # NumberOfStudyRelatedInstances from QIDO

            page.goto(f"{viewer}/viewer?StudyInstanceUIDs={study}", wait_until="domcontentloaded")
            stats = page.wait_for_function(
                f"(() => {{ const s = ({CANVAS_STATS})(); return s && s.lit > 0.05 && s.levels > 16 ? s : null; }})",
                timeout=TIMEOUT_MS,
                polling=250,
            ).json_value()
            overlay = page.locator('[data-cy="viewport-overlay-bottom-right"]').filter(has_text="(1/20)")
            overlay.first.wait_for(timeout=TIMEOUT_MS)
            page.screenshot(path=str(tmp_path / "viewer.png"))
        finally:
            browser.close()

    assert stats["lit"] > 0.05 and stats["levels"] > 16, stats
    failed = [c for c in calls if not 200 <= c[1] < 300]
    assert failed == [], failed
    paths = [c[0] for c in calls]
    assert any(p.startswith("/studies?") for p in paths)
    assert any(p.endswith("/metadata") for p in paths)
    frames = [c for c in calls if "/frames/" in c[0]]
    assert len(frames) >= 1 and all("application/octet-stream" in c[2] for c in frames)
