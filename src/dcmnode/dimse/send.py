"""C-STORE SCU: send stored instances to a declared peer, with retries.

Each SOP class is proposed twice, in its stored transfer syntaxes and in the uncompressed ones, so a peer that
refuses compression still receives (the file is then decompressed; ``core.retrieve.plan``). An association that
cannot be made, or breaks, is retried with exponential backoff up to a cap; an instance the peer refuses with
a failure status (0xA9xx, 0xCxxx: it will refuse it again) is not retried. Every instance ends with its own
outcome, so that the caller can record what reached the peer and send the rest again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from pynetdicom import AE
from pynetdicom.presentation import PresentationContext, build_context

from dcmnode.config import Peer
from dcmnode.core import retrieve
from dcmnode.core.coercion import Coercion
from dcmnode.dimse import coerce, tls
from dcmnode.errors import DcmnodeError, InvalidRequest

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1-255


@dataclass(slots=True)
class Sent:
    sop: str
    status: str  # "sent" | "failed" | "pending"
    dicom_status: int | None = None
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["dicom_status"] = None if self.dicom_status is None else f"0x{self.dicom_status:04X}"
        return out


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 5  # associations tried, in all
    backoff: float = 2.0  # seconds before the second attempt; doubled each time
    backoff_max: float = 60.0


def proposal(files: Sequence[retrieve.StoredFile]) -> list[PresentationContext]:
    """Per SOP class: one context per stored transfer syntax, alone, so that a peer accepting it receives the
    files as stored (an acceptor picks one syntax per context by its own preference: offered explicit and implicit
    VR together, pynetdicom's SCP takes implicit, and each file would be decoded and re-encoded); then one with the
    uncompressed syntaxes, so that a peer refusing a stored syntax still receives (decompressed or re-encoded).
    When that needs more contexts than an association holds, stored uncompressed syntaxes share the fallback
    context instead."""
    stored: dict[str, set[str]] = {}
    for f in files:
        stored.setdefault(f.sop_class, set()).add(f.transfer_syntax)
    fallback = [str(s) for s in retrieve.UNCOMPRESSED[:3]]
    for alone in (set(), set(retrieve.UNCOMPRESSED)):  # stored syntaxes not given a context of their own
        contexts = []
        for sop_class, syntaxes in sorted(stored.items()):
            for syntax in sorted(s for s in syntaxes if s not in alone):
                contexts.append(build_context(sop_class, [syntax]))
            contexts.append(build_context(sop_class, fallback))
        if len(contexts) <= MAX_CONTEXTS:
            return contexts
    raise InvalidRequest(f"{len(contexts)} presentation contexts needed; one association holds {MAX_CONTEXTS}")


def send(
    files: Sequence[retrieve.StoredFile],
    peer: Peer,
    calling_ae: str,
    retry: Retry = Retry(),
    on_progress: Callable[[int, int], None] | None = None,
    timeout: float = 30.0,
    coercion: Coercion | None = None,
) -> list[Sent]:
    """Send ``files`` to ``peer``; one ``Sent`` per file, in order. With ``coercion`` (``[peers.X] deidentify``,
    ``core.coercion.for_peer``) each is de-identified first; one the profile refuses is "failed" with the reason."""
    outcomes = {f.sop: Sent(f.sop, "pending") for f in files}
    delay = retry.backoff
    for attempt in range(1, retry.attempts + 1):
        todo = [f for f in files if outcomes[f.sop].status == "pending"]
        if not todo:
            break
        reason = _one_association(todo, peer, calling_ae, outcomes, timeout, on_progress, len(files), coercion)
        if reason is None or attempt == retry.attempts:
            if reason is not None:
                for f in todo:
                    if outcomes[f.sop].status == "pending":
                        outcomes[f.sop] = Sent(f.sop, "failed", None, reason)
            break
        left = sum(1 for o in outcomes.values() if o.status == "pending")
        log.warning(
            "C-STORE to %s (%s:%d), attempt %d of %d: %s; %d instance(s) left, retrying in %.0f s",
            peer.ae_title, peer.host, peer.port, attempt, retry.attempts, reason, left, delay,
        )  # fmt: skip
        time.sleep(delay)
        delay = min(delay * 2, retry.backoff_max)
    return [outcomes[f.sop] for f in files]


def _one_association(
    todo: Sequence[retrieve.StoredFile],
    peer: Peer,
    calling_ae: str,
    outcomes: dict[str, Sent],
    timeout: float,
    on_progress: Callable[[int, int], None] | None,
    total: int,
    coercion: Coercion | None = None,
) -> str | None:
    """Send what is pending over one association; a reason when the association failed (worth retrying)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    tls_args = tls.peer_tls_args(peer)  # a peer with tls = true: its certificate and name checked (dimse/tls.py)
    assoc = ae.associate(peer.host, peer.port, contexts=proposal(todo), ae_title=peer.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        if tls_args is not None:
            return "association rejected, peer unreachable or TLS handshake failed (see the log)"
        return "association rejected or peer unreachable"
    try:
        accepted: dict[str, list[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), []).extend(str(ts) for ts in cx.transfer_syntax)
        for item in todo:
            how = retrieve.plan(item.transfer_syntax, accepted.get(item.sop_class, []))
            if how is None:
                outcomes[item.sop] = Sent(item.sop, "failed", None, "the peer accepted no transfer syntax for it")
                continue
            try:
                ds = coerce.outgoing(item, how, accepted.get(item.sop_class, []), coercion)
            except (DcmnodeError, OSError) as err:
                reason = str(getattr(err, "reason", err))
                log.warning("%s not sent to %s: %s", item.sop, peer.ae_title, reason)
                outcomes[item.sop] = Sent(item.sop, "failed", None, reason)
                continue
            status = assoc.send_c_store(ds)
            if not assoc.is_established and not status:
                return "the association broke"
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                return "no response from the peer"
            if code == 0 or code & 0xF000 == 0xB000:  # success, or warning (stored with coercion)
                outcomes[item.sop] = Sent(item.sop, "sent", code)
            elif code & 0xFF00 == 0xA700:  # out of resources: transient, try again later
                outcomes[item.sop] = Sent(item.sop, "pending", code, "peer out of resources")
            else:
                outcomes[item.sop] = Sent(item.sop, "failed", code, "refused by the peer")
            if on_progress is not None:
                on_progress(sum(1 for o in outcomes.values() if o.status != "pending"), total)
        if any(o.status == "pending" for o in outcomes.values() if o.sop in {f.sop for f in todo}):
            return "the peer was out of resources"
        return None
    finally:
        if assoc.is_established:
            assoc.release()
