"""DIMSE adapter: pynetdicom's SCP and SCU over the store (see scp, query_retrieve, send)."""

from __future__ import annotations

import socket

from pynetdicom.transport import AssociationSocket


def _close_even_if_shutdown_fails(self: AssociationSocket) -> None:
    """pynetdicom 3.0.4 calls ``close()`` in the same ``try`` as ``shutdown()``: when the peer has gone first,
    ``shutdown`` raises ENOTCONN and the socket stays open until garbage collection (a ResourceWarning, and a
    descriptor held for nothing meanwhile). Upstream works on the same problem in pydicom/pynetdicom#999; this
    replacement is harmless where pynetdicom already closes the socket."""
    sock = self.socket
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected
    sock.close()


AssociationSocket._shutdown_socket = _close_even_if_shutdown_fails  # type: ignore[method-assign]
