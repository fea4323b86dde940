"""Failure statuses of C-FIND, C-MOVE and C-GET over real pynetdicom associations (dcmnode.status): 0xA900 for a
bad identifier, the service's "unable to process" code (0xC320, 0xC520, 0xC420) for anything else, and failed
sub-operations (0xB000 / 0xA702) for stored files that cannot be sent. The store is broken for real: the index
or a stored file is deleted from under the running node."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from dcmnode.app import Node
from tests.conftest import HOST
from tests.factories import ct_series
from tests.test_retrieve_dimse import StorageScp, fill, move, peers, study_identifier

INTERNAL = "internal error; see the node's log"


@pytest.fixture
def dest() -> Iterator[StorageScp]:
    scp = StorageScp("DEST")
    yield scp
    scp.stop()


def find(port: int, identifier: Dataset) -> list[Dataset]:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(HOST, port, ae_title="DCMNODE")
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()


def get(port: int, identifier: Dataset) -> tuple[list[tuple[Dataset, Any]], list[str]]:
    """C-GET with CT Image Storage offered for the sub-operations; the responses and the SOP Instance UIDs
    received."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        HOST,
        port,
        ae_title="DCMNODE",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        return list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)), received
    finally:
        assoc.release()


def break_index(node: Node) -> None:
    """Delete the index from under the running node, as a stray ``rm`` would: the next association's thread opens
    a new, empty database, and its query fails (sqlite3.OperationalError: no such table)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{node.services.store.index.path}{suffix}").unlink(missing_ok=True)


def lose_file(node: Node, sop: str) -> None:
    [stored] = node.services.catalog.select({"SOPInstanceUID": sop})
    stored.path.unlink()


def failed_uids(identifier: Dataset | None) -> list[str]:
    value = identifier.FailedSOPInstanceUIDList if identifier is not None else []
    return [value] if isinstance(value, str) else list(value)


def logged_traceback(caplog: pytest.LogCaptureFixture, service: str) -> bool:
    return any(r.exc_info and r.getMessage().startswith(f"{service} from") for r in caplog.records)


# -- C-FIND ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "value", "says"),
    [("StudyInstanceUID", "1.2.abc", "is not a UID"), ("StudyDate", "yesterday", "StudyDate")],
)
def test_cfind_answers_a900_for_a_value_the_engine_refuses(node: Node, keyword: str, value: str, says: str) -> None:
    fill(node, ct_series(1, rows=8, cols=8))
    identifier = study_identifier("")
    setattr(identifier, keyword, value)
    [answer] = find(node.dimse_port, identifier)  # before: pynetdicom's 0xC311, the handler had raised
    assert answer.Status == 0xA900 and says in answer.ErrorComment


def test_cfind_on_a_broken_index_is_unable_to_process(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    fill(node, ct_series(1, rows=8, cols=8))
    break_index(node)
    with caplog.at_level(logging.WARNING, logger="dcmnode"):
        [answer] = find(node.dimse_port, study_identifier(""))
    assert (answer.Status, answer.ErrorComment) == (0xC320, INTERNAL)
    assert logged_traceback(caplog, "C-FIND")


# -- C-MOVE ----------------------------------------------------------------------------------------------------


def test_cmove_answers_a900_for_a_bad_identifier(node_factory: Callable[..., Node], dest: StorageScp) -> None:
    node = node_factory(peers_toml=peers(("DEST", dest)))
    series = ct_series(1, rows=8, cols=8)
    fill(node, series)
    for identifier in (study_identifier("1.2.abc"), study_identifier(series[0].StudyInstanceUID, "PATIENT")):
        answer, _ = move(node.dimse_port, identifier, "DEST")[-1]
        assert answer.Status == 0xA900 and answer.ErrorComment
    assert dest.received == []


def test_cmove_on_a_broken_index_is_unable_to_process(
    node_factory: Callable[..., Node], dest: StorageScp, caplog: pytest.LogCaptureFixture
) -> None:
    node = node_factory(peers_toml=peers(("DEST", dest)))
    series = ct_series(2, rows=8, cols=8)
    fill(node, series)
    break_index(node)
    with caplog.at_level(logging.WARNING, logger="dcmnode"):
        answer, _ = move(node.dimse_port, study_identifier(series[0].StudyInstanceUID), "DEST")[-1]
    assert (answer.Status, answer.ErrorComment) == (0xC520, INTERNAL)
    assert logged_traceback(caplog, "C-MOVE")
    assert dest.received == []


def test_cmove_needing_more_contexts_than_one_association_is_unable_to_process(
    node_factory: Callable[..., Node], dest: StorageScp
) -> None:
    """129 SOP classes in one study: the move would need 129 presentation contexts, one association holds 128.
    Not the identifier's fault (before: pynetdicom's 0xC514, with no comment)."""
    node = node_factory(peers_toml=peers(("DEST", dest)))
    [template] = ct_series(1, rows=8, cols=8)
    for context in AllStoragePresentationContexts[:129]:
        template.SOPClassUID = template.file_meta.MediaStorageSOPClassUID = context.abstract_syntax
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        fill(node, [template])
    answer, _ = move(node.dimse_port, study_identifier(template.StudyInstanceUID), "DEST")[-1]
    assert answer.Status == 0xC520 and "presentation contexts" in answer.ErrorComment
    assert dest.received == []


def test_cmove_of_vanished_files_fails_their_sub_operations(
    node_factory: Callable[..., Node], dest: StorageScp
) -> None:
    node = node_factory(peers_toml=peers(("DEST", dest)))
    series = ct_series(2, rows=8, cols=8)
    fill(node, series)
    study = study_identifier(series[0].StudyInstanceUID)
    lose_file(node, series[0].SOPInstanceUID)
    answer, identifier = move(node.dimse_port, study, "DEST")[-1]
    assert (answer.Status, answer.NumberOfCompletedSuboperations, answer.NumberOfFailedSuboperations) == (0xB000, 1, 1)
    assert failed_uids(identifier) == [series[0].SOPInstanceUID]
    lose_file(node, series[1].SOPInstanceUID)
    answer, identifier = move(node.dimse_port, study, "DEST")[-1]
    assert (answer.Status, answer.NumberOfFailedSuboperations) == (0xA702, 2)
    assert sorted(failed_uids(identifier)) == sorted(ds.SOPInstanceUID for ds in series)
    assert [str(ds.SOPInstanceUID) for ds, _ in dest.received] == [series[1].SOPInstanceUID]


# -- C-GET -----------------------------------------------------------------------------------------------------


def test_cget_answers_a900_for_a_bad_identifier(node: Node) -> None:
    series = ct_series(1, rows=8, cols=8)
    fill(node, series)
    for identifier in (study_identifier(""), study_identifier(series[0].StudyInstanceUID, "PATIENT")):
        responses, received = get(node.dimse_port, identifier)
        assert responses[-1][0].Status == 0xA900 and responses[-1][0].ErrorComment
        assert received == []


def test_cget_on_a_broken_index_is_unable_to_process(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    series = ct_series(2, rows=8, cols=8)
    fill(node, series)
    break_index(node)
    with caplog.at_level(logging.WARNING, logger="dcmnode"):
        responses, received = get(node.dimse_port, study_identifier(series[0].StudyInstanceUID))
    assert (responses[-1][0].Status, responses[-1][0].ErrorComment) == (0xC420, INTERNAL)
    assert logged_traceback(caplog, "C-GET")
    assert received == []


def test_cget_of_a_vanished_file_fails_its_sub_operation(node: Node) -> None:
    series = ct_series(3, rows=8, cols=8)
    fill(node, series)
    lose_file(node, series[1].SOPInstanceUID)
    responses, received = get(node.dimse_port, study_identifier(series[0].StudyInstanceUID))
    answer, identifier = responses[-1]
    assert (answer.Status, answer.NumberOfCompletedSuboperations, answer.NumberOfFailedSuboperations) == (0xB000, 2, 1)
    assert failed_uids(identifier) == [series[1].SOPInstanceUID]
    assert sorted(received) == sorted([series[0].SOPInstanceUID, series[2].SOPInstanceUID])
