"""Settings: frozen dataclasses loaded once from defaults < TOML file < DCMNODE_* env < CLI flags.

``config/dcmnode.toml`` documents every field below with its default; a test keeps the
two in step. Environment variables are ``DCMNODE_<SECTION>_<KEY>`` (section names have no underscore, so
``DCMNODE_DIMSE_MAX_ASSOCIATIONS`` is section ``dimse``, key ``max_associations``). Peers are declared only in
the file, one table per AE title: ``[peers.PACS1]`` with ``host`` and ``port``, and optionally ``labels`` (study
labels attached to what the peer sends by C-STORE), ``groups`` (the studies its C-FIND/C-MOVE/C-GET see), and,
for DIMSE access control, ``allow`` and ``hosts``; for TLS to it, ``tls = true`` with ``tls_ca``, ``tls_cert``,
``tls_key`` and ``tls_server_name``; ``deidentify`` (the PS3.15 profile applied to everything sent to it) and
``deidentify_project``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcmnode.errors import ConfigError

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control chars
DUPLICATE_POLICIES = ("keep", "replace", "reject")
SYSLOG_URL = re.compile(r"^(udp|tcp)://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5})$")


def _default(value: Any, text: str) -> Any:
    if isinstance(value, list):
        return field(default_factory=lambda: list(value), metadata={"help": text})
    return field(default=value, metadata={"help": text})


@dataclass(frozen=True, slots=True)
class NodeSettings:
    ae_title: str = _default("DCMNODE", "this node's AE title (DIMSE called AE, source of derived data)")
    data_dir: str = _default("data", "folder holding the index (index.sqlite) and the files (dicom/, tmp/)")
    log_level: str = _default("INFO", "DEBUG, INFO, WARNING or ERROR")


@dataclass(frozen=True, slots=True)
class DimseSettings:
    host: str = _default("127.0.0.1", "address the DIMSE SCP binds; 0.0.0.0 to accept modalities on the network")
    port: int = _default(11112, "DIMSE port")
    processes: int = _default(
        2, "processes serving associations (parallel associations use more cores); 0 = threads inside the HTTP process"
    )
    max_associations: int = _default(32, "concurrent associations accepted (per process)")
    max_pdu: int = _default(0, "maximum PDU length we receive; 0 = unlimited (fewest PDUs, fastest)")
    acse_timeout: float = _default(30.0, "seconds to wait for association messages")
    dimse_timeout: float = _default(60.0, "seconds to wait for DIMSE messages")
    network_timeout: float = _default(60.0, "seconds of network silence before an association is aborted")
    allowed_callers: list[str] = _default([], "calling AE titles allowed to associate; empty = any")
    require_known_callers: bool = _default(
        False, "only AE titles declared under [peers] may associate, and only when calling this node's AE title"
    )
    require_user_identity: bool = _default(
        False, "associations must carry User Identity (username + password of a local user, or a JWT)"
    )
    tls_port: int = _default(2762, "DIMSE TLS port (IANA dicom-tls 2762), served only when tls_cert is set")
    tls_cert: str = _default("", "the TLS listener's certificate (PEM, chain allowed); empty = no TLS listener")
    tls_key: str = _default("", "the private key of tls_cert (PEM)")
    tls_ca: str = _default("", "CA certificates (PEM) whose client certificates the TLS listener trusts")
    tls_client_cert: str = _default(
        "required", "client certificates on the TLS listener: required, optional (checked when sent) or none"
    )
    tls_only: bool = _default(False, "no plain DIMSE listener: only the TLS port (needs tls_cert)")
    max_associations_per_ae: int = _default(
        16,
        "concurrent associations from one calling AE title (all processes together); the next is rejected "
        "transient, local limit exceeded; 0 = no limit",
    )


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = _default("127.0.0.1", "address the HTTP server binds")
    port: int = _default(8080, "HTTP port; DICOMweb lives under /dicom-web, the viewer at /")
    max_request_mb: int = _default(4096, "largest STOW-RS request body in MiB (413 beyond)")
    max_part_mb: int = _default(2048, "largest single instance in a STOW-RS request in MiB (413 beyond)")
    max_archive_expanded_mb: int = _default(
        32768,
        "most MiB one archive (upload or dcmnode import) expands to, all members together; past it the rest is refused",
    )
    max_stow_parts: int = _default(10000, "most parts (instances) in one STOW-RS request (413 beyond)")
    max_header_kb: int = _default(64, "largest request head (all header lines together) in KiB (431 beyond)")
    max_query_results: int = _default(
        10000, "most results one QIDO-RS answer holds (a larger or missing limit is cut, with a Warning header)"
    )
    metadata_workers: int = _default(
        2, "processes that build series /metadata (large series, off the HTTP process); 0 = build in the HTTP process"
    )
    metadata_idle_seconds: float = _default(
        120.0,
        "the /metadata worker processes start when a large series is first built (that build runs in the HTTP "
        "process meanwhile) and exit after this many seconds without a build; 0 = they start with the node and stay",
    )
    render_cache_mb: int = _default(1024, "disk kept for rendered images (/rendered, /thumbnail); oldest go first")
    import_abandoned_seconds: float = _default(
        3600.0, "an upload (/api/imports) that got no file for this long and was never finished is cancelled"
    )
    cors_origins: list[str] = _default(
        ["loopback"],
        'origins allowed to call DICOMweb from a browser: "loopback" (any port on localhost/127.0.0.1/[::1]), '
        '"*" (any), or exact origins such as "https://viewer.example.org"; empty = no CORS headers',
    )
    auth: str = _default(
        "none",
        'who may call HTTP: "none" (everyone, allowed only while both servers bind loopback) or "on" (a Bearer API '
        "token or, when [http.oidc] is set, an OIDC access token; scopes per route)",
    )
    session_hours: float = _default(
        12.0, "how long a viewer sign-in (POST /api/session, a session cookie) lasts, in hours, when http.auth is on"
    )
    expensive_per_second: float = _default(
        20.0,
        "expensive requests (enhanced renders not in the cache, study/series /rendered, exports) each client "
        "(principal, else IP address) may make per second, sustained; beyond: 429 with Retry-After; 0 = no limit",
    )
    expensive_burst: int = _default(200, "expensive requests a client may make at once before the rate applies")
    max_imports_per_client: int = _default(
        8, "open import jobs (/api/imports) per client (principal, else IP address); one more: 429; 0 = no limit"
    )
    tls_cert: str = _default(
        "", "HTTPS: the server certificate (PEM, chain after it) served on http.port; empty = plain HTTP"
    )
    tls_key: str = _default("", "HTTPS: the private key (PEM) of tls_cert")
    tls_ca: str = _default("", "HTTPS: CA certificates (PEM) trusted for client certificates (mutual TLS)")
    tls_client_cert: str = _default(
        "none", 'HTTPS client certificates: "none" (not asked for), "optional" or "required" (signed by tls_ca)'
    )
    redirect_port: int = _default(
        0,
        "HTTPS: a plain-HTTP port answering GET/HEAD with 308 to the https:// URL and anything else with 400 "
        "(nothing served in clear); 0 = none",
    )
    hsts_seconds: int = _default(
        31536000,
        "HTTPS: max-age of Strict-Transport-Security on every HTTPS answer (browsers then refuse http:// to this "
        "host name, on any port); 0 = not sent",
    )

    @property
    def scheme(self) -> str:
        """``https`` when the HTTP listener serves TLS, else ``http``."""
        return "https" if self.tls_cert else "http"


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """``[http.oidc]``: OIDC bearer tokens (Keycloak, Entra, Google), checked when ``http.auth = "on"``."""

    issuer: str = _default("", "the tokens' iss; empty = no OIDC tokens (API tokens only)")
    audience: str = _default("", "the aud the tokens must carry (this node's client id)")
    jwks: str = _default("", "the issuer's keys: a JWKS file path or an https URL (cached, re-read on an unknown kid)")
    scopes_claim: str = _default(
        "scope", 'claim holding the scopes: a space-separated string or a list; a dotted path ("realm_access.roles")'
    )
    groups_claim: str = _default("", "claim (dotted path) holding the study groups; empty = every study (*)")
    leeway_seconds: float = _default(30.0, "clock skew allowed on exp/nbf/iat, in seconds (at most 60)")
    jwks_refetch_seconds: float = _default(
        5.0, "a JWKS URL is re-read on an unknown kid at most once in this many seconds (0-3600)"
    )


@dataclass(frozen=True, slots=True)
class StoreSettings:
    on_duplicate: str = _default("keep", "an already-stored SOP Instance UID: keep (report success), replace, reject")
    fsync: bool = _default(
        True, "fsync each file, its folder and the index COMMIT before acknowledging (durable across power loss)"
    )


@dataclass(frozen=True, slots=True)
class SrSettings:
    worker: str = _default(
        "process", "where SR jobs run: process (a low-priority child of serve), thread (inside serve), or off"
    )
    threads: int = _default(0, "CPU threads torch may use for SR; 0 = all cores")
    seed: int = _default(0, "random seed of SR training (same seed, same input: same output)")
    train_steps: int = _default(0, "training steps of the learned model; 0 = its default (stops early on time)")
    max_train_seconds: float = _default(55.0, "longest training of the learned model per series and grid")
    max_output_side: int = _default(8192, "largest output row or column; a larger SR job fails with the reason")
    quiet_seconds: float = _default(30.0, "a series counts as complete this long after its last instance (rules)")
    rule_lookback_hours: float = _default(24.0, "rules look at series received this recently (not the whole store)")
    poll_seconds: float = _default(1.0, "how often an idle worker looks for queued jobs and complete series")
    idle_exit_seconds: float = _default(
        60.0,
        'worker = "process": the worker process starts when there is SR work (a queued job, a rule to fire) and '
        "exits after this many seconds without a job; 0 = it starts with the node and runs as long as it does",
    )
    send_attempts: int = _default(5, "associations tried when sending a derived series back")
    send_backoff: float = _default(2.0, "seconds before the second send attempt; doubled each time")
    send_backoff_max: float = _default(60.0, "longest wait between send attempts")
    max_running: int = _default(
        2, "SR jobs running at once, node-wide (all workers); more stay queued until one ends; 0 = no limit"
    )
    max_jobs_per_client: int = _default(
        20,
        "SR jobs one client (principal, else IP address) may have queued or running through /api/sr/jobs; one "
        "more: 429; 0 = no limit",
    )


@dataclass(frozen=True, slots=True)
class AuditSettings:
    enabled: bool = _default(True, "write the audit trail (data/audit/YYYY-MM-DD.jsonl, one JSON record per event)")
    syslog: str = _default(
        "", 'also send each record as RFC 5424 syslog: "udp://host:port" or "tcp://host:port"; empty = off'
    )
    fail_closed: bool = _default(
        False, "a request whose audit record cannot be written is refused (HTTP 503, DIMSE 0xA700/0xA702)"
    )


@dataclass(frozen=True, slots=True)
class SrRule:
    """``[[sr.rules]]``: start an SR job when a complete series matches (empty fields match anything)."""

    modality: str = ""
    calling_aet: str = ""
    description: str = ""  # regular expression searched in Series Description (case-insensitive)
    factor: int = 2
    method: str = "learned"
    send_to: str = ""  # AE title; empty = the calling AE that sent the series, when declared; "-" = keep here

    def matches(self, modality: str, calling_aet: str, description: str) -> bool:
        return (
            (not self.modality or self.modality.upper() == modality.upper())
            and (not self.calling_aet or self.calling_aet == calling_aet)
            and (not self.description or re.search(self.description, description, re.IGNORECASE) is not None)
        )


@dataclass(frozen=True, slots=True)
class PixelMaskRule:
    """``[[deid.pixel_masks]]``: rectangles filled on every frame under Clean Pixel Data when the instance matches
    (CTP's pixel anonymizer scripts). Manufacturer and model match as case-insensitive substrings, rows and columns
    exactly; an absent key matches anything. ``core`` builds ``deid.pixels.PixelMask`` from it."""

    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None
    rectangles: tuple[tuple[int, int, int, int], ...] = ()  # (x, y, width, height) in pixels


@dataclass(frozen=True, slots=True)
class DeidSettings:
    """``[deid]``: de-identification. Its arrays of tables (``[[deid.pixel_masks]]``) are read apart from the
    scalar settings (fields marked ``tables``), like ``[[sr.rules]]``."""

    pixel_masks: tuple[PixelMaskRule, ...] = field(default=(), metadata={"tables": True})


DIMSE_SERVICES = ("echo", "store", "find", "move", "get")


@dataclass(frozen=True, slots=True)
class Peer:
    ae_title: str
    host: str
    port: int
    description: str = ""
    labels: tuple[str, ...] = ()  # study labels attached to every study this peer sends (C-STORE)
    groups: tuple[str, ...] = ("*",)  # its C-FIND/C-MOVE/C-GET see studies carrying one of these ("*": all)
    allow: tuple[str, ...] = DIMSE_SERVICES  # the DIMSE services this AE may use as a caller
    hosts: tuple[str, ...] = ()  # addresses or networks it may call from (normalised); empty = any
    tls: bool = False  # associate with it over TLS (its server certificate checked against tls_ca)
    tls_ca: str = ""  # CA certificates (PEM) its server certificate must chain to; empty = the system's CAs
    tls_cert: str = ""  # this node's client certificate for it (PEM), when it asks for one
    tls_key: str = ""  # the private key of tls_cert
    tls_server_name: str = ""  # the name its certificate must carry; empty = host
    deidentify: tuple[str, ...] = ()  # de-identification option names applied to all sent to it; empty = none
    deidentify_project: str = ""  # the project whose key maps its UIDs and dates (set from the table's name)


@dataclass(frozen=True, slots=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    dimse: DimseSettings = field(default_factory=DimseSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    sr: SrSettings = field(default_factory=SrSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)  # the file's [http.oidc]
    audit: AuditSettings = field(default_factory=AuditSettings)
    peers: dict[str, Peer] = field(default_factory=dict)
    sr_rules: tuple[SrRule, ...] = ()
    deid: DeidSettings = field(default_factory=DeidSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir)


SECTIONS: dict[str, type[Any]] = {
    "node": NodeSettings,
    "dimse": DimseSettings,
    "http": HttpSettings,
    "store": StoreSettings,
    "sr": SrSettings,
    "oidc": OidcSettings,  # written [http.oidc] in the file, DCMNODE_HTTP_OIDC_<KEY> in the environment
    "audit": AuditSettings,
    "deid": DeidSettings,
}
NESTED = {"oidc": ("http", "oidc")}  # sections written as a table inside another: name -> (parent, key)
AUTH_MODES = ("none", "on")
TLS_CLIENT_CERT = ("none", "optional", "required")
SR_WORKERS = ("process", "thread", "off")
PEER_KEYS = {"host", "port", "description", "ae_title", "labels", "groups", "allow", "hosts", "deidentify",
             "deidentify_project"}  # fmt: skip
PEER_TLS_KEYS = {"tls_ca", "tls_cert", "tls_key", "tls_server_name"}  # strings; and tls, a boolean
TLS_CLIENT_CERT = ("required", "optional", "none")
PROJECT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # a de-identification project (its key's file name)
LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a study label (core.labels); "*" is a group, never a label


def load(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the effective settings. ``overrides`` is ``{section: {key: value}}`` from CLI flags."""
    raw: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    peers: dict[str, Any] = {}
    if path is not None:
        peers = _merge_file(raw, path)
    rules = raw["sr"].pop("rules", [])
    pixel_masks = raw["deid"].pop("pixel_masks", [])
    _merge_env(raw, env or {})
    for section, values in (overrides or {}).items():
        raw[section].update({k: v for k, v in values.items() if v is not None})
    sections = {name: _build(cls, raw[name], name) for name, cls in SECTIONS.items()}
    sections["deid"] = dataclasses.replace(sections["deid"], pixel_masks=_build_pixel_masks(pixel_masks))
    settings = Settings(**sections, peers=_build_peers(peers), sr_rules=_build_rules(rules))
    _validate(settings)
    return settings


def _merge_file(raw: dict[str, dict[str, Any]], path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    peers = data.pop("peers", {})
    for name, (parent, key) in NESTED.items():
        nested = data.get(parent, {}).pop(key, None) if isinstance(data.get(parent), dict) else None
        if nested is not None:
            if not isinstance(nested, dict):
                raise ConfigError(f"{path}: [{parent}.{key}] must be a table")
            raw[name].update(nested)
    for section, values in data.items():
        if section not in raw or section in NESTED or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{section}]")
        raw[section].update(values)
    if not isinstance(peers, dict):
        raise ConfigError(f"{path}: [peers] must hold one table per AE title")
    return peers


def _merge_env(raw: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith("DCMNODE_") or name == "DCMNODE_CONFIG":
            continue
        section, _, key = name[len("DCMNODE_") :].lower().partition("_")
        for nested, (parent, infix) in NESTED.items():
            if section == parent and key.startswith(infix + "_"):
                section, key = nested, key[len(infix) + 1 :]
        if section not in SECTIONS:
            continue
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section]) if not f.metadata.get("tables")}
        if key not in fields:
            raise ConfigError(f"{name}: unknown setting {section}.{key}")
        raw[section][key] = _from_text(value, SECTIONS[section]().__getattribute__(key), name)


def _from_text(text: str, default: Any, name: str) -> Any:
    """Convert an environment string to the type of the field's default."""
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, list):
            return [item.strip() for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot use {text!r} here") from exc
    return text


def _build(cls: type[Any], values: dict[str, Any], section: str) -> Any:
    defaults = cls()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not hasattr(defaults, key):
            raise ConfigError(f"unknown setting {section}.{key}")
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{section}.{key} must be {expected.__name__}, not {value!r}")
        out[key] = value
    return cls(**out)


def _build_peers(tables: dict[str, Any]) -> dict[str, Peer]:
    peers: dict[str, Peer] = {}
    for ae_title, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[peers.{ae_title}] must be a table with host and port")
        unknown = set(table) - PEER_KEYS - PEER_TLS_KEYS - {"tls"}
        if unknown:
            raise ConfigError(f"[peers.{ae_title}]: unknown keys {sorted(unknown)}")
        if "host" not in table or "port" not in table:
            raise ConfigError(f"[peers.{ae_title}] needs host and port")
        title = str(table.get("ae_title", ae_title))
        labels = _names(table.get("labels", []), f"[peers.{ae_title}] labels", star=False)
        groups = _names(table.get("groups", ["*"]), f"[peers.{ae_title}] groups", star=True)
        allow = _peer_list(table, "allow", ae_title, DIMSE_SERVICES)
        unknown_services = sorted(set(allow) - set(DIMSE_SERVICES))
        if unknown_services:
            raise ConfigError(f"[peers.{ae_title}] allow: unknown services {unknown_services}: {DIMSE_SERVICES}")
        hosts = tuple(_network(h, ae_title) for h in _peer_list(table, "hosts", ae_title, ()))
        description = str(table.get("description", ""))
        tls = _peer_tls(table, ae_title)
        deid = _peer_deid(table, ae_title)
        peers[title] = Peer(
            title, str(table["host"]), int(table["port"]), description,
            labels=labels, groups=groups, allow=allow, hosts=hosts, **tls, **deid,
        )  # fmt: skip
    return peers


def _peer_deid(table: dict[str, Any], ae_title: str) -> dict[str, Any]:
    """A peer's ``deidentify`` (option names, checked against the profile's by ``core.coercion.check`` when the
    services open) and ``deidentify_project`` (default: the table's name), which needs ``deidentify``."""
    options = _peer_list(table, "deidentify", ae_title, ())
    project = table.get("deidentify_project", ae_title)
    if "deidentify_project" in table and not options:
        raise ConfigError(f"[peers.{ae_title}] deidentify_project is set but deidentify is empty")
    if options and (not isinstance(project, str) or not PROJECT.match(project)):
        raise ConfigError(
            f"[peers.{ae_title}] deidentify_project {project!r} must be 1-64 characters of A-Z a-z 0-9 _ . - "
            "(it defaults to the table's name)"
        )
    return {"deidentify": options, "deidentify_project": project if options else ""}


def _peer_tls(table: dict[str, Any], ae_title: str) -> dict[str, Any]:
    """A peer's TLS keys: ``tls`` (boolean) and the paths and server name (strings); a path needs ``tls``."""
    out: dict[str, Any] = {"tls": table.get("tls", False)}
    if not isinstance(out["tls"], bool):
        raise ConfigError(f"[peers.{ae_title}] tls must be true or false, not {out['tls']!r}")
    for key in sorted(PEER_TLS_KEYS & set(table)):
        if not isinstance(table[key], str):
            raise ConfigError(f"[peers.{ae_title}] {key} must be a string, not {table[key]!r}")
        if not out["tls"]:
            raise ConfigError(f"[peers.{ae_title}] {key} is set but tls is not true")
        out[key] = table[key]
    if bool(out.get("tls_cert")) != bool(out.get("tls_key")):
        raise ConfigError(f"[peers.{ae_title}] tls_cert and tls_key go together")
    return out


def _names(value: Any, where: str, star: bool) -> tuple[str, ...]:
    """A list of label names (``star``: or ``*``, every study)."""
    if not isinstance(value, list) or not all(
        isinstance(v, str) and (LABEL.match(v) or (star and v == "*")) for v in value
    ):
        also = ', or "*" (every study)' if star else ""
        raise ConfigError(f"{where}: a list of labels (1-64 characters of A-Z a-z 0-9 _ . -){also}")
    return tuple(dict.fromkeys(value))


def _peer_list(table: dict[str, Any], key: str, ae_title: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = table.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[peers.{ae_title}] {key} must be a list of strings, not {value!r}")
    return tuple(v.strip().lower() if key == "allow" else v.strip() for v in value)


def _network(text: str, ae_title: str) -> str:
    """A peer's ``hosts`` entry as a normalised network ("10.0.0.5/32", "10.1.0.0/16", "::1/128")."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as exc:
        raise ConfigError(f"[peers.{ae_title}] hosts: {text!r} is not an IP address or network") from exc


def _build_rules(tables: Any) -> tuple[SrRule, ...]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("[[sr.rules]] must be an array of tables")
    rules = []
    for n, table in enumerate(tables, 1):
        try:
            rule = _build(SrRule, table, f"sr.rules[{n}]")
            re.compile(rule.description)
        except re.error as exc:
            raise ConfigError(f"sr.rules[{n}].description is not a regular expression: {exc}") from exc
        if rule.factor not in (2, 4) or rule.method not in ("learned", "classical"):
            raise ConfigError(f"sr.rules[{n}]: factor 2 or 4, method learned or classical")
        rules.append(rule)
    return tuple(rules)


def _build_pixel_masks(tables: Any) -> tuple[PixelMaskRule, ...]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("[[deid.pixel_masks]] must be an array of tables")
    masks = []
    for n, table in enumerate(tables, 1):
        where = f"deid.pixel_masks[{n}]"
        unknown = set(table) - {"manufacturer", "model", "rows", "columns", "rectangles"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("manufacturer", "model"):
            if key in table and not (isinstance(table[key], str) and table[key].strip()):
                raise ConfigError(f"{where}.{key} must be a non-empty string, not {table[key]!r}")
        for key in ("rows", "columns"):
            if key in table and not (type(table[key]) is int and table[key] > 0):
                raise ConfigError(f"{where}.{key} must be a positive integer, not {table[key]!r}")
        rectangles = table.get("rectangles")
        if not isinstance(rectangles, list) or not rectangles or not all(
            isinstance(r, list) and len(r) == 4 and all(type(v) is int for v in r) and r[0] >= 0 and r[1] >= 0
            and r[2] > 0 and r[3] > 0 for r in rectangles
        ):  # fmt: skip
            raise ConfigError(
                f"{where}.rectangles must be a list of [x, y, width, height] (x, y >= 0; width, height > 0)"
            )
        masks.append(
            PixelMaskRule(
                table.get("manufacturer"),
                table.get("model"),
                table.get("rows"),
                table.get("columns"),
                tuple((r[0], r[1], r[2], r[3]) for r in rectangles),
            )  # fmt: skip
        )
    return tuple(masks)


def _validate(settings: Settings) -> None:
    titles = [settings.node.ae_title, *settings.peers, *settings.dimse.allowed_callers]
    for title in titles:
        if not AE_TITLE.match(title) or not title.strip():
            raise ConfigError(f"invalid AE title {title!r}: 1-16 characters, no backslash")
    if not 0 <= settings.dimse.processes <= 64:
        raise ConfigError(f"dimse.processes must be 0-64, not {settings.dimse.processes}")
    _validate_tls(settings.dimse)
    for name, port in (("dimse.port", settings.dimse.port), ("http.port", settings.http.port),
                       ("dimse.tls_port", settings.dimse.tls_port)):  # fmt: skip
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name} must be 0-65535, not {port}")
    for peer in settings.peers.values():
        if not 1 <= peer.port <= 65535:
            raise ConfigError(f"peer {peer.ae_title}: port must be 1-65535, not {peer.port}")
    if settings.store.on_duplicate not in DUPLICATE_POLICIES:
        raise ConfigError(f"store.on_duplicate must be one of {DUPLICATE_POLICIES}")
    if not 0 <= settings.http.metadata_workers <= 64:
        raise ConfigError(f"http.metadata_workers must be 0-64, not {settings.http.metadata_workers}")
    if settings.http.max_archive_expanded_mb < 1:
        raise ConfigError(
            f"http.max_archive_expanded_mb must be at least 1, not {settings.http.max_archive_expanded_mb}"
        )
    if settings.http.max_query_results < 1:
        raise ConfigError(f"http.max_query_results must be at least 1, not {settings.http.max_query_results}")
    if settings.http.max_stow_parts < 1 or settings.http.max_header_kb < 1:
        raise ConfigError("http.max_stow_parts and http.max_header_kb must be at least 1")
    if settings.sr.worker not in SR_WORKERS:
        raise ConfigError(f"sr.worker must be one of {SR_WORKERS}, not {settings.sr.worker!r}")
    for rule in settings.sr_rules:
        if rule.send_to not in ("", "-") and not AE_TITLE.match(rule.send_to):
            raise ConfigError(f"sr.rules: send_to {rule.send_to!r} is not an AE title")
    if settings.http.auth not in AUTH_MODES:
        raise ConfigError(f"http.auth must be one of {AUTH_MODES}, not {settings.http.auth!r}")
    for name, value in (
        ("dimse.max_associations_per_ae", settings.dimse.max_associations_per_ae),
        ("http.expensive_per_second", settings.http.expensive_per_second),
        ("http.expensive_burst", settings.http.expensive_burst),
        ("http.max_imports_per_client", settings.http.max_imports_per_client),
        ("sr.max_running", settings.sr.max_running),
        ("sr.max_jobs_per_client", settings.sr.max_jobs_per_client),
        ("sr.idle_exit_seconds", settings.sr.idle_exit_seconds),
        ("http.metadata_idle_seconds", settings.http.metadata_idle_seconds),
    ):
        if value < 0:
            raise ConfigError(f"{name} must be 0 or more, not {value}")
    if settings.http.session_hours <= 0:
        raise ConfigError(f"http.session_hours must be greater than 0, not {settings.http.session_hours!r}")
    _validate_https(settings.http)
    oidc = settings.oidc
    if oidc.issuer and not (oidc.audience and oidc.jwks):
        raise ConfigError("[http.oidc] issuer needs audience and jwks")
    if not 0 <= oidc.leeway_seconds <= 60:
        raise ConfigError(f"http.oidc.leeway_seconds must be 0-60, not {oidc.leeway_seconds}")
    if not 0 <= oidc.jwks_refetch_seconds <= 3600:
        raise ConfigError(f"http.oidc.jwks_refetch_seconds must be 0-3600, not {oidc.jwks_refetch_seconds}")
    if settings.audit.syslog and not SYSLOG_URL.match(settings.audit.syslog):
        raise ConfigError(f"audit.syslog must be udp://host:port or tcp://host:port, not {settings.audit.syslog!r}")
    if settings.node.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"node.log_level must be DEBUG, INFO, WARNING or ERROR, not {settings.node.log_level}")


def _validate_tls(dimse: DimseSettings) -> None:
    if dimse.tls_client_cert not in TLS_CLIENT_CERT:
        raise ConfigError(f"dimse.tls_client_cert must be one of {TLS_CLIENT_CERT}, not {dimse.tls_client_cert!r}")
    if bool(dimse.tls_cert) != bool(dimse.tls_key):
        raise ConfigError("dimse.tls_cert and dimse.tls_key go together")
    if dimse.tls_only and not dimse.tls_cert:
        raise ConfigError("dimse.tls_only needs the TLS listener: set dimse.tls_cert and dimse.tls_key")
    if dimse.tls_cert and dimse.tls_client_cert != "none" and not dimse.tls_ca:
        raise ConfigError(
            'dimse.tls_ca (the CAs of trusted client certificates) is needed unless tls_client_cert = "none"'
        )
    if dimse.tls_cert and not dimse.tls_only and dimse.tls_port == dimse.port and dimse.port != 0:
        raise ConfigError(f"dimse.tls_port and dimse.port are both {dimse.port}")


def _validate_https(http: HttpSettings) -> None:
    if bool(http.tls_cert) != bool(http.tls_key):
        raise ConfigError("http.tls_cert and http.tls_key go together (HTTPS needs both)")
    if http.tls_client_cert not in TLS_CLIENT_CERT:
        raise ConfigError(f"http.tls_client_cert must be one of {TLS_CLIENT_CERT}, not {http.tls_client_cert!r}")
    if http.tls_client_cert != "none" and not (http.tls_cert and http.tls_ca):
        raise ConfigError(f"http.tls_client_cert = {http.tls_client_cert!r} needs tls_cert, tls_key and tls_ca")
    if not 0 <= http.redirect_port <= 65535:
        raise ConfigError(f"http.redirect_port must be 0-65535, not {http.redirect_port}")
    if http.redirect_port and not http.tls_cert:
        raise ConfigError("http.redirect_port redirects to HTTPS: it needs http.tls_cert and http.tls_key")
    if http.redirect_port and http.redirect_port == http.port:
        raise ConfigError(f"http.redirect_port {http.redirect_port} is http.port itself")
    if http.hsts_seconds < 0:
        raise ConfigError(f"http.hsts_seconds must be 0 or more, not {http.hsts_seconds}")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (``""`` and ``0.0.0.0`` are every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def describe() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, help) for every setting: used by docs tests and ``dcmnode config``."""
    rows = []
    for section, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            if f.metadata.get("tables"):
                continue  # an array of tables ([[deid.pixel_masks]]): documented by example in the file
            rows.append(
                (
                    ".".join(NESTED.get(section, (section,))),
                    f.name,
                    getattr(defaults, f.name),
                    f.metadata.get("help", ""),
                )
            )
    return rows


def configure_logging(level: str) -> None:
    """The log format of every process of the node (``node.log_level``; pynetdicom's own at WARNING unless DEBUG)."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s [%(process)d %(threadName)s] %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)
