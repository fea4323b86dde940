"""Associations per calling AE title (``dimse.max_associations_per_ae``) against the running node: real concurrent
pynetdicom associations and dcmtk's echoscu; one process (threads) and ``dcmnode serve`` with two DIMSE processes
sharing the socket (the count is the node's, not a process's)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.association import Association

from dcmnode.app import Node
from tests.conftest import HOST, CliServer
from tests.test_dimse_access import associate, rejection, run, wait_until

LOCAL_LIMIT = (2, 3, 2)  # rejected transient, service provider (presentation), local limit exceeded (PS3.8 9.3.4)


@pytest.fixture
def opened() -> Iterator[list[Association]]:
    held: list[Association] = []
    yield held
    for assoc in held:
        if assoc.is_established:
            assoc.release()


def open_from(port: int, calling: str, held: list[Association]) -> Association:
    assoc = associate(port, calling)
    held.append(assoc)
    return assoc


def alerts(data: Path) -> list[dict[str, Any]]:
    lines = [line for path in sorted((data / "audit").glob("*.jsonl")) for line in path.read_text().splitlines()]
    return [r for r in map(json.loads, lines) if r["event"]["code"] == "110113"]


def test_the_next_association_of_an_ae_over_its_limit_is_rejected_local_limit_and_others_still_connect(
    node_factory: Callable[..., Node], opened: list[Association]
) -> None:
    node = node_factory(dimse={"max_associations_per_ae": 2})
    first, second = open_from(node.dimse_port, "MODALITY1", opened), open_from(node.dimse_port, "MODALITY1", opened)
    assert first.is_established and second.is_established
    third = open_from(node.dimse_port, "MODALITY1", opened)
    assert rejection(third) == LOCAL_LIMIT
    other = open_from(node.dimse_port, "VIEWER2", opened)
    assert other.is_established and other.send_c_echo().Status == 0x0000  # another AE is not starved
    assert first.send_c_echo().Status == 0x0000  # those already open go on
    first.release()
    wait_until(lambda: node.services.associations.held("MODALITY1") == 1, "the released slot to be given back")
    again = open_from(node.dimse_port, "MODALITY1", opened)
    assert again.is_established
    (alert,) = alerts(node.settings.data_dir)
    assert alert["participants"][0]["id"] == "MODALITY1" and alert["participants"][0]["address"] == HOST
    assert "max_associations_per_ae" in alert["detail"]["alert"]


def test_an_aborted_association_gives_its_slot_back(
    node_factory: Callable[..., Node], opened: list[Association]
) -> None:
    node = node_factory(dimse={"max_associations_per_ae": 1})
    first = open_from(node.dimse_port, "MODALITY1", opened)
    assert first.is_established
    assert rejection(open_from(node.dimse_port, "MODALITY1", opened)) == LOCAL_LIMIT
    first.abort()
    wait_until(lambda: node.services.associations.held("MODALITY1") == 0, "the aborted slot to be given back")
    assert open_from(node.dimse_port, "MODALITY1", opened).is_established


def test_the_default_limit_lets_a_modality_open_many_associations(
    node_factory: Callable[..., Node], opened: list[Association]
) -> None:
    node = node_factory()
    assert node.settings.dimse.max_associations_per_ae == 16
    assert all(open_from(node.dimse_port, "MODALITY1", opened).is_established for _ in range(16))
    assert rejection(open_from(node.dimse_port, "MODALITY1", opened)) == LOCAL_LIMIT


@pytest.mark.skipif(not shutil.which("echoscu"), reason="dcmtk is required: apt-get install dcmtk")
def test_two_dimse_processes_share_the_limit_and_dcmtk_is_told_local_limit_exceeded(
    tmp_path: Path, cli_server_factory: Callable[..., CliServer], opened: list[Association]
) -> None:
    data = tmp_path / "data"
    server = cli_server_factory(data, env={"DCMNODE_DIMSE_MAX_ASSOCIATIONS_PER_AE": "2", "DCMNODE_SR_WORKER": "off"})
    held = [open_from(server.dimse_port, "MODALITY1", opened) for _ in range(2)]
    assert all(a.is_established for a in held)
    for _ in range(3):  # whichever of the two processes accepts it
        assert rejection(open_from(server.dimse_port, "MODALITY1", opened)) == LOCAL_LIMIT
    refused = run("echoscu", "-aet", "MODALITY1", "-aec", "DCMNODE", HOST, str(server.dimse_port))
    assert refused.returncode != 0
    assert "Local Limit Exceeded" in refused.stdout + refused.stderr  # dcmtk prints the reason
    assert run("echoscu", "-aet", "OTHER", "-aec", "DCMNODE", HOST, str(server.dimse_port)).returncode == 0
    held[0].release()
    wait_until(
        lambda: run("echoscu", "-aet", "MODALITY1", "-aec", "DCMNODE", HOST, str(server.dimse_port)).returncode == 0,
        "a slot of MODALITY1 to be free again",
    )
    log = server.log.read_text()
    assert "rejected, local limit exceeded" in log
