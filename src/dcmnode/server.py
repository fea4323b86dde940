"""``dcmnode serve``: the processes of a running node.

The parent process serves HTTP (DICOMweb, API, viewer). DIMSE associations are served by ``dimse.processes``
child processes that share one listening socket: each association runs in whichever process accepts it, so
parallel associations use every core (pynetdicom holds the GIL for most of its work). With ``processes = 0``
the SCP runs as threads inside the HTTP process. Children are forked before the parent starts any thread,
and die with the parent (PR_SET_PDEATHSIG), so a ``kill -9`` of the node leaves no stray process.

Memory (issue 19): the node's size is the sum over its processes, so the DIMSE processes are forked once
everything they use is imported, with the garbage collector's objects frozen (``gc.freeze``): the pages of
pydicom, pynetdicom, the dictionaries and the code stay shared with the parent instead of being copied the
first time either process's collector walks them. Nothing imports what only another process needs: torch,
highdicom, scikit-image, nibabel and cryptography are imported by the code that uses them. Helper processes
run only while they have work: the SR worker (``sr.worker = "process"``: ``worker.OnDemand``, a new interpreter
at lower priority, gone after ``sr.idle_exit_seconds``) and the /metadata workers (``http.metadata_idle_seconds``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import ssl
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from dcmnode import __version__, worker
from dcmnode.app import HttpsRedirect, Node, https_context, listen_dimse
from dcmnode.config import Settings
from dcmnode.core import coercion, tls
from dcmnode.errors import DcmnodeError

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
DIMSE_PROCESS_NAME = "dcmnode-dimse"  # /proc/PID/comm of a DIMSE process (ps, top; bench/bench_memory.py)
READY_TIMEOUT = 60.0
GC_SECONDS = 0.5  # the node's processes collect their garbage cycles at least this often (``_collect``)


def run(settings: Settings) -> int:
    https = https_context(settings)  # a certificate that cannot be loaded stops the node before it listens
    coercion.check(settings)  # so does an unknown [peers.X] deidentify option (before any child is forked)
    http_sock = _listen_http(settings.http.host, settings.http.port)
    redirect = settings.http.redirect_port
    redirect_sock = _listen_http(settings.http.host, redirect) if redirect and settings.http.tls_cert else None
    http_socks = [http_sock] + ([redirect_sock] if redirect_sock else [])
    dimse_sock, tls_sock = listen_dimse(settings)  # plain unless tls_only; TLS when tls_cert is set
    if settings.dimse.processes > 0:
        _preload(settings)
        gc.freeze()  # what is imported now stays shared with the DIMSE processes (see the module's docstring)
    children = _fork_dimse_processes(settings, dimse_sock, tls_sock, http_socks, settings.dimse.processes)
    stopping = threading.Event()
    node = Node(settings)
    sr_thread = worker.start_thread(settings)[0] if settings.sr.worker == "thread" else None
    sr_process = worker.OnDemand(settings, node.services.jobs) if settings.sr.worker == "process" else None
    try:
        if not children:
            node.start_dimse(dimse_sock, tls_sock)
        node.dimse_port = dimse_sock.getsockname()[1] if dimse_sock is not None else 0
        node.dimse_tls_port = tls_sock.getsockname()[1] if tls_sock is not None else 0
        node.services.audit.application(start=True)
        _announce(settings, node.dimse_port, node.dimse_tls_port, http_sock.getsockname()[1], redirect_sock)
        watcher = threading.Thread(target=_watch_children, args=(children, stopping), name="dimse-watch", daemon=True)
        watcher.start()
        threading.Thread(target=_collect, args=(stopping,), name="gc", daemon=True).start()
        if sr_process is not None:
            sr_process.start()
        _serve_http(node, http_sock, redirect_sock, https)
    finally:
        stopping.set()
        if sr_thread is not None:
            sr_thread.stop()
        if sr_process is not None:
            sr_process.stop()
        _stop_children(children)
        if sr_process is not None:
            sr_process.wait()
        with contextlib.suppress(DcmnodeError):  # fail_closed: a stop that cannot be audited still stops
            node.services.audit.application(start=False)
        node.close()
    return 0


def _listen_http(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and an
    # accepted socket takes the listening socket's. Without it every keep-alive response after the first waits
    # ~40 ms (Nagle against the client's delayed ACK). TCP_NODELAY on the listener is inherited too (Linux).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _announce(
    settings: Settings, dimse_port: int, dimse_tls_port: int, http_port: int, redirect_sock: socket.socket | None
) -> None:
    """The ready line: each listener, plain or TLS (``core/tls.py`` ``listeners``), and the redirect port."""
    found = tls.listeners(settings, dimse_port, dimse_tls_port, http_port)
    http = next(item for item in found if item.protocol == "HTTP").describe()
    host = settings.http.host
    redirect = f"  redirect http://{host}:{redirect_sock.getsockname()[1]}/" if redirect_sock else ""
    print(
        f"dcmnode {__version__} ready: DIMSE {tls.describe_dimse(settings.node.ae_title, found)}  "
        f"HTTP {http}  DICOMweb {http}dicom-web{redirect}  data {settings.data_dir.resolve()}",
        flush=True,
    )


def http_config(app: Any, settings: Settings, context: ssl.SSLContext | None, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of the node's HTTP listener: plain HTTP, or with ``context``
    (``app.https_context(settings)``) HTTPS with TLS 1.2 at least and BCP 195 suites (uvicorn's own ssl_* defaults
    would allow TLS 1.0) and Strict-Transport-Security on every answer. The header is one of uvicorn's default
    headers, written by the protocol with Date and Server: no middleware, nothing added to the fast path's cost."""
    import uvicorn

    if context is not None:
        options["ssl_context_factory"] = lambda config, default: context
        if settings.http.hsts_seconds:
            options["headers"] = [("Strict-Transport-Security", f"max-age={settings.http.hsts_seconds}")]
    return uvicorn.Config(app, log_config=None, access_log=False, **options)


def redirect_config(settings: Settings, https_port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of the plain-HTTP redirect listener (``app.HttpsRedirect``)."""
    import uvicorn

    app = HttpsRedirect(https_port, settings.http.host)
    return uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none", **options)


def _serve_http(
    node: Node, sock: socket.socket, redirect_sock: socket.socket | None, https: ssl.SSLContext | None
) -> None:
    import uvicorn

    server = uvicorn.Server(http_config(node.asgi(), node.settings, https, timeout_graceful_shutdown=10))
    redirect = None
    if redirect_sock is not None:  # its own thread and event loop; uvicorn handles signals in the main thread only
        redirect = uvicorn.Server(redirect_config(node.settings, sock.getsockname()[1]))
        threading.Thread(target=redirect.run, kwargs={"sockets": [redirect_sock]}, name="https-redirect").start()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was there
    # before it: make that a no-op, so that a clean stop exits 0 once the DIMSE processes are stopped too.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        if redirect is not None:
            redirect.should_exit = True
    log.info("stopping")


# -- DIMSE child processes --------------------------------------------------------------------------------
def _preload(settings: Settings) -> None:
    """Import, before the DIMSE processes are forked, what they would import on first use, so that each does not
    import it again: PyJWT (and cryptography) when DIMSE user identity may carry an OIDC token. Everything else
    a DIMSE process runs (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) is imported by this module's imports already:
    after the shared harness's run, a DIMSE process's ``sys.modules`` was the one it was forked with (783)."""
    if settings.oidc.issuer:
        import jwt  # noqa: F401


def _fork_dimse_processes(
    settings: Settings,
    sock: socket.socket | None,
    tls_sock: socket.socket | None,
    http_socks: list[socket.socket],
    count: int,
) -> list[int]:
    if count <= 0:
        return []
    read_end, write_end = os.pipe()
    parent = os.getpid()
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            for http_sock in http_socks:
                http_sock.close()
            code = 1
            try:
                code = _dimse_child(settings, sock, tls_sock, write_end, parent)
            except BaseException:
                log.exception("DIMSE process failed")
            finally:
                os._exit(code)
        children.append(pid)
    os.close(write_end)
    _wait_ready(read_end, children)
    return children


def _wait_ready(read_end: int, children: list[int]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    ready = 0
    while ready < len(children):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
            _stop_children(children)
            raise RuntimeError("DIMSE processes did not start in time")
        chunk = os.read(read_end, 64)
        if not chunk:
            _stop_children(children)
            raise RuntimeError("a DIMSE process exited during start-up; see the log above")
        ready += len(chunk)
    os.close(read_end)


def _dimse_child(
    settings: Settings, sock: socket.socket | None, tls_sock: socket.socket | None, ready_fd: int, parent: int
) -> int:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_NAME, DIMSE_PROCESS_NAME.encode(), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    node = Node(settings)  # the same wiring as in-process: store, ingest, SCP on the shared socket
    node.start_dimse(sock, tls_sock)
    # What start-up made lives as long as the process: out of the collector's sight, so that a full collection
    # (pynetdicom forces one every 60 accepts, Python's own thresholds more) walks the associations' garbage only,
    # <1 ms, instead of ~160,000 objects, 70-160 ms with the GIL held, every association of the process stalled.
    gc.collect()
    gc.freeze()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    _collect(stop)
    node.close()
    sys.stdout.flush()
    return 0


def _collect(stop: threading.Event) -> None:
    """Until ``stop``: a full garbage collection every ``GC_SECONDS`` when objects have survived a young
    collection since the last one (nothing to do in an idle process). Each association leaves about 2,800
    objects in reference cycles (pynetdicom's association, its DUL and ACSE providers, their presentation
    contexts refer to each other); CPython collects the oldest generation only after ten collections of the
    middle one, and until then tens of associations' garbage (5-15 MiB a process) waited in memory. Frozen
    objects (``gc.freeze``) are not walked: with 10,000 live objects a collection takes 0.2 ms, plus freeing the
    garbage (10 ms for 70,000 objects), which CPython's own collection would have spent later."""
    while not stop.wait(GC_SECONDS):
        _, young, middle = gc.get_count()
        if young or middle:
            gc.collect()


def _watch_children(children: list[int], stopping: threading.Event) -> None:
    """Log a DIMSE process that dies; when none is left, stop the node so a supervisor can restart it. It waits
    on these processes only (a pidfd each), never on any child: the SR worker and the /metadata workers come and
    go, and their owners (``subprocess``, ``multiprocessing``) reap them."""
    fds: dict[int, int] = {}
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(pid)] = pid
    while fds:
        ready, _, _ = select.select(list(fds), [], [])
        for fd in ready:
            pid = fds.pop(fd)
            os.close(fd)
            status = 0
            with contextlib.suppress(ChildProcessError):
                status = os.waitpid(pid, 0)[1]
            if stopping.is_set():
                continue
            log.error("DIMSE process %d exited (status %d); %d left", pid, status, len(fds))
            if not fds:
                os.kill(os.getpid(), signal.SIGTERM)


def _stop_children(children: list[int]) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in children:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
