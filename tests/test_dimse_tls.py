"""DICOM TLS (PS3.15 Annex B) against the running node with dcmtk's TLS options, and the node's SCU against dcmtk's
``storescp +tls``. Every certificate is made here (``core/tls.py``); nothing secret is committed."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dcmnode import config
from dcmnode.app import Node
from dcmnode.core import tls
from dcmnode.errors import ConfigError
from tests.conftest import HOST, CliServer, make_settings, run_cli, stored_files
from tests.factories import ct_series, write_series
from tests.test_dimse_access import fill

Factory = Callable[..., Node]


@dataclass(frozen=True)
class Pki:
    site: tls.SitePki  # ca.pem, server.pem (127.0.0.1, localhost), client.pem
    other_cert: Path  # a client certificate of another CA
    other_key: Path
    other_ca: Path
    expired_cert: Path  # signed by the site CA, expired yesterday
    expired_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    assert shutil.which("storescp"), "dcmtk is required: apt-get install dcmtk"
    folder = tmp_path_factory.mktemp("pki")
    site = tls.init_site(folder / "site", [HOST, "localhost"])
    other = tls.make_ca("another CA")
    tls.write_cert(folder / "other-ca.pem", other.cert)
    tls.issue(other, "intruder", kind="client").write(folder / "other.pem", folder / "other.key")
    ca = tls.Issued(_load_cert(site.ca_cert), _load_key(site.ca_key))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    tls.issue(ca, "expired", kind="client", days=29, not_before=start).write(
        folder / "expired.pem", folder / "expired.key"
    )
    return Pki(
        site, folder / "other.pem", folder / "other.key", folder / "other-ca.pem",
        folder / "expired.pem", folder / "expired.key",
    )  # fmt: skip


def _load_cert(path: Path) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(path.read_bytes(), None)


def tls_settings(pki: Pki, **extra: Any) -> dict[str, Any]:
    site = pki.site
    return {
        "tls_port": 0,
        "tls_cert": str(site.server_cert),
        "tls_key": str(site.server_key),
        "tls_ca": str(site.ca_cert),
        **extra,
    }


def dcmtk(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def client(pki: Pki) -> list[str | Path]:
    site = pki.site
    return ["+tls", site.client_key, site.client_cert, "+cf", site.ca_cert]


def audit_records(node: Node) -> list[dict[str, Any]]:
    folder = node.settings.data_dir / "audit"
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- the listener -----------------------------------------------------------------------------------------------


def test_a_trusted_client_certificate_echoes_and_stores_and_the_plain_port_still_works(
    node_factory: Factory, pki: Pki, tmp_path: Path
) -> None:
    node = node_factory(dimse=tls_settings(pki))
    assert node.dimse_port and node.dimse_tls_port and node.dimse_port != node.dimse_tls_port
    echo = dcmtk("echoscu", *client(pki), "-aec", "DCMNODE", HOST, node.dimse_tls_port)
    assert echo.returncode == 0, echo.stderr
    files = write_series(tmp_path / "send", ct_series(2, rows=8, cols=8))
    store = dcmtk("storescu", *client(pki), "-aet", "TLSSCU", "-aec", "DCMNODE", HOST, node.dimse_tls_port, *files)
    assert store.returncode == 0, store.stderr
    assert node.services.store.index.counts()["instances"] == 2
    plain = dcmtk("echoscu", "-aec", "DCMNODE", HOST, node.dimse_port)
    assert plain.returncode == 0, plain.stderr
    # The audit record of the C-STORE association says it came over TLS, with the client certificate's name.
    wait_until(lambda: any(r["event"]["code"] == "110104" for r in audit_records(node)), "the C-STORE record")
    [stored] = [r for r in audit_records(node) if r["event"]["code"] == "110104"]
    [who] = [p for p in stored["participants"] if p.get("id") == "TLSSCU"]
    assert who["transport"] == "TLS CN=dcmnode client"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("plain TCP", "not a TLS client"),
        ("no certificate (+tla)", "no client certificate"),
        ("another CA", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("retired AES profile (+pa)", "no cipher suite in common"),
        ("retired NULL profile (+pn)", "no cipher suite in common"),
    ],
)
def test_refused_at_the_handshake_with_a_reason_and_the_node_stays_up(
    node_factory: Factory, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, reason: str
) -> None:
    node = node_factory(dimse=tls_settings(pki))
    site = pki.site
    args: list[str | Path] = {
        "plain TCP": [],
        "no certificate (+tla)": ["+tla", "+cf", site.ca_cert],
        "another CA": ["+tls", pki.other_key, pki.other_cert, "+cf", site.ca_cert],
        "expired": ["+tls", pki.expired_key, pki.expired_cert, "+cf", site.ca_cert],
        "retired AES profile (+pa)": [*client(pki), "+pa"],
        "retired NULL profile (+pn)": [*client(pki), "+pn"],
    }[case]
    files = write_series(tmp_path / "send", ct_series(1, rows=8, cols=8))
    with caplog.at_level("WARNING", logger="dcmnode.dimse.tls"):
        refused = dcmtk("storescu", *args, "-aec", "DCMNODE", HOST, node.dimse_tls_port, *files)
        assert refused.returncode != 0
        wait_until(lambda: reason in caplog.text, f"the log line naming {reason!r}")
    assert node.services.store.index.counts()["instances"] == 0
    assert stored_files(node.settings.data_dir) == []
    alerts = [r for r in audit_records(node) if r["event"]["code"] == "110113"]
    assert any(reason in r["detail"]["alert"] for r in alerts), alerts
    # The node is still up, on both ports.
    assert dcmtk("echoscu", *client(pki), "-aec", "DCMNODE", HOST, node.dimse_tls_port).returncode == 0
    assert dcmtk("echoscu", "-aec", "DCMNODE", HOST, node.dimse_port).returncode == 0


@pytest.mark.parametrize("profile", ["+py", "+px", "+pz"])
def test_the_bcp195_profiles_dcmtk_offers_connect(node_factory: Factory, pki: Pki, profile: str) -> None:
    """Non-downgrading BCP 195 (dcmtk's default), BCP 195 and Extended BCP 195 share the ECDHE AES-GCM suites
    (and TLS 1.3) with the node."""
    node = node_factory(dimse=tls_settings(pki))
    echo = dcmtk("echoscu", *client(pki), profile, "-aec", "DCMNODE", HOST, node.dimse_tls_port)
    assert echo.returncode == 0, echo.stderr


def test_client_certificates_optional_or_none(node_factory: Factory, pki: Pki) -> None:
    optional = node_factory(dimse=tls_settings(pki, tls_client_cert="optional"))
    anonymous = ["+tla", "+cf", pki.site.ca_cert]
    assert dcmtk("echoscu", *anonymous, "-aec", "DCMNODE", HOST, optional.dimse_tls_port).returncode == 0
    # optional: a certificate that is sent is still checked
    intruder = ["+tls", pki.other_key, pki.other_cert, "+cf", pki.site.ca_cert]
    assert dcmtk("echoscu", *intruder, "-aec", "DCMNODE", HOST, optional.dimse_tls_port).returncode != 0
    none = node_factory(dimse=tls_settings(pki, tls_client_cert="none", tls_ca=""))
    assert dcmtk("echoscu", *anonymous, "-aec", "DCMNODE", HOST, none.dimse_tls_port).returncode == 0


def test_the_tls_port_has_the_same_access_gate(node_factory: Factory, pki: Pki, tmp_path: Path) -> None:
    """allowed_callers holds on the TLS port as on the plain one: a trusted certificate is not an AE title."""
    node = node_factory(dimse=tls_settings(pki, allowed_callers=["KNOWN"]))
    for port, over in ((node.dimse_tls_port, client(pki)), (node.dimse_port, [])):
        unknown = dcmtk("echoscu", *over, "-aet", "STRANGER", "-aec", "DCMNODE", HOST, port)
        assert unknown.returncode != 0
        assert "Calling AE Title Not Recognized" in unknown.stderr, unknown.stderr
        assert dcmtk("echoscu", *over, "-aet", "KNOWN", "-aec", "DCMNODE", HOST, port).returncode == 0


def test_tls_settings_are_checked_at_start(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert and dimse.tls_key go together"):
        make_settings(tmp_path, dimse={"tls_cert": str(pki.site.server_cert)})
    with pytest.raises(ConfigError, match="tls_only needs the TLS listener"):
        make_settings(tmp_path, dimse={"tls_only": True})
    with pytest.raises(ConfigError, match="tls_ca"):
        make_settings(tmp_path, dimse=tls_settings(pki, tls_ca=""))
    with pytest.raises(ConfigError, match="tls_client_cert must be one of"):
        make_settings(tmp_path, dimse=tls_settings(pki, tls_client_cert="maybe"))
    settings = make_settings(tmp_path, dimse=tls_settings(pki, tls_key=str(pki.other_key)))  # not its key
    with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
        Node(settings).start_dimse()


# --- the SCU: the node against dcmtk's storescp +tls -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class TlsStorescp:
    """dcmtk's storescp +tls with the site's server certificate, requiring a client certificate (-rc, its
    default), writing what it receives into ``folder``."""

    def __init__(self, pki: Pki, folder: Path) -> None:
        site = pki.site
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["storescp", "+tls", str(site.server_key), str(site.server_cert), "+cf", str(site.ca_cert),
             "-rc", "-aet", "TLSPEER", "-od", str(folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(self._listening, "storescp to listen")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
        with socket.socket() as sock:
            return sock.connect_ex((HOST, self.port)) == 0

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def storescp(pki: Pki, tmp_path: Path) -> Iterator[TlsStorescp]:
    peer = TlsStorescp(pki, tmp_path / "received")
    yield peer
    peer.stop()


def peer_toml(pki: Pki, port: int, **extra: str) -> str:
    site = pki.site
    keys = {"tls_ca": str(site.ca_cert), "tls_cert": str(site.client_cert), "tls_key": str(site.client_key), **extra}
    lines = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
    return f'[peers.TLSPEER]\nhost = "{HOST}"\nport = {port}\ntls = true\n{lines}'


def test_dcmnode_send_to_a_tls_peer_stores_there(pki: Pki, storescp: TlsStorescp, tmp_path: Path) -> None:
    data = tmp_path / "data"
    series = ct_series(2, rows=8, cols=8)
    imported = run_cli("import", "--data", str(data), "--no-progress", *map(str, write_series(tmp_path / "in", series)))
    assert imported.returncode == 0, imported.stderr
    cfg = tmp_path / "peer.toml"
    cfg.write_text(peer_toml(pki, storescp.port))
    sent = run_cli("send", "--config", str(cfg), "--data", str(data), series[0].SeriesInstanceUID, "TLSPEER")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "sent 2 of 2" in sent.stdout
    assert len(storescp.received()) == 2


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ({"tls_server_name": "pacs.elsewhere.example"}, "wrong server name"),
        ("other-ca", "a server certificate from another CA"),
        ({"tls_cert": "", "tls_key": ""}, "no client certificate for a peer that requires one"),
    ],
)
def test_dcmnode_send_refuses_a_tls_peer_it_cannot_trust(
    pki: Pki, storescp: TlsStorescp, tmp_path: Path, keys: Any, why: str
) -> None:
    data = tmp_path / "data"
    series = ct_series(1, rows=8, cols=8)
    assert (
        run_cli(
            "import", "--data", str(data), "--no-progress", *map(str, write_series(tmp_path / "in", series))
        ).returncode
        == 0
    )
    extra = {"tls_ca": str(pki.other_ca)} if keys == "other-ca" else keys
    toml = peer_toml(pki, storescp.port, **extra)
    if extra.get("tls_cert") == "":
        toml = toml.replace('tls_cert = ""\n', "").replace('tls_key = ""\n', "")
    cfg = tmp_path / "peer.toml"
    cfg.write_text(toml + "\n[sr]\nsend_attempts = 1\n")
    sent = run_cli("send", "--config", str(cfg), "--data", str(data), series[0].SeriesInstanceUID, "TLSPEER")
    assert sent.returncode == 1, (why, sent.stdout, sent.stderr)
    assert "sent 0 of 1" in sent.stdout and "TLS handshake failed" in sent.stdout, sent.stdout
    # pynetdicom's TLS failure is one line in the log with its reason, not a traceback (dimse/compat.py).
    assert "TLS failure: " in sent.stderr and "Traceback" not in sent.stderr, sent.stderr
    assert storescp.received() == []


def test_c_move_to_a_tls_peer_stores_there(node_factory: Factory, pki: Pki, storescp: TlsStorescp) -> None:
    node = node_factory(peers_toml=peer_toml(pki, storescp.port))
    series = ct_series(3, rows=8, cols=8)
    fill(node, series)
    moved = dcmtk(
        "movescu", "-S", "-aet", "MOVESCU", "-aec", "DCMNODE", "-aem", "TLSPEER", HOST, node.dimse_port,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}",
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert len(storescp.received()) == 3


def test_peer_tls_keys_need_tls(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[peers.X]\nhost = "{HOST}"\nport = 2762\ntls_ca = "ca.pem"\n')
    with pytest.raises(ConfigError, match="tls_ca is set but tls is not true"):
        config.load(cfg)


# --- dcmnode tls init, the ready line, tls_only, dcmnode status ------------------------------------------------


def test_tls_init_then_a_tls_only_node_serves_what_it_prints(
    tmp_path: Path, cli_server_factory: Callable[..., CliServer]
) -> None:
    out = tmp_path / "pki"
    made = run_cli("tls", "init", "--hosts", f"{HOST},localhost", "--out", str(out), "--data", str(tmp_path / "d"))
    assert made.returncode == 0, made.stderr
    for key in ("ca.key", "server.key", "client.key"):
        assert (out / key).stat().st_mode & 0o777 == 0o600, key
    assert (out / "ca.pem").stat().st_mode & 0o077 == 0o044
    text = made.stdout
    assert "[dimse]" in text and "[http]" in text and "tls = true" in text and "session=s" in text
    again = run_cli("tls", "init", "--out", str(out), "--data", str(tmp_path / "d"))
    assert again.returncode == 2 and "--force" in again.stderr
    # The printed [dimse] lines, with tls_only, make a node that listens on TLS alone.
    dimse = text.split("[dimse]\n", 1)[1].split("\n\n", 1)[0].replace("tls_port = 2762", "tls_port = 0")
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[dimse]\n{dimse}\ntls_only = true\n[sr]\nworker = "off"\n')
    data = tmp_path / "data"
    server = cli_server_factory(data, "--config", str(cfg))
    assert " (TLS)" in server.ready_line and "(plain)" not in server.ready_line, server.ready_line
    [echo_line] = [line.strip() for line in text.splitlines() if line.strip().startswith("echoscu")]
    echo = echo_line.split()[:-2] + [HOST, str(server.dimse_port)]  # the printed command, at the bound port
    assert dcmtk(*echo).returncode == 0
    status = run_cli("status", "--config", str(cfg), "--data", str(data), "--json")
    assert status.returncode == 0, status.stderr
    dimse_listeners = [x for x in json.loads(status.stdout)["listeners"] if x["protocol"] == "DIMSE"]
    assert dimse_listeners == [{"protocol": "DIMSE", "host": HOST, "port": 0, "tls": True}]


def test_the_ready_line_names_plain_and_tls_listeners(
    tmp_path: Path, pki: Pki, cli_server_factory: Callable[..., CliServer]
) -> None:
    site = pki.site
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        f'[dimse]\ntls_port = 0\ntls_cert = "{site.server_cert}"\ntls_key = "{site.server_key}"\n'
        f'tls_ca = "{site.ca_cert}"\n[sr]\nworker = "off"\n'
    )
    server = cli_server_factory(tmp_path / "data", "--config", str(cfg))
    plain, secure = server.ready_line.split("DIMSE ", 1)[1].split("  HTTP")[0].split(", ")
    assert plain == f"DCMNODE@{HOST}:{server.dimse_port} (plain)"
    assert secure.startswith(f"{HOST}:") and secure.endswith(" (TLS)")
    port = int(secure.split(":")[1].split()[0])
    assert dcmtk("echoscu", *client(pki), "-aec", "DCMNODE", HOST, port).returncode == 0
    status = run_cli("status", "--config", str(cfg), "--data", str(tmp_path / "data"))  # as configured
    assert f"listeners: DIMSE DCMNODE@{HOST}:11112 (plain), {HOST}:0 (TLS)  HTTP http://{HOST}:8080/" in status.stdout
