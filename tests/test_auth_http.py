"""Every HTTP door checked (``dicomweb/access.py``): the route-scope table covers every route of the app and the
fast path, and the token matrix over DICOMweb with dicomweb-client and httpx: API tokens (valid, missing, revoked,
expired, a read-only one on STOW) and OIDC JWTs from a locally generated JWKS (valid RS256 and ES256, expired,
wrong issuer, wrong audience, alg=none, HS256 signed with the RSA public key, tampered, a rotated key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dicomweb_client.api import DICOMwebClient
from starlette.routing import Mount, Route

from dcmnode.core.access import Scope
from dcmnode.dicomweb.access import ROUTE_SCOPES, STATIC, AccessControl, RouteTable
from dcmnode.dicomweb.fastpath import RenderedFastPath
from dcmnode.dicomweb.headers import SecurityHeaders
from dcmnode.dicomweb.paths import RequestGuard
from tests.conftest import LiveServer
from tests.factories import ct_series

ISSUER = "https://idp.example.org/realms/dcm"
AUDIENCE = "dcmnode"


# -- keys and tokens ---------------------------------------------------------------------------------------------
class Issuer:
    """An OIDC issuer of our own: RSA and EC keys, a JWKS file, tokens."""

    def __init__(self, folder: Path) -> None:
        self.jwks = folder / "jwks.json"
        self.keys: dict[str, Any] = {}
        self.add("rsa1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.add("ec1", ec.generate_private_key(ec.SECP256R1()))
        self.write()

    def add(self, kid: str, key: Any) -> None:
        self.keys[kid] = key

    def write(self) -> None:
        jwks = []
        for kid, key in self.keys.items():
            algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
            jwk = algo.to_jwk(key.public_key(), as_dict=True)
            jwks.append({**jwk, "kid": kid, "use": "sig"})
        self.jwks.write_text(json.dumps({"keys": jwks}))

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"sub": "ohif-user", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        claims["scope"] = "openid read write"
        claims.update(changes)
        return claims

    def token(self, kid: str = "rsa1", alg: str = "RS256", **changes: Any) -> str:
        return jwt.encode(self.claims(**changes), self.keys[kid], algorithm=alg, headers={"kid": kid})

    def public_pem(self, kid: str = "rsa1") -> bytes:
        key = self.keys[kid].public_key()
        return bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


@pytest.fixture
def secured(live_factory: Any, issuer: Issuer) -> LiveServer:
    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks": str(issuer.jwks)}
    return live_factory(http={"auth": "on", "cors_origins": ["https://viewer.example.org"]}, oidc=oidc)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client(live: LiveServer, token: str | None) -> DICOMwebClient:
    return DICOMwebClient(f"{live.url}/dicom-web", headers=bearer(token) if token else None)


def status_of(live: LiveServer, token: str | None) -> int:
    try:
        client(live, token).search_for_studies()
    except requests.HTTPError as exc:
        assert exc.response is not None
        return int(exc.response.status_code)
    return 200


# -- the table covers every route -------------------------------------------------------------------------------
def declared_routes(app: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in app.routes:
        if isinstance(route, Mount):
            if route.routes:
                yield from declared_routes(route, prefix + route.path)
            else:  # the viewer's static files
                yield STATIC
        else:
            assert isinstance(route, Route), route
            for method in sorted((route.methods or {"GET", "HEAD"}) - {"HEAD"}):
                yield method, prefix + route.path


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1.2.3", path)


def test_every_route_and_method_has_a_declared_scope(secured: LiveServer) -> None:
    headers = secured.server.config.app
    assert isinstance(headers, SecurityHeaders) and isinstance(headers.app, RequestGuard)
    outer = headers.app.app
    assert isinstance(outer, AccessControl) and isinstance(outer.app, RenderedFastPath)
    app = outer.app.app
    while not hasattr(app, "routes"):  # through the wrappers in front of the router (the audit trail)
        app = app.app
    found = set(declared_routes(app))
    missing = sorted(found - set(ROUTE_SCOPES))
    assert missing == [], f"routes without a declared scope in dicomweb/access.py ROUTE_SCOPES: {missing}"
    stale = sorted(set(ROUTE_SCOPES) - found)
    assert stale == [], f"ROUTE_SCOPES rows for routes the app does not have: {stale}"
    table = RouteTable(ROUTE_SCOPES)
    for (method, path), need in ROUTE_SCOPES.items():  # each row is the one its own URLs find
        if (method, path) != STATIC:
            assert table.decide(method, concrete(path)) == (True, need), (method, path)
    fast = outer.app.patterns
    assert len(fast) == 4
    for pattern, _ in fast:  # the fast path answers only URLs the table asks a scope for
        urls = [concrete(p) for (m, p) in ROUTE_SCOPES if m == "GET" and pattern.fullmatch(concrete(p))]
        assert urls and all(table.decide("GET", u) == (True, Scope.READ) for u in urls), pattern.pattern


# -- API tokens ------------------------------------------------------------------------------------------------
def test_api_token_matrix_over_dicomweb(secured: LiveServer, logs: pytest.LogCaptureFixture) -> None:
    auth = secured.node.services.auth
    writer = auth.create_token("writer", frozenset({Scope.READ, Scope.WRITE}), frozenset({"*"}))
    reader = auth.create_token("reader", frozenset({Scope.READ}), frozenset({"*"}))
    revoked = auth.create_token("gone", frozenset({Scope.READ}), frozenset({"*"}))
    expired = auth.create_token("old", frozenset({Scope.READ}), frozenset({"*"}), expires_days=1e-9)
    auth.revoke_token("gone")
    series = ct_series(2)
    stored = client(secured, writer).store_instances(series)
    assert len(stored.ReferencedSOPSequence) == 2
    assert status_of(secured, writer) == 200 and status_of(secured, reader) == 200
    assert len(client(secured, reader).search_for_instances()) == 2
    for token in (None, revoked, expired, "dcm_" + "x" * 43, "not-a-token"):
        assert status_of(secured, token) == 401, token
    base = f"{secured.url}/dicom-web/studies"
    missing = httpx.get(base)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="dcmnode"'
    assert missing.json() == {"error": "authentication required", "status": 401}
    bad = httpx.get(base, headers=bearer(revoked))
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert set(bad.json()) == {"error", "status"}
    with pytest.raises(requests.HTTPError) as refused:  # read-only token: STOW needs write
        client(secured, reader).store_instances(ct_series(1))
    assert refused.value.response is not None and refused.value.response.status_code == 403
    forbidden = httpx.post(
        base, headers={**bearer(reader), "Content-Type": "multipart/related; type=application/dicom"}
    )
    assert forbidden.status_code == 403 and "write" in forbidden.json()["error"]
    assert 'error="insufficient_scope", scope="write"' in forbidden.headers["www-authenticate"]
    # the fast path (rendered frames, in front of the router) is behind the check too
    ds = series[0]
    rendered = f"{base}/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    for suffix in ("/rendered", "/thumbnail", "/frames/1/rendered"):
        assert httpx.get(rendered + suffix).status_code == 401, suffix
        shown = httpx.get(rendered + suffix, headers=bearer(reader))
        assert shown.status_code == 200 and shown.headers["content-type"].startswith("image/"), suffix
    assert httpx.get(rendered + "/rendered", headers=bearer(revoked)).status_code == 401
    # the rest of the surface: the node API, unknown paths, the viewer, preflight
    assert httpx.get(f"{secured.url}/api/status").status_code == 401
    assert httpx.get(f"{secured.url}/api/status", headers=bearer(reader)).status_code == 200
    assert httpx.post(f"{secured.url}/api/sr/jobs", headers=bearer(writer), json={}).status_code == 403
    assert httpx.get(f"{secured.url}/api/health").status_code == 200
    assert httpx.get(f"{secured.url}/api/nothing-here").status_code == 401
    assert httpx.get(f"{secured.url}/api/nothing-here", headers=bearer(reader)).status_code == 404
    assert httpx.delete(f"{base}/1.2.3", headers=bearer(writer)).status_code == 403  # delete is its own scope
    deleter = auth.create_token("deleter", frozenset({Scope.DELETE}), frozenset({"*"}))
    assert httpx.delete(f"{base}/1.2.3", headers=bearer(deleter)).status_code == 404  # allowed: nothing to delete
    viewer = httpx.get(f"{secured.url}/")
    assert viewer.status_code == 200 and "text/html" in viewer.headers["content-type"]
    origin = "https://viewer.example.org"
    preflight = httpx.options(
        base,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    cross = httpx.get(base, headers={"Origin": origin})  # a browser can read the refusal
    assert cross.status_code == 401 and cross.headers["access-control-allow-origin"] == origin
    cross = httpx.get(base, headers={"Origin": origin, **bearer(reader)})
    assert cross.status_code == 200 and cross.headers["access-control-allow-origin"] == origin
    assert {t.name: t.state for t in auth.tokens()} == {
        "gone": "revoked",
        "old": "expired",
        "reader": "active",
        "writer": "active",
        "deleter": "active",
    }
    assert next(t for t in auth.tokens() if t.name == "reader").last_used_at
    text = logs.text
    assert "-> 401" in text  # the refusals are logged ...
    for token in (writer, reader, revoked, expired):  # ... never a token
        assert token not in text and token[4:20] not in text


# -- OIDC ------------------------------------------------------------------------------------------------------
def test_oidc_token_matrix_over_dicomweb(secured: LiveServer, issuer: Issuer, logs: pytest.LogCaptureFixture) -> None:
    valid = issuer.token()
    assert status_of(secured, valid) == 200
    assert status_of(secured, issuer.token("ec1", "ES256")) == 200
    now = int(time.time())
    good = issuer.claims()
    signature = valid.rpartition(".")[2]
    tampered_claims = {**good, "scope": "read write admin delete"}
    tampered = unsigned({"alg": "RS256", "typ": "JWT", "kid": "rsa1"}, tampered_claims) + "." + signature
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}, good)
    hs256 = hmac.new(issuer.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    refused = {
        "expired": issuer.token(exp=now - 120),
        "wrong issuer": issuer.token(iss="https://evil.example.org"),
        "wrong audience": issuer.token(aud="someone-else"),
        "no exp": jwt.encode(
            {k: v for k, v in good.items() if k != "exp"}, issuer.keys["rsa1"], "RS256", {"kid": "rsa1"}
        ),
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": "rsa1"}, good) + ".",
        "HS256 with the public key": f"{signing_input}.{b64(hs256)}",
        "tampered": tampered,
        "garbage": "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
    }
    for why, token in refused.items():
        answer = httpx.get(f"{secured.url}/dicom-web/studies", headers=bearer(token))
        assert answer.status_code == 401, why
        assert 'error="invalid_token"' in answer.headers["www-authenticate"], why
        assert status_of(secured, token) == 401, why
    # a read-only JWT may search but not store
    reader = issuer.token(scope="read")
    assert status_of(secured, reader) == 200
    with pytest.raises(requests.HTTPError) as stow:
        client(secured, reader).store_instances(ct_series(1))
    assert stow.value.response is not None and stow.value.response.status_code == 403
    # key rotation: the issuer publishes a new key; a token signed with it works (the JWKS is read again once)
    issuer.add("rsa2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    del issuer.keys["rsa1"]
    issuer.write()
    rotated = issuer.token("rsa2")
    assert status_of(secured, rotated) == 200
    made_up = jwt.encode(good, issuer.keys["rsa2"], algorithm="RS256", headers={"kid": "nobody"})
    assert status_of(secured, made_up) == 401
    text = logs.text
    assert "OIDC token refused" in text
    for token in (valid, rotated, reader, tampered, *refused.values()):
        assert token not in text
        assert all(part not in text for part in token.split(".") if len(part) > 8)


def test_scopes_and_groups_from_a_dotted_claim(live_factory: Any, issuer: Issuer) -> None:
    """Keycloak puts roles in ``realm_access.roles`` (a list), and groups may come from a claim."""
    oidc = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks": str(issuer.jwks),
        "scopes_claim": "realm_access.roles",
        "groups_claim": "dcmnode.groups",
    }
    live = live_factory(http={"auth": "on"}, oidc=oidc)
    claims = {"realm_access": {"roles": ["read", "offline_access"]}, "dcmnode": {"groups": ["cardiology"]}}
    token = issuer.token(**claims)
    assert status_of(live, token) == 200
    assert httpx.post(f"{live.url}/dicom-web/studies", headers=bearer(token)).status_code == 403
    found = live.node.services.auth.verify_jwt(token)
    assert found is not None and found.scopes == {Scope.READ} and found.groups == {"cardiology"}
    assert found.name == "ohif-user" and found.kind == "oidc"
    plain = issuer.token(scope="read write")  # the default claim is not looked at here
    assert live.node.services.auth.verify_jwt(plain).scopes == frozenset()  # type: ignore[union-attr]
    assert status_of(live, plain) == 403  # authenticated, without scopes
    assert httpx.get(f"{live.url}/api/status", headers=bearer(plain)).status_code == 403


def test_auth_off_is_the_app_as_before(live: LiveServer) -> None:
    """``http.auth = "none"`` (the default): no access middleware in front (only the security headers and the
    RequestGuard), everyone may do everything."""
    app = live.server.config.app
    assert isinstance(app, SecurityHeaders) and isinstance(app.app, RequestGuard)
    assert isinstance(app.app.app, RenderedFastPath)
    assert httpx.get(f"{live.url}/dicom-web/studies").status_code == 200
    assert httpx.get(f"{live.url}/dicom-web/studies", headers=bearer("dcm_nonsense")).status_code == 200
