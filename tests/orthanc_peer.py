"""Run inside a fresh network namespace (``unshare --net``) by test_orthanc_peer.py: a dcmnode node and
Orthanc (Debian's package) as its PACS peer, talking over the namespace's own loopback.

Orthanc 1.10 cannot bind to 127.0.0.1 only, so it runs where 0.0.0.0 *is* loopback. Writes ``report.json``
into the folder given as the only argument; the test asserts on it.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.factories import ct_series, ct_small_series, write_series  # noqa: E402

HOST = "127.0.0.1"
DCMNODE_DIMSE, DCMNODE_HTTP, ORTHANC_DICOM, ORTHANC_HTTP = 11112, 8080, 4242, 8042


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS on "lo"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def orthanc(path: str, body: Any | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{HOST}:{ORTHANC_HTTP}{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def main(work: Path) -> None:
    loopback_up()
    report: dict[str, Any] = {}
    first = ct_series(4, rows=32, cols=32, patient_id="PEER-1", patient_name="Peer^First")
    second = ct_series(3, rows=32, cols=32, patient_id="PEER-2", patient_name="Peer^Second")
    write_series(work / "in", first + second)
    report["first"] = {"study": first[0].StudyInstanceUID, "sops": sorted(d.SOPInstanceUID for d in first)}
    report["second"] = {"study": second[0].StudyInstanceUID, "sops": sorted(d.SOPInstanceUID for d in second)}

    third = ct_small_series(2, patient_id="PEER-3")  # sent by Orthanc: the SR rule's input
    report["third"] = {"series": third[0].SeriesInstanceUID, "sops": sorted(d.SOPInstanceUID for d in third)}
    (work / "dcmnode.toml").write_text(
        "[sr]\nquiet_seconds = 1.0\npoll_seconds = 0.2\n"
        '[[sr.rules]]\nmodality = "CT"\ncalling_aet = "ORTHANC"\nmethod = "classical"\n'
        f"[peers.ORTHANC]\nhost = '{HOST}'\nport = {ORTHANC_DICOM}\n"
    )
    node_cmd = [sys.executable, "-m", "dcmnode"]
    subprocess.run([*node_cmd, "import", "--data", str(work / "data"), str(work / "in")], check=True, timeout=120)
    config = {
        "Name": "peer",
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "DicomAet": "ORTHANC",
        "DicomPort": ORTHANC_DICOM,
        "HttpPort": ORTHANC_HTTP,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": {"DCMNODE": ["DCMNODE", HOST, DCMNODE_DIMSE]},
        "Plugins": [],
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    with (
        open(work / "dcmnode.log", "w") as node_log,
        open(work / "orthanc.log", "w") as orthanc_log,
    ):
        node = subprocess.Popen(
            [*node_cmd, "serve", "--config", str(work / "dcmnode.toml"), "--data", str(work / "data")]
            + ["--dimse-port", str(DCMNODE_DIMSE), "--http-port", str(DCMNODE_HTTP)],
            stdout=node_log,
            stderr=subprocess.STDOUT,
        )
        pacs = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=orthanc_log, stderr=subprocess.STDOUT)
        try:
            wait_for(f"http://{HOST}:{DCMNODE_HTTP}/api/health")
            wait_for(f"http://{HOST}:{ORTHANC_HTTP}/system")
            # 1. Orthanc queries dcmnode (C-FIND, study level)
            query = orthanc(
                "/modalities/DCMNODE/query",
                {"Level": "Study", "Query": {"PatientName": "peer*", "NumberOfStudyRelatedInstances": ""}},
            )
            answers = orthanc(f"/queries/{query['ID']}/answers?expand&simplify")
            report["find"] = answers
            # 2. dcmnode moves a study into Orthanc (movescu against dcmnode, destination ORTHANC)
            move = subprocess.run(
                ["movescu", "-S", "-aec", "DCMNODE", "-aem", "ORTHANC", HOST, str(DCMNODE_DIMSE)]
                + ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={first[0].StudyInstanceUID}"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            report["movescu_rc"] = move.returncode
            report["after_move"] = sorted(
                orthanc(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc("/instances")
            )
            # 3. Orthanc retrieves the other study from dcmnode (Orthanc sends C-MOVE to dcmnode)
            query = orthanc(
                "/modalities/DCMNODE/query",
                {"Level": "Study", "Query": {"StudyInstanceUID": second[0].StudyInstanceUID}},
            )
            orthanc(f"/queries/{query['ID']}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
            report["after_retrieve"] = sorted(
                orthanc(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc("/instances")
            )
            # 4. Orthanc sends a CT series to dcmnode (C-STORE, calling AE ORTHANC): the SR rule fires when the
            #    series is complete and the derived series come back to Orthanc
            report["sr"] = super_resolution_round_trip(work, third)
        finally:
            for process in (node, pacs):
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
    (work / "report.json").write_text(json.dumps(report, indent=1))


def super_resolution_round_trip(work: Path, series: list[Any]) -> dict[str, Any]:
    paths = write_series(work / "sr-in", series)
    ids = [orthanc_upload(p.read_bytes()) for p in paths]
    parent = orthanc(f"/instances/{ids[0]}")["ParentSeries"]
    orthanc("/modalities/DCMNODE/store", {"Resources": [parent], "Synchronous": True})
    deadline = time.monotonic() + 180
    while True:
        derived = {}
        for info in orthanc("/series?expand"):
            number = str(info["MainDicomTags"].get("SeriesNumber", ""))
            if number in ("1007", "2007", "3007"):
                derived[number] = info
        if len(derived) == 3 and [len(derived[n]["Instances"]) for n in ("1007", "2007", "3007")] == [2, 2, 1]:
            break
        if time.monotonic() > deadline:
            return {"timeout": {n: len(i["Instances"]) for n, i in derived.items()}}
        time.sleep(0.5)
    tags = [orthanc(f"/instances/{i}/simplified-tags") for i in derived["1007"]["Instances"]]
    report_tags = orthanc(f"/instances/{derived['3007']['Instances'][0]}/simplified-tags")
    return {
        "counts": {n: len(i["Instances"]) for n, i in derived.items()},
        "rows": sorted(int(t["Rows"]) for t in tags),
        "image_type": tags[0]["ImageType"],
        "study": tags[0]["StudyInstanceUID"],
        "sources": sorted(t["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] for t in tags),
        "report_modality": report_tags["Modality"],
    }


def orthanc_upload(raw: bytes) -> str:
    request = urllib.request.Request(f"http://{HOST}:{ORTHANC_HTTP}/instances", data=raw, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.loads(response.read())["ID"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
