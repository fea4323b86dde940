"""DICOM TLS on the DIMSE side (PS3.15 Annex B; the contexts themselves are ``core/tls.py``'s).

- The listener: ``listener_context`` from ``[dimse] tls_*``, and ``TlsServer``, the shared-socket server that
  wraps each accepted connection and runs its handshake on the association's own thread with the ACSE timeout
  (pynetdicom's own ``ssl_context`` handshakes in the accept loop, where one silent client would stall every
  other). A failed handshake (plain TCP, no or an untrusted or expired client certificate, a retired profile's
  cipher suites) closes the connection before any DICOM is read, with a log line and a 110113 Security Alert.
  Behind the handshake the association meets the same gate and services as on the plain port.
- The SCU: ``peer_tls_args`` for ``AE.associate(tls_args=...)`` (C-MOVE sub-associations, the C-STORE SCU),
  the server certificate checked against the peer's ``tls_ca`` and its name against ``tls_server_name`` or host.
- ``transport``: how an association came ("TLS CN=...", "TLS" or "" for plain), for the log and the audit trail.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from dcmnode.config import DimseSettings, Peer
from dcmnode.core import tls

log = logging.getLogger(__name__)


def listener_context(dimse: DimseSettings) -> ssl.SSLContext | None:
    """The TLS listener's context, or None when ``tls_cert`` is not set (no TLS listener)."""
    if not dimse.tls_cert:
        return None
    ca = Path(dimse.tls_ca) if dimse.tls_ca else None
    return tls.server_context(Path(dimse.tls_cert), Path(dimse.tls_key), ca, dimse.tls_client_cert)


def peer_tls_args(peer: Peer) -> tuple[ssl.SSLContext, str] | None:
    """``AE.associate``'s ``tls_args`` for ``peer``: None when it is reached in plain TCP."""
    if not peer.tls:
        return None
    context = tls.client_context(
        Path(peer.tls_ca) if peer.tls_ca else None,
        Path(peer.tls_cert) if peer.tls_cert else None,
        Path(peer.tls_key) if peer.tls_key else None,
    )
    return context, peer.tls_server_name or peer.host


def transport(assoc: Association) -> str:
    """How the association came: "TLS CN=<the client certificate's common name>", "TLS" without a client
    certificate, "" over plain TCP."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        cert = None
    subject: Any = (cert or {}).get("subject", ())  # ((("commonName", "x"),), ...): one tuple per RDN
    names = [str(pair[1]) for rdn in subject for pair in rdn if pair[0] == "commonName"]
    return f"TLS CN={names[0]}" if names else "TLS"


Refused = Callable[[str, str], None]  # (address, reason): the alert of a failed handshake


class TlsHandshake(ThreadedAssociationServer):
    """Mixed in before the shared-socket server of the TLS port (``scp.start``), which sets ``context``,
    ``handshake_timeout`` and ``refused`` on the class it makes per listener."""

    context: ssl.SSLContext
    handshake_timeout: float
    refused: Refused

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        raw, address = super().get_request()
        return self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        # On the association's thread (ThreadingMixIn): a slow or silent client holds only its own thread.
        assert isinstance(request, ssl.SSLSocket)
        address = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        previous = request.gettimeout()
        request.settimeout(self.handshake_timeout)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as exc:  # socket.timeout is an OSError
            reason = _reason(exc)
            log.warning("TLS connection from %s refused: %s", address, reason)
            self.refused(address, reason)
            _close(request)
            return
        request.settimeout(previous)
        super().finish_request(request, client_address)


# OpenSSL's reasons for the refusals a person meets, in words (the code stays in the line, to search for)
REASONS = {
    "WRONG_VERSION_NUMBER": "not a TLS client (plain DICOM on the TLS port?)",
    "HTTP_REQUEST": "not a TLS client (plain HTTP on the TLS port)",
    "NO_SHARED_CIPHER": "no cipher suite in common (a retired profile: AES or NULL?)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "UNSUPPORTED_PROTOCOL": "TLS version below 1.2",
}


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):  # the client's certificate: its verify_message says why
        return f"TLS handshake failed: client certificate refused: {exc.verify_message} (CERTIFICATE_VERIFY_FAILED)"
    if isinstance(exc, ssl.SSLError):
        code = str(exc.reason or "")
        words = REASONS.get(code)
        return f"TLS handshake failed: {words} ({code})" if words else f"TLS handshake failed: {code or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {exc.strerror or exc}"


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
