"""Project keys under the data folder: ``data/secrets/deid/<project>.key``, 32 random bytes, mode 0600 in a folder
of mode 0700, created on first use. The key decides every new UID, date offset and pseudonym of a project
(``dcmnode.deid.keys``): whoever holds it can link de-identified data back to its source UIDs, so it is never
logged, never sent over HTTP, and moved between nodes only with ``dcmnode deid-key export|import``."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import re
import secrets
import threading
from pathlib import Path

from dcmnode.deid.keys import KEY_BYTES, ProjectKey
from dcmnode.errors import Conflict, InvalidRequest, NotFound

log = logging.getLogger(__name__)

PROJECT = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_project(name: object) -> str:
    """A project name: letters, digits, ``-_.``, 1 to 64 characters, not starting with a dot (so never ``..``, and
    always a plain file name). InvalidRequest otherwise."""
    if not isinstance(name, str) or not PROJECT.fullmatch(name) or name.startswith("."):
        shown = repr(name)[:80]
        raise InvalidRequest(f"project {shown}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'")
    return name


def parse_key_text(data: bytes) -> bytes:
    """An exported key (base64 text, as ``export`` writes it) → its 32 bytes; InvalidRequest otherwise."""
    try:
        secret = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != KEY_BYTES:
        raise InvalidRequest(f"not a project key: expected {KEY_BYTES} bytes as base64 text")
    return secret


class KeyStore:
    def __init__(self, root: Path) -> None:
        self.root = root  # data/secrets/deid
        self._lock = threading.Lock()

    def path(self, project: str) -> Path:
        return self.root / f"{check_project(project)}.key"

    def _folder(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.root.parent, 0o700)  # data/secrets

    def _read(self, path: Path) -> bytes | None:
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(secret) != KEY_BYTES:
            raise Conflict(f"the key file of project {path.stem} is damaged ({len(secret)} bytes, not {KEY_BYTES})")
        return secret

    def exists(self, project: str) -> bool:
        return self.path(project).is_file()

    def get(self, project: str) -> ProjectKey:
        """The project's key, made on first use (32 bytes from the OS's CSPRNG, written 0600, fsynced)."""
        path = self.path(project)
        with self._lock:
            secret = self._read(path)
            if secret is None:
                secret = secrets.token_bytes(KEY_BYTES)
                if not self._install(path, secret, replace=False):
                    secret = self._read(path)  # another process made it first: use that one
                    assert secret is not None
                else:
                    log.info("project %s: new de-identification key created", project)
        return ProjectKey(secret)

    def export(self, project: str) -> str:
        """The key as base64 text (one line), for ``dcmnode deid-key import`` on another node."""
        secret = self._read(self.path(project))
        if secret is None:
            raise NotFound(f"project {project} has no key on this node")
        return base64.b64encode(secret).decode("ascii")

    def import_key(self, project: str, secret: bytes, force: bool = False) -> bool:
        """Install ``secret`` as the project's key. A different existing key is kept (Conflict) unless ``force``:
        replacing it changes every new UID of the project. False when the same key was already there."""
        path = self.path(project)
        with self._lock:
            current = self._read(path)
            if current is not None and hmac.compare_digest(current, secret):
                return False
            if current is not None and not force:
                raise Conflict(f"project {project} already has a different key on this node (--force replaces it)")
            self._install(path, secret, replace=current is not None)
        log.info("project %s: de-identification key imported", project)
        return True

    def _install(self, path: Path, secret: bytes, replace: bool) -> bool:
        """Write the key to a 0600 temp file, fsync, then link it in (False when one exists and not ``replace``):
        never a half-written key under its final name."""
        self._folder()
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fp:
                fp.write(secret)
                fp.flush()
                os.fsync(fp.fileno())
            if replace:
                os.replace(temp, path)
            else:
                try:
                    os.link(temp, path)
                except FileExistsError:
                    return False
            dir_fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
