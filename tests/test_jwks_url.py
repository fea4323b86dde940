"""OIDC keys over a URL (``[http.oidc] jwks = "http://127.0.0.1:PORT/jwks.json"``, plain http allowed on loopback):
a JWKS server of the test's own, in a thread, counting the requests it answers. The keys are fetched once for many
tokens, once more for a rotated key, not again for made-up kids (the re-read cooldown), and kept when the issuer
goes away."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from dcmnode.core.auth.oidc import Jwks
from tests.conftest import HOST, LiveServer
from tests.test_auth_http import AUDIENCE, ISSUER, Issuer


class JwksServer:
    """Serves the issuer's JWKS file as it is at each request; ``hits`` counts the requests."""

    def __init__(self, jwks: Path) -> None:
        self.hits = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    outer.hits += 1
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                data = jwks.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def jwks_server(issuer: Issuer) -> Iterator[JwksServer]:
    server = JwksServer(issuer.jwks)
    yield server
    server.stop()


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def answer(live: LiveServer, token: str) -> int:
    found = httpx.get(f"{live.url}/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return found.status_code


def fresh(issuer: Issuer, kid: str = "rsa1", alg: str = "RS256") -> str:
    """A token no one has sent yet (its own jti), so that the node's 10 s decision cache does not answer it."""
    return issuer.token(kid, alg, jti=uuid.uuid4().hex)


def test_jwks_from_a_url_is_cached_re_read_once_and_kept(
    live_factory: Any, issuer: Issuer, jwks_server: JwksServer
) -> None:
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks": jwks_server.url, "jwks_refetch_seconds": 3600.0}
    live = live_factory(http={"auth": "on"}, oidc=oidc)
    assert answer(live, fresh(issuer)) == 200
    assert jwks_server.hits == 1
    for _ in range(10):  # many tokens, both keys: the set read once is used
        assert answer(live, fresh(issuer)) == 200
        assert answer(live, fresh(issuer, "ec1", "ES256")) == 200
    assert jwks_server.hits == 1
    # the issuer rotates: a token signed with the new key works, after exactly one re-read
    issuer.add("rsa2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    issuer.write()
    assert answer(live, fresh(issuer, "rsa2")) == 200
    assert jwks_server.hits == 2
    assert answer(live, fresh(issuer, "rsa2")) == 200
    assert jwks_server.hits == 2
    # a kid the new set does not hold either: refused, and not one more read per request (the cooldown)
    issuer.keys["made-up"] = issuer.keys["rsa2"]
    for _ in range(10):
        assert answer(live, fresh(issuer, "made-up")) == 401
    assert jwks_server.hits == 2
    # the issuer goes away: tokens with a known kid still work from the keys read
    jwks_server.stop()
    assert answer(live, fresh(issuer, "rsa2")) == 200
    assert answer(live, fresh(issuer)) == 200
    assert answer(live, fresh(issuer, "made-up")) == 401
    assert jwks_server.hits == 2


def test_a_key_published_just_after_the_first_read_is_found(
    live_factory: Any, issuer: Issuer, jwks_server: JwksServer
) -> None:
    """With the default cooldown: the re-read on an unknown kid counts from the last re-read, not the last read, so a
    rotation right after the regular read is not refused for the cooldown's length."""
    live = live_factory(http={"auth": "on"}, oidc={"issuer": ISSUER, "audience": AUDIENCE, "jwks": jwks_server.url})
    assert answer(live, fresh(issuer)) == 200
    issuer.add("rsa2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    issuer.write()
    assert answer(live, fresh(issuer, "rsa2")) == 200
    assert jwks_server.hits == 2


def test_plain_http_is_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        Jwks("http://idp.example.org/jwks.json")
    assert Jwks("https://idp.example.org/jwks.json").source.startswith("https")
