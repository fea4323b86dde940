"""De-identification as a service of the node (``deid/`` is the engine): the project keys under the data folder.

A project's key is ``data/secrets/deid/<project>.key``: 32 random bytes, mode 0600, created on first use and
never logged. Whoever holds it gets the same new UIDs, date offsets and pseudonyms on every run and every machine
(``deid/keys.py``); without it nobody can recompute them.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from dcmnode.deid.keys import KEY_BYTES, ProjectKey
from dcmnode.errors import ConfigError, InvalidRequest

PROJECT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # the key's file name: no path, no leading dot


def key_path(data_dir: Path, project: str) -> Path:
    """Where ``project``'s key lives; InvalidRequest for a name that is not 1-64 of A-Z a-z 0-9 _ . -."""
    if not PROJECT.match(project):
        raise InvalidRequest(f"project {project!r} must be 1-64 characters of A-Z a-z 0-9 _ . - (not starting with .)")
    return data_dir / "secrets" / "deid" / f"{project}.key"


def project_key(data_dir: Path, project: str) -> ProjectKey:
    """``project``'s key, made on first use. The new key is written to a temporary file and linked into place
    (``link`` fails if the name exists): two processes asking at once end with the same key, never a half one."""
    path = key_path(data_dir, project)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{project}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    data = path.read_bytes()
    if len(data) != KEY_BYTES:
        raise ConfigError(f"{path} does not hold a {KEY_BYTES}-byte key; restore it (dcmnode deid-key import)")
    return ProjectKey(data)
