"""multipart/related bodies (PS3.18 §8.6.1.2): content-type parsing and a streaming part spooler.

No DICOM here. Each part is written to its own temp file as it
arrives (never held in memory); the caller takes the files over once the closing boundary has been seen.
"""

from __future__ import annotations

import contextlib
import email.message
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser

from dcmnode.errors import InvalidRequest, PayloadTooLarge


@dataclass(frozen=True, slots=True)
class MediaType:
    type: str  # lower case, e.g. "multipart/related"
    params: dict[str, str]


def parse_media_type(header: str | None) -> MediaType:
    """Parse a Content-Type value; parameters may be quoted or not (OHIF omits quotes on request)."""
    message = email.message.Message()
    message["content-type"] = header or ""
    params = {k.lower(): v for k, v in message.get_params(failobj=[])[1:]}
    return MediaType(message.get_content_type().lower(), params)


@dataclass(slots=True)
class Part:
    path: Path
    headers: dict[str, str]
    size: int = 0

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return parse_media_type(value).type if value else None


@dataclass(slots=True)
class PartSpooler:
    """Feed it body chunks with ``write``; ``finish`` checks the body ended properly and returns the parts."""

    boundary: str
    tmp_dir: Path
    max_part_bytes: int
    fsync: bool = True
    max_parts: int = 10000  # a part is a temp file: a body of 100,000 empty parts is refused at the limit
    parts: list[Part] = field(default_factory=list)
    _file: BinaryIO | None = None
    _current: Part | None = None
    _header_field: bytes = b""
    _header_value: bytes = b""
    _headers: dict[str, str] = field(default_factory=dict)
    _ended: bool = False
    _parser: MultipartParser | None = None

    def __post_init__(self) -> None:
        callbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        self._parser = MultipartParser(self.boundary, callbacks)  # type: ignore[arg-type]

    def write(self, chunk: bytes) -> None:
        assert self._parser is not None
        try:
            self._parser.write(chunk)
        except (PayloadTooLarge, OSError):
            raise
        except Exception as exc:  # python-multipart's MultipartParseError and friends
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc

    def finish(self) -> list[Part]:
        if not self._ended:
            raise InvalidRequest("the multipart body ended before its closing boundary (truncated upload?)")
        if self.fsync:  # here, not as each part ends: a body refused half-way (too many parts...) costs no fsync
            for part in self.parts:
                fd = os.open(part.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return self.parts

    def discard(self) -> None:
        """Remove every spooled file (the request failed as a whole)."""
        self._close_file()
        paths = [p.path for p in self.parts] + ([self._current.path] if self._current else [])
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.parts.clear()
        self._current = None

    # -- parser callbacks -----------------------------------------------------------------------------------
    def _on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise PayloadTooLarge(f"more than {self.max_parts} parts in one request (http.max_stow_parts)")
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").strip().lower()] = self._header_value.decode(
            "latin-1"
        ).strip()
        self._header_field = self._header_value = b""

    def _on_headers_finished(self) -> None:
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".stow")
        self._file = os.fdopen(fd, "wb")
        self._current = Part(Path(name), self._headers)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None and self._current is not None
        self._current.size += end - start
        if self._current.size > self.max_part_bytes:
            raise PayloadTooLarge(f"a part is larger than the limit of {self.max_part_bytes} bytes")
        self._file.write(data[start:end])

    def _on_part_end(self) -> None:
        assert self._current is not None
        self._close_file()
        self.parts.append(self._current)
        self._current = None

    def _on_end(self) -> None:
        self._ended = True

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
