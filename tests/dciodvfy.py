"""dicom3tools' ``dciodvfy`` (the IOD and VR checker, Debian package dicom3tools) as a test helper.

``errors(path)`` gives its "Error" lines normalised so that a source and its de-identified output can be compared:
the values quoted in a message (``<...>``, the offending character, lengths) are taken out, the attribute and the
rule stay. A test then asserts ``errors(output) <= errors(source)``: no error the source did not already have.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

_ERROR = re.compile(r"(?:^|\s)(Error - .*)$")
_NORMALISE = [
    (re.compile(r"\[\d+\] = <[^>]*>"), "[n] = <>"),  # UI [1] = <1.2.03.x>
    (re.compile(r"value <[^>]*> for"), "value <> for"),  # Unrecognized enumerated value <Q> for ...
    (re.compile(r"= '.' \(0x[0-9a-fA-F]+\)"), "= '?'"),  # Character invalid for this VR = 'x' (0x78)
    (re.compile(r"\b\d+ dec\b"), "n dec"),  # expected 0 dec - got 2048 dec
    (re.compile(r"for this VR = \d+"), "for this VR = n"),  # Length invalid for this VR = 5
]


def available() -> bool:
    return shutil.which("dciodvfy") is not None


def require() -> None:
    """Skip the calling test without dciodvfy; under CI its absence fails (scripts/setup.sh --test installs it)."""
    if not available():
        if os.environ.get("CI"):
            pytest.fail("dciodvfy missing: scripts/setup.sh --test installs dicom3tools")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")


def normalise(line: str) -> str:
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def errors(path: Path) -> set[str]:
    """dciodvfy's Error lines for one file, normalised (an empty set: dciodvfy finds no error)."""
    require()
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=120)
    found = set()
    for line in (out.stdout + "\n" + out.stderr).splitlines():
        match = _ERROR.search(line)
        if match:
            found.add(normalise(match.group(1)))
    return found
