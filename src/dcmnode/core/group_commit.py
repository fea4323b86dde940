"""Group commit: writers that wait at the same time share one commit (leader/follower).

Each writer ``submit``s its work and blocks until it is settled. The first writer to arrive when no one leads
becomes the leader: it calls ``commit(take)``, which gets ready (takes the index writer lock: other threads and
processes queue up meanwhile), then calls ``take()`` for everything queued by then (its own work among it) and
settles the batch with one transaction, one directory fsync per folder and one COMMIT. The writers that queued
while it waited are the followers: they sleep until their ticket is settled, then carry on with their own outcome.
When the leader is done and more work has queued meanwhile, the first of those writers leads the next batch (the
leader goes back to its own association at once).

An individual failure is set on its ticket (``Ticket.error``) by ``commit``; an exception out of ``commit`` (the
COMMIT failed, a folder could not be synced) fails every ticket it took that had no outcome yet. Every ticket
taken is settled whatever happens, and leadership always passes on or ends: no follower waits forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Ticket(Generic[T]):
    """One writer's work in a batch, and its outcome: ``error`` None once settled means it was committed."""

    __slots__ = ("item", "error", "_settled", "_lead")

    def __init__(self, item: T) -> None:
        self.item = item
        self.error: BaseException | None = None
        self._settled = threading.Event()
        self._lead = False  # woken to lead the next batch rather than settled


Take = Callable[[], list[Ticket[T]]]


class GroupCommit(Generic[T]):
    def __init__(self, commit: Callable[[Take[T]], None]) -> None:
        self._commit = commit
        self._lock = threading.Lock()
        self._queue: list[Ticket[T]] = []
        self._leading = False
        self.batches = 0  # batches committed (for tests and the bench)
        self.largest = 0  # the most tickets one batch held

    @property
    def queued(self) -> int:
        """Tickets waiting for a leader to take them."""
        with self._lock:
            return len(self._queue)

    def submit(self, item: T) -> Ticket[T]:
        """Queue ``item`` and return its ticket once settled (led by this thread or by another)."""
        ticket = Ticket(item)
        with self._lock:
            self._queue.append(ticket)
            lead = not self._leading
            self._leading = True
        while not lead:
            ticket._settled.wait()
            if not ticket._lead:
                return ticket  # a leader settled it
            lead, ticket._lead = True, False  # handed the lead: its ticket is still queued
            ticket._settled.clear()
        self._lead()
        return ticket

    def _take(self, taken: list[Ticket[T]]) -> list[Ticket[T]]:
        with self._lock:
            batch, self._queue = self._queue, []
        taken += batch
        return batch

    def _lead(self) -> None:
        taken: list[Ticket[T]] = []
        try:
            self._commit(lambda: self._take(taken))
            if not taken:
                raise RuntimeError("the group commit took no batch")
        except BaseException as err:
            if not taken:
                self._take(taken)  # it failed before taking (the writer lock): the queued tickets fail with it
            for ticket in taken:
                if ticket.error is None:
                    ticket.error = err
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt, SystemExit: after the finally below has settled everyone
        finally:
            self.batches += 1
            self.largest = max(self.largest, len(taken))
            for ticket in taken:
                ticket._settled.set()
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt._lead = True
                    nxt._settled.set()
                else:
                    self._leading = False
