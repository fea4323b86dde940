"""Orthanc (Debian's package) as a real PACS peer: it queries dcmnode with C-FIND, receives a study that
dcmnode sends by C-MOVE, retrieves another by its own C-MOVE, and sends a CT series whose super-resolved
derived series an SR rule sends back to it. Both run in a private network namespace
(see orthanc_peer.py), because Orthanc 1.10 listens on every interface."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.orthanc

SCRIPT = Path(__file__).with_name("orthanc_peer.py")


def test_orthanc_queries_receives_and_retrieves(tmp_path: Path) -> None:
    missing = [tool for tool in ("Orthanc", "unshare", "movescu") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing: scripts/setup.sh --test installs them")
        pytest.skip(f"{missing} not installed (bash scripts/setup.sh --test)")
    result = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stdout + result.stderr + logs
    report = json.loads((tmp_path / "report.json").read_text())

    found = {a["StudyInstanceUID"]: a for a in report["find"]}
    assert set(found) == {report["first"]["study"], report["second"]["study"]}, report["find"]
    assert found[report["first"]["study"]]["NumberOfStudyRelatedInstances"] == "4"
    assert found[report["second"]["study"]]["PatientName"] == "Peer^Second"

    assert report["movescu_rc"] == 0
    assert report["after_move"] == report["first"]["sops"], logs
    assert report["after_retrieve"] == sorted(report["first"]["sops"] + report["second"]["sops"]), logs

    sr = report["sr"]  # the super-resolved series came back to Orthanc, with its uncertainty map and SR report
    assert sr.get("counts") == {"1007": 2, "2007": 2, "3007": 1}, (sr, logs)
    assert sr["rows"] == [256, 256] and sr["image_type"].split("\\")[:2] == ["DERIVED", "SECONDARY"]
    assert sr["sources"] == report["third"]["sops"] and sr["report_modality"] == "SR"
