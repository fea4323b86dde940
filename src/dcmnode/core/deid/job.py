"""One de-identification job: the source instances (stored studies or series the principal sees), the profile, and
one output — ``store`` (a new study in this node through the one ingest path; the source untouched), ``zip`` (an
archive built on disk in the store's tmp folder) or ``send`` (C-STORE to a declared peer through the ``Sender``
the composition gives, as the SR worker's).

Instances are read, de-identified and written one at a time (memory flat in the series size; ``send`` writes
batches of ``SEND_BATCH`` temp files); a cancel is seen between instances. An instance the profile refuses
(``DeidentificationRefused``: burned-in text without Clean Pixel Data, ...) or that cannot be read is listed with
its reason and the job goes on. States: queued → running → done | failed | cancelled. ``done``: the job ran to
its end (some instances may have failed: ``failures``); ``failed``: the output could not be written, or every
instance failed; ``cancelled``: a store job's new instances are taken back, a zip job's archive removed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dcmnode.config import Peer, Settings
from dcmnode.core import query as q
from dcmnode.core.audit import Actor, Audit, Transfers
from dcmnode.core.catalog import Catalog
from dcmnode.core.deid.keys import check_project
from dcmnode.core.ingest import Ingest
from dcmnode.core.jobs.worker import Sender
from dcmnode.core.retrieve import StoredFile
from dcmnode.deid.engine import Deidentifier, Profile
from dcmnode.deid.keys import ProjectKey
from dcmnode.deid.options import Option, parse_options
from dcmnode.deid.pixels import PixelMask
from dcmnode.errors import AuditUnavailable, Cancelled, DcmnodeError, InvalidRequest, NotFound
from dcmnode.model import UID_PATTERN, Outcome, Source, SourceKind
from dcmnode.store.index import now

log = logging.getLogger(__name__)


def pixel_masks(settings: Settings) -> tuple[PixelMask, ...]:
    """The ``[[deid.pixel_masks]]`` rules as the engine's masks (Clean Pixel Data fills them on every frame)."""
    return tuple(
        PixelMask(rule.manufacturer, rule.model, rule.rows, rule.columns, rule.rectangles)
        for rule in settings.deid.pixel_masks
    )


QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)
OUTPUTS = ("store", "zip", "send")
MAX_UIDS = 1000  # studies or series named in one request
MAX_LO = 64  # Patient ID (LO) and each Person Name component group (PS3.5 6.2)
MAX_FAILURES_SHOWN = 1000
SEND_BATCH = 64
FIELDS = {"studies", "series", "options", "project", "patient_id", "patient_name", "output", "send_to"}


def _check_peer_profile(peer: Peer, project: str, options: frozenset[Option]) -> None:
    """A peer declared with ``deidentify`` receives only its own profile's output: a job sending to it uses that
    project's key and keeps nothing the peer's profile does not (no ``retain-*`` option beyond the peer's)."""
    if not peer.deidentify:
        return
    declared = parse_options(list(peer.deidentify))
    extra = sorted(o.value for o in options - declared if o.value.startswith("retain-"))
    if project != peer.deidentify_project:
        raise InvalidRequest(
            f"send_to {peer.ae_title}: that peer receives project {peer.deidentify_project!r} only ([peers] deidentify)"
        )
    if extra:
        raise InvalidRequest(f"send_to {peer.ae_title}: its profile does not retain {', '.join(extra)}")


def _uids(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_UIDS:
        raise InvalidRequest(f"{name}: a list of 1 to {MAX_UIDS} UIDs")
    for uid in value:
        if not isinstance(uid, str) or len(uid) > 64 or not UID_PATTERN.match(uid):
            raise InvalidRequest(f"{name}: {str(uid)[:80]!r} is not a UID")
    return tuple(dict.fromkeys(value))


def _text(name: str, value: object, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_LO * (3 if what == "PN" else 1):
        raise InvalidRequest(f"{name}: text of at most {MAX_LO} characters")
    if any(c in value for c in "\\\x00\r\n") or (what == "PN" and any(len(g) > MAX_LO for g in value.split("="))):
        raise InvalidRequest(f"{name}: one value, without backslash or control characters")
    return value


@dataclass(frozen=True, slots=True)
class DeidRequest:
    """What ``POST /api/deidentify`` and ``dcmnode deidentify`` ask for (field names as the API's)."""

    project: str
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    options: frozenset[Option] = frozenset()
    patient_id: str | None = None
    patient_name: str | None = None
    output: str = "store"
    send_to: str = ""

    @classmethod
    def parse(cls, body: object, peers: Mapping[str, Peer]) -> DeidRequest:
        """The JSON body, checked: InvalidRequest (400) with the reason for anything wrong."""
        if not isinstance(body, dict):
            raise InvalidRequest('the body is a JSON object: {"studies": [...], "project": "...", ...}')
        unknown = set(body) - FIELDS
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        if ("studies" in body) == ("series" in body):
            raise InvalidRequest("name the source with one of studies or series (a list of UIDs)")
        studies = _uids("studies", body["studies"]) if "studies" in body else ()
        series = _uids("series", body["series"]) if "series" in body else ()
        names = body.get("options", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidRequest("options: a list of option names")
        output = body.get("output", "store")
        if output not in OUTPUTS:
            raise InvalidRequest(f"output {str(output)[:40]!r}: one of {', '.join(OUTPUTS)}")
        send_to = body.get("send_to") or ""
        if output == "send":
            if not isinstance(send_to, str) or send_to not in peers:
                raise InvalidRequest(f"send_to {str(send_to)[:40]!r}: the AE title of a peer declared under [peers]")
        elif send_to:
            raise InvalidRequest('send_to goes with output "send"')
        if "project" not in body:
            raise InvalidRequest("project: the project whose key de-identifies (letters, digits, -_.)")
        options = parse_options(names)
        if output == "send":
            _check_peer_profile(peers[send_to], str(body["project"]), options)
        return cls(
            project=check_project(body["project"]),
            studies=studies,
            series=series,
            options=options,
            patient_id=_text("patient_id", body.get("patient_id"), "LO"),
            patient_name=_text("patient_name", body.get("patient_name"), "PN"),
            output=output,
            send_to=send_to,
        )

    def option_names(self) -> list[str]:
        return sorted(o.value for o in self.options)


def resolve(catalog: Catalog, request: DeidRequest, groups: frozenset[str] | None) -> list[StoredFile]:
    """The stored instances the request names, of the studies ``groups`` sees; NotFound names the first study or
    series that is not stored (or not visible: answered alike)."""
    level, key, uids = (
        (q.Level.STUDY, "StudyInstanceUID", request.studies)
        if request.studies
        else (q.Level.SERIES, "SeriesInstanceUID", request.series)
    )
    files: dict[str, StoredFile] = {}
    for uid in uids:
        found = catalog.select({key: uid}, level, groups)
        if not found:
            raise NotFound(f"{'study' if request.studies else 'series'} {uid} is not stored here")
        for f in found:
            files.setdefault(f.sop, f)
    return list(files.values())


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


class _Output:
    """Where de-identified instances go. ``add`` takes one (its failure reasons come back later for ``send``)."""

    def add(self, ds: Dataset, raw: bytes, source: StoredFile) -> None: ...
    def flush(self) -> list[tuple[StoredFile, str]]:
        return []

    def finish(self) -> None: ...
    def abort(self) -> None: ...


class _Store(_Output):
    def __init__(self, ingest: Ingest, source: Source, transfers: Transfers | None) -> None:
        self.ingest, self.source, self.transfers = ingest, source, transfers
        self.stored: list[str] = []  # new instances (not duplicates of an earlier run): taken back on cancel

    def add(self, ds: Dataset, raw: bytes, source: StoredFile) -> None:
        stored = self.ingest.store_bytes(raw, self.source)
        if stored.outcome == Outcome.STORED:
            self.stored.append(stored.key.sop)
        if self.transfers is not None:
            self.transfers.add(stored)

    def finish(self) -> None:
        if self.transfers is not None:
            with contextlib.suppress(AuditUnavailable):
                self.transfers.close()

    def abort(self) -> None:
        self.ingest.remove(self.stored)
        self.stored = []
        self.finish()


class _Zip(_Output):
    def __init__(self, tmp_dir: Path, job_id: int) -> None:
        self.path = tmp_dir / f"deidentify-{job_id}.zip"
        self.partial = self.path.with_suffix(".zip.part")
        self.zip = zipfile.ZipFile(self.partial, "w", zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=1)
        self.count = 0

    def add(self, ds: Dataset, raw: bytes, source: StoredFile) -> None:
        self.count += 1
        parts = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if all(UID_PATTERN.match(p) for p in parts):  # new UIDs make the member names (never source identity)
            name = f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"
        else:
            name = f"{self.count:06d}.dcm"
        self.zip.writestr(name, raw)

    def finish(self) -> None:
        self.zip.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.zip.close()
        for path in (self.partial, self.path):
            path.unlink(missing_ok=True)


class _Send(_Output):
    def __init__(self, ingest: Ingest, send: Sender, peer: Peer) -> None:
        self.ingest, self.send, self.peer = ingest, send, peer
        self.batch: list[tuple[StoredFile, StoredFile]] = []  # (temp file of the output, its source)

    def add(self, ds: Dataset, raw: bytes, source: StoredFile) -> None:
        temp = self.ingest.store.files.write_temp(raw)
        out = StoredFile(
            study=str(ds.StudyInstanceUID),
            series=str(ds.SeriesInstanceUID),
            sop=str(ds.SOPInstanceUID),
            sop_class=str(ds.file_meta.MediaStorageSOPClassUID),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            path=temp,
            size=len(raw),
        )
        self.batch.append((out, source))

    def flush(self) -> list[tuple[StoredFile, str]]:
        batch, self.batch = self.batch, []
        if not batch:
            return []
        try:
            outcomes = self.send([out for out, _ in batch], self.peer)
        finally:
            for out, _ in batch:
                self.ingest.discard_temp(out.path)
        failed = []
        for (_, source), sent in zip(batch, outcomes, strict=False):
            if sent.status != "sent":
                shown = sent.to_json()
                failed.append((source, f"not sent to {self.peer.ae_title}: {shown.get('reason') or sent.status}"))
        return failed

    def abort(self) -> None:
        for out, _ in self.batch:
            self.ingest.discard_temp(out.path)
        self.batch = []


Progress = Callable[["DeidJob"], None]


class DeidJob:
    """One job's state and counters, read by request threads while its thread (or the CLI) runs it."""

    def __init__(
        self,
        job_id: int,
        request: DeidRequest,
        files: Sequence[StoredFile],
        key: ProjectKey,
        ingest: Ingest,
        audit: Audit | None = None,
        who: Actor | None = None,
        owner: str = "",
        groups: frozenset[str] | None = None,
        send: Sender | None = None,
        peer: Peer | None = None,
        progress: Progress | None = None,
        masks: tuple[PixelMask, ...] = (),
    ) -> None:
        self.id = job_id
        self.request, self.files, self.ingest = request, list(files), ingest
        self.audit, self.who, self.owner, self.groups = audit, who or Actor.local(), owner, groups
        self.send, self.peer, self._progress = send, peer, progress
        profile = Profile(
            options=request.options,
            patient_id=request.patient_id,
            patient_name=request.patient_name,
            pixel_masks=masks,
        )
        self.engine = Deidentifier(key, profile)
        self.state = QUEUED
        self.done = 0
        self.failures: list[dict[str, str]] = []
        self.studies: dict[str, str] = {}
        self.error: str | None = None
        self.archive: Path | None = None
        self.created_at = now()
        self.finished_at: str | None = None
        self.ended_at: float | None = None  # monotonic
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    # -- control ----------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop between instances (a queued job never starts)."""
        self._cancel.set()
        with self._lock:
            if self.state == QUEUED:
                self._end(CANCELLED)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def _end(self, state: str) -> None:  # under the lock
        self.state = state
        self.finished_at = now()
        self.ended_at = time.monotonic()

    def discard(self) -> None:
        """The job leaves the registry: its archive goes with it."""
        if self.archive is not None:
            self.archive.unlink(missing_ok=True)

    # -- the work ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        with self._lock:
            if self.state != QUEUED:
                return
            self.state = RUNNING
        log.info(
            "deidentify %d: %d instance(s), output %s, project %s, options %s",
            self.id, len(self.files), self.request.output, self.request.project,
            ",".join(self.request.option_names()) or "basic",
        )  # fmt: skip
        try:
            output = self._output()
        except (DcmnodeError, OSError) as err:  # no output could be opened (disk, a peer this process lacks)
            self.error = err.reason if isinstance(err, DcmnodeError) else f"cannot open the output: {err}"
            log.warning("deidentify %d failed: %s", self.id, self.error)
            self._finish(FAILED)
            return
        try:
            for item in self.files:
                if self._cancel.is_set():
                    raise Cancelled(f"deidentify {self.id} cancelled")
                self._one(item, output)
                if len(getattr(output, "batch", ())) >= SEND_BATCH:
                    self._failed_many(output.flush())
            self._failed_many(output.flush())
            if self._cancel.is_set():
                raise Cancelled(f"deidentify {self.id} cancelled")
            output.finish()
        except Cancelled:
            output.abort()
            self._finish(CANCELLED)
            return
        except (DcmnodeError, OSError) as err:
            output.abort()
            self.error = err.reason if isinstance(err, DcmnodeError) else f"cannot write the output: {err}"
            log.warning("deidentify %d failed: %s", self.id, self.error)
            self._finish(FAILED)
            return
        except Exception:
            log.exception("deidentify %d failed", self.id)
            output.abort()
            self.error = "internal error; see the node's log"
            self._finish(FAILED)
            return
        if isinstance(output, _Zip):
            self.archive = output.path
        if self.files and not self.done:
            self.error = "no instance could be de-identified (see failures)"
        self._finish(FAILED if self.error else DONE)

    def _output(self) -> _Output:
        out = self.request.output
        if out == "zip":
            return _Zip(self.ingest.tmp_dir, self.id)
        if out == "send":
            if self.send is None or self.peer is None:
                raise InvalidRequest("this process cannot send (no DIMSE sender)")
            return _Send(self.ingest, self.send, self.peer)
        writer = q.study_filter(self.groups)  # a new study carries the principal's groups, as STOW does
        source = Source(SourceKind.DERIVED, groups=writer)
        transfers = self.audit.transfer_in(self.who, "deidentify") if self.audit is not None else None
        return _Store(self.ingest, source, transfers)

    def _one(self, item: StoredFile, output: _Output) -> None:
        try:
            ds = pydicom.dcmread(item.path)
            outcome = self.engine.apply(ds)
            del ds
            new = outcome.dataset
            raw = encode(new)
            output.add(new, raw, item)
        except (DcmnodeError, OSError) as err:
            if isinstance(err, OSError) and isinstance(output, _Zip):
                raise  # the archive cannot be written: the job fails
            self._failed(item, err.reason if isinstance(err, DcmnodeError) else f"cannot read or write: {err}")
            return
        except Exception as exc:  # pydicom's reasons for a file it cannot read or write
            log.warning("deidentify %d: instance %s: %s: %s", self.id, item.sop, type(exc).__name__, exc)
            self._failed(item, f"cannot de-identify: {type(exc).__name__}")
            return
        with self._lock:
            self.done += 1
            self.studies.setdefault(item.study, str(new.StudyInstanceUID))
        self._notify()

    def _failed(self, item: StoredFile, reason: str) -> None:
        with self._lock:
            self.failures.append({"study": item.study, "series": item.series, "sop": item.sop, "reason": reason})
        self._notify()

    def _failed_many(self, failed: list[tuple[StoredFile, str]]) -> None:
        for item, reason in failed:
            with self._lock:
                self.done -= 1
            self._failed(item, reason)

    def _notify(self) -> None:
        if self._progress is not None:
            self._progress(self)

    def _finish(self, state: str) -> None:
        with self._lock:
            self._end(state)
            done, failed = self.done, len(self.failures)
        log.info("deidentify %d %s: %d done, %d failed", self.id, state, done, failed)
        self._audit(state, done, failed)

    def _audit(self, state: str, done: int, failed: int) -> None:
        """One record per job: 110106 Export for zip and send (the data leaves the node), 110103 Instances Accessed
        for store (the new study's arrival is its 110104 record). Outcome 0 all done, 4 some failed or a cancel,
        8 nothing done."""
        if self.audit is None:
            return
        outcome = 0 if state == DONE and not failed else (8 if not done else 4)
        sources = sorted({f.study for f in self.files})
        detail: dict[str, Any] = {
            "deidentify": self.id,
            "output": self.request.output,
            "project": self.request.project,
            "options": self.request.option_names(),
            "instances": done,
            "failed": failed,
            "state": state,
        }
        if self.peer is not None:
            detail["destination"] = self.peer.ae_title
        with contextlib.suppress(AuditUnavailable):
            if self.request.output == "store":
                self.audit.accessed(self.who, sources, outcome, detail)
            else:
                self.audit.export(self.who, sources, outcome, detail)

    # -- reading ----------------------------------------------------------------------------------------------
    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            total = len(self.files)
            handled = self.done + len(self.failures)
            return {
                "id": self.id,
                "status": self.state,
                "output": self.request.output,
                "project": self.request.project,
                "options": self.request.option_names(),
                "send_to": self.request.send_to or None,
                "progress": 1.0 if self.state == DONE else (handled / total if total else 0.0),
                "counts": {"total": total, "done": self.done, "failed": len(self.failures)},
                "failures": self.failures[:MAX_FAILURES_SHOWN],
                "studies": dict(self.studies) if self.state == DONE else {},
                "archive": f"/api/deidentify/{self.id}/archive" if self.archive is not None else None,
                "error": self.error,
                "edition": self.engine.edition,
                "created_at": self.created_at,
                "finished_at": self.finished_at,
            }
