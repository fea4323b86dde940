"""Adaptive polling for pynetdicom associations.

pynetdicom's DUL reactor sleeps 1 ms whenever a loop finds nothing to do (a private knob, set through
``compat``), which caps one association at roughly 100 instances/s of 0.5 MB here, whatever the handler does.
Polling every 0.1 ms doubles that, but costs ~18 % of a core per *idle* association (1 ms: ~8 %). So: poll fast
while PDUs arrive, and fall back to pynetdicom's default once an association has been quiet for ``idle_after``
seconds. Activity is noted once per association and once per DIMSE request (``touch``), not per PDU: an event
handler per PDU costs more GIL time than it saves.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pynetdicom import evt

from dcmnode.dimse import compat

FAST = 0.0001
SLOW = compat.REACTOR_DELAY  # pynetdicom's own default


class Pacer:
    def __init__(self, idle_after: float = 0.25) -> None:
        self.idle_after = idle_after
        self._active: dict[int, tuple[Any, float]] = {}  # id(dul) -> (dul, time of the last touch)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sweep, name="dimse-pacer", daemon=True)
        self._thread.start()

    def handlers(self) -> list[Any]:
        """The pynetdicom event handlers to bind on the server: an association starts fast, is forgotten on close."""
        return [(evt.EVT_ESTABLISHED, self.on_established), (evt.EVT_CONN_CLOSE, self.on_close)]

    def on_established(self, event: evt.Event) -> None:
        """``evt.EVT_ESTABLISHED``: a new association polls fast at first."""
        self.touch(event.assoc)

    def touch(self, assoc: Any) -> None:
        """Note activity on an association: poll fast until it has been idle for ``idle_after`` seconds."""
        dul = assoc.dul
        if not compat.can_set_reactor_delay(dul):  # a pynetdicom without the knob: nothing to tune
            return
        with self._lock:
            if id(dul) not in self._active:
                compat.set_reactor_delay(dul, FAST)
            self._active[id(dul)] = (dul, time.monotonic())

    def on_close(self, event: evt.Event) -> None:
        """``evt.EVT_CONN_CLOSE``: stop watching the association."""
        with self._lock:
            self._active.pop(id(event.assoc.dul), None)

    def _sweep(self) -> None:
        while not self._stop.wait(self.idle_after / 2):
            cutoff = time.monotonic() - self.idle_after
            with self._lock:
                for key, (dul, last) in list(self._active.items()):
                    if last < cutoff:
                        compat.set_reactor_delay(dul, SLOW)
                        del self._active[key]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
