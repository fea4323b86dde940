"""HTTPS (``[http] tls_cert``/``tls_key``, ``server.http_config``) against ``dcmnode serve`` over real TLS on
loopback, with certificates made at run time by ``core/tls.py`` (no committed keys): httpx and dicomweb-client
trusting the site CA (QIDO, WADO, STOW, a rendered frame on the fast path), HSTS on every answer, TLS 1.1 and a
retired (CBC) cipher suite refused by the server, an untrusted CA refused by the clients, plain HTTP to the HTTPS
port answered with nothing, the plain-HTTP redirect listener (308 for GET/HEAD, 400 for the rest, no HSTS), mutual
TLS, a Secure session cookie, and readable refusals of a broken configuration."""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import add_certs_to_session, create_session

from dcmnode.core import tls
from tests.conftest import HOST, CliServer, run_cli
from tests.factories import ct_series
from tests.test_auth_tokens import cli_with_input

HSTS = "max-age=31536000"
PASSWORD = "correct horse"
# keep each node small: threads for DIMSE, no SR worker, no metadata processes
# A handshake the server refuses: asyncio closes the connection on the failed handshake before OpenSSL's alert
# (protocol_version, handshake_failure) leaves, so the client mostly sees EOF; its own refusal would be
# NO_PROTOCOLS_AVAILABLE or NO_CIPHERS_AVAILABLE before anything is sent, which these patterns do not match.
REFUSED = "PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|HANDSHAKE_FAILURE|UNEXPECTED_EOF_WHILE_READING"
LIGHT = {"DCMNODE_DIMSE_PROCESSES": "0", "DCMNODE_SR_WORKER": "off", "DCMNODE_HTTP_METADATA_WORKERS": "0"}


@pytest.fixture
def pki(tmp_path: Path) -> tls.SitePki:
    return tls.init_site(tmp_path / "pki", [HOST, "localhost"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tls_env(pki: tls.SitePki, **more: str) -> dict[str, str]:
    return {
        **LIGHT,
        "DCMNODE_HTTP_TLS_CERT": str(pki.server_cert),
        "DCMNODE_HTTP_TLS_KEY": str(pki.server_key),
        **more,
    }


def https_node(factory: Callable[..., CliServer], tmp_path: Path, pki: tls.SitePki, **env: str) -> CliServer:
    server = factory(tmp_path / "data", env=tls_env(pki, **env))
    assert f"HTTP https://{HOST}:{server.http_port}/" in server.ready_line, server.ready_line
    assert f"DICOMweb https://{HOST}:{server.http_port}/dicom-web" in server.ready_line
    return server


def base(server: CliServer, host: str = HOST) -> str:
    return f"https://{host}:{server.http_port}"


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def dicomweb(server: CliServer, ca: Path) -> DICOMwebClient:
    """dicomweb-client trusting ``ca``. requests lets REQUESTS_CA_BUNDLE (set on this machine, as on many) override
    a Session's verify (psf/requests#3829): trust_env = False makes the session's CA bundle the one used."""
    session = add_certs_to_session(create_session(), ca_bundle=str(ca))
    session.trust_env = False
    return DICOMwebClient(f"{base(server)}/dicom-web", session=session)


def handshake(port: int, ctx: ssl.SSLContext) -> str:
    """A TLS handshake with the node on ``port``; the negotiated version."""
    with socket.create_connection((HOST, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as s:
        return str(s.version())


def test_serve_speaks_https_with_hsts_on_every_answer(
    tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any
) -> None:
    server = https_node(cli_server_factory, tmp_path, pki)
    with httpx.Client(base_url=base(server), verify=trusting(pki.ca_cert)) as client:
        studies = client.get("/dicom-web/studies")
        assert studies.status_code == 200 and studies.json() == []
        assert studies.headers["strict-transport-security"] == HSTS
        missing = "/dicom-web/studies/1.2.3/series/4.5/instances/6.7"
        for path in ("/", "/api/status", missing, "/no-such-page"):
            answer = client.get(path)
            assert answer.headers.get("strict-transport-security") == HSTS, (path, answer.status_code)
        assert client.get(missing).status_code == 404 and client.get("/no-such-page").status_code == 404
    # the same listener by name (the certificate names localhost too)
    assert httpx.get(f"{base(server, 'localhost')}/api/status", verify=trusting(pki.ca_cert)).status_code == 200


def test_dicomweb_client_stores_searches_and_retrieves_over_https(
    tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any
) -> None:
    server = https_node(cli_server_factory, tmp_path, pki)
    client = dicomweb(server, pki.ca_cert)
    series = ct_series(3, rows=32, cols=32, patient_name="Tls^Probe", patient_id="TLS-1")
    stored = client.store_instances(series)
    assert len(stored.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in stored
    study, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    found = client.search_for_studies(search_filters={"PatientID": "TLS-1"})
    assert [pydicom.Dataset.from_json(f).StudyInstanceUID for f in found] == [study]
    instance = client.retrieve_instance(study, uid, series[1].SOPInstanceUID)
    assert np.array_equal(instance.pixel_array, series[1].pixel_array)
    assert len(client.retrieve_series_metadata(study, uid)) == 3
    # a rendered frame, answered by the fast path in front of the app, carries HSTS as well
    frame = (
        f"{base(server)}/dicom-web/studies/{study}/series/{uid}/instances/{series[0].SOPInstanceUID}/frames/1/rendered"
    )
    rendered = httpx.get(frame, headers={"Accept": "image/png"}, verify=trusting(pki.ca_cert))
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
    assert rendered.headers["strict-transport-security"] == HSTS


def test_untrusted_ca_is_refused_by_httpx_and_dicomweb_client(
    tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any
) -> None:
    server = https_node(cli_server_factory, tmp_path, pki)
    other = tmp_path / "other-ca.pem"
    tls.write_cert(other, tls.make_ca("some other CA").cert)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{base(server)}/dicom-web/studies", verify=trusting(other))
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        dicomweb(server, other).search_for_studies()
    assert dicomweb(server, pki.ca_cert).search_for_studies() == []
    assert httpx.get(f"{base(server)}/dicom-web/studies", verify=trusting(pki.ca_cert)).status_code == 200


def test_tls_1_1_and_a_retired_cbc_suite_are_refused_tls_1_2_and_1_3_are_not(
    tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any
) -> None:
    server = https_node(cli_server_factory, tmp_path, pki)
    old = trusting(pki.ca_cert)
    with warnings.catch_warnings():  # Python deprecates TLS 1.0/1.1 too; this client offers them on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client is willing: the refusal is the server's
    with pytest.raises(ssl.SSLError, match=REFUSED):
        handshake(server.http_port, old)
    # PS3.15 B.3 (AES, retired): TLS_RSA_WITH_AES_128_CBC_SHA, no forward secrecy, not in BCP 195
    cbc = trusting(pki.ca_cert)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("AES128-SHA:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match=REFUSED):
        handshake(server.http_port, cbc)
    v12 = trusting(pki.ca_cert)
    v12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(server.http_port, v12) == "TLSv1.2"
    assert handshake(server.http_port, trusting(pki.ca_cert)) == "TLSv1.3"


def test_plain_http_to_the_https_port_gets_no_data(tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any) -> None:
    server = https_node(cli_server_factory, tmp_path, pki)
    with socket.create_connection((HOST, server.http_port), timeout=10) as raw:
        raw.sendall(f"GET /dicom-web/studies HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        received = b""
        try:
            while chunk := raw.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/" not in received and b"[]" not in received, received  # the handshake failed; nothing answered
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://{HOST}:{server.http_port}/dicom-web/studies")
    assert httpx.get(f"{base(server)}/dicom-web/studies", verify=trusting(pki.ca_cert)).status_code == 200


def test_redirect_port_answers_308_to_https_and_400_to_anything_else(
    tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any
) -> None:
    redirect = free_port()
    server = https_node(cli_server_factory, tmp_path, pki, DCMNODE_HTTP_REDIRECT_PORT=str(redirect))
    assert f"redirect http://{HOST}:{redirect}/" in server.ready_line
    plain = f"http://{HOST}:{redirect}"
    target = "/dicom-web/studies?PatientID=TLS%2A&limit=5"
    for method in ("GET", "HEAD"):
        answer = httpx.request(method, plain + target)
        assert answer.status_code == 308, (method, answer.text)
        assert answer.headers["location"] == f"{base(server)}{target}"
        assert "strict-transport-security" not in answer.headers  # RFC 6797 7.2: never over plain HTTP
    named = httpx.get(f"{plain}/viewer/#x", headers={"Host": f"localhost:{redirect}"})
    assert named.status_code == 308 and named.headers["location"] == f"{base(server, 'localhost')}/viewer/"
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        refused = httpx.request(method, f"{plain}/dicom-web/studies", content=b"x" * 1000)
        assert refused.status_code == 400, (method, refused.text)
        assert f"send {method} to {base(server)}/dicom-web/studies" in refused.text
        assert "strict-transport-security" not in refused.headers
    assert httpx.get(plain + "/", headers={"Host": "evil.example/x"}).status_code == 400  # not a host name
    followed = httpx.get(plain + target, follow_redirects=True, verify=trusting(pki.ca_cert))
    assert followed.status_code == 200 and followed.url == httpx.URL(f"{base(server)}{target}")
    assert followed.headers["strict-transport-security"] == HSTS
    assert server.stop() == 0  # the redirect listener stops with the node, cleanly


def test_hsts_can_be_tuned_or_turned_off(tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any) -> None:
    short = cli_server_factory(tmp_path / "a", env=tls_env(pki, DCMNODE_HTTP_HSTS_SECONDS="300"))
    off = cli_server_factory(tmp_path / "b", env=tls_env(pki, DCMNODE_HTTP_HSTS_SECONDS="0"))
    ctx = trusting(pki.ca_cert)
    assert httpx.get(f"{base(short)}/api/status", verify=ctx).headers["strict-transport-security"] == "max-age=300"
    assert "strict-transport-security" not in httpx.get(f"{base(off)}/api/status", verify=ctx).headers


def test_mutual_tls_asks_for_a_client_certificate_of_the_site_ca(
    tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any
) -> None:
    env = {"DCMNODE_HTTP_TLS_CA": str(pki.ca_cert), "DCMNODE_HTTP_TLS_CLIENT_CERT": "required"}
    server = https_node(cli_server_factory, tmp_path, pki, **env)
    url = f"{base(server)}/api/status"
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url, verify=trusting(pki.ca_cert))  # no client certificate
    stranger_ca = tls.make_ca("stranger")
    stranger = tls.issue(stranger_ca, "stranger", kind="client")
    stranger.write(tmp_path / "stranger.pem", tmp_path / "stranger.key")
    untrusted = trusting(pki.ca_cert)
    untrusted.load_cert_chain(tmp_path / "stranger.pem", tmp_path / "stranger.key")
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url, verify=untrusted)
    trusted = trusting(pki.ca_cert)
    trusted.load_cert_chain(pki.client_cert, pki.client_key)
    assert httpx.get(url, verify=trusted).status_code == 200


def test_sign_in_over_https_sets_a_secure_cookie(tmp_path: Path, pki: tls.SitePki, cli_server_factory: Any) -> None:
    data = tmp_path / "data"
    added = cli_with_input(f"{PASSWORD}\n", "user", "add", "alice", "--scopes", "read", "--data", str(data))
    assert added.returncode == 0, added.stderr
    server = https_node(cli_server_factory, tmp_path, pki, DCMNODE_HTTP_AUTH="on")
    with httpx.Client(base_url=base(server), verify=trusting(pki.ca_cert), headers={"Origin": base(server)}) as c:
        assert c.get("/dicom-web/studies").status_code == 401
        answer = c.post("/api/session", json={"name": "alice", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        flags = [part.strip().lower() for part in answer.headers["set-cookie"].split(";")]
        assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags, flags
        assert answer.headers["strict-transport-security"] == HSTS
        assert c.get("/dicom-web/studies").status_code == 200  # the client sends the Secure cookie over HTTPS


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"DCMNODE_HTTP_TLS_KEY": ""}, "http.tls_cert and http.tls_key go together"),
        ({"DCMNODE_HTTP_TLS_CERT": "/nonexistent/server.pem"}, "cannot load the TLS certificate /nonexistent"),
        ({"DCMNODE_HTTP_TLS_CLIENT_CERT": "required"}, "needs tls_cert, tls_key and tls_ca"),
        ({"DCMNODE_HTTP_TLS_CLIENT_CERT": "maybe"}, "http.tls_client_cert must be one of"),
        ({"DCMNODE_HTTP_TLS_CERT": "", "DCMNODE_HTTP_TLS_KEY": "", "DCMNODE_HTTP_REDIRECT_PORT": "8081"}, "needs"),
    ],
)
def test_a_broken_https_configuration_stops_serve_with_a_reason(
    tmp_path: Path, pki: tls.SitePki, env: dict[str, str], reason: str
) -> None:
    data = tmp_path / "data"
    done = run_cli("serve", "--data", str(data), "--http-port", "0", "--dimse-port", "0", env=tls_env(pki, **env))
    assert done.returncode == 2, done.stdout + done.stderr
    assert reason in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "ready" not in done.stdout
