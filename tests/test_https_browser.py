"""Both viewers over HTTPS in headless Chromium, against ``dcmnode serve`` with ``[http] tls_cert``: OHIF (served
over HTTPS from its own origin, every DICOMweb call cross-origin) lists a study and displays it, and the built-in
viewer loads a series. Chromium trusts exactly the node's certificate through
``--ignore-certificate-errors-spki-list`` (the base64 SHA-256 of its public key, a pin of one key rather than
"ignore every error"); without the pin it refuses the page, which shows that the pin is what trusts it."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydicom.dataset import Dataset
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Mount, Route

from dcmnode.core import tls
from tests.conftest import HOST, CliServer
from tests.factories import ct_series
from tests.test_https import base, dicomweb, https_node
from tests.test_ohif import CANVAS_STATS, CHROMIUM, CHROMIUM_ARGS, DIST, SinglePageApp, app_config, require_ohif
from tests.test_viewer import DRAWN, PANE_CANVAS, viewer_url

pytestmark = pytest.mark.browser

TIMEOUT_MS = 60_000


def spki_pin(cert: Path) -> str:
    """Chromium's form of a key pin: base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def pki(tmp_path: Path) -> tls.SitePki:
    return tls.init_site(tmp_path / "pki", [HOST, "localhost"])


@pytest.fixture
def seeded(tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any) -> tuple[CliServer, list[Dataset]]:
    """A node on HTTPS holding a 20-slice CT series, stored by STOW over HTTPS."""
    server = https_node(cli_server_factory, tmp_path, pki)
    series = ct_series(20, rows=128, cols=128, patient_name="Https^Probe", patient_id="HTTPS-1", phantom=True)
    stored = dicomweb(server, pki.ca_cert).store_instances(series)
    assert len(stored.ReferencedSOPSequence) == 20
    return server, series


@contextlib.contextmanager
def chromium(*pins: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    args = CHROMIUM_ARGS + ([f"--ignore-certificate-errors-spki-list={','.join(pins)}"] if pins else [])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def ohif_over_https(config: str, pki: tls.SitePki) -> Iterator[str]:
    """OHIF's dist on its own HTTPS origin (the site's server certificate), ``config`` as its app-config.js."""

    async def serve_config(_: Any) -> Response:
        return Response(config, media_type="text/javascript")

    app = Starlette(
        routes=[Route("/app-config.js", serve_config), Mount("/", app=SinglePageApp(directory=DIST, html=True))]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((HOST, 0))
    sock.listen(64)
    options = {"ssl_certfile": str(pki.server_cert), "ssl_keyfile": str(pki.server_key)}
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the OHIF static server did not start"
        time.sleep(0.01)
    try:
        yield f"https://{HOST}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_ohif_over_https_lists_and_displays_a_study(
    seeded: tuple[CliServer, list[Dataset]], pki: tls.SitePki, tmp_path: Path
) -> None:
    require_ohif()
    server, series = seeded
    dicomweb_root = f"{base(server)}/dicom-web"
    calls: list[tuple[str, int]] = []

    def on_response(response: Any) -> None:
        if response.url.startswith(dicomweb_root):
            calls.append((response.url[len(dicomweb_root) :], response.status))

    with ohif_over_https(app_config(dicomweb_root), pki) as viewer:
        with chromium() as browser:  # no pin: the site CA is unknown to Chromium, the page is refused
            page = browser.new_context().new_page()
            with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
                page.goto(viewer + "/", wait_until="domcontentloaded")
        with chromium(spki_pin(pki.server_cert)) as browser:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
            context.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
            page = context.new_page()
            page.on("response", on_response)
            page.goto(viewer + "/", wait_until="domcontentloaded")
            row = page.locator("tr", has_text="Https, Probe")
            row.first.wait_for(state="visible", timeout=TIMEOUT_MS)
            assert "20" in row.first.inner_text()
            page.goto(f"{viewer}/viewer?StudyInstanceUIDs={series[0].StudyInstanceUID}", wait_until="domcontentloaded")
            stats = page.wait_for_function(
                f"(() => {{ const s = ({CANVAS_STATS})(); return s && s.lit > 0.05 && s.levels > 16 ? s : null; }})",
                timeout=TIMEOUT_MS,
                polling=250,
            ).json_value()
            page.locator('[data-cy="viewport-overlay-bottom-right"]').filter(has_text="(1/20)").first.wait_for(
                timeout=TIMEOUT_MS
            )
            page.screenshot(path=str(tmp_path / "ohif-https.png"))
    assert stats["lit"] > 0.05 and stats["levels"] > 16, stats
    assert [c for c in calls if not 200 <= c[1] < 300] == []
    paths = [c[0] for c in calls]
    assert any(p.startswith("/studies?") for p in paths) and any(p.endswith("/metadata") for p in paths)
    assert any("/frames/" in p for p in paths)


def test_built_in_viewer_over_https_loads_a_series(
    seeded: tuple[CliServer, list[Dataset]], pki: tls.SitePki, tmp_path: Path
) -> None:
    server, series = seeded
    requests: list[str] = []
    errors: list[str] = []
    with chromium(spki_pin(pki.server_cert)) as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 860}, service_workers="block").new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{base(server)}/{viewer_url(series[0])}", wait_until="domcontentloaded")
        page.wait_for_function(DRAWN % "true", timeout=TIMEOUT_MS, polling=50)
        stats = page.evaluate(CANVAS_STATS, PANE_CANVAS)
        assert "(1/20)" in page.locator(".pane .bl").inner_text()
        assert "Https, Probe" in page.locator(".pane .tl").inner_text()
        page.screenshot(path=str(tmp_path / "viewer-https.png"))
    assert stats["lit"] > 0.05 and stats["levels"] > 16, stats
    assert errors == [], errors
    assert any("/rendered" in u for u in requests)
    assert all(u.startswith(base(server)) for u in requests if u.startswith("http")), requests
