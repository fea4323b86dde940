"""DIMSE access control: who may associate, which services each caller may use, and who each association is.

At association, in the order pynetdicom and this gate apply them:

1. pynetdicom's own checks (``configure``): with ``dimse.require_known_callers`` (or ``dimse.allowed_callers``)
   a calling AE title that is not declared is rejected permanent, service user, "calling AE title not
   recognized" (1, 1, 3); with ``require_known_callers`` a called AE title other than this node's is rejected
   (1, 1, 7). Both are ``AE.require_calling_aet`` and ``AE.require_called_aet``.
2. This gate, on ``EVT_REQUESTED`` (before pynetdicom negotiates; pynetdicom has no setting for these): a declared
   peer with ``hosts`` calling from another address is rejected (1, 1, 3), as an AE title that is not recognized
   from there; with ``dimse.require_user_identity`` a request without a User Identity item is rejected permanent,
   service user, no reason given (1, 1, 1) (pynetdicom itself accepts it even with an ``EVT_USER_ID`` handler).
3. User Identity (PS3.7 D.3.3.7), ``EVT_USER_ID``: types 1 (username; no password is sent, so the authenticator
   is asked with an empty one) and 2 (username + passcode) go to ``Authenticator.verify_password``, type 5 (JWT)
   to ``Authenticator.verify_jwt``; types 3 and 4 (Kerberos, SAML) are refused. A refused identity is rejected
   the way pynetdicom rejects it: transient, service provider (ACSE), no reason given (2, 2, 1).
4. The associations of one calling AE title (``dimse.max_associations_per_ae``, counted across the node's
   processes by ``core.limits.Slots``), also on ``EVT_REQUESTED``, after the checks above: one more is rejected
   transient, service provider (presentation), local limit exceeded (2, 3, 2; PS3.8 9.3.4), the answer
   pynetdicom gives past ``dimse.max_associations``; other AE titles still associate. The slot is given back when
   the association is released, aborted, rejected or its connection closes.

Once established, the association has an ``Access``: its principal (the verified user, kind USER, else the
calling AE, kind PEER) and the services its calling AE may use (the peer's ``allow``; every service for a caller
that is not declared, which only ``require_known_callers = false`` lets in). A request for a service outside
them, or, for a user, outside its scopes (C-STORE needs ``write``; C-FIND, C-MOVE and C-GET ``read``), is
answered 0x0124 Refused: Not Authorized with the reason as Error Comment (``status.not_authorized``). The
handlers read the principal with ``Gate.principal_of(event)``; the table is emptied on release, abort and close.

With an audit trail (``scp.start(..., trail)``) the gate records its decisions (``core/audit.py``): each association
rejected for its calling AE, called AE, host, missing User Identity or per-AE limit is a 110113 Security Alert (the
calling AE at its address, the reason); each User Identity checked is a 110114 User Authentication, success or minor
failure (the user's name, or the name claimed; never the passcode, never the JWT); each 0x0124 refusal a 110113. A
User Identity sent with an association that is rejected for its AE titles anyway is not checked (nor recorded): the
rejection says why. One record is one ``write``, on the association's thread.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dcmnode import status
from dcmnode.config import DIMSE_SERVICES, Settings
from dcmnode.core.access import ALL_GROUPS, Authenticator, Kind, Principal, Scope
from dcmnode.core.audit import Audit
from dcmnode.core.limits import Slot, Slots
from dcmnode.dimse import query_retrieve
from dcmnode.errors import AuditUnavailable, ConfigError
from dcmnode.status import Service

log = logging.getLogger(__name__)

SERVICE_NAMES: Final = {
    Service.ECHO: "echo",
    Service.STORE: "store",
    Service.FIND: "find",
    Service.MOVE: "move",
    Service.GET: "get",
}
"""The name of each service in a peer's ``allow``."""
SCOPES: Final[dict[Service, Scope | None]] = {
    Service.ECHO: None,
    Service.STORE: Scope.WRITE,
    Service.FIND: Scope.READ,
    Service.MOVE: Scope.READ,
    Service.GET: Scope.READ,
}
"""The scope a user needs for each service (C-ECHO needs none)."""

# A-ASSOCIATE-RJ (result, source, reason) (PS3.8 9.3.4)
REJECT_CALLING_AE: Final = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognized
REJECT_NO_REASON: Final = (0x01, 0x01, 0x01)  # permanent, service user, no reason given
REJECT_CALLED_AE: Final = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognized
REJECT_LOCAL_LIMIT: Final = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded
USER_ID_PASSWORD: Final = (1, 2)  # username, username + passcode
USER_ID_JWT: Final = 5
CLAIMED_NAME_MAX: Final = 64  # characters of a refused user name kept in its audit record
ALL_SERVICES: Final = frozenset(DIMSE_SERVICES)
NOBODY: Final = frozenset[str]()


@dataclasses.dataclass(frozen=True, slots=True)
class Access:
    """What an established association may do: who it is, and the services its calling AE may use."""

    principal: Principal
    services: frozenset[str]
    calling: str  # the calling AE title

    def refusal(self, service: Service) -> str | None:
        """Why ``service`` is refused, or None when it is allowed."""
        if SERVICE_NAMES[service] not in self.services:
            return f"{service} not allowed for calling AE {self.calling}"
        scope = SCOPES[service]
        if self.principal.kind is Kind.USER and scope is not None and not self.principal.allows(scope):
            return f"{service} needs scope {scope}; user {self.principal.name} lacks it"
        return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Gate:
    """The access decisions of one SCP (one ``AE``): bind ``handlers()`` to the server, wrap each service handler
    with ``echo`` / ``store`` / ``find`` / ``move`` / ``get``, and read the principal with ``principal_of``."""

    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator | None = None,
        trail: Audit | None = None,
        associations: Slots | None = None,
    ) -> None:
        if settings.dimse.require_user_identity and authenticator is None:
            raise ConfigError("dimse.require_user_identity needs an authenticator (local users or OIDC)")
        self._settings = settings
        self._authenticator = authenticator
        self._trail = trail
        self._hosts: dict[str, tuple[Network, ...]] = {
            title: tuple(ipaddress.ip_network(h) for h in peer.hosts)
            for title, peer in settings.peers.items()
            if peer.hosts
        }
        self._lock = threading.Lock()
        self._users: dict[Association, Principal] = {}  # verified at negotiation, before establishment
        self._access: dict[Association, Access] = {}
        self._associations = associations  # per calling AE title, across processes (None: no such limit)
        self._slots: dict[Association, Slot] = {}

    # -- association ----------------------------------------------------------------------------------------

    def configure(self, ae: AE) -> None:
        """pynetdicom's own checks of the calling and called AE titles."""
        dimse = self._settings.dimse
        callers = list(dimse.allowed_callers)
        if dimse.require_known_callers:
            callers += list(self._settings.peers)
            ae.require_called_aet = True
        if callers:
            ae.require_calling_aet = sorted(set(callers))

    def handlers(self) -> list[Any]:
        """The event handlers the server binds (``EVT_USER_ID`` only when there is an authenticator)."""
        bound: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._forget),
            (evt.EVT_ABORTED, self._forget),
            (evt.EVT_CONN_CLOSE, self._forget),
        ]
        if self._authenticator is not None:
            bound.append((evt.EVT_USER_ID, self._on_user_id))
        return bound

    def _on_requested(self, event: evt.Event) -> None:
        """``EVT_REQUESTED``: the checks pynetdicom has no setting for (the caller's address, a missing User
        Identity); a request pynetdicom will reject for its AE titles is left to it, so that it says why."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        if request is None:
            return
        calling = str(request.calling_ae_title).strip()
        if _titles_refused(assoc, calling, str(request.called_ae_title).strip()):
            return
        address = str(assoc.requestor.address)
        networks = self._hosts.get(calling)
        if networks is not None and not _within(address, networks):
            log.warning("association from %s (%s) rejected: not one of its hosts", calling, address)
            _reject(assoc, REJECT_CALLING_AE)
        elif self._settings.dimse.require_user_identity and assoc.requestor.user_identity is None:
            log.warning("association from %s (%s) rejected: no User Identity", calling, address)
            _reject(assoc, REJECT_NO_REASON)
        elif self._associations is not None:
            self._hold_slot(assoc, calling, address, self._associations)

    def _hold_slot(self, assoc: Association, calling: str, address: str, associations: Slots) -> None:
        """One of the calling AE title's slots for this association, else reject it: local limit exceeded."""
        try:
            slot = associations.acquire(calling)
        except OSError:
            log.exception("association from %s (%s): its slot could not be counted; let in", calling, address)
            return  # the folder of slots unusable (disk, permissions): the per-AE limit is not what fails it
        if slot is not None:
            with self._lock:
                self._slots[assoc] = slot
            return
        limit = associations.limit
        what = f"{limit} associations from calling AE {calling} open already (dimse.max_associations_per_ae)"
        log.warning("association from %s (%s) rejected, local limit exceeded: %s", calling, address, what)
        self._alert(f"association rejected: {what}", Principal(calling, Kind.PEER, address=address), address)
        _reject(assoc, REJECT_LOCAL_LIMIT)

    def _on_user_id(self, event: evt.Event) -> tuple[bool, bytes | None]:
        """``EVT_USER_ID``: check the credentials; the principal is kept for the association. Never logs them."""
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        request = assoc.requestor.primitive
        called = str(request.called_ae_title).strip() if request is not None else ""
        if _titles_refused(assoc, calling, called):
            return True, None  # rejected for its AE titles in any case: pynetdicom says why, no credential checked
        kind = int(getattr(event, "user_id_type"))  # noqa: B009 (set by pynetdicom, unknown to its type hints)
        address = str(assoc.requestor.address)
        caller = f"{calling} ({address})"
        primary = bytes(getattr(event, "primary_field") or b"")  # noqa: B009
        secondary = bytes(getattr(event, "secondary_field") or b"")  # noqa: B009
        principal = self._verify(kind, primary, secondary)
        if principal is None:
            log.warning("association from %s: User Identity (type %d) refused", caller, kind)
            claimed = _claimed(kind, primary)
            who: Principal | str = claimed or Principal(calling, Kind.PEER, address=address)
            self._authenticated(who, address, False, f"User Identity type {kind} refused (calling AE {calling})")
            return False, None
        principal = dataclasses.replace(principal, address=address)
        if not self._authenticated(principal, address, True, f"User Identity type {kind} (calling AE {calling})"):
            return False, None  # fail closed: an authentication that cannot be recorded is refused
        with self._lock:
            self._users[assoc] = principal
        log.info("association from %s: user %s", caller, principal.name)
        return True, None

    def _verify(self, kind: int, primary: bytes, secondary: bytes) -> Principal | None:
        authenticator = self._authenticator
        if authenticator is None:
            return None
        try:
            if kind in USER_ID_PASSWORD:
                password = secondary.decode("utf-8") if kind == 2 else ""
                return authenticator.verify_password(primary.decode("utf-8"), password)
            if kind == USER_ID_JWT:
                return authenticator.verify_jwt(primary.decode("ascii"))
        except UnicodeDecodeError:
            return None
        except Exception:
            log.exception("User Identity check failed")  # the traceback names no credential
            return None
        log.warning("User Identity type %d (Kerberos, SAML) is not supported", kind)
        return None

    def _on_established(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        peer = self._settings.peers.get(calling)
        services = frozenset(peer.allow) if peer is not None else ALL_SERVICES
        with self._lock:
            user = self._users.pop(assoc, None)
        groups = frozenset(peer.groups) if peer is not None else frozenset({ALL_GROUPS})  # what its queries see
        address = str(assoc.requestor.address)
        principal = user or Principal(calling, Kind.PEER, _scopes(services), groups, address)
        with self._lock:
            self._access[assoc] = Access(principal, services, calling)

    def _on_rejected(self, event: evt.Event) -> None:
        """``EVT_REJECTED`` (pynetdicom's rejections and this gate's): a 110113 for each security reason."""
        self._forget(event)
        if self._trail is None:
            return
        assoc = event.assoc
        reply = assoc.acceptor.primitive
        request = assoc.requestor.primitive
        if reply is None or request is None:
            return
        reason = (reply.result, reply.result_source, reply.diagnostic)
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        if reason == REJECT_CALLING_AE:
            required = [t.strip() for t in assoc.ae.require_calling_aet]
            known = not required or calling in required
            what = "not from one of its hosts" if known else "calling AE title not recognized"
        elif reason == REJECT_CALLED_AE:
            what = f"called AE title {called!r} not recognized"
        elif reason == REJECT_NO_REASON:
            what = "no User Identity"
        else:
            return  # a refused User Identity (its 110114 is written); a local limit: recorded where decided
        address = str(assoc.requestor.address)
        self._alert(f"association rejected: {what}", Principal(calling, Kind.PEER, address=address), address)

    def _authenticated(self, who: Principal | str, address: str, success: bool, detail: str) -> bool:
        """Record a 110114; False only when ``audit.fail_closed`` refuses what could not be recorded."""
        if self._trail is None:
            return True
        try:
            self._trail.authentication(who, address, success, detail)
        except AuditUnavailable:
            return False
        return True

    def _alert(self, what: str, who: Principal, address: str) -> None:
        if self._trail is not None:
            try:
                self._trail.security_alert(what, who, address)
            except AuditUnavailable:
                pass  # logged and counted by the trail; what it records is refused already

    def _forget(self, event: evt.Event) -> None:
        with self._lock:
            self._users.pop(event.assoc, None)
            self._access.pop(event.assoc, None)
            slot = self._slots.pop(event.assoc, None)
        if slot is not None:
            slot.release()

    def principals(self) -> list[Principal]:
        """The principals of the established associations, now."""
        with self._lock:
            return [access.principal for access in self._access.values()]

    def __len__(self) -> int:
        """Associations the gate holds an entry for (users being negotiated, established associations)."""
        with self._lock:
            return len(self._users) + len(self._access)

    # -- requests -------------------------------------------------------------------------------------------

    def access_of(self, event: evt.Event) -> Access:
        """The association's access; one the gate does not know (released, or never established) may do
        nothing and sees nothing."""
        with self._lock:
            access = self._access.get(event.assoc)
        if access is None:
            calling = str(event.assoc.requestor.ae_title).strip()
            return Access(Principal(calling, Kind.PEER, groups=frozenset()), NOBODY, calling)
        return access

    def principal_of(self, event: evt.Event) -> Principal:
        """Who made the request: the verified user, else the calling AE (its groups decide what it sees)."""
        return self.access_of(event).principal

    def refusal(self, event: evt.Event, service: Service) -> Dataset | None:
        """The 0x0124 answer when the association may not use ``service``, else None."""
        access = self.access_of(event)
        reason = access.refusal(service)
        if reason is None:
            return None
        requestor = event.assoc.requestor
        log.warning("%s from %s (%s) refused 0x0124: %s", service, requestor.ae_title, requestor.address, reason)
        self._alert(f"{service} refused 0x0124: {reason}", access.principal, str(requestor.address))
        return status.not_authorized(reason)

    def echo(self, handler: Callable[..., int]) -> Callable[..., int | Dataset]:
        return self._plain(Service.ECHO, handler)

    def store(self, handler: Callable[..., int | Dataset]) -> Callable[..., int | Dataset]:
        """C-STORE: refused 0x0124 when not allowed; else the handler, told who sends (its groups decide which
        studies it may add to)."""

        def guarded(event: evt.Event, *args: Any) -> int | Dataset:
            refusal = self.refusal(event, Service.STORE)
            return handler(event, *args, principal=self.principal_of(event)) if refusal is None else refusal

        return guarded

    def _plain(self, service: Service, handler: Callable[..., int | Dataset]) -> Callable[..., int | Dataset]:
        def guarded(event: evt.Event, *args: Any) -> int | Dataset:
            refusal = self.refusal(event, service)
            return handler(event, *args) if refusal is None else refusal

        return guarded

    def find(self, handler: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def guarded(event: evt.Event, *args: Any) -> Iterator[Any]:
            refusal = self.refusal(event, Service.FIND)
            if refusal is None:
                yield from handler(event, *args, principal=self.principal_of(event))
            else:
                yield refusal, None

        return guarded

    def move(self, handler: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """C-MOVE: to an undeclared destination 0xA801 as before; else 0x0124 when refused. pynetdicom answers
        a C-MOVE only after associating with its destination, so a refused one opens (and releases) a
        Verification-only association with the declared destination first (``query_retrieve.refuse_move``)."""

        def guarded(event: evt.Event, catalog: Any, settings: Settings, *rest: Any) -> Iterator[Any]:
            refusal = self.refusal(event, Service.MOVE)
            if refusal is None:
                yield from handler(event, catalog, settings, *rest, principal=self.principal_of(event))
            else:
                yield from query_retrieve.refuse_move(event, settings, refusal)

        return guarded

    def get(self, handler: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def guarded(event: evt.Event, *args: Any) -> Iterator[Any]:
            refusal = self.refusal(event, Service.GET)
            if refusal is None:
                yield from handler(event, *args, principal=self.principal_of(event))
            else:
                yield 1  # pynetdicom answers nothing before the count of sub-operations
                yield refusal, None

        return guarded


def _scopes(services: frozenset[str]) -> frozenset[Scope]:
    return frozenset(s for service, s in SCOPES.items() if s is not None and SERVICE_NAMES[service] in services)


def _titles_refused(assoc: Association, calling: str, called: str) -> bool:
    """Whether pynetdicom rejects the request for its calling or called AE title (``Gate.configure``)."""
    required = [t.strip() for t in assoc.ae.require_calling_aet]
    return bool(required and calling not in required) or (
        bool(assoc.ae.require_called_aet) and called != assoc.ae.ae_title.strip()
    )


def _claimed(kind: int, primary: bytes) -> str:
    """The user name a refused User Identity claimed (types 1 and 2; a JWT's primary field is the secret)."""
    if kind not in USER_ID_PASSWORD:
        return ""
    return primary.decode("utf-8", "replace").strip()[:CLAIMED_NAME_MAX]


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _reject(assoc: Association, reason: tuple[int, int, int]) -> None:
    """Reject from ``EVT_REQUESTED`` as pynetdicom rejects after its own checks (``ACSE._negotiate_as_acceptor``):
    send the A-ASSOCIATE-RJ, tell the ``EVT_REJECTED`` handlers, stop the association (pynetdicom then skips
    negotiation and closes the connection)."""
    assoc.acse.send_reject(*reason)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
