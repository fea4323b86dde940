"""Certificates and TLS contexts for both protocols (PS3.15 Annex B, BCP 195 = RFC 8996 + RFC 9325).

Two halves, both free of the network:

- a small PKI for a site that has none (`dcmnode tls init`): a local CA, server certificates (subjectAltName for
  each host name or address, serverAuth) and client certificates (clientAuth), RSA 2048 so that older modalities
  and dcmtk's every profile can use them; keys are written with mode 0600;
- `ssl.SSLContext` builders for the DIMSE listener and SCU and for HTTPS: TLS 1.2 at least, the cipher suites of
  the Non-downgrading BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.9, the one dcmtk defaults to).
  TLS 1.3 suites are OpenSSL's (all AEAD). The retired profiles (B.1 Basic 3DES, B.3 AES-CBC, B.5 authenticated
  NULL) share no suite with this list, so their clients fail the handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dcmnode.config import Settings
from dcmnode.errors import ConfigError

if TYPE_CHECKING:  # the PKI half imports cryptography when it runs (`dcmnode tls init`), not a serving node
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

# PS3.15 B.9 (Non-downgrading BCP 195): ECDHE/DHE key exchange, AES-GCM only, in OpenSSL's names.
BCP195_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)

ClientCert = Literal["required", "optional", "none"]
CLIENT_CERT_MODES: dict[str, ssl.VerifyMode] = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


# --- contexts ---------------------------------------------------------------------------------------------------


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def server_context(cert: Path, key: Path, ca: Path | None = None, client_cert: str = "required") -> ssl.SSLContext:
    """A listener's context: its own certificate and, unless `client_cert` is "none", the CAs whose client
    certificates it trusts (mutual TLS, PS3.15 B.9: each side authenticates the other)."""
    if client_cert not in CLIENT_CERT_MODES:
        raise ConfigError(f"tls_client_cert must be one of {', '.join(CLIENT_CERT_MODES)}, not {client_cert!r}")
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} with its key {key}: {exc}") from exc
    ctx.verify_mode = CLIENT_CERT_MODES[client_cert]
    if client_cert != "none":
        if ca is None:
            raise ConfigError("tls_ca (the CAs of trusted client certificates) is needed unless tls_client_cert = none")
        _load_ca(ctx, ca)
    return ctx


def client_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """An SCU's context: the server's certificate checked against `ca` (the system's CAs when None) and its name
    against the host connected to (`check_hostname`); a client certificate when the peer asks for one."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(ctx, ca)
    if cert is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client certificate {cert}: {exc}") from exc
    return ctx


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA certificates {ca}: {exc}") from exc


# --- a local PKI ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    def write(self, cert_path: Path, key_path: Path) -> None:
        """The certificate (PEM, 0644) and the key (PEM, unencrypted, 0600 from its creation on)."""
        write_cert(cert_path, self.cert)
        _write_private(key_path, self.key)


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dcmnode site"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> rsa.RSAPrivateKey:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ca(common_name: str = "dcmnode local CA", days: int = 3650) -> Issued:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    name = _name(common_name)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _alt_name(host: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    ca: Issued,
    common_name: str,
    *,
    kind: Literal["server", "client"],
    hosts: list[str] | None = None,
    days: int = 825,
    not_before: dt.datetime | None = None,
) -> Issued:
    """An end-entity certificate signed by `ca`: a server's names in subjectAltName (RFC 6125: clients check those,
    not the common name), the extended key usage of its `kind`. `not_before` (and `days` after it) lets a test
    make an expired certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _key()
    start = not_before or _now() - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    names = [_alt_name(h) for h in (hosts or [])]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    from cryptography.hazmat.primitives import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _write_private(path: Path, key: rsa.RSAPrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    # A new file created 0600 (O_EXCL, not following a link), then renamed over the old one: the key is never in a
    # file others can read, even when it replaces one of looser mode (--force), nor written through a symlink.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class SitePki:
    """The files `dcmnode tls init` writes into one folder."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"


def init_site(folder: Path, hosts: list[str], *, client_name: str = "dcmnode client", force: bool = False) -> SitePki:
    """A CA, a server certificate for `hosts` and one client certificate, written into `folder`. Refuses to
    overwrite an existing CA unless `force`: a new CA would orphan every certificate it signed."""
    site = SitePki(folder)
    if site.ca_cert.exists() and not force:
        raise ConfigError(f"{site.ca_cert} exists: a new CA would invalidate the certificates it signed (use --force)")
    if not hosts:
        raise ConfigError("the server certificate needs at least one host name or address")
    ca = make_ca()
    ca.write(site.ca_cert, site.ca_key)
    issue(ca, hosts[0], kind="server", hosts=hosts).write(site.server_cert, site.server_key)
    issue(ca, client_name, kind="client").write(site.client_cert, site.client_key)
    return site


# --- what the node listens on -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    """One listening port: DIMSE plain or TLS, HTTP or HTTPS (the ready line, ``dcmnode status``, /api/status)."""

    protocol: Literal["DIMSE", "HTTP"]
    host: str
    port: int
    tls: bool = False

    def describe(self) -> str:
        if self.protocol == "HTTP":
            return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"
        return f"{self.host}:{self.port} ({'TLS' if self.tls else 'plain'})"

    def to_json(self) -> dict[str, object]:
        return {"protocol": self.protocol, "host": self.host, "port": self.port, "tls": self.tls}


def listeners(
    settings: Settings, dimse_port: int | None = None, dimse_tls_port: int | None = None, http_port: int | None = None
) -> list[Listener]:
    """The node's listeners from its settings, with the ports actually bound where given (a setting of 0 picks
    a free one): the plain DIMSE port unless ``tls_only``, the TLS one when ``tls_cert`` is set, then HTTP."""
    dimse = settings.dimse
    out = []
    if not dimse.tls_only:
        out.append(Listener("DIMSE", dimse.host, dimse.port if dimse_port is None else dimse_port))
    if dimse.tls_cert:
        out.append(Listener("DIMSE", dimse.host, dimse.tls_port if dimse_tls_port is None else dimse_tls_port, True))
    http = settings.http
    out.append(Listener("HTTP", http.host, http.port if http_port is None else http_port, tls=bool(http.tls_cert)))
    return out


def describe_dimse(ae_title: str, found: list[Listener]) -> str:
    """``MYAE@127.0.0.1:11112 (plain), 127.0.0.1:2762 (TLS)``."""
    return f"{ae_title}@" + ", ".join(item.describe() for item in found if item.protocol == "DIMSE")


def setup_text(site: SitePki, hosts: list[str], ae_title: str = "DCMNODE", http_port: int = 8080) -> str:
    """What ``dcmnode tls init`` prints: the files, the settings to paste, the dcmtk and browser commands."""
    f = {name: str(getattr(site, name).resolve()) for name in ("ca_cert", "server_cert", "server_key")}
    f |= {name: str(getattr(site, name).resolve()) for name in ("client_cert", "client_key", "ca_key")}
    host = hosts[0]
    tls = f"+tls {f['client_key']} {f['client_cert']} +cf {f['ca_cert']}"
    return f"""\
wrote {site.folder.resolve()} (keys mode 0600):
  ca.pem       the site CA: give it to every client and peer that must trust this node
  ca.key       the CA's key: keep it offline; it signs every certificate the node trusts
  server.pem   this node's certificate for {", ".join(hosts)} (+ server.key)
  client.pem   a client certificate signed by the CA, for dcmtk, a modality or a peer node (+ client.key)

Settings for dcmnode.toml (DIMSE TLS on port 2762, IANA dicom-tls; HTTPS with the same certificate):

[dimse]
tls_port = 2762
tls_cert = "{f["server_cert"]}"
tls_key = "{f["server_key"]}"
tls_ca = "{f["ca_cert"]}"
tls_client_cert = "required"
# tls_only = true    # no plain DIMSE listener

[http]
tls_cert = "{f["server_cert"]}"
tls_key = "{f["server_key"]}"

A peer this node sends to over TLS (C-MOVE, SR send-back, dcmnode send), its server certificate from this CA:

[peers.PACS]
host = "{host}"
port = 2762
tls = true
tls_ca = "{f["ca_cert"]}"
tls_cert = "{f["client_cert"]}"
tls_key = "{f["client_key"]}"

dcmtk (3.6.7; the default profile +py is Non-downgrading BCP 195):
  echoscu  {tls} -aec {ae_title} {host} 2762
  storescu {tls} -aec {ae_title} {host} 2762 FILE...
  findscu  {tls} -aec {ae_title} -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID {host} 2762

Browser, OHIF: import {f["ca_cert"]} as a trusted certificate authority (Firefox: Settings > Privacy &
Security > Certificates > Authorities > Import; Chrome: Settings > Privacy and security > Security > Manage
certificates), then open https://{host}:{http_port}/ (OHIF's dataSource: wadoRoot/qidoRoot/stowRoot
https://{host}:{http_port}/dicom-web).
dicomweb-client: s = dicomweb_client.session_utils.add_certs_to_session(
    dicomweb_client.session_utils.create_session(), ca_bundle="{f["ca_cert"]}"); s.trust_env = False
  DICOMwebClient("https://{host}:{http_port}/dicom-web", session=s)   (trust_env: REQUESTS_CA_BUNDLE would win)
curl: curl --cacert {f["ca_cert"]} https://{host}:{http_port}/api/health
"""
