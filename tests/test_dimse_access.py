"""DIMSE access control against real SCUs (dcmtk's echoscu/storescu/findscu/movescu/getscu, pynetdicom): who may
associate (calling AE, called AE, host, User Identity) and which services each caller may use (0x0124)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dcmnode import config
from dcmnode.app import Node
from dcmnode.core.access import Kind, Principal, Scope, parse_scopes
from dcmnode.dimse import scp as scp_module
from dcmnode.errors import ConfigError
from dcmnode.model import Source, SourceKind
from tests.conftest import HOST, make_settings
from tests.factories import ct_series, part10, write_series
from tests.test_retrieve_dimse import StorageScp

PASSWORD = "PASS-word-1"


# -- a real authenticator: scrypt-hashed local users and RS256 JWTs (the node's own is core/auth) --------------


class Users:
    """``core.access.Authenticator`` over a dict of users (hashlib.scrypt hashes) and JWTs signed by one key."""

    def __init__(self) -> None:
        self._users: dict[str, tuple[bytes, bytes, Principal]] = {}
        self.jwt_key: Any = None
        self.checked: list[str] = []  # names asked for (never passwords)

    def add(self, name: str, password: str, scopes: str = "read,write", groups: str = "*") -> None:
        salt = os.urandom(16)
        principal = Principal(name, Kind.USER, parse_scopes(scopes), frozenset(groups.split(",")))
        self._users[name] = (salt, self._hash(password, salt), principal)

    @staticmethod
    def _hash(password: str, salt: bytes) -> bytes:
        return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)

    def verify_password(self, name: str, password: str) -> Principal | None:
        self.checked.append(name)
        entry = self._users.get(name)
        if entry is None or not password:
            return None
        salt, digest, principal = entry
        return principal if hmac.compare_digest(self._hash(password, salt), digest) else None

    def verify_jwt(self, token: str) -> Principal | None:
        jwt = pytest.importorskip("jwt")
        try:
            claims = jwt.decode(token, self.jwt_key.public_key(), algorithms=["RS256"], audience="dcmnode")
        except jwt.InvalidTokenError:
            return None
        return Principal(claims["sub"], Kind.USER, parse_scopes(claims["scope"].split()))


@pytest.fixture
def dcmtk() -> None:
    assert shutil.which("storescu"), "dcmtk is required: apt-get install dcmtk (the README's test command does this)"


@dataclasses.dataclass
class Acl:
    node: Node
    scp: scp_module.Scp

    @property
    def port(self) -> int:
        return self.scp.port

    def instances(self) -> int:
        return self.node.services.store.index.counts()["instances"]


@pytest.fixture
def acl_factory(tmp_path: Path) -> Iterator[Callable[..., Acl]]:
    """A node whose SCP is started with an authenticator (``scp.start(..., authenticator)``, as the node will be
    once ``Services.auth`` exists) and ``[peers]`` from TOML."""
    made: list[Acl] = []

    def factory(
        peers_toml: str = "", authenticator: Any = None, audited: bool = False, **sections: dict[str, Any]
    ) -> Acl:
        settings = make_settings(tmp_path / f"data{len(made)}", **sections)
        if peers_toml:
            cfg = tmp_path / f"peers{len(made)}.toml"
            cfg.write_text(peers_toml)
            settings = dataclasses.replace(settings, peers=config.load(cfg).peers)
        node = Node(settings)
        sock = scp_module.listen(HOST, 0)
        services = node.services
        trail = services.audit if audited else None  # ``audited``: with the audit trail, as ``Node`` starts it
        scp = scp_module.start(settings, services.ingest, services.catalog, sock, trail, authenticator=authenticator)
        made.append(Acl(node, scp))
        return made[-1]

    yield factory
    for acl in made:
        acl.scp.shutdown()
        acl.node.close()


def peer(name: str, port: int = 4242, **keys: list[str]) -> str:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in keys.items())
    return f"[peers.{name}]\nhost = '{HOST}'\nport = {port}\n{extra}"


def associate(
    port: int, calling: str, called: str = "DCMNODE", contexts: Any = None, bind: str = "", **kwargs: Any
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in contexts or [Verification, CTImageStorage]:
        ae.add_requested_context(context)
    return ae.associate(HOST, port, ae_title=called, bind_address=(bind, 0) if bind else None, **kwargs)


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected, "the association was not rejected"
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)


def fill(node: Node, datasets: list[Dataset]) -> None:
    for ds in datasets:
        node.services.ingest.store_bytes(part10(ds), Source(SourceKind.IMPORT))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.01)


# -- who may associate -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("dcmtk")
def test_unknown_calling_ae_is_rejected_permanent_calling_ae_not_recognized(acl_factory: Callable[..., Acl]) -> None:
    acl = acl_factory(peer("PACS1"), dimse={"require_known_callers": True})
    result = run("echoscu", "-aet", "STRANGER", "-aec", "DCMNODE", HOST, str(acl.port))
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout
    assert rejection(associate(acl.port, "STRANGER")) == (1, 1, 3)
    assert run("echoscu", "-aet", "PACS1", "-aec", "DCMNODE", HOST, str(acl.port)).returncode == 0


@pytest.mark.usefixtures("dcmtk")
def test_wrong_called_ae_is_rejected_called_ae_not_recognized(acl_factory: Callable[..., Acl]) -> None:
    acl = acl_factory(peer("PACS1"), dimse={"require_known_callers": True})
    result = run("echoscu", "-aet", "PACS1", "-aec", "NOTME", HOST, str(acl.port))
    assert result.returncode != 0 and "Association Rejected" in result.stderr + result.stdout
    assert rejection(associate(acl.port, "PACS1", called="NOTME")) == (1, 1, 7)


@pytest.mark.usefixtures("dcmtk")
def test_defaults_check_neither_ae_title_nor_identity(acl_factory: Callable[..., Acl], tmp_path: Path) -> None:
    """As before access control: any calling AE, any called AE, a User Identity item ignored without an
    authenticator (pynetdicom's behaviour)."""
    acl = acl_factory()
    assert run("echoscu", "-aet", "ANYONE", "-aec", "WHATEVER", HOST, str(acl.port)).returncode == 0
    files = write_series(tmp_path / "send", ct_series(1, rows=8, cols=8))
    sent = run("storescu", "-usr", "nobody", "-pwd", "x", "-aec", "DCMNODE", HOST, str(acl.port), str(files[0]))
    assert sent.returncode == 0, sent.stderr
    assert acl.instances() == 1


def test_a_peer_calling_from_another_host_is_rejected(acl_factory: Callable[..., Acl]) -> None:
    toml = peer("FAR", hosts=["127.0.0.2"]) + peer("NEAR", hosts=["127.0.0.0/30"])
    acl = acl_factory(toml, dimse={"require_known_callers": True})
    assert rejection(associate(acl.port, "FAR")) == (1, 1, 3)  # from 127.0.0.1
    far = associate(acl.port, "FAR", bind="127.0.0.2")
    assert far.is_established
    far.release()
    near = associate(acl.port, "NEAR")
    assert near.is_established
    near.release()
    # a declared peer's hosts hold without require_known_callers too
    open_node = acl_factory(peer("FAR", hosts=["127.0.0.2"]))
    assert rejection(associate(open_node.port, "FAR")) == (1, 1, 3)
    assert associate(open_node.port, "OTHER").is_established


@pytest.mark.usefixtures("dcmtk")
def test_host_mismatch_with_dcmtk(acl_factory: Callable[..., Acl]) -> None:
    acl = acl_factory(peer("FAR", hosts=["127.0.0.2"]), dimse={"require_known_callers": True})
    result = run("echoscu", "-aet", "FAR", "-aec", "DCMNODE", HOST, str(acl.port))
    assert result.returncode != 0 and "Association Rejected" in result.stderr + result.stdout


# -- which services ----------------------------------------------------------------------------------------------


SERVICES = ["echo", "store", "find", "move", "get"]


@pytest.fixture
def stored() -> list[Dataset]:
    return ct_series(2, rows=8, cols=8)


def dcmtk_service(service: str, acl: Acl, calling: str, study: str, files: list[Path], out: Path) -> str:
    """Run the dcmtk tool for ``service`` as ``calling``; its output (stdout + stderr), asserted to run."""
    base = ["-aet", calling, "-aec", "DCMNODE", HOST, str(acl.port)]
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    cmd = {
        "echo": ["echoscu", "-v", *base],
        "store": ["storescu", "-v", *base, *map(str, files)],
        "find": ["findscu", "-v", "-S", *base, *keys],
        "move": ["movescu", "-v", "-S", "-aem", "DEST", *base, *keys],
        "get": ["getscu", "-v", "-S", "-od", str(out), *base, *keys],
    }[service]
    result = run(*cmd)
    return result.stdout + result.stderr


@pytest.mark.usefixtures("dcmtk")
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_right_with_dcmtk(
    acl_factory: Callable[..., Acl], tmp_path: Path, stored: list[Dataset], service: str
) -> None:
    """A peer without ``service`` in its allow is answered 0x0124 for it; one with it is served."""
    dest = StorageScp("DEST")
    try:
        others = [s for s in SERVICES if s != service]
        toml = peer("LIMITED", allow=others) + peer("FULL") + peer("DEST", dest.port)
        acl = acl_factory(toml, dimse={"require_known_callers": True})
        fill(acl.node, stored[:1])
        files = write_series(tmp_path / "send", stored[1:])
        study = stored[0].StudyInstanceUID
        (tmp_path / "get").mkdir()
        refused = dcmtk_service(service, acl, "LIMITED", study, files, tmp_path / "get")
        assert re.search(r"Status: 0x0?124\b", refused), refused
        assert acl.instances() == 1 and not dest.received and not list((tmp_path / "get").iterdir())
        served = dcmtk_service(service, acl, "FULL", study, files, tmp_path / "get")
        assert not re.search(r"0x0?124\b", served), served
        expected = {
            "echo": lambda: "Received Echo Response (Success)" in served,
            "store": lambda: acl.instances() == 2,
            "find": lambda: study in served,
            "move": lambda: len(dest.received) == 1,
            "get": lambda: len(list((tmp_path / "get").iterdir())) == 1,
        }[service]
        assert expected(), served
    finally:
        dest.stop()


def test_service_refusals_carry_status_and_error_comment(
    acl_factory: Callable[..., Acl], stored: list[Dataset]
) -> None:
    dest = StorageScp("DEST")
    try:
        toml = peer("NOTHING", allow=[]) + peer("DEST", dest.port)
        acl = acl_factory(toml, dimse={"require_known_callers": True})
        fill(acl.node, stored)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = stored[0].StudyInstanceUID
        models = [
            Verification,
            CTImageStorage,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ]
        assoc = associate(acl.port, "NOTHING", contexts=models)
        assert assoc.is_established
        try:
            answers = {
                "echo": assoc.send_c_echo(),
                "store": assoc.send_c_store(ct_series(1)[0]),
                "find": list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))[-1][0],
                "move": list(assoc.send_c_move(identifier, "DEST", StudyRootQueryRetrieveInformationModelMove))[-1][0],
                "get": list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))[-1][0],
            }
            # a C-MOVE to an undeclared destination is still 0xA801 (checked before the right)
            unknown = list(assoc.send_c_move(identifier, "NOWHERE", StudyRootQueryRetrieveInformationModelMove))
        finally:
            assoc.release()
        for service, answer in answers.items():
            assert answer.Status == 0x0124, service
            assert "not allowed for calling AE NOTHING" in answer.ErrorComment, service
        assert unknown[-1][0].Status == 0xA801
        assert acl.instances() == 2 and not dest.received
    finally:
        dest.stop()


def test_move_only_to_declared_destinations(acl_factory: Callable[..., Acl], stored: list[Dataset]) -> None:
    acl = acl_factory(peer("MOVER"), dimse={"require_known_callers": True})
    fill(acl.node, stored)
    result = run(
        "movescu", "-v", "-S", "-aet", "MOVER", "-aec", "DCMNODE", "-aem", "NOWHERE", HOST, str(acl.port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={stored[0].StudyInstanceUID}",
    )  # fmt: skip
    assert "Refused: MoveDestinationUnknown" in result.stdout + result.stderr


def test_undeclared_callers_may_use_every_service_without_require_known_callers(
    acl_factory: Callable[..., Acl], stored: list[Dataset]
) -> None:
    acl = acl_factory(peer("LIMITED", allow=["echo"]))
    limited = associate(acl.port, "LIMITED")
    assert limited.send_c_store(stored[0]).Status == 0x0124
    limited.release()
    anyone = associate(acl.port, "ANYONE")
    assert anyone.send_c_echo().Status == 0x0000
    assert anyone.send_c_store(stored[0]).Status == 0x0000
    anyone.release()
    assert acl.instances() == 1


# -- user identity -----------------------------------------------------------------------------------------------


@pytest.fixture
def users() -> Users:
    users = Users()
    users.add("dimseacl", PASSWORD)
    users.add("reader", PASSWORD, scopes="read")
    return users


@pytest.mark.usefixtures("dcmtk")
def test_user_identity_password(
    acl_factory: Callable[..., Acl], users: Users, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    acl = acl_factory(authenticator=users, dimse={"require_user_identity": True})
    files = write_series(tmp_path / "send", ct_series(2, rows=8, cols=8))
    base = ["-aec", "DCMNODE", HOST, str(acl.port)]
    ok = run("storescu", "-usr", "dimseacl", "-pwd", PASSWORD, *base, *map(str, files))
    assert ok.returncode == 0, ok.stderr
    assert acl.instances() == 2
    wrong = run("storescu", "-usr", "dimseacl", "-pwd", "wrong", *base, str(files[0]))
    assert wrong.returncode != 0 and "Association Rejected" in wrong.stdout + wrong.stderr
    missing = run("storescu", *base, str(files[0]))
    assert missing.returncode != 0 and "Association Rejected" in missing.stdout + missing.stderr
    username_only = run("storescu", "-usr", "dimseacl", *base, str(files[0]))
    assert username_only.returncode != 0
    # pynetdicom's rejections: a refused identity transient/ACSE/no reason; a missing one permanent/no reason
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    refused = ae.associate(HOST, acl.port, ae_title="DCMNODE", ext_neg=[_identity(2, "dimseacl", "wrong")])
    assert rejection(refused) == (2, 2, 1)
    assert rejection(ae.associate(HOST, acl.port, ae_title="DCMNODE")) == (1, 1, 1)
    assert users.checked.count("dimseacl") >= 3  # the passwords were checked by the authenticator...
    assert PASSWORD not in caplog.text and "-pwd" not in caplog.text  # ... and never logged
    assert "User Identity (type 2) refused" in caplog.text


def test_user_scopes_apply_and_the_principal_is_kept(
    acl_factory: Callable[..., Acl], users: Users, stored: list[Dataset]
) -> None:
    acl = acl_factory(authenticator=users)
    reader = associate(acl.port, "SCU", ext_neg=[_identity(2, "reader", PASSWORD)])
    assert reader.is_established
    assert [(p.name, p.kind, p.scopes) for p in acl.scp.gate.principals()] == [("reader", Kind.USER, {Scope.READ})]
    answer = reader.send_c_store(stored[0])
    assert answer.Status == 0x0124 and "needs scope write" in answer.ErrorComment
    assert reader.send_c_echo().Status == 0x0000
    reader.release()
    wait_until(lambda: len(acl.scp.gate) == 0, "the gate forgets a released association")
    writer = associate(acl.port, "SCU", ext_neg=[_identity(2, "dimseacl", PASSWORD)])
    assert writer.send_c_store(stored[0]).Status == 0x0000
    writer.abort()
    wait_until(lambda: len(acl.scp.gate) == 0, "the gate forgets an aborted association")
    plain = associate(acl.port, "PLAINSCU")  # no identity and not required: the calling AE is the principal
    assert [(p.name, p.kind) for p in acl.scp.gate.principals()] == [("PLAINSCU", Kind.PEER)]
    assert plain.send_c_store(stored[1]).Status == 0x0000
    plain.release()
    assert acl.instances() == 2


@pytest.mark.usefixtures("dcmtk")
def test_user_identity_jwt(acl_factory: Callable[..., Acl], users: Users, tmp_path: Path) -> None:
    jwt = pytest.importorskip("jwt")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    users.jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    acl = acl_factory(authenticator=users, dimse={"require_user_identity": True})
    now = int(time.time())
    claims = {"sub": "oidc-user", "aud": "dcmnode", "scope": "read write", "iat": now, "exp": now + 300}
    token = tmp_path / "token.jwt"
    token.write_text(jwt.encode(claims, users.jwt_key, algorithm="RS256"))
    files = write_series(tmp_path / "send", ct_series(1, rows=8, cols=8))
    base = ["-aec", "DCMNODE", HOST, str(acl.port)]
    ok = run("storescu", "--jwt", str(token), *base, str(files[0]))
    assert ok.returncode == 0, ok.stderr
    assert acl.instances() == 1
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = tmp_path / "forged.jwt"
    forged.write_text(jwt.encode(claims, other_key, algorithm="RS256"))
    bad = run("storescu", "--jwt", str(forged), *base, str(files[0]))
    assert bad.returncode != 0 and "Association Rejected" in bad.stdout + bad.stderr


def test_require_user_identity_needs_an_authenticator(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", dimse={"require_user_identity": True})
    node = Node(settings)
    sock = scp_module.listen(HOST, 0)
    try:
        with pytest.raises(ConfigError, match="require_user_identity"):
            scp_module.start(settings, node.services.ingest, node.services.catalog, sock)
    finally:
        sock.close()
        node.close()


def _identity(kind: int, name: str, password: str) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = name.encode()
    item.secondary_field = password.encode()
    return item


# -- settings ----------------------------------------------------------------------------------------------------


def test_peer_allow_and_hosts_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "peers.toml"
    cfg.write_text(peer("A", allow=["ECHO", "store"], hosts=["10.0.0.5", "10.1.0.0/16"]) + peer("B"))
    peers = config.load(cfg).peers
    assert peers["A"].allow == ("echo", "store") and peers["A"].hosts == ("10.0.0.5/32", "10.1.0.0/16")
    assert peers["B"].allow == config.DIMSE_SERVICES and peers["B"].hosts == ()
    for bad, message in ((peer("A", allow=["push"]), "unknown services"), (peer("A", hosts=["pacs"]), "hosts")):
        cfg.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            config.load(cfg)


def test_get_role_selection_still_works_for_allowed_callers(
    acl_factory: Callable[..., Acl], stored: list[Dataset]
) -> None:
    """C-GET through the gate's wrapper keeps pynetdicom's role selection (the requestor as storage SCP)."""
    acl = acl_factory(peer("GETTER", allow=["get"]), dimse={"require_known_callers": True})
    fill(acl.node, stored)
    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for cx in StoragePresentationContexts[:100]:
        ae.add_requested_context(cx.abstract_syntax)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = ae.associate(
        HOST, acl.port, ae_title="DCMNODE", ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = stored[0].StudyInstanceUID
    final = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))[-1][0]
    assoc.release()
    assert final.Status == 0x0000 and sorted(received) == sorted(ds.SOPInstanceUID for ds in stored)
