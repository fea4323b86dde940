"""A bounded decision cache: what a credential was found to be, for at most ``ttl`` seconds (10 by default), so
that a revoked, removed or expired credential stops working within that time in every process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_SECONDS = 10.0


class DecisionCache(Generic[T]):
    def __init__(self, ttl: float = MAX_SECONDS, size: int = 4096) -> None:
        self.ttl = min(ttl, MAX_SECONDS)
        self._size = size
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if found[0] <= time.monotonic():
                del self._items[key]
                return None
            return found[1]

    def put(self, key: str, value: T, ttl: float | None = None) -> None:
        """Keep ``value`` for ``ttl`` seconds (never more than the cache's own limit; 0 or less: not kept)."""
        seconds = self.ttl if ttl is None else min(ttl, self.ttl)
        if seconds <= 0:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + seconds, value)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
