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
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from dcmnode import config
from dcmnode.app import Node
from dcmnode.errors import ConfigError
from tests.conftest import HOST, make_settings, run_cli
from tests.factories import ct_series, write_series
from tests.test_dimse_access import fill, wait_until

Factory = Callable[..., Node]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PATIENT = ("Sentinelova^Rosalind^Quentin", "PID-774411", "19610923")


def identity_study() -> tuple[list[Dataset], Dataset, list[str]]:
    """Three CT slices that carry identity (names, IDs, dates, UIDs in a nested sequence, a private element), one
    secondary capture of the same study that may carry burned-in text, and the identifying values."""
    name, patient_id, birth = PATIENT
    series = ct_series(3, rows=8, cols=8, patient_id=patient_id, patient_name=name)
    for ds in series:
        ds.PatientBirthDate = birth
        ds.BurnedInAnnotation = "NO"
        ds.InstitutionName = "Hospital Quendolyn Memorial"
        ds.AccessionNumber = "ACCQ88231"
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = series[0].SOPInstanceUID
        ds.ReferencedImageSequence = [ref]
        block = ds.private_block(0x0011, "SENTINEL CORP", create=True)
        block.add_new(0x01, "LO", f"{patient_id} {name}")
    study = series[0].StudyInstanceUID
    capture = ct_series(1, rows=8, cols=8, study=study, patient_id=patient_id, patient_name=name)[0]
    capture.SOPClassUID = capture.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    capture.Modality = "OT"
    capture.BurnedInAnnotation = "YES"
    values = [*name.split("^"), patient_id, birth, "Quendolyn", "ACCQ88231", series[0].StudyInstanceUID]
    values += [u for ds in series for u in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID)]
    return series, capture, values


def leaks(files: list[Path], values: list[str]) -> list[str]:
    found = []
    for path in files:
        data = path.read_bytes().lower()
        found += [f"{path.name}: {v}" for v in values if len(v) >= 4 and v.lower().encode() in data]
    return found


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


def peers_toml(research: int, plain: int, options: str = '"basic", "retain-longitudinal-modified-dates"') -> str:
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
        assert codes[0] == "113100" and "113107" in codes, codes  # Basic Profile, Modified Dates
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPInstanceUID.startswith("2.25.") and ds.StudyInstanceUID.startswith("2.25.")


def test_dcmnode_send_to_a_coerced_peer_delivers_no_identity_and_the_same_uids_twice(
    tmp_path: Path, peers: tuple[Storescp, Storescp]
) -> None:
    research, plain = peers
    series, capture, values = identity_study()
    data = tmp_path / "data"
    files = write_series(tmp_path / "in", [*series, capture])
    assert run_cli("import", "--data", str(data), "--no-progress", *map(str, files)).returncode == 0
    cfg = tmp_path / "dcmnode.toml"
    cfg.write_text(peers_toml(research.port, plain.port) + "[sr]\nsend_attempts = 1\n")

    def send(uid: str, to: str) -> subprocess.CompletedProcess[str]:
        return run_cli("send", "--config", str(cfg), "--data", str(data), uid, to)

    first = send(series[0].SeriesInstanceUID, "RESEARCH")
    assert first.returncode == 0 and "sent 3 of 3" in first.stdout, first.stdout + first.stderr
    assert_deidentified(research.received(), values)
    before = uids(research.received())
    assert len(before) == 3
    key = data / "secrets" / "deid" / "trial-42.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert not any(key.read_bytes().hex() in text for text in (first.stdout, first.stderr))

    research.clear()
    again = send(series[0].SeriesInstanceUID, "RESEARCH")
    assert again.returncode == 0, again.stdout + again.stderr
    assert uids(research.received()) == before  # keyed: a second send is a duplicate, not a second study

    research.clear()
    refused = send(capture.SeriesInstanceUID, "RESEARCH")
    assert refused.returncode == 1 and "sent 0 of 1" in refused.stdout, refused.stdout + refused.stderr
    assert f"failed: {capture.SOPInstanceUID}: " in refused.stdout and "burned-in" in refused.stdout.lower()
    assert "not sent to RESEARCH" in refused.stderr and PATIENT[0].split("^")[0] not in refused.stderr
    assert research.received() == []

    # A peer declared without deidentify receives the stored instances unchanged.
    unchanged = send(series[0].SeriesInstanceUID, "PLAIN")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    received = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, plain.received())}
    originals = {ds.SOPInstanceUID: pydicom.dcmread(p) for ds, p in zip(series, files, strict=False)}
    assert received.keys() == originals.keys()
    for sop, ds in received.items():
        assert ds == originals[sop]
        assert ds.PatientName == PATIENT[0]


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
    node_factory: Factory, peers: tuple[Storescp, Storescp]
) -> None:
    research, plain = peers
    node = node_factory(peers_toml=peers_toml(research.port, plain.port))
    series, capture, values = identity_study()
    fill(node, [*series, capture])
    study = series[0].StudyInstanceUID

    responses = move(node.dimse_port, study, "RESEARCH")
    final, answer = responses[-1]
    # PS3.4 C.4.2.1.4.2: one or more sub-operations failed -> warning, with the failed instance listed.
    assert final.Status == 0xB000, responses
    assert final.NumberOfCompletedSuboperations == 3 and final.NumberOfFailedSuboperations == 1
    assert answer.FailedSOPInstanceUIDList == capture.SOPInstanceUID
    received = research.received()
    assert len(received) == 3 and all(pydicom.dcmread(p).SOPClassUID != SECONDARY_CAPTURE for p in received)
    assert_deidentified(received, values)
    before = uids(received)

    research.clear()
    assert move(node.dimse_port, study, "RESEARCH")[-1][0].Status == 0xB000
    assert uids(research.received()) == before  # the same study moved twice: the same new UIDs

    assert move(node.dimse_port, study, "PLAIN")[-1][0].Status == 0x0000
    names = {str(pydicom.dcmread(p).PatientName) for p in plain.received()}
    assert len(plain.received()) == 4 and names == {PATIENT[0]}


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
