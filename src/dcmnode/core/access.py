"""Who is asking, and what they may do: the principal every door (HTTP route, DIMSE service) checks.

A ``Principal`` is the result of authentication (an API token, a local user, an OIDC bearer token, a DIMSE peer, or
nobody when ``http.auth = "none"``). Its ``scopes`` say which kinds of request it may make; its ``groups`` which
studies it may see: a study is visible when it carries a label named like one of the groups, and ``*`` sees every
study. Adapters decide with ``allows`` and ``sees``; nothing below them knows how the principal was made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Scope(StrEnum):
    READ = "read"  # QIDO, WADO, rendered, thumbnails, export, metadata, C-FIND/C-MOVE/C-GET
    WRITE = "write"  # STOW, imports, C-STORE, labels
    DELETE = "delete"
    SR = "sr"  # start and cancel super-resolution jobs
    DEIDENTIFY = "deidentify"
    ADMIN = "admin"  # users, tokens, audit, settings


ALL_GROUPS = "*"


class Kind(StrEnum):
    TOKEN = "token"
    USER = "user"
    OIDC = "oidc"
    PEER = "peer"  # a DIMSE calling AE
    ANONYMOUS = "anonymous"  # http.auth = "none": the node is open on loopback


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # token name, user name, OIDC subject, calling AE title
    kind: Kind
    scopes: frozenset[Scope] = field(default_factory=frozenset)
    groups: frozenset[str] = frozenset({ALL_GROUPS})
    address: str = ""  # the client's IP address, where known

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes

    @property
    def sees_all(self) -> bool:
        return ALL_GROUPS in self.groups

    def sees(self, labels: Iterable[str]) -> bool:
        """Whether a study carrying ``labels`` is visible to this principal."""
        return self.sees_all or not self.groups.isdisjoint(labels)


def anonymous(address: str = "") -> Principal:
    """Everyone, when authentication is off (loopback only): every scope, every study."""
    return Principal("anonymous", Kind.ANONYMOUS, frozenset(Scope), frozenset({ALL_GROUPS}), address)


def parse_scopes(text: str | Iterable[str]) -> frozenset[Scope]:
    """``read,write`` (or an iterable of names) as scopes; ValueError names an unknown one."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in set(Scope)]
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}: one of {', '.join(Scope)}")
    return frozenset(Scope(n) for n in names)


class Authenticator(Protocol):
    """What checks a caller's credentials (local users, tokens, OIDC): given to the adapters, which know nothing of
    how users are stored. Each answers the principal the credentials stand for, or None when they are not valid;
    neither may log the secret it is given."""

    def verify_password(self, name: str, password: str) -> Principal | None:
        """A local user's name and password (DIMSE User Identity types 1 and 2; type 1 sends no password)."""
        ...

    def verify_jwt(self, token: str) -> Principal | None:
        """A JSON Web Token, checked like an OIDC bearer token (DIMSE User Identity type 5)."""
        ...
