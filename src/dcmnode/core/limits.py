"""Limits that keep one client from starving the others (issue 17): each a setting whose default a normal viewer or
modality never reaches.

- ``Buckets``: a token bucket per client (``client_key``: the principal when authenticated, else its IP address)
  for the expensive HTTP requests (enhanced renders, study/series ``/rendered``, exports). A request costs one
  token; a client with none left waits ``retry_after`` seconds (HTTP 429 with ``Retry-After``, RFC 6585 §4).
- ``Quota``: at most ``limit`` live things per client in this process (open import jobs, SR jobs queued or running
  that the client submitted); one more is ``TooManyRequests``.
- ``Slots``: at most ``limit`` holders per key across every process of one node (associations per calling AE
  title): one ``flock``-ed file per held slot under one folder, so a process that dies gives its slots back.

Each refusal is ``errors.TooManyRequests`` (HTTP 429, DIMSE 0xA700 out of resources) with its ``retry_after``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from dcmnode.core.access import Kind, Principal
from dcmnode.errors import TooManyRequests

T = TypeVar("T", bound=Hashable)
MAX_CLIENTS = 10_000  # buckets kept; the least recently used full one goes first beyond this


def client_key(principal: Principal) -> str:
    """Who a limit counts: the principal when one was authenticated, else the client's IP address (with
    ``http.auth = "none"`` everyone is the anonymous principal, told apart only by address)."""
    if principal.kind is Kind.ANONYMOUS:
        return f"address:{principal.address}"
    return f"{principal.kind}:{principal.name}"


class Buckets:
    """One token bucket per client: ``burst`` tokens at most, ``rate`` tokens back per second. ``rate <= 0`` is no
    limit. Thread-safe; ``clock`` is ``time.monotonic`` (a wall-clock step never refills or drains one)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()  # key -> (tokens, at, denied)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0) -> tuple[float, bool]:
        """Take ``cost`` tokens from ``key``'s bucket: (0.0, False) when taken, else (the seconds until they are
        there, whether this is the first refusal since the key was last served); nothing is taken then."""
        if not self.enabled:
            return 0.0, False
        cost = min(cost, float(self.burst))
        now = self._clock()
        with self._lock:
            tokens, at, denied = self._buckets.pop(key, (float(self.burst), now, False))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= cost else (cost - tokens) / self.rate
            if not wait:
                tokens -= cost
            self._buckets[key] = (tokens, now, bool(wait))  # most recently used last
            if len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)  # forgetting a bucket only ever refills it
            return wait, bool(wait) and not denied


def retry_after(seconds: float) -> int:
    """``Retry-After`` in whole seconds (RFC 9110 §10.2.3), rounded up: after that long the request is served."""
    return max(1, math.ceil(seconds))


class Quota(Generic[T]):
    """At most ``limit`` live items per key in this process (``limit <= 0``: no limit). ``admit`` checks and
    reserves under one lock, so two requests of one client at once cannot both take the last place."""

    def __init__(self, limit: int, what: str, setting: str, retry_seconds: float) -> None:
        self.limit = limit
        self.what, self.setting, self.retry_seconds = what, setting, retry_seconds
        self._lock = threading.Lock()
        self._items: dict[str, list[T]] = {}

    @contextlib.contextmanager
    def admit(self, key: str, alive: Callable[[T], bool]) -> Iterator[Callable[[T], None]]:
        """Raise ``TooManyRequests`` when ``key`` holds ``limit`` items for which ``alive`` is true; else yield
        ``add``, which counts the new item against the key (call it once the item exists)."""
        with self._lock:
            held = [item for item in self._items.get(key, []) if alive(item)]
            if held:
                self._items[key] = held
            else:
                self._items.pop(key, None)
            if 0 < self.limit <= len(held):
                raise TooManyRequests(
                    f"{len(held)} {self.what} already ({self.setting} = {self.limit}); retry once one has ended",
                    retry_after=self.retry_seconds,
                )
            yield lambda item: self._items.setdefault(key, []).append(item)

    def held(self, key: str, alive: Callable[[T], bool]) -> int:
        with self._lock:
            return sum(1 for item in self._items.get(key, []) if alive(item))


class Slot:
    """One slot held: its locked file, removed on ``release`` (idempotent)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still locked: whoever opened it before waits for an inode no one uses
            os.close(self._fd)  # unlocks
            self._fd = -1


class Slots:
    """At most ``limit`` holders per key across the processes sharing ``folder`` (``limit <= 0``: no limit).

    Slot ``i`` of a key is the file ``{hash of key}.{i}`` held under ``flock(LOCK_EX)``: the kernel drops the lock
    when its process dies, so a killed process never keeps a slot. A file exists only while its slot is held
    (removed before unlocking); a taker checks that the inode it locked is still the file at that path, so two
    takers never both hold one slot."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit

    def acquire(self, key: str) -> Slot | None:
        """A slot of ``key``, or None when all ``limit`` are held."""
        if self.limit <= 0:
            return Slot(self.folder / "-", -1)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        for n in range(self.limit):
            path = self.folder / f"{stem}.{n}"
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    break  # held: the next slot
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    return Slot(path, fd)
                os.close(fd)  # released and removed meanwhile: try this slot again
        return None

    def held(self, key: str) -> int:
        """Slots of ``key`` held now (for tests and status)."""
        stem = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return len(list(self.folder.glob(f"{stem}.*"))) if self.folder.is_dir() else 0
