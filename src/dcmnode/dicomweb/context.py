"""What the HTTP handlers work with: one typed, frozen object, built once by the composition root, set once on
the app (``app.state.services``) and read through ``services(request)``.

It holds the node's services and the HTTP side's own parts: its limits, the DICOMweb prefix, the gzip cache of
series metadata and the thread that writes new renderings to the cache. ``close()`` (the app's lifespan) stops
that thread; nothing here is a module global.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.types import Scope

from dcmnode.config import Settings
from dcmnode.core import access
from dcmnode.core.audit import Audit
from dcmnode.core.auth import Authenticator
from dcmnode.core.catalog import Catalog
from dcmnode.core.deid import DeidRegistry, KeyStore, pixel_masks
from dcmnode.core.deletion import Deletion
from dcmnode.core.importing.registry import Registry
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs.queue import Jobs
from dcmnode.core.jobs.worker import Sender
from dcmnode.core.labels import Labels
from dcmnode.core.limits import Buckets, Quota
from dcmnode.core.render import Renderer
from dcmnode.core.services import Services

DICOMWEB_PREFIX = "/dicom-web"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class QidoLimits:
    max_results: int


@dataclass(frozen=True, slots=True)
class StowLimits:
    max_request_bytes: int
    max_part_bytes: int
    fsync: bool
    max_parts: int = 10000


class GzipCache:
    """Compressed metadata per (series version, base URL): compressed once, then served as is."""

    def __init__(self, size: int = 32) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def find(self, key: str) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def add(self, key: str, body: bytes) -> bytes:
        packed = gzip.compress(body, compresslevel=1, mtime=0)  # JSON this repetitive packs ~8x even at level 1
        with self._lock:
            self._items[key] = packed
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return packed


def _cache_writer() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-cache")


@dataclass(frozen=True, slots=True)
class HttpServices:
    settings: Settings
    ingest: Ingest
    catalog: Catalog
    renderer: Renderer
    jobs: Jobs
    deletion: Deletion
    labels: Labels
    imports: Registry  # the bulk upload jobs of this process (``/api/imports``)
    qido: QidoLimits
    stow: StowLimits
    dimse_port: int  # where DIMSE listens (``/api/status``)
    audit: Audit  # the audit trail (``dicomweb/audit.py``)
    auth: Authenticator  # local users and the viewer's sessions (``nodeapi/session.py``)
    expensive: Buckets  # per-client rate of the expensive requests (``dicomweb/throttle.py``)
    sr_jobs: Quota[int]  # SR jobs queued or running per client, submitted here (``nodeapi/sr_jobs.py``)
    deidentify: DeidRegistry  # the de-identification jobs of this process (``/api/deidentify``)
    prefix: str = DICOMWEB_PREFIX
    dimse_tls_port: int = 0  # where DIMSE listens over TLS; 0 = no TLS listener (``/api/status``)
    gzip: GzipCache = field(default_factory=GzipCache)
    cache_writer: concurrent.futures.ThreadPoolExecutor = field(default_factory=_cache_writer)

    @classmethod
    def build(
        cls, services: Services, dimse_port: int, dimse_tls_port: int = 0, send: Sender | None = None
    ) -> HttpServices:
        """``send``: how de-identification jobs C-STORE to a peer (the composition's DIMSE SCU; None: they cannot)."""
        http = services.settings.http
        return cls(
            settings=services.settings,
            ingest=services.ingest,
            catalog=services.catalog,
            renderer=services.renderer,
            jobs=services.jobs,
            deletion=services.deletion,
            labels=services.labels,
            imports=Registry(services.ingest, services.settings, services.audit),
            qido=QidoLimits(http.max_query_results),
            stow=StowLimits(
                http.max_request_mb * MIB, http.max_part_mb * MIB, services.settings.store.fsync, http.max_stow_parts
            ),
            dimse_port=dimse_port,
            dimse_tls_port=dimse_tls_port,
            audit=services.audit,
            auth=services.auth,
            expensive=Buckets(http.expensive_per_second, http.expensive_burst),
            sr_jobs=Quota(
                services.settings.sr.max_jobs_per_client, "SR jobs queued or running", "sr.max_jobs_per_client", 60.0
            ),
            deidentify=DeidRegistry(
                services.catalog,
                services.ingest,
                KeyStore(services.store.root / "secrets" / "deid"),
                services.settings.peers,
                services.audit,
                send,
                pixel_masks(services.settings),
            ),
        )

    def close(self) -> None:
        """Cancel the open uploads (between members: what was stored stays stored), let the renderings already
        handed to the cache writer reach the cache, then stop it."""
        self.imports.cancel_all()
        self.deidentify.cancel_all()
        self.cache_writer.shutdown(wait=True)


def services(connection: HTTPConnection) -> HttpServices:
    """The HTTP side's services, as the composition root set them on the app."""
    found = connection.app.state.services
    assert isinstance(found, HttpServices), "the app was built without HttpServices (app.Node.asgi sets them)"
    return found


PRINCIPAL = "dcmnode.principal"  # the ASGI scope key authentication sets (a ``core.access.Principal``)
# A request that reached a handler without passing authentication while it is on: it may do nothing, see nothing.
NOBODY = access.Principal("nobody", access.Kind.ANONYMOUS, frozenset(), frozenset())


def principal_of(scope: Scope, settings: Settings) -> access.Principal:
    """Who asks: the principal authentication (``dicomweb.access.AccessControl``) put in the ASGI scope; with
    ``http.auth = "none"`` everyone (the anonymous principal); with auth on and none set, nobody (fail closed)."""
    found = scope.get(PRINCIPAL)
    if isinstance(found, access.Principal):
        return found
    if settings.http.auth == "on":
        return NOBODY
    client = scope.get("client")
    return access.anonymous(str(client[0]) if client else "")


def principal(connection: HTTPConnection) -> access.Principal:
    return principal_of(connection.scope, services(connection).settings)


def groups(connection: HTTPConnection) -> frozenset[str]:
    """The asking principal's groups: the studies it sees carry one of them (``*``: every study)."""
    return principal(connection).groups
