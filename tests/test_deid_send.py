"""De-identification on send (``[peers.X] deidentify``): a peer declared so receives only the PS3.15 profile's output,
by ``dcmnode send`` and by C-MOVE, with the same new UIDs every time; an instance the profile refuses is reported
and never arrives; a peer declared without it still receives the stored instances unchanged. The receiver is
dcmtk's ``storescp`` writing into a folder."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from dcmnode import config
from dcmnode.app import Node
from dcmnode.errors import ConfigError
from tests import deid_fixtures as fx
from tests.conftest import HOST, make_settings, run_cli
from tests.factories import write_series
from tests.leakscan import leaks
from tests.test_dimse_access import fill, wait_until

Factory = Callable[..., Node]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
OPTIONS = '"basic", "retain-longitudinal-modified-dates", "clean-descriptors"'
SERIES = (fx.CT_SERIES_A, fx.RT_SERIES, fx.SR_SERIES, fx.CT_SERIES_B)


def study(tmp_path: Path) -> tuple[list[Path], Dataset, list[str]]:
    """The identity fixture's files (two studies, tests/deid_fixtures.py), a secondary capture in study A that may
    carry burned-in text (the profile refuses it without Clean Pixel Data), and the values that must not leak
    (times stay with Modified Dates, PS3.15 E.3.6)."""
    capture = fx.identity_datasets()["ct_a0"]
    capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    capture.SOPInstanceUID = capture.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    capture.SeriesInstanceUID = generate_uid()
    capture.Modality = "OT"
    capture.BurnedInAnnotation = "YES"
    return fx.identity_study(tmp_path), capture, fx.identifying_values(exclude={"times"})


class Storescp:
    """dcmtk's storescp as ``ae_title``, writing what it receives into ``folder``."""

    def __init__(self, ae_title: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = int(sock.getsockname()[1])
        self.proc = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(self._listening, f"storescp {ae_title} to listen")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
        with socket.socket() as sock:
            return sock.connect_ex((HOST, self.port)) == 0

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def clear(self) -> None:
        for path in self.received():
            path.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[Storescp, Storescp]]:
    research, plain = Storescp("RESEARCH", tmp_path / "research"), Storescp("PLAIN", tmp_path / "plain")
    yield research, plain
    research.stop()
    plain.stop()


def peers_toml(research: int, plain: int, options: str = OPTIONS) -> str:
    return (
        f'[peers.RESEARCH]\nhost = "{HOST}"\nport = {research}\ndeidentify = [{options}]\n'
        f'deidentify_project = "trial-42"\n[peers.PLAIN]\nhost = "{HOST}"\nport = {plain}\n'
    )


def uids(files: list[Path]) -> set[tuple[str, str, str]]:
    out = set()
    for path in files:
        ds = pydicom.dcmread(path)
        out.add((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    return out


def assert_deidentified(files: list[Path], values: list[str]) -> None:
    assert files
    assert leaks(files, values) == []
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
        assert codes[0] == "113100" and {"113105", "113107"} <= set(codes), codes  # Basic, the two options
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPInstanceUID.startswith("2.25.") and ds.StudyInstanceUID.startswith("2.25.")


def test_dcmnode_send_to_a_coerced_peer_delivers_no_identity_and_the_same_uids_twice(
    tmp_path: Path, peers: tuple[Storescp, Storescp]
) -> None:
    research, plain = peers
    files, capture, values = study(tmp_path)
    data = tmp_path / "data"
    files += write_series(tmp_path / "capture", [capture])
    assert run_cli("import", "--data", str(data), "--no-progress", *map(str, files)).returncode == 0
    cfg = tmp_path / "dcmnode.toml"
    cfg.write_text(peers_toml(research.port, plain.port) + "[sr]\nsend_attempts = 1\n")

    def send(uid: str, to: str) -> subprocess.CompletedProcess[str]:
        return run_cli("send", "--config", str(cfg), "--data", str(data), uid, to)

    for series in SERIES:  # CT A (3), the RT structure set, the SR, CT B (2)
        sent = send(series, "RESEARCH")
        assert sent.returncode == 0 and "sent " in sent.stdout, sent.stdout + sent.stderr
    assert len(research.received()) == 7
    assert_deidentified(research.received(), values)
    before = uids(research.received())
    key = data / "secrets" / "deid" / "trial-42.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32

    research.clear()
    for series in SERIES:
        assert send(series, "RESEARCH").returncode == 0
    assert uids(research.received()) == before  # keyed: a second send is a duplicate, not a second study

    research.clear()
    refused = send(capture.SeriesInstanceUID, "RESEARCH")
    assert refused.returncode == 1 and "sent 0 of 1" in refused.stdout, refused.stdout + refused.stderr
    assert f"failed: {capture.SOPInstanceUID}: " in refused.stdout and "burned" in refused.stdout.lower()
    assert "not sent to RESEARCH" in refused.stderr
    assert not any(part in refused.stdout + refused.stderr for part in fx.PATIENT_NAME_PARTS)  # no names in logs
    assert research.received() == []

    # A peer declared without deidentify receives the stored instances unchanged.
    unchanged = send(fx.CT_SERIES_A, "PLAIN")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    received = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, plain.received())}
    originals = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files[:3])}
    assert received.keys() == originals.keys() == set(fx.CT_A)
    for sop, ds in received.items():
        assert ds == originals[sop]


def move(port: int, study: str, destination: str) -> list[tuple[Dataset, Any]]:
    """The C-MOVE responses: (status with the counts, identifier)."""
    ae = AE(ae_title="MOVESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(HOST, port, ae_title="DCMNODE")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        return [
            (status, found)
            for status, found in assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove)
        ]
    finally:
        assoc.release()


def test_c_move_to_a_coerced_peer_delivers_no_identity_and_counts_the_refused_instance(
    node_factory: Factory, peers: tuple[Storescp, Storescp], tmp_path: Path
) -> None:
    research, plain = peers
    node = node_factory(peers_toml=peers_toml(research.port, plain.port))
    files, capture, values = study(tmp_path)
    fill(node, [*map(pydicom.dcmread, files), capture])

    responses = move(node.dimse_port, fx.STUDY_A, "RESEARCH")
    final, _ = responses[-1]
    # PS3.4 C.4.2.1.4.2: one or more sub-operations failed -> warning, with the failed instance listed.
    assert final.Status == 0xB000, responses
    assert final.NumberOfCompletedSuboperations == 5 and final.NumberOfFailedSuboperations == 1
    assert responses[-1][1].FailedSOPInstanceUIDList == capture.SOPInstanceUID
    received = research.received()
    assert len(received) == 5 and all(pydicom.dcmread(p).SOPClassUID != SECONDARY_CAPTURE for p in received)
    assert_deidentified(received, values)
    before = uids(received)

    research.clear()
    assert move(node.dimse_port, fx.STUDY_A, "RESEARCH")[-1][0].Status == 0xB000
    assert uids(research.received()) == before  # the same study moved twice: the same new UIDs

    assert move(node.dimse_port, fx.STUDY_A, "PLAIN")[-1][0].Status == 0x0000
    names = {str(pydicom.dcmread(p).PatientName) for p in plain.received()}
    assert len(plain.received()) == 6 and names == {fx.PATIENT_NAME.rstrip("^")}


def test_an_unknown_option_stops_serve_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "dcmnode.toml"
    cfg.write_text(peers_toml(104, 105, options='"basic", "retain-everything"'))
    done = subprocess.run(
        [sys.executable, "-m", "dcmnode", "serve", "--config", str(cfg), "--data", str(tmp_path / "data"),
         "--host", HOST, "--http-port", "0", "--dimse-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "[peers.RESEARCH] deidentify: unknown de-identification option 'retain-everything'" in done.stderr
    assert "ready:" not in done.stdout
    with pytest.raises(ConfigError, match="retain-everything"):
        Node(config.load(cfg, {}, {"node": {"data_dir": str(tmp_path / "data2")}}))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('deidentify_project = "p"\n', "deidentify_project is set but deidentify is empty"),
        ('deidentify = ["basic"]\ndeidentify_project = "../up"\n', "deidentify_project '../up' must be"),
        ('deidentify = "basic"\n', "deidentify must be a list of strings"),
    ],
)
def test_peer_deidentify_keys_are_checked(tmp_path: Path, table: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[peers.X]\nhost = "{HOST}"\nport = 104\n{table}')
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        config.load(cfg)


def test_a_peer_without_deidentify_needs_no_project(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert all(not p.deidentify for p in settings.peers.values())
    cfg = tmp_path / "ok.toml"
    cfg.write_text(f'[peers."A B"]\nhost = "{HOST}"\nport = 104\n')  # a name that is no project name: fine
    assert config.load(cfg).peers["A B"].deidentify_project == ""


def test_a_deidentify_job_sent_to_a_coerced_peer_is_deidentified_once(
    tmp_path: Path, peers: tuple[Storescp, Storescp]
) -> None:
    """``dcmnode deidentify --send-to`` a peer that has ``deidentify`` too: the peer receives the job's output as
    the job reports it (its new Study UID), not a second pass over it (which would map the new UIDs again)."""
    research, plain = peers
    files, _, values = study(tmp_path)
    data = tmp_path / "data"
    assert run_cli("import", "--data", str(data), "--no-progress", *map(str, files)).returncode == 0
    cfg = tmp_path / "dcmnode.toml"
    cfg.write_text(peers_toml(research.port, plain.port) + "[sr]\nsend_attempts = 1\n")
    done = run_cli(
        "deidentify", fx.STUDY_A, "--project", "trial-42", "--option", "retain-longitudinal-modified-dates",
        "--option", "clean-descriptors", "--send-to", "RESEARCH", "--config", str(cfg), "--data", str(data),
        "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [new_study] = [
        line.split(" -> ")[1].strip() for line in done.stdout.splitlines() if line.strip().startswith("study ")
    ]
    received = research.received()
    assert_deidentified(received, values)
    assert {pydicom.dcmread(path).StudyInstanceUID for path in received} == {new_study}


def test_a_job_cannot_send_a_weaker_profile_to_a_coerced_peer(tmp_path: Path) -> None:
    """A job sending to a peer declared with ``deidentify`` must use that peer's project and retain nothing the
    peer's profile does not: else a caller could send original UIDs or dates to the research PACS."""
    files, _, _ = study(tmp_path)
    data = tmp_path / "data"
    assert run_cli("import", "--data", str(data), "--no-progress", *map(str, files)).returncode == 0
    cfg = tmp_path / "dcmnode.toml"
    cfg.write_text(peers_toml(11112, 11113))  # never connected: the job is refused before it runs

    def job(*extra: str) -> subprocess.CompletedProcess[str]:
        common = ("--send-to", "RESEARCH", "--config", str(cfg), "--data", str(data), "--no-progress")
        return run_cli("deidentify", fx.STUDY_A, *extra, *common)

    weaker = job("--project", "trial-42", "--option", "retain-uids")
    assert weaker.returncode == 2 and "does not retain retain-uids" in weaker.stderr, weaker.stderr
    other_key = job("--project", "elsewhere")
    assert other_key.returncode == 2 and "project 'trial-42' only" in other_key.stderr, other_key.stderr
