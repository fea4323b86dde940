"""multipart/related bodies (PS3.18 §8.6.1.2): content-type parsing, a streaming part spooler for request bodies,
and the response side: a body as a list of pieces sent without copies.

No DICOM here. Each part of a request is written to its own temp file as it
arrives (never held in memory); the caller takes the files over once the closing boundary has been seen.

A response body is a list of ``Piece``: bytes (a part's head, the CRLF before the next boundary), a
``FileSpan`` (a stored file or a byte range of it) or a ``Lazy`` piece (bytes made when the body gets there: a
transcoded instance). The pieces are cut into read batches of up to ``READ_BATCH`` bytes; each batch is one buffer,
filled in a worker thread (files read straight into it with ``os.preadv``: a file's bytes are copied once, from the
page cache into the buffer the server sends), and sent as one ASGI body message by ``PiecesResponse``; the next
batch is read while the current one is sent, and the first may be read by the caller in the hop that planned the
answer (``preread``). The Content-Length is sent when the caller asks for it and no piece is lazy.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import email.message
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread
from python_multipart.multipart import MultipartParser
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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
    """Feed it body chunks with ``write``; ``finish`` checks the body ended properly and returns the parts.

    With ``fsync``, each part's file is fsynced in the background as soon as the part has ended (``FSYNC_THREADS``
    at once: the file system groups concurrent fsyncs into fewer journal commits), while the next parts arrive;
    ``finish`` returns once every part is durable. One after another at the end, the fsyncs of a 50-part request
    were a third of its time."""

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
    _syncing: list[concurrent.futures.Future[None]] = field(default_factory=list)
    _syncer: concurrent.futures.ThreadPoolExecutor | None = None

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

    def write_all(self, chunks: Sequence[bytes]) -> None:
        """``write`` each chunk (one worker-thread hop for several chunks of the body)."""
        for chunk in chunks:
            self.write(chunk)

    def finish(self) -> list[Part]:
        if not self._ended:
            raise InvalidRequest("the multipart body ended before its closing boundary (truncated upload?)")
        try:
            for future in self._syncing:
                future.result()  # an fsync that failed fails the request (the caller discards the parts)
        finally:
            self._stop_syncer(cancel=False)
        return self.parts

    def discard(self) -> None:
        """Remove every spooled file (the request failed as a whole)."""
        self._stop_syncer(cancel=True)
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
        if self.fsync:
            if self._syncer is None:
                self._syncer = concurrent.futures.ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="stow-fsync")
            self._syncing.append(self._syncer.submit(_fsync, self._current.path))
        self._current = None

    def _on_end(self) -> None:
        self._ended = True

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _stop_syncer(self, cancel: bool) -> None:
        if self._syncer is not None:
            self._syncer.shutdown(wait=True, cancel_futures=cancel)
            self._syncer = None


FSYNC_THREADS = 8  # fsyncs of one request's parts at once


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- response bodies ---------------------------------------------------------------------------------------------
READ_BATCH = 4 * 1024 * 1024  # bytes per read batch: one worker-thread hop, one buffer, one body message


@dataclass(frozen=True, slots=True)
class FileSpan:
    """``length`` bytes of the file at ``path`` from ``offset``; ``whole``: the span is the whole file, whose size
    is checked when it is read (a file replaced since the index was read is not sent cut or padded)."""

    path: Path
    offset: int
    length: int
    whole: bool = False


@dataclass(frozen=True, slots=True)
class Lazy:
    """Bytes made when the body reaches this piece, in a worker thread (their length is not known before)."""

    make: Callable[[], bytes]


Piece = bytes | FileSpan | Lazy


def part_head(boundary: str, content_type: str, location: str | None = None) -> bytes:
    """A part's boundary line and headers, up to the empty line before its payload."""
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def _size(piece: bytes | FileSpan) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.length


def batches(pieces: Sequence[Piece], limit: int = READ_BATCH) -> list[list[Piece]]:
    """The pieces in read batches of at most ``limit`` bytes (or one piece larger than that: a file cut into spans
    of ``limit`` bytes, so that a 2 GB multi-frame file is never one read); a lazy piece is a batch of its own."""
    out: list[list[Piece]] = []
    current: list[Piece] = []
    size = 0
    for piece in pieces:
        cut: list[Piece]
        if isinstance(piece, FileSpan) and piece.length > limit:
            if piece.whole:
                _check_size(piece)
            cut = [
                FileSpan(piece.path, piece.offset + k, min(limit, piece.length - k))
                for k in range(0, piece.length, limit)
            ]
        else:
            cut = [piece]
        for one in cut:
            length = None if isinstance(one, Lazy) else _size(one)
            if current and (length is None or size + length > limit):
                out.append(current)
                current, size = [], 0
            current.append(one)
            size += length or 0
            if length is None:
                out.append(current)
                current, size = [], 0
    if current:
        out.append(current)
    return out


def _check_size(span: FileSpan) -> None:
    size = os.stat(span.path).st_size
    if size != span.length:
        raise OSError(f"{span.path.name}: {size} bytes on disk, {span.length} in the index (replaced meanwhile?)")


def read_batch(batch: Sequence[Piece]) -> bytes | bytearray:
    """The batch as one buffer (in a worker thread): file spans are read straight into it (``os.preadv``), so a
    file's bytes are copied once, from the page cache into the buffer the server sends."""
    if len(batch) == 1 and isinstance(batch[0], Lazy):
        return batch[0].make()
    total = sum(_size(p) for p in batch if not isinstance(p, Lazy))
    buffer = bytearray(total)
    view = memoryview(buffer)
    position = 0
    for piece in batch:
        if isinstance(piece, bytes):
            view[position : position + len(piece)] = piece
            position += len(piece)
        elif isinstance(piece, FileSpan):
            _read_into(piece, view[position : position + piece.length])
            position += piece.length
    view.release()
    return buffer


def _read_into(piece: FileSpan, target: memoryview) -> None:
    fd = os.open(piece.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if piece.whole and os.fstat(fd).st_size != piece.length:
            _check_size(piece)  # raises, with the sizes
        done = 0
        while done < piece.length:
            n = os.preadv(fd, [target[done:]], piece.offset + done)
            if n <= 0:
                raise OSError(f"{piece.path.name}: {done} bytes at {piece.offset}, {piece.length} expected")
            done += n
    finally:
        os.close(fd)


@dataclass(slots=True)
class Body:
    """A planned response body: its pieces in read batches, and the first batch's bytes when read already."""

    batches: list[list[Piece]]
    length: int | None  # None: sent with the chunked transfer coding
    first: bytes | bytearray | None = None

    @classmethod
    def of(cls, pieces: Sequence[Piece], preread: bool = False, sized: bool = True) -> Body:
        """``preread``: read the first batch now (the caller is in a worker thread already); ``sized``: announce
        the length (Content-Length) when no piece is lazy."""
        planned = batches(pieces)
        lazy = any(isinstance(p, Lazy) for p in pieces)
        length = None if lazy or not sized else sum(_size(p) for p in pieces if not isinstance(p, Lazy))
        first = read_batch(planned[0]) if preread and planned else None
        return cls(planned, length, first)


class PiecesResponse(Response):
    """A response whose body is sent batch by batch (see the module's docstring); HEAD gets the headers only."""

    def __init__(
        self,
        body: Body,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.pieces = body
        length = {"Content-Length": str(body.length)} if body.length is not None else {}
        self.init_headers({**(headers or {}), **length})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await send_body(self.pieces, receive, send)


async def send_body(body: Body, receive: Receive, send: Send) -> None:
    """One body message per batch, the next batch read while the current one is sent; a client that goes away
    stops the reads."""
    planned = body.batches
    if len(planned) <= 1:
        data = body.first if body.first is not None else await _read(planned[0]) if planned else b""
        await send({"type": "http.response.body", "body": data})
        return
    sender, receiver = anyio.create_memory_object_stream[bytes | bytearray](0)

    async def produce() -> None:
        async with sender:
            for number, batch in enumerate(planned):
                data = body.first if number == 0 and body.first is not None else await _read(batch)
                await sender.send(data)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        tasks.cancel_scope.cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(produce)
        tasks.start_soon(watch)
        async with receiver:
            async for data in receiver:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        tasks.cancel_scope.cancel()


async def _read(batch: list[Piece]) -> bytes | bytearray:
    return await anyio.to_thread.run_sync(read_batch, batch)
