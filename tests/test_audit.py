"""The audit trail against a real node: a scripted session (DICOMweb with dicomweb-client, dcmtk storescu, findscu,
movescu to a pynetdicom SCP, a series export) gives exactly the expected events and no patient name; syslog
reaches a receiver as RFC 5424; an unwritable trail is counted, and refused with fail_closed; /api/audit and
``dcmnode audit`` filter."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dcmnode.app import Node
from tests.conftest import HOST, LiveServer, run_cli
from tests.factories import ct_series, write_series
from tests.test_retrieve_dimse import StorageScp, peers

STOW_NAME, DIMSE_NAME = "Auditstow^Secretname", "Auditdimse^Hiddenname"
NAME_PARTS = (b"Auditstow", b"Secretname", b"Auditdimse", b"Hiddenname")


def records(data: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for path in sorted((data / "audit").glob("*.jsonl")) for line in path.read_text().splitlines()
    ]


def triples(data: Path) -> Counter[tuple[str, str, int]]:
    return Counter((r["event"]["code"], r["action"], r["outcome"]) for r in records(data))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def scripted_session(node: Node, live: LiveServer, tmp_path: Path) -> tuple[list[Dataset], list[Dataset]]:
    web = ct_series(3, rows=16, cols=16, patient_id="AUD-WEB", patient_name=STOW_NAME)
    dimse = ct_series(2, rows=16, cols=16, patient_id="AUD-DIMSE", patient_name=DIMSE_NAME)
    client = DICOMwebClient(f"{live.url}/dicom-web")
    client.store_instances(web)  # STOW-RS of 3 instances: one study, one record
    assert len(client.search_for_studies(search_filters={"PatientName": "Auditstow*"})) == 1  # QIDO
    assert len(client.retrieve_study(web[0].StudyInstanceUID)) == 3  # WADO-RS
    files = write_series(tmp_path / "dimse", dimse)
    run(["storescu", "-aet", "STORESCU", "-aec", "DCMNODE", HOST, str(node.dimse_port), *map(str, files)])
    found = run(
        ["findscu", "-S", "-aet", "FINDSCU", "-aec", "DCMNODE", HOST, str(node.dimse_port)]
        + ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=Auditdimse*", "-k", "StudyInstanceUID"]
    )
    assert dimse[0].StudyInstanceUID in found.stderr + found.stdout
    run(
        ["movescu", "-S", "-aet", "MOVESCU", "-aec", "DCMNODE", "-aem", "DEST", HOST, str(node.dimse_port)]
        + ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={dimse[0].StudyInstanceUID}"]
    )
    export = httpx.get(
        f"{live.url}/dicom-web/studies/{web[0].StudyInstanceUID}/series/{web[0].SeriesInstanceUID}/export",
        params={"format": "zip"},
    )
    assert export.status_code == 200
    return web, dimse


EXPECTED = Counter(
    {
        ("110104", "C", 0): 2,  # STOW-RS (one study), storescu (one association, one study)
        ("110112", "E", 0): 2,  # QIDO-RS, C-FIND
        ("110104", "R", 0): 2,  # WADO-RS retrieve, C-MOVE to DEST
        ("110106", "R", 0): 1,  # series export
    }
)


def test_a_scripted_session_leaves_exactly_its_events_and_no_patient_name(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    dest = StorageScp("DEST")
    node = node_factory(peers_toml=peers(("DEST", dest)))
    live = LiveServer(node)
    data = node.settings.data_dir
    try:
        web, dimse = scripted_session(node, live, tmp_path)
        wait_for(lambda: sum(triples(data).values()) >= sum(EXPECTED.values()), "the session's records")
        assert len(dest.received) == 2
    finally:
        live.stop()
        dest.stop()
    assert triples(data) == EXPECTED
    raw = b"".join(p.read_bytes() for p in (data / "audit").glob("*.jsonl"))
    for part in NAME_PARTS:
        assert part.lower() not in raw.lower()
    by_event = {(r["event"]["code"], r["action"], r.get("detail", {}).get("via", "")): r for r in records(data)}
    stow = by_event["110104", "C", "STOW-RS"]
    assert stow["detail"]["instances"] == 3
    assert {(o["id_type"], o["id"]) for o in stow["objects"]} == {("110180", web[0].StudyInstanceUID), ("2", "AUD-WEB")}
    assert stow["participants"][0] == {
        "id": "anonymous", "kind": "anonymous", "requestor": True, "address": HOST, "role": "110153",
    }  # fmt: skip
    assert stow["participants"][1]["id"] == "DCMNODE" and stow["participants"][1]["requestor"] is False
    store = by_event["110104", "C", "C-STORE"]
    assert store["participants"][0]["id"] == "STORESCU" and store["detail"]["instances"] == 2
    assert ("2", "AUD-DIMSE") in {(o["id_type"], o["id"]) for o in store["objects"]}
    move = by_event["110104", "R", "C-MOVE"]
    assert [p["id"] for p in move["participants"]] == ["MOVESCU", "DEST", "DCMNODE"]
    assert move["detail"]["instances"] == 2
    queries = [r for r in records(data) if r["event"]["code"] == "110112"]
    keys = sorted(base64.b64decode(r["query"]).decode() for r in queries)
    assert any("PatientName=&" in k or k.endswith("PatientName=") for k in keys[:1] + keys[1:]), keys
    assert all("Auditstow" not in k and "Auditdimse" not in k for k in keys)
    assert {r["objects"][0]["id"] for r in queries} == {"QIDO-RS", "1.2.840.10008.5.1.4.1.2.2.1"}

    # GET /api/audit filters, on a node over the same data folder
    again = node_factory(data=data)
    api = LiveServer(again)
    try:
        url = f"{api.url}/api/audit"
        assert [r["event"]["code"] for r in httpx.get(url, params={"event": "110112"}).json()] == ["110112"] * 2
        assert len(httpx.get(url, params={"event": "query"}).json()) == 2
        dimse_study = httpx.get(url, params={"study": dimse[0].StudyInstanceUID}).json()
        assert Counter(r["detail"]["via"] for r in dimse_study) == Counter({"C-STORE": 1, "C-MOVE": 1})
        assert [r["participants"][0]["id"] for r in httpx.get(url, params={"user": "MOVESCU"}).json()] == ["MOVESCU"]
        every = httpx.get(url).json()
        assert len(every) == 7 and [r["time"] for r in every] == sorted((r["time"] for r in every), reverse=True)
        assert httpx.get(url, params={"limit": "1"}).json() == every[:1]
        assert httpx.get(url, params={"since": "2999-01-01"}).json() == []
        assert len(httpx.get(url, params={"until": every[-1]["time"]}).json()) == 1
        assert httpx.get(url, params={"since": "yesterday"}).status_code == 400
        status = httpx.get(f"{api.url}/api/status").json()
        assert status["audit_failures"] == 0
    finally:
        api.stop()


def test_syslog_receiver_gets_rfc5424_messages(live_factory: Callable[..., LiveServer]) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((HOST, 0))
    receiver.settimeout(30)
    try:
        live = live_factory(audit={"syslog": f"udp://{HOST}:{receiver.getsockname()[1]}"})
        assert httpx.get(f"{live.url}/dicom-web/studies").status_code == 200
        assert httpx.get(f"{live.url}/dicom-web/studies/1.2.3/series/4.5/instances/6.7/rendered").status_code == 404
        messages = [receiver.recvfrom(65536)[0].decode("ascii") for _ in range(2)]
    finally:
        receiver.close()
    pattern = re.compile(
        r"<(8[45])>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) dcmnode (\d+) DICOM\+JSON - (\{.*\})\Z", re.DOTALL
    )
    parsed = [pattern.fullmatch(m) for m in messages]
    assert all(parsed), messages
    bodies = [json.loads(m[5]) for m in parsed if m]
    assert [(b["event"]["code"], b["outcome"]) for b in bodies] == [("110112", 0), ("110103", 4)]
    assert [m[1] for m in parsed if m] == ["85", "84"]  # authpriv.notice; authpriv.warning for a failure
    assert all(m[2] == b["time"] for m, b in zip(parsed, bodies, strict=True) if m)
    local = records(live.node.settings.data_dir)
    assert local == bodies  # the same records as the file


def test_syslog_over_tcp_uses_octet_counting(live_factory: Callable[..., LiveServer]) -> None:
    listener = socket.create_server((HOST, 0))
    listener.settimeout(30)
    try:
        live = live_factory(audit={"syslog": f"tcp://{HOST}:{listener.getsockname()[1]}"})
        assert httpx.get(f"{live.url}/dicom-web/series").status_code == 200
        conn, _ = listener.accept()
        conn.settimeout(30)
        received = b""
        while not _framed(received):
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
        conn.close()
    finally:
        listener.close()
    length, message = received.split(b" ", 1)
    assert int(length) == len(message)
    assert message.startswith(b"<85>1 ") and b" dcmnode " in message and b'"110112"' in message


def _framed(received: bytes) -> bool:
    """A whole RFC 6587 octet-counted message is in."""
    length, _, rest = received.partition(b" ")
    return bool(rest) and length.isdigit() and len(rest) >= int(length)


def test_an_unwritable_trail_is_counted_and_refused_with_fail_closed(
    live_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    def unwritable(**audit: Any) -> LiveServer:
        live = live_factory(audit=audit)
        folder = live.node.settings.data_dir / "audit"
        folder.mkdir(exist_ok=True)
        folder.rmdir()
        folder.write_text("not a folder: every record fails to open\n")  # root ignores a read-only mode
        return live

    open_live = unwritable()
    for n in (1, 2):
        assert httpx.get(f"{open_live.url}/dicom-web/studies").status_code == 200
        assert httpx.get(f"{open_live.url}/api/status").json()["audit_failures"] == n

    closed = unwritable(fail_closed=True)
    refused = httpx.get(f"{closed.url}/dicom-web/studies")
    assert refused.status_code == 503 and "audit" in refused.json()["error"]
    assert httpx.get(f"{closed.url}/api/status").json()["audit_failures"] == 1
    # DIMSE: once a write failed, a C-STORE is refused (0xA700, out of resources) until the trail works again
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(HOST, closed.node.dimse_port, ae_title="DCMNODE")
    assert assoc.is_established
    try:
        ds = ct_series(1, rows=8, cols=8)[0]
        assert assoc.send_c_store(ds).Status == 0xA700
        (closed.node.settings.data_dir / "audit").unlink()  # writable again: the probe lets the next one in
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    wait_for(lambda: ("110104", "C", 0) in triples(closed.node.settings.data_dir), "the C-STORE record")


def test_cli_audit_filters_and_serve_records_start_and_stop(
    cli_server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = cli_server_factory(data)
    assert httpx.get(f"http://{HOST}:{server.http_port}/dicom-web/studies").status_code == 200
    assert server.stop() == 0
    series = ct_series(2, rows=8, cols=8, patient_id="AUD-CLI", patient_name=STOW_NAME)
    files = write_series(tmp_path / "files", series)
    assert run_cli("import", "--no-progress", "--data", str(data), *map(str, files)).returncode == 0
    lines = run_cli("audit", "--data", str(data), "--json").stdout.splitlines()
    got = [json.loads(line) for line in lines]
    assert [(r["event"]["code"], r.get("type", {}).get("meaning")) for r in got] == [
        ("110104", None), ("110100", "Application Stop"), ("110112", None), ("110100", "Application Start"),
    ]  # fmt: skip
    assert got[0]["participants"][0]["kind"] == "local" and got[0]["detail"] == {"via": "import", "instances": 2}
    assert len(run_cli("audit", "--data", str(data), "--event", "110100").stdout.splitlines()) == 2
    study = run_cli("audit", "--data", str(data), "--study", series[0].StudyInstanceUID).stdout
    assert len(study.splitlines()) == 1 and "110104" in study and series[0].StudyInstanceUID in study
    assert run_cli("audit", "--data", str(data), "--user", "nobody").stdout == ""
    assert run_cli("audit", "--data", str(data), "--since", "2999-01-01").stdout == ""
    assert run_cli("audit", "--data", str(data), "--until", "2000-01-01").stdout == ""
    assert run_cli("audit", "--data", str(data), "--since", "soon").returncode == 2
    assert b"Secretname" not in b"".join(p.read_bytes() for p in (data / "audit").glob("*.jsonl"))
