"""The audit trail: one record per event, after the DICOM audit message model (PS3.15 A.5), as JSON Lines.

Records are appended to ``data/audit/YYYY-MM-DD.jsonl`` (UTC date of the record; folder 0700, files 0600): one
line per record, written with one ``write`` on a file opened ``O_APPEND`` (so the processes of ``dcmnode serve``
append to the same file without tearing each other's lines), under a lock, unbuffered. The file of the day stays
open (no open per record). With ``audit.syslog`` each record is also sent as one RFC 5424 message (below).

A record (keys are short forms of the A.5 XML elements)::

    {"time": "2026-12-01T22:10:00.123456Z",                 EventDateTime, UTC
     "event": {"code": "110112", "scheme": "DCM", "meaning": "Query"},   EventID
     "type": {...},                                          EventTypeCode, where the event has one
     "action": "E",                                          EventActionCode C/R/U/D/E
     "outcome": 0,                                           EventOutcomeIndicator 0, 4, 8, 12
     "participants": [                                       ActiveParticipant
        {"id": "anonymous", "kind": "anonymous", "address": "127.0.0.1", "requestor": true, "role": "110153"},
        {"id": "DCMNODE", "kind": "node", "process": "1234", "address": "...", "requestor": false,
         "role": "110152"}],
     "objects": [                                            ParticipantObjectIdentification
        {"type": 2, "role": 3, "id_type": "110180", "id": "1.2.3"},        Study Instance UID
        {"type": 1, "role": 1, "id_type": "2", "id": "PID-1"}],            Patient ID (never the name)
     "query": "UGF0aWVudElEPTEyMyZNb2RhbGl0eT1DVA==",        ParticipantObjectQuery (base64), queries only
     "detail": {...}}                                        ParticipantObjectDetail-like extras (counts, reasons)

The query keys are the QIDO-RS query string or the C-FIND identifier as ``keyword=value&...``, with every
person-name (PN) value left empty. No record holds a patient's name.

Events and what emits them:

==========  ===================================  ======  ==================================================
code        meaning                              action  emitted for
==========  ===================================  ======  ==================================================
110100      Application Activity                 E       ``dcmnode serve`` start (type 110120), stop (110121)
110114      User Authentication                  E       ``authentication()``: HTTP refusals, sign-ins,
                                                         DIMSE User Identity (type 110122 login)
110113      Security Alert                       E       ``security_alert()``: refused scopes, rejected
                                                         associations, 0x0124 refusals
110104      DICOM Instances Transferred          C       C-STORE in: one record per association and study;
                                                         STOW-RS: per request and study; imports: per job
                                                         and study (HTTP upload or ``dcmnode import``)
110104      DICOM Instances Transferred          R       WADO-RS retrieve of a study/series/instance as
                                                         DICOM, WADO-URI with contentType application/dicom:
                                                         per request; C-MOVE: per request and destination;
                                                         C-GET: per request
110112      Query                                E       QIDO-RS (per request), C-FIND (per request)
110103      DICOM Instances Accessed             R       views that send no DICOM instance: metadata,
                                                         frames, bulkdata, rendered, thumbnails, WADO-URI
                                                         rendered (per request)
110106      Export                               R       series export (ZIP, NIfTI) over HTTP or the CLI
110105      DICOM Study Deleted                  D       ``study_deleted()`` (``core/deletion.py``)
==========  ===================================  ======  ==================================================

Outcomes: 0 success; 4 minor failure (nothing found, a client error, a cancel, some instances of a transfer
refused); 8 serious failure (the request failed, every instance refused); 12 major failure (not used here).
Answers 401/403 are recorded by ``dicomweb/access.py`` (110114/110113), not again as reads.

A write that fails (the folder read-only, the disk full) is an error line in the log and adds to ``failures``
(``/api/status`` ``audit_failures``, this process's count); with ``audit.fail_closed`` the request it belongs to
is refused: ``AuditUnavailable`` (HTTP 503; DIMSE 0xA700 C-STORE/C-FIND, 0xA702 C-MOVE/C-GET). DIMSE checks
before it works (``guard``): an association's C-STORE record is written when it closes, so in fail-closed mode a
C-STORE is refused once a write has failed, until a probe of the folder succeeds again.

Syslog (``audit.syslog = "udp://host:port"`` or ``"tcp://host:port"``): RFC 5424 with PRI ``<85>`` (facility 10
authpriv x 8 + severity 5 notice; ``<84>`` warning when the outcome is not 0), VERSION 1, the record's time,
HOSTNAME, APP-NAME ``dcmnode``, PROCID the process id, MSGID ``DICOM+JSON`` (not ``DICOM+RFC3881``: the message
is this JSON record, not the RFC 3881 XML a receiver keyed on that MSGID would expect), no structured data, and
the JSON record (ASCII) as MSG. UDP sends one datagram per record (RFC 5426); TCP frames each with octet counting
(RFC 6587 ``LEN SP MSG``) from one sender thread fed by a bounded queue (a dead receiver never holds a request
up) and reconnects once when the connection broke. A syslog failure is logged and counted
(``syslog_failures``), never fails a request.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import getpass
import json
import logging
import os
import queue
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from dcmnode.config import AuditSettings
from dcmnode.core.access import Kind, Principal
from dcmnode.errors import AuditUnavailable
from dcmnode.model import StoredInstance

log = logging.getLogger(__name__)

SCHEME = "DCM"


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    meaning: str

    def json(self) -> dict[str, str]:
        return {"code": self.code, "scheme": SCHEME, "meaning": self.meaning}


APPLICATION_ACTIVITY = Code("110100", "Application Activity")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DICOM Study Deleted")
EXPORT = Code("110106", "Export")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
EVENTS = {
    c.code: c
    for c in (
        APPLICATION_ACTIVITY,
        INSTANCES_ACCESSED,
        INSTANCES_TRANSFERRED,
        STUDY_DELETED,
        EXPORT,
        QUERY,
        SECURITY_ALERT,
        USER_AUTHENTICATION,
    )
}

APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")

# EventActionCode
CREATE, READ, UPDATE, DELETE, EXECUTE = "C", "R", "U", "D", "E"
# EventOutcomeIndicator
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12
# RoleIDCode of an active participant (DCM)
APPLICATION, APPLICATION_LAUNCHER, DESTINATION, SOURCE = "110150", "110151", "110152", "110153"
STUDY_UID_TYPE = "110180"  # ParticipantObjectIDTypeCode: Study Instance UID (DCM)
PATIENT_NUMBER_TYPE = "2"  # ParticipantObjectIDTypeCode: Patient Number (RFC 3881)
SOP_CLASS_TYPE = "110181"  # ParticipantObjectIDTypeCode: SOP Class UID (DCM)
PATIENT_CACHE = 4096
SYSLOG_MSGID = "DICOM+JSON"
SYSLOG_QUEUE = 10000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: a principal's name and kind (token, user, OIDC subject, DIMSE peer AE, anonymous, a local
    command-line user) with its network address and, for a DIMSE association over TLS, ``transport`` ("TLS",
    or "TLS CN=<the client certificate's common name>")."""

    name: str
    kind: str
    address: str = ""
    transport: str = ""

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        return cls(principal.name, str(principal.kind), principal.address)

    @classmethod
    def peer(cls, ae_title: str, address: str = "") -> Actor:
        return cls(ae_title, str(Kind.PEER), address)

    @classmethod
    def local(cls) -> Actor:
        """The operating-system user running a command (``dcmnode import``, ``dcmnode export``)."""
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = str(os.getuid())
        return cls(name, "local", "")

    def participant(self, role: str | None, requestor: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.name, "kind": self.kind, "requestor": requestor}
        if self.address:
            out["address"] = self.address
        if self.transport:
            out["transport"] = self.transport
        if role:
            out["role"] = role
        return out


def study_object(study: str) -> dict[str, Any]:
    return {"type": 2, "role": 3, "id_type": STUDY_UID_TYPE, "id": study}


def patient_object(patient_id: str) -> dict[str, Any]:
    return {"type": 1, "role": 1, "id_type": PATIENT_NUMBER_TYPE, "id": patient_id}


def query_keys(pairs: Iterable[tuple[str, str]], is_person_name: Callable[[str], bool]) -> str:
    """The query keys as base64 of ``key=value&...``, person-name values emptied (``is_person_name(key)``)."""
    kept = [(k, "" if is_person_name(k) else v) for k, v in pairs]
    return base64.b64encode(urlencode(kept).encode()).decode("ascii")


def query_string_keys(query_string: str, is_person_name: Callable[[str], bool]) -> str:
    return query_keys(parse_qsl(query_string, keep_blank_values=True), is_person_name)


class Syslog:
    """RFC 5424 messages over UDP (RFC 5426) or TCP (RFC 6587 octet counting). TCP messages go through a queue
    to one sender thread, so that a slow or dead receiver never holds up a request (a full queue drops the
    message and counts it); UDP datagrams are sent in the caller's thread."""

    def __init__(self, url: str, failed: Callable[[str], None] | None = None) -> None:
        scheme, _, rest = url.partition("://")
        host, _, port = rest.rpartition(":")
        self.tcp = scheme == "tcp"
        self.address = (host.strip("[]"), int(port))
        self.hostname = socket.gethostname() or "-"
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failed = failed or (lambda reason: None)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=SYSLOG_QUEUE)
        self._thread: threading.Thread | None = None

    def message(self, record: Mapping[str, Any], line: str) -> bytes:
        severity = 5 if record.get("outcome", 0) == 0 else 4
        pri = 10 * 8 + severity
        header = f"<{pri}>1 {record['time']} {self.hostname[:255]} dcmnode {os.getpid()} {SYSLOG_MSGID} - "
        return (header + line).encode("ascii")

    def send(self, data: bytes) -> None:
        if self.tcp:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._drain, name="audit-syslog", daemon=True)
                    self._thread.start()
            try:
                self._queue.put_nowait(data)
            except queue.Full:
                raise OSError("the syslog queue is full (the receiver does not keep up)") from None
            return
        with self._lock:
            if self._sock is None:
                family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.sendto(data, self.address)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                self._send_tcp(data)
            except OSError as exc:
                self._failed(str(exc))

    def _send_tcp(self, data: bytes) -> None:
        with self._lock:
            framed = b"%d " % len(data) + data
            for attempt in (1, 2):
                try:
                    if self._sock is None:
                        self._sock = socket.create_connection(self.address, timeout=5)
                    self._sock.sendall(framed)
                    return
                except OSError:
                    self._close()
                    if attempt == 2:
                        raise

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def close(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread.join(5)
        with self._lock:
            self._close()


class Audit:
    """The audit trail of one process. Thread-safe; ``record`` is the one writer, the other methods build
    records for the events the adapters see."""

    def __init__(
        self,
        folder: Path,
        settings: AuditSettings,
        ae_title: str,
        patient_of: Callable[[str], str] | None = None,
    ) -> None:
        self.folder = folder
        self.settings = settings
        self.enabled = settings.enabled
        self.fail_closed = settings.fail_closed and settings.enabled
        self.ae_title = ae_title
        self._patient_of = patient_of
        self._patients: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day: str | None = None
        self._failing = False
        self.failures = 0  # records that could not be written (this process)
        self.syslog_failures = 0
        self.syslog = Syslog(settings.syslog, self._syslog_failed) if settings.syslog and settings.enabled else None
        self._address = ""

    # -- writing ---------------------------------------------------------------------------------------------------
    def record(
        self,
        event: Code,
        action: str,
        outcome: int,
        participants: list[dict[str, Any]],
        objects: list[dict[str, Any]] | None = None,
        *,
        event_type: Code | None = None,
        query: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Write one record. False when it could not be written (logged, counted); with ``fail_closed``
        ``AuditUnavailable`` instead."""
        if not self.enabled:
            return True
        when = datetime.now(UTC)
        record: dict[str, Any] = {"time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "event": event.json()}
        if event_type is not None:
            record["type"] = event_type.json()
        record["action"] = action
        record["outcome"] = outcome
        record["participants"] = [*participants, self._node(requestor=not any(p["requestor"] for p in participants))]
        record["objects"] = objects or []
        if query is not None:
            record["query"] = query
        if detail:
            record["detail"] = dict(detail)
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        written = self._append(when.strftime("%Y-%m-%d"), (line + "\n").encode("ascii"))
        if self.syslog is not None:
            try:
                self.syslog.send(self.syslog.message(record, line))
            except OSError as exc:
                self._syslog_failed(str(exc))
        if not written and self.fail_closed:
            raise AuditUnavailable("the audit trail cannot be written; see the node's log")
        return written

    def _syslog_failed(self, reason: str) -> None:
        with self._lock:
            self.syslog_failures += 1
        if self.syslog is not None:
            log.error("audit: syslog to %s:%d failed: %s", *self.syslog.address, reason)

    def _append(self, day: str, data: bytes) -> bool:
        with self._lock:
            try:
                fd = self._open(day)
                done = os.write(fd, data)
                if done != len(data):  # a regular file takes all or fails; a short write is a full disk
                    raise OSError(errno.ENOSPC, f"short write ({done} of {len(data)} bytes)")
            except OSError as exc:
                self.failures += 1
                self._failing = True
                self._close_fd()
                log.error("audit: cannot write %s: %s (%d failed so far)", self.folder / f"{day}.jsonl", exc,
                          self.failures)  # fmt: skip
                return False
            self._failing = False
            return True

    def _open(self, day: str) -> int:  # under the lock
        if self._fd is not None and self._day == day:
            return self._fd
        self._close_fd()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd, self._day = fd, day
        return fd

    def _close_fd(self) -> None:  # under the lock
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._day = None

    def guard(self) -> None:
        """With ``fail_closed``: refuse (``AuditUnavailable``) while the trail cannot be written. After a failed
        write, each call probes the folder (opens the day's file) until that works again."""
        if not self.fail_closed or not self._failing:
            return
        with self._lock:
            try:
                self._open(datetime.now(UTC).strftime("%Y-%m-%d"))
                self._failing = False
            except OSError:
                raise AuditUnavailable("the audit trail cannot be written; see the node's log") from None

    def close(self) -> None:
        with self._lock:
            self._close_fd()
        if self.syslog is not None:
            self.syslog.close()

    def _node(self, requestor: bool) -> dict[str, Any]:
        node: dict[str, Any] = {"id": self.ae_title, "kind": "node", "process": str(os.getpid()),
                                "requestor": requestor}  # fmt: skip
        if self._address:
            node["address"] = self._address
        return node

    # -- patients --------------------------------------------------------------------------------------------------
    def patient_cached(self, study: str) -> str | None:
        """The Patient ID of a study when it is known without a query (None: ask ``patient``)."""
        with self._lock:
            found = self._patients.get(study)
            if found is not None:
                self._patients.move_to_end(study)
            return found

    def patient(self, study: str) -> str:
        """The Patient ID of a stored study ("" when unknown), kept in a small cache."""
        found = self.patient_cached(study)
        if found is not None or self._patient_of is None or not study:
            return found or ""
        try:
            found = self._patient_of(study)
        except Exception:
            log.exception("audit: Patient ID of a study could not be looked up")
            return ""
        if found:
            with self._lock:
                self._patients[study] = found
                while len(self._patients) > PATIENT_CACHE:
                    self._patients.popitem(last=False)
        return found

    def study_objects(self, studies: Iterable[str], patients: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Study and Patient ID objects for ``studies`` (Patient IDs looked up unless given)."""
        objects: list[dict[str, Any]] = []
        seen: set[str] = set()
        for study in studies:
            if not study:
                continue
            objects.append(study_object(study))
            pid = patients[study] if patients is not None and study in patients else self.patient(study)
            if pid and pid not in seen:
                seen.add(pid)
                objects.append(patient_object(pid))
        return objects

    # -- events ----------------------------------------------------------------------------------------------------
    def application(self, start: bool) -> bool:
        """110100 Application Activity: the node started or stopped (the node is the participant)."""
        launcher = Actor.local().participant(APPLICATION_LAUNCHER, requestor=True)
        return self.record(
            APPLICATION_ACTIVITY, EXECUTE, SUCCESS, [launcher],
            event_type=APPLICATION_START if start else APPLICATION_STOP,
        )  # fmt: skip

    def authentication(self, who: Principal | str, address: str, success: bool, detail: str = "") -> bool:
        """110114 User Authentication : a token, password or JWT accepted or refused.
        ``who`` is the principal or the name it claimed; never a secret."""
        actor = Actor.of(who) if isinstance(who, Principal) else Actor(who, "unknown", address)
        if address and not actor.address:
            actor = Actor(actor.name, actor.kind, address)
        return self.record(
            USER_AUTHENTICATION, EXECUTE, SUCCESS if success else MINOR_FAILURE, [actor.participant(None)],
            event_type=LOGIN, detail={"reason": detail} if detail else None,
        )  # fmt: skip

    def security_alert(self, what: str, who: Principal | str, address: str, study: str = "") -> bool:
        """110113 Security Alert : ``what`` happened (a refused scope, an association
        rejected, a hostile archive); ``who`` as for ``authentication``."""
        actor = Actor.of(who) if isinstance(who, Principal) else Actor(who, "unknown", address)
        if address and not actor.address:
            actor = Actor(actor.name, actor.kind, address)
        return self.record(
            SECURITY_ALERT, EXECUTE, MINOR_FAILURE, [actor.participant(None)],
            [study_object(study)] if study else None, detail={"alert": what},
        )  # fmt: skip

    def study_deleted(
        self, study: str, patient_id: str, instances: int, who: Principal | Actor, outcome: int = SUCCESS
    ) -> bool:
        """110105 DICOM Study Deleted , once per study touched."""
        actor = Actor.of(who) if isinstance(who, Principal) else who
        with self._lock:
            self._patients.pop(study, None)
        objects = [study_object(study)] + ([patient_object(patient_id)] if patient_id else [])
        return self.record(
            STUDY_DELETED, DELETE, outcome, [actor.participant(None)], objects, detail={"instances": instances}
        )

    def query(
        self,
        who: Actor,
        keys: str,
        outcome: int,
        sop_class: str = "",
        study: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """110112 Query: ``keys`` from ``query_keys``; ``sop_class`` the C-FIND information model (empty for
        QIDO-RS)."""
        objects = [{"type": 2, "role": 3, "id_type": SOP_CLASS_TYPE if sop_class else "QIDO-RS",
                    "id": sop_class or "QIDO-RS"}]  # fmt: skip
        if study:
            objects += self.study_objects([study])
        return self.record(QUERY, EXECUTE, outcome, [who.participant(SOURCE)], objects, query=keys, detail=detail)

    def accessed(
        self, who: Actor, studies: Iterable[str], outcome: int, detail: Mapping[str, Any] | None = None
    ) -> bool:
        """110103 DICOM Instances Accessed (read): views of stored instances that send no DICOM instance."""
        return self.record(
            INSTANCES_ACCESSED, READ, outcome, [who.participant(None)], self.study_objects(studies), detail=detail
        )

    def transferred_out(
        self,
        who: Actor,
        studies: Mapping[str, int] | Iterable[str],
        outcome: int,
        destination: Actor | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """110104 DICOM Instances Transferred, action R: instances sent to ``destination`` (the requestor when
        None), the node as Source."""
        participants = [who.participant(DESTINATION if destination is None else None)]
        if destination is not None:
            participants.append(destination.participant(DESTINATION, requestor=False))
        counts = dict(studies) if isinstance(studies, Mapping) else None
        extra = dict(detail or {})
        if counts is not None:
            extra["instances"] = sum(counts.values())
        return self.record(
            INSTANCES_TRANSFERRED, READ, outcome, participants, self.study_objects(counts or studies), detail=extra
        )

    def export(self, who: Actor, studies: Iterable[str], outcome: int, detail: Mapping[str, Any] | None = None) -> bool:
        """110106 Export: a series written out of the node (ZIP, NIfTI)."""
        return self.record(EXPORT, READ, outcome, [who.participant(None)], self.study_objects(studies), detail=detail)

    def transfer_in(self, who: Actor, how: str) -> Transfers:
        """A batch of instances coming in (``how``: C-STORE, STOW-RS, import): ``add`` each outcome, ``close``
        writes one 110104 C record per study."""
        return Transfers(self, who, how)

    # -- reading ---------------------------------------------------------------------------------------------------
    def search(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        user: str | None = None,
        study: str | None = None,
        event: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Records newest first: ``since`` <= time <= ``until``; ``user`` an active participant's id (a
        requestor); ``study`` a Study Instance UID object; ``event`` an event code or meaning (any case)."""
        event_code = None
        if event:
            event_code = next(
                (c.code for c in EVENTS.values() if event in (c.code,) or event.lower() == c.meaning.lower()), event
            )
        found: list[dict[str, Any]] = []
        for path in self._files(since, until):
            for record in _records_backwards(path):
                when = _time(record)
                if when is None or (since is not None and when < since) or (until is not None and when > until):
                    continue
                if event_code and record.get("event", {}).get("code") != event_code:
                    continue
                if user and not any(p.get("id") == user and p.get("requestor") for p in record.get("participants", [])):
                    continue
                if study and not any(
                    o.get("id_type") == STUDY_UID_TYPE and o.get("id") == study for o in record.get("objects", [])
                ):
                    continue
                found.append(record)
        found.sort(key=lambda r: r.get("time", ""), reverse=True)
        return found[:limit]

    def _files(self, since: datetime | None, until: datetime | None) -> list[Path]:
        first = (since - timedelta(days=1)).date() if since is not None else date.min
        last = (until + timedelta(days=1)).date() if until is not None else date.max
        paths = []
        with contextlib.suppress(OSError):
            for path in self.folder.glob("*.jsonl"):
                try:
                    day = date.fromisoformat(path.stem)
                except ValueError:
                    continue
                if first <= day <= last:
                    paths.append(path)
        return sorted(paths, reverse=True)


class Transfers:
    """Instances of one association, request or import job coming in, per study; ``close`` writes the
    records (0: all stored; 4: some refused; 8: all refused, and a record without study when no study was
    known: instances refused before their study was read)."""

    def __init__(self, audit: Audit, who: Actor, how: str) -> None:
        self.audit = audit
        self.who = who
        self.how = how
        self._stored: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def add(self, stored: StoredInstance) -> None:
        with self._lock:
            self._stored[stored.key.study] = self._stored.get(stored.key.study, 0) + 1

    def fail(self, study: str = "") -> None:
        with self._lock:
            self._failed[study] = self._failed.get(study, 0) + 1

    @property
    def empty(self) -> bool:
        return not self._stored and not self._failed

    def close(self) -> bool:
        """Write the records (once). False, or ``AuditUnavailable`` with ``fail_closed``, when one failed."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            stored, failed = dict(self._stored), dict(self._failed)
        unknown = failed.pop("", 0)
        studies = list(dict.fromkeys([*stored, *failed]))
        ok = True
        errors: list[AuditUnavailable] = []
        for study in studies:
            n, bad = stored.get(study, 0), failed.get(study, 0)
            outcome = SUCCESS if not bad else (MINOR_FAILURE if n else SERIOUS_FAILURE)
            ok = self._write([study], outcome, n, bad, errors) and ok
        if unknown:
            ok = self._write([], SERIOUS_FAILURE, 0, unknown, errors) and ok
        if errors:
            raise errors[0]
        return ok

    def _write(
        self, studies: list[str], outcome: int, stored: int, failed: int, errors: list[AuditUnavailable]
    ) -> bool:
        detail: dict[str, Any] = {"via": self.how, "instances": stored}
        if failed:
            detail["failed"] = failed
        try:
            return self.audit.record(
                INSTANCES_TRANSFERRED, CREATE, outcome, [self.who.participant(SOURCE)],
                self.audit.study_objects(studies), detail=detail,
            )  # fmt: skip
        except AuditUnavailable as err:
            errors.append(err)
            return False


def _records_backwards(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one file, last first; a line that is not a whole JSON object (a torn line after a crash
    mid-write) is skipped."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        log.error("audit: cannot read %s: %s", path, exc)
        return
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def _time(record: Mapping[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("time", "")))
    except ValueError:
        return None


def parse_time(text: str, end_of_day: bool = False) -> datetime:
    """An ISO 8601 date or date-time (UTC when it names no zone); ValueError otherwise. ``end_of_day``: a date
    alone means the last microsecond of that day (an upper bound of a search)."""
    when = datetime.fromisoformat(text.strip())
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    if end_of_day and "T" not in text and " " not in text.strip():
        when += timedelta(days=1, microseconds=-1)
    return when
