"""DIMSE security events in the audit trail, with dcmtk against a node whose SCP has the trail: rejected
associations (unknown calling AE, wrong called AE, another host, no User Identity) and 0x0124 refusals are 110113
Security Alerts, each User Identity checked is a 110114 User Authentication; no passcode and no JWT is written."""

from __future__ import annotations

import functools
import json
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.conftest import HOST
from tests.factories import ct_series, write_series
from tests.test_dimse_access import (  # noqa: F401 (acl_factory: a fixture)
    PASSWORD,
    Acl,
    Users,
    _identity,
    acl_factory,
    associate,
    fill,
    peer,
    rejection,
    run,
    wait_until,
)

WRONG = "WRONG-pass-9"


@pytest.fixture(autouse=True)
def dcmtk() -> None:
    assert shutil.which("storescu"), "dcmtk is required: apt-get install dcmtk (the README's test command does this)"


@pytest.fixture
def audited_factory(request: pytest.FixtureRequest) -> Callable[..., Acl]:
    """test_dimse_access's ``acl_factory`` (imported above, so that pytest finds it here) with the node's audit
    trail handed to the SCP, as ``Node`` does."""
    return functools.partial(request.getfixturevalue("acl_factory"), audited=True)


def records(acl: Acl) -> list[dict[str, Any]]:
    folder = acl.node.settings.data_dir / "audit"
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]


def events(acl: Acl) -> Counter[tuple[str, int]]:
    return Counter((r["event"]["code"], r["outcome"]) for r in records(acl))


def raw(acl: Acl) -> bytes:
    return b"".join(p.read_bytes() for p in (acl.node.settings.data_dir / "audit").glob("*.jsonl"))


def alerts(acl: Acl) -> list[tuple[str, str, str, str]]:
    """(requestor id, kind, address, alert) of each 110113, in order."""
    out = []
    for r in records(acl):
        if r["event"]["code"] == "110113":
            who = r["participants"][0]
            out.append((who["id"], who["kind"], who.get("address", ""), r["detail"]["alert"]))
    return out


def test_rejected_associations_are_security_alerts(audited_factory: Callable[..., Acl], tmp_path: Path) -> None:
    users = Users()
    users.add("dimseaudit", PASSWORD)
    toml = peer("PACS1") + peer("FAR", hosts=["127.0.0.2"])
    acl = audited_factory(toml, authenticator=users, dimse={"require_known_callers": True})
    base = [HOST, str(acl.port)]
    stranger = run("echoscu", "-aet", "STRANGER", "-aec", "DCMNODE", *base)
    assert stranger.returncode != 0 and "Association Rejected" in stranger.stdout + stranger.stderr
    assert run("echoscu", "-aet", "PACS1", "-aec", "NOTME", *base).returncode != 0
    assert run("echoscu", "-aet", "FAR", "-aec", "DCMNODE", *base).returncode != 0  # from 127.0.0.1
    # credentials sent by an unknown caller are not checked: rejected for its AE title, and said so
    files = write_series(tmp_path / "send", ct_series(1, rows=8, cols=8))
    sent = ["-aet", "STRANGER", "-aec", "DCMNODE", "-usr", "dimseaudit", "-pwd", WRONG, *base, str(files[0])]
    with_user = run("storescu", *sent)
    assert with_user.returncode != 0 and "Association Rejected" in with_user.stdout + with_user.stderr
    ok = run("echoscu", "-aet", "PACS1", "-aec", "DCMNODE", *base)
    assert ok.returncode == 0, ok.stderr
    assert events(acl) == Counter({("110113", 4): 4})  # the echo that was served is not an event
    assert alerts(acl) == [
        ("STRANGER", "peer", HOST, "association rejected: calling AE title not recognized"),
        ("PACS1", "peer", HOST, "association rejected: called AE title 'NOTME' not recognized"),
        ("FAR", "peer", HOST, "association rejected: not from one of its hosts"),
        ("STRANGER", "peer", HOST, "association rejected: calling AE title not recognized"),
    ]
    assert users.checked == []
    assert rejection(associate(acl.port, "STRANGER", ext_neg=[])) == (1, 1, 3)
    assert WRONG.encode() not in raw(acl)


def test_user_identity_is_recorded_without_the_passcode_or_the_jwt(
    audited_factory: Callable[..., Acl], tmp_path: Path
) -> None:
    jwt = pytest.importorskip("jwt")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    users = Users()
    users.add("dimseaudit", PASSWORD)
    users.jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    acl = audited_factory(authenticator=users, dimse={"require_user_identity": True})
    files = write_series(tmp_path / "send", ct_series(1, rows=8, cols=8))
    base = ["-aet", "STORESCU", "-aec", "DCMNODE", HOST, str(acl.port)]
    wrong = run("storescu", "-usr", "dimseaudit", "-pwd", WRONG, *base, str(files[0]))
    assert wrong.returncode != 0 and "Association Rejected" in wrong.stdout + wrong.stderr
    right = run("storescu", "-usr", "dimseaudit", "-pwd", PASSWORD, *base, str(files[0]))
    assert right.returncode == 0, right.stderr
    assert run("storescu", *base, str(files[0])).returncode != 0  # no User Identity
    now = int(time.time())
    claims = {"sub": "oidc-user", "aud": "dcmnode", "scope": "read write", "iat": now, "exp": now + 300}
    token = jwt.encode(claims, users.jwt_key, algorithm="RS256")
    forged = jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256")
    (tmp_path / "token.jwt").write_text(token)
    (tmp_path / "forged.jwt").write_text(forged)
    signed_in = run("storescu", "--jwt", str(tmp_path / "token.jwt"), *base, str(files[0]))
    assert signed_in.returncode == 0, signed_in.stderr
    assert run("storescu", "--jwt", str(tmp_path / "forged.jwt"), *base, str(files[0])).returncode != 0
    wait_until(lambda: events(acl)[("110104", 0)] == 2, "the two C-STORE associations' records")
    assert events(acl) == Counter({("110114", 4): 2, ("110114", 0): 2, ("110113", 4): 1, ("110104", 0): 2})
    logins = [
        (r["participants"][0]["id"], r["participants"][0]["kind"], r["outcome"], r["participants"][0]["address"])
        for r in records(acl)
        if r["event"]["code"] == "110114"
    ]
    assert logins == [
        ("dimseaudit", "unknown", 4, HOST),  # the name it claimed
        ("dimseaudit", "user", 0, HOST),
        ("oidc-user", "user", 0, HOST),
        ("STORESCU", "peer", 4, HOST),  # a refused JWT names no one: the calling AE
    ]
    assert all(r["type"]["code"] == "110122" for r in records(acl) if r["event"]["code"] == "110114")
    assert alerts(acl) == [("STORESCU", "peer", HOST, "association rejected: no User Identity")]
    trail = raw(acl)
    for secret in (PASSWORD, WRONG, token, forged, token.split(".")[2], forged.split(".")[2]):
        assert secret.encode() not in trail


@pytest.fixture
def stored() -> list[Dataset]:
    return ct_series(1, rows=8, cols=8)


def test_refused_services_are_security_alerts(audited_factory: Callable[..., Acl], stored: list[Dataset]) -> None:
    users = Users()
    users.add("reader", PASSWORD, scopes="read")
    toml = peer("NOFIND", allow=["echo", "store"]) + peer("FULL")
    acl = audited_factory(toml, authenticator=users, dimse={"require_known_callers": True})
    fill(acl.node, stored)
    study = stored[0].StudyInstanceUID
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    refused = run("findscu", "-v", "-S", "-aet", "NOFIND", "-aec", "DCMNODE", HOST, str(acl.port), *keys)
    assert re.search(r"Status: 0x0?124\b", refused.stdout + refused.stderr), refused.stdout + refused.stderr
    served = run("findscu", "-v", "-S", "-aet", "FULL", "-aec", "DCMNODE", HOST, str(acl.port), *keys)
    assert study in served.stdout + served.stderr
    # a user without the write scope, from a declared peer
    reader = associate(acl.port, "FULL", ext_neg=[_identity(2, "reader", PASSWORD)])
    assert reader.is_established
    assert reader.send_c_store(ct_series(1)[0]).Status == 0x0124
    reader.release()
    wait_until(lambda: len(acl.scp.gate) == 0, "the association released")
    assert events(acl) == Counter({("110113", 4): 2, ("110112", 0): 1, ("110114", 0): 1})
    assert alerts(acl) == [
        ("NOFIND", "peer", HOST, "C-FIND refused 0x0124: C-FIND not allowed for calling AE NOFIND"),
        ("reader", "user", HOST, "C-STORE refused 0x0124: C-STORE needs scope write; user reader lacks it"),
    ]
    assert PASSWORD.encode() not in raw(acl)
