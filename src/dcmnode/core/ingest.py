"""The one ingest path: every instance (C-STORE, STOW-RS, import, later archives and SR output) enters here.

Order of work, so that an acknowledged instance is durable and a failed one leaves nothing behind:
1. parse and check the bytes (``core.parse``): nothing is kept of bad input (a C-STORE's temp file is written
   while its data set is checked, so that the disk is busy meanwhile, and removed if it is refused);
2. write a temp file and fsync it (outside the index lock, so writers overlap);
3. one index transaction: duplicate policy, upsert rows, ``os.replace`` the temp file into place, fsync the
   folders whose entries changed, COMMIT (durable: ``synchronous=FULL``); then answer success. Any failure
   removes the temp file (and a newly placed file).

Step 3 is a group commit (``core.group_commit``): the instances of concurrent writers (associations, STOW
parts, processes queue on the index lock) that wait at the same moment share one transaction, one fsync per
folder and one COMMIT; each keeps its own outcome (savepoint per instance: one that fails fails alone).

Study labels (``Source.labels``: a peer's ``labels``, an import's or a STOW request's) are attached in the same
transaction as the rows, to each instance stored or replaced (not to a duplicate kept as stored). A replaced
instance keeps its study's labels even when its study row is removed and made again.

A writer limited to groups (``Source.groups``: a principal that does not see every study) may not reach a study
it does not see: an instance of a stored study without one of its groups, or one whose SOP Instance UID is stored
in such a study, is refused (``HiddenStudy``) in the transaction that would store it; nothing is written or
labelled. A new study such a writer stores carries the labels it asked for, or, when it asked for none, its
groups, so that it sees what it stored.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcmnode.core.group_commit import GroupCommit, Take, Ticket
from dcmnode.core.parse import (
    META_HEAD,
    PREAMBLE,
    Expected,
    Parsed,
    lacks_preamble,
    parse_bytes,
    parse_file,
    parse_parts,
)
from dcmnode.errors import DcmnodeError, DuplicateInstance, HiddenStudy
from dcmnode.model import Outcome, Source, StoredInstance
from dcmnode.part10.walk import GROUP_LENGTH_VALUE, meta_group_length
from dcmnode.store import Store
from dcmnode.store import labels as study_labels
from dcmnode.store.index import now

log = logging.getLogger(__name__)


class Ingest:
    def __init__(self, store: Store, on_duplicate: str = "keep") -> None:
        self.store = store
        self.on_duplicate = on_duplicate
        self._group: GroupCommit[_Pending] = GroupCommit(self._commit_batch)

    @property
    def tmp_dir(self) -> Path:
        """Where transports spool incoming data, on the store's file system (so installing is a rename)."""
        return self.store.files.tmp_dir

    def discard_temp(self, path: Path) -> None:
        self.store.files.discard(path)

    def store_bytes(self, raw: bytes | memoryview, source: Source, expected: Expected | None = None) -> StoredInstance:
        """A complete Part 10 byte string (pynetdicom's ``event.encoded_dataset()``)."""
        parsed = parse_bytes(raw, expected)
        kept = self._kept_duplicate(parsed, source)
        if kept is not None:
            return kept
        temp = self.store.files.write_temp(raw)
        return self._commit(temp, parsed, source)

    def store_data_set(
        self, head: bytes, data_set: memoryview, source: Source, expected: Expected | None = None
    ) -> StoredInstance:
        """A C-STORE's data set as received (``data_set``, not copied) and the Part 10 head the SCP made for it
        (``head``: preamble, prefix, File Meta Information): checked where it lies, written with one ``writev``."""
        files, sop = self.store.files, expected.sop_instance if expected is not None else None
        looked = self.on_duplicate == "keep" and sop is not None  # the data set's SOP Instance UID must be it
        if looked and sop is not None and self.store.index.instance(sop) is not None:
            kept = self._kept_duplicate(parse_parts(head, data_set, expected), source)  # a re-send: not written
            if kept is not None:
                return kept
        # Written first, then checked: the disk writes it back while the data set is scanned, so that the fsync
        # before the COMMIT finds most of it done. Refused: the temp file goes. (Stored by another writer
        # meanwhile: the transaction finds it, ``_stage``.)
        temp = files.write_temp(head, data_set, sync=False)
        try:
            parsed = parse_parts(head, data_set, expected)
            kept = None if looked else self._kept_duplicate(parsed, source)
            if kept is not None:
                files.discard(temp)
                return kept
            files.sync_temp(temp)
        except BaseException:
            files.discard(temp)
            raise
        return self._commit(temp, parsed, source)

    def store_temp(self, temp: Path, source: Source, expected: Expected | None = None) -> StoredInstance:
        """A complete Part 10 file already spooled into the store's tmp folder (STOW parts). Takes ownership."""
        try:
            if lacks_preamble(temp):
                temp = self._add_preamble(temp)
            parsed = parse_file(temp, expected)
            self._correct_group_length(temp)
        except BaseException:
            self.store.files.discard(temp)
            raise
        return self._commit(temp, parsed, source)

    def store_path(self, path: Path, source: Source) -> StoredInstance:
        """A file outside the store (``dcmnode import``): checked in place, then copied in."""
        parsed = parse_file(path)
        kept = self._kept_duplicate(parsed, source)
        if kept is not None:
            return kept
        with self.store.files.temp() as (temp, out), open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1024 * 1024)
        try:
            self._correct_group_length(temp)
        except BaseException:
            self.store.files.discard(temp)
            raise
        return self._commit(temp, parsed, source)

    def remove(self, sop_uids: list[str]) -> int:
        """Delete stored instances: their rows (and series/study/patient rows left empty) in one transaction, then
        their files. Unknown UIDs are skipped. Used to take back a super-resolution job's partial output."""
        files, index = self.store.files, self.store.index
        paths = []
        with index.write() as conn:
            for sop in sop_uids:
                row = index.instance(sop, conn)
                if row is not None:
                    index.delete_instance(conn, sop)
                    paths.append(files.absolute(row["path"]))
        for path in paths:  # after COMMIT: a crash here leaves a file without a row, never a row without a file
            files.remove(path)
        if paths:
            log.info("removed %d instance(s)", len(paths))
        return len(paths)

    def _correct_group_length(self, temp: Path) -> None:
        """A File Meta Information Group Length (0002,0000) that is not the length of the group's elements is
        corrected in the temp file before it is stored: pydicom and the scan read on to the first element of
        another group, but strict readers (dcmtk) trust the length and mis-parse the file (PS3.10 §7.1: the value
        is the number of bytes following it up to the end of the File Meta). Four bytes rewritten in place: no
        offset the index keeps (the pixel data's) moves. A missing group length is left as it is."""
        with open(temp, "r+b") as fp:
            found = meta_group_length(fp.read(META_HEAD))
            if found is None or found[0] is None or found[0] == found[1]:
                return
            fp.seek(GROUP_LENGTH_VALUE)
            fp.write(found[1].to_bytes(4, "little"))
            fp.flush()
            if self.store.files.fsync:
                os.fsync(fp.fileno())
        log.info("corrected File Meta Information Group Length %d to %d", found[0], found[1])

    def _add_preamble(self, temp: Path) -> Path:
        with self.store.files.temp() as (fixed, out), open(temp, "rb") as src:
            out.write(PREAMBLE)
            shutil.copyfileobj(src, out, 1024 * 1024)
        self.store.files.discard(temp)
        return fixed

    def _kept_duplicate(self, parsed: Parsed, source: Source) -> StoredInstance | None:
        """Cheap early answer for on_duplicate=keep, so a re-sent instance is not even written to tmp."""
        if self.on_duplicate == "keep":
            existing = self.store.index.instance(parsed.key.sop)
            if existing is not None:
                self._check_writer(parsed, existing, source, None)
                return self._duplicate(parsed, source)
        return None

    def _check_writer(self, parsed: Parsed, existing: Any, source: Source, conn: sqlite3.Connection | None) -> bool:
        """HiddenStudy when a writer limited to groups would reach a stored study it does not see; else whether
        the instance's study is new (not stored yet)."""
        index = self.store.index
        new = not study_labels.study_exists(index, parsed.key.study, conn)
        if source.groups is None:
            return new
        groups = sorted(source.groups)
        reached = [] if new else [parsed.key.study]
        if existing is not None and existing["StudyInstanceUID"] != parsed.key.study:
            reached.append(str(existing["StudyInstanceUID"]))
        for study in reached:
            if study_labels.study_exists(index, study, conn) and not study_labels.visible(index, study, groups, conn):
                log.warning(
                    "sop=%s from=%s refused: study %s is not visible to the writer", parsed.key.sop, source, study
                )
                raise HiddenStudy("not authorized: the study is not visible to you", parsed.sop_class, parsed.key.sop)
        return new

    def _duplicate(self, parsed: Parsed, source: Source) -> StoredInstance:
        log.info("duplicate sop=%s from=%s: kept the stored copy", parsed.key.sop, source)
        return StoredInstance(parsed.key, parsed.sop_class, parsed.transfer_syntax, parsed.size, Outcome.DUPLICATE)

    def _commit(self, temp: Path, parsed: Parsed, source: Source) -> StoredInstance:
        """Index the instance and place its (fsynced) temp file, in a batch with the other instances waiting for
        the writer lock at the same moment (``core.group_commit``); returns once the batch's COMMIT is durable."""
        pending = _Pending(temp, parsed, source, self.store.files.path_for(parsed.key))
        ticket = self._group.submit(pending)
        if ticket.error is not None:
            raise ticket.error
        return self._finish(pending)

    def _commit_batch(self, take: Take[_Pending]) -> None:
        """One transaction for the instances queued by the time the writer lock is ours: each in its own savepoint
        (one that fails is rolled back alone, with its ticket's error), then one fsync of each folder whose
        entries changed, then COMMIT. The folders are synced before the COMMIT, so that a committed row never
        points at a rename a power cut could still undo; with ``store.fsync`` the COMMIT itself is durable too
        (SQLite synchronous FULL, ``store.index``).

        Before the first rename, the batch's places are noted in ``deleting/`` (``Files.note_places``, in the form of
        a delete's note): a process killed between its renames and its COMMIT leaves files no row holds, and the
        next ``Store.open`` removes them (``finish_deletes``), so that a crash leaves neither a row without its file
        nor a file without its row. The note is not fsynced: a kill leaves the page cache whole, and a power cut
        before the folders' fsync undoes the renames with it."""
        files, index = self.store.files, self.store.index
        batch: list[Ticket[_Pending]] = []
        try:
            with index.write(then=files.places_done) as conn:  # the note is emptied after COMMIT, under the lock
                batch += take()
                files.note_places([files.relative(t.item.final) for t in batch])
                try:
                    for ticket in batch:
                        try:
                            with index.savepoint(conn):
                                self._stage(conn, ticket.item)
                        except Exception as err:  # this instance alone: rolled back, its temp file (and file) gone
                            self._undo(ticket.item)
                            ticket.error = err
                    files.sync_dirs(sorted({d for t in batch if t.error is None for d in t.item.changed}))
                except BaseException:
                    self._undo_batch(batch)
                    files.places_done()
                    raise
        except BaseException:
            self._undo_batch(batch)  # the COMMIT failed (what was undone already is not undone again)
            raise

    def _undo_batch(self, batch: list[Ticket[_Pending]]) -> None:
        for ticket in batch:
            if ticket.error is None and not ticket.item.undone:
                self._undo(ticket.item)

    def _stage(self, conn: sqlite3.Connection, pending: _Pending) -> None:
        """Inside the batch's transaction: the duplicate policy, the rows, the labels, and the file into place."""
        files, index, parsed, source = self.store.files, self.store.index, pending.parsed, pending.source
        try:
            pending.existing = existing = index.instance(parsed.key.sop, conn)
            new_study = self._check_writer(parsed, existing, source, conn)
            kept_labels: list[str] = []
            if existing is not None:
                if self.on_duplicate == "keep":
                    files.discard(pending.temp)
                    pending.duplicate = True
                    return
                if self.on_duplicate == "reject":
                    raise DuplicateInstance(
                        f"SOP Instance {parsed.key.sop} is already stored", parsed.sop_class, parsed.key.sop
                    )
                if existing["StudyInstanceUID"] == parsed.key.study:  # its row may go with the instance
                    kept_labels = study_labels.of(index, parsed.key.study, conn)
                index.delete_instance(conn, parsed.key.sop)
            record = parsed.record
            record.instance.update(
                path=files.relative(pending.final),
                size=parsed.size,
                source=str(source.kind),
                source_ae=source.ae_title,
                source_address=source.address,
                received_at=now(),
            )
            if source.ae_title:  # the first calling AE of a series is kept; others do not blank it
                record.series["source_ae"] = source.ae_title
            index.upsert_instance(conn, record)
            added = list(source.labels)
            if new_study and not added and source.groups is not None:
                added = sorted(source.groups)  # a restricted writer sees the new study it stored
            if added or kept_labels:
                study_labels.add(conn, parsed.key.study, [*kept_labels, *added])
            pending.changed = files.install(pending.temp, parsed.key)
            pending.placed = True
        except DcmnodeError as err:
            err.sop_class, err.sop_instance = parsed.sop_class, parsed.key.sop
            raise

    def _undo(self, pending: _Pending) -> None:
        pending.undone = True
        self.store.files.discard(pending.temp)
        if pending.placed and pending.existing is None:
            self.store.files.remove(pending.final)  # not committed after the rename: never a file without a row

    def _finish(self, pending: _Pending) -> StoredInstance:
        """After the COMMIT, in the writer's own thread: the replaced copy's old file goes, the outcome."""
        files, parsed, existing, source = self.store.files, pending.parsed, pending.existing, pending.source
        if pending.duplicate:
            return self._duplicate(parsed, source)
        if existing is not None and files.absolute(existing["path"]) != pending.final:
            files.remove(files.absolute(existing["path"]))
        outcome = Outcome.REPLACED if existing is not None else Outcome.STORED
        stored = StoredInstance(parsed.key, parsed.sop_class, parsed.transfer_syntax, parsed.size, outcome)
        log.info(
            "%s sop=%s series=%s from=%s bytes=%d", outcome, parsed.key.sop, parsed.key.series, source, parsed.size
        )
        return stored


@dataclass(slots=True)
class _Pending:
    """One instance on its way into the index: a ticket of the group commit, and what its transaction did."""

    temp: Path
    parsed: Parsed
    source: Source
    final: Path
    existing: sqlite3.Row | None = None  # the row it replaces (or duplicates)
    placed: bool = False  # its file was renamed into place
    duplicate: bool = False  # on_duplicate = keep found it stored: nothing written
    changed: list[Path] = field(default_factory=list)  # folders whose entries changed (synced before COMMIT)
    undone: bool = False  # its temp file (and placed file) taken back
