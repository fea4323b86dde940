"""Read ZIP, TAR and TAR.GZ archives as a stream of members.

An archive is recognised by its first bytes, never by its name. Members are read one at a time in 1 MiB chunks
and each DICOM member is spooled into a store temp file, so neither the archive nor a member is ever held in
memory. What is not imported is reported with its reason and the rest goes on:

- skipped: directories (silently), symbolic and hard links, devices, FIFOs, sparse files, nested archives, and
  members without the DICM prefix at byte 128;
- refused: absolute paths and ``..`` components (zip-slip), members larger than ``max_member_bytes``, encrypted
  ZIP members, and decompression bombs: a member whose bytes outgrow its declared size, or whose expansion passes
  ``max_ratio``:1 beyond ``ratio_floor_bytes`` (declared in the ZIP directory, or seen while reading). Spooling
  stops as soon as a cap is passed; a TAR.GZ, which has no index, is then read through (nothing kept) to reach
  the next member.

A ZIP that declares more than ``max_members`` entries is refused whole, before its directory is read; a TAR,
which declares no count, is cut off at that many members.
"""

from __future__ import annotations

import logging
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from dcmnode.errors import InvalidRequest
from dcmnode.store.files import Files

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CHUNK = MIB
HEAD = 512  # enough to tell DICOM (byte 128) and TAR (byte 257) apart
NOT_DICOM = "not DICOM (no DICM prefix at byte 128)"

_SizeFn = Callable[[], int]  # compressed bytes taken so far for the member being read


class Kind(StrEnum):
    DICOM = "dicom"
    ZIP = "zip"
    TAR = "tar"
    TAR_GZ = "tar.gz"
    OTHER = "other"


ARCHIVES = (Kind.ZIP, Kind.TAR, Kind.TAR_GZ)
# Archive formats recognised only to say why they are not read.
UNSUPPORTED = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"7z\xbc\xaf\x27\x1c": "7z", b"Rar!\x1a\x07": "RAR"}


@dataclass(frozen=True, slots=True)
class Limits:
    max_member_bytes: int = 2048 * MIB
    max_members: int = 200_000
    max_ratio: int = 200
    ratio_floor_bytes: int = 100 * MIB


class Status(StrEnum):
    DICOM = "dicom"  # spooled to ``temp``; the caller owns the file (ingest it or discard it)
    SKIPPED = "skipped"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    status: Status
    reason: str = ""
    temp: Path | None = None
    size: int = 0


class _Refused(Exception):
    """One member is refused; the archive goes on."""


def kind_of(head: bytes) -> Kind:
    """What a file is, from its first bytes (at least 262 of them when there are that many)."""
    if head[128:132] == b"DICM":
        return Kind.DICOM
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return Kind.ZIP
    if head[:2] == b"\x1f\x8b":
        return Kind.TAR_GZ  # a gzip that holds no TAR is reported when it is read
    if head[257:262] == b"ustar":
        return Kind.TAR
    return Kind.OTHER


def kind_of_file(path: Path) -> Kind:
    with open(path, "rb") as fp:
        return kind_of(fp.read(HEAD))


def skip_reason(head: bytes) -> str:
    """Why a file that is neither DICOM nor a readable archive is skipped."""
    for magic, name in UNSUPPORTED.items():
        if head.startswith(magic):
            return f"{name} archive: not supported (use ZIP, TAR or TAR.GZ)"
    return NOT_DICOM


def members(
    path: Path, files: Files, limits: Limits, declared: Callable[[int], None] | None = None
) -> Generator[Member, None, None]:
    """Every member of the archive at ``path``, DICOM ones spooled into store temp files (the caller owns them).
    ``declared`` hears how many files a ZIP's directory lists. Raises InvalidRequest when the archive as a whole
    cannot be read (corrupt, not an archive, too many members)."""
    kind = kind_of_file(path)
    if kind == Kind.ZIP:
        yield from _zip_members(path, files, limits, declared)
    elif kind in (Kind.TAR, Kind.TAR_GZ):
        yield from _tar_members(path, kind, files, limits)
    else:
        raise InvalidRequest(f"not a ZIP, TAR or TAR.GZ archive ({kind})")


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be trusted (zip-slip), or None."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return f"absolute path {name!r} refused"
    if ".." in PurePosixPath(posix).parts:
        return f"path {name!r} leaves the archive ('..'): refused"
    return None


# -- ZIP ----------------------------------------------------------------------------------------------------------
def _zip_members(path: Path, files: Files, limits: Limits, declared: Callable[[int], None] | None) -> Iterator[Member]:
    with open(path, "rb") as fp:
        count = zip_declared_count(fp)
        if count > limits.max_members:
            raise InvalidRequest(f"the ZIP declares {count} members, more than the limit of {limits.max_members}")
        try:
            archive = zipfile.ZipFile(fp)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise InvalidRequest(f"unreadable ZIP: {exc}") from exc
        with archive:
            entries = [info for info in archive.infolist() if not info.is_dir()]
            if declared is not None:
                declared(len(entries))
            for info in entries:
                yield _zip_member(archive, info, files, limits)


def zip_declared_count(fp: BinaryIO) -> int:
    """The entry count in the End of Central Directory record (ZIP64 aware), read before zipfile loads the
    whole directory into memory. 0 when there is no such record (zipfile then says what is wrong)."""
    size = fp.seek(0, 2)
    tail_start = max(0, size - 22 - 0xFFFF)
    fp.seek(tail_start)
    tail = fp.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return 0
    count = int(struct.unpack_from("<H", tail, at + 10)[0])
    locator = at - 20
    if count == 0xFFFF and locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        (offset,) = struct.unpack_from("<Q", tail, locator + 8)
        fp.seek(offset)
        record = fp.read(40)
        if record[:4] == b"PK\x06\x06" and len(record) == 40:
            count = int(struct.unpack_from("<Q", record, 32)[0])
    fp.seek(0)
    return count


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, files: Files, limits: Limits) -> Member:
    name = info.filename
    reason = unsafe_name(name) or _zip_refusal(info, limits)
    if reason:
        return _refused(name, reason)
    if stat.S_ISLNK(info.external_attr >> 16):
        return _skipped(name, "symbolic link: not followed")
    try:
        with archive.open(info) as src:
            return _read_member(name, src, info.file_size, lambda: info.compress_size, files, limits)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        return _refused(name, f"unreadable ZIP member: {exc}")


def _zip_refusal(info: zipfile.ZipInfo, limits: Limits) -> str | None:
    if info.flag_bits & 0x1:
        return "encrypted member: refused"
    if info.file_size > limits.max_member_bytes:
        return f"{info.file_size} bytes uncompressed, more than the limit of {limits.max_member_bytes}"
    if _bomb(info.file_size, info.compress_size, limits):
        ratio = info.file_size // max(info.compress_size, 1)
        return f"decompression bomb: declares {info.file_size} bytes from {info.compress_size} ({ratio}:1)"
    return None


# -- TAR and TAR.GZ -----------------------------------------------------------------------------------------------
class _Counting:
    """The raw archive file, counting the (compressed) bytes the TAR reader has taken from it."""

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fp.read(n)
        self.count += len(data)
        return data


def _tar_members(path: Path, kind: Kind, files: Files, limits: Limits) -> Iterator[Member]:
    with open(path, "rb") as raw:
        counting = _Counting(raw)
        with _open_tar(counting, kind) as archive:
            seen = 0
            while (info := _next(archive, kind)) is not None:
                # stream mode keeps every header otherwise: memory grows with the count. typeshed leaves out the
                # (undocumented) TarFile.members list; getmembers() would read the whole stream first.
                archive.members.clear()  # type: ignore[attr-defined]
                if info.isdir():
                    continue
                seen += 1
                if seen > limits.max_members:
                    raise InvalidRequest(f"the {kind} holds more than {limits.max_members} members: the rest refused")
                yield _tar_member(archive, info, counting if kind == Kind.TAR_GZ else None, files, limits)


def _open_tar(counting: _Counting, kind: Kind) -> tarfile.TarFile:
    mode = "r|gz" if kind == Kind.TAR_GZ else "r|"  # stream mode: one pass, no seeking
    try:
        # typeshed asks for a seekable, writable fileobj; stream mode only ever calls read().
        archive: tarfile.TarFile = tarfile.open(fileobj=counting, mode=mode)  # type: ignore[call-overload]  # noqa: SIM115
        return archive
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InvalidRequest(f"unreadable {kind}: {exc}") from exc


def _next(archive: tarfile.TarFile, kind: Kind) -> tarfile.TarInfo | None:
    try:
        return archive.next()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InvalidRequest(f"unreadable {kind} (truncated or corrupt): {exc}") from exc


def _tar_member(
    archive: tarfile.TarFile, info: tarfile.TarInfo, counting: _Counting | None, files: Files, limits: Limits
) -> Member:
    name = info.name
    reason = unsafe_name(name)
    if reason:
        return _refused(name, reason)
    if not info.isreg() or info.issparse():
        return _skipped(name, f"{_tar_type(info)}: not imported")
    if info.size > limits.max_member_bytes:
        return _refused(name, f"{info.size} bytes, more than the limit of {limits.max_member_bytes}")
    src = archive.extractfile(info)
    assert src is not None  # a regular file always has a reader
    start = counting.count if counting is not None else 0

    def compressed() -> int:  # compressed bytes taken since the member began (TAR.GZ); plain TAR: no ratio
        return counting.count - start if counting is not None else info.size

    try:
        with src:
            member = _read_member(name, src, info.size, compressed, files, limits)
            _drain(src)
            return member
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise InvalidRequest(f"unreadable member {name!r} (truncated or corrupt archive): {exc}") from exc


def _drain(src: IO[bytes]) -> None:
    """A TAR stream goes on to the next member only by reading through this one. tarfile would skip it 10 KiB at
    a time, re-slicing its whole decompressed buffer each time (minutes for a highly compressed member):
    read the rest in 1 MiB chunks instead. Bounded by the member's declared size (≤ max_member_bytes)."""
    while src.read(CHUNK):
        pass


def _tar_type(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symbolic link to {info.linkname!r}"
    if info.islnk():
        return f"hard link to {info.linkname!r}"
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "FIFO"
    if info.issparse():
        return "sparse file"
    return f"member of TAR type {info.type!r}"


# -- one member ---------------------------------------------------------------------------------------------------
def _read_member(name: str, src: IO[bytes], declared: int, compressed: _SizeFn, files: Files, limits: Limits) -> Member:
    head = _read_head(src)
    kind = kind_of(head)
    if kind in ARCHIVES:
        what = "gzip (TAR.GZ?)" if kind == Kind.TAR_GZ else kind.upper()
        return _skipped(name, f"nested {what} archive: not expanded")
    if kind != Kind.DICOM:
        return _skipped(name, skip_reason(head))
    try:
        with files.temp(".member") as (temp, out):
            out.write(head)
            size = len(head) + _copy(src, out, declared, len(head), compressed, limits)
    except _Refused as refusal:
        return _refused(name, str(refusal))
    return Member(name, Status.DICOM, temp=temp, size=size)


def _read_head(src: IO[bytes]) -> bytes:
    head = b""
    while len(head) < HEAD:
        data = src.read(HEAD - len(head))
        if not data:
            break
        head += data
    return head


def _copy(src: IO[bytes], out: BinaryIO, declared: int, written: int, compressed: _SizeFn, limits: Limits) -> int:
    """Copy the rest of a member in chunks, stopping as soon as it outgrows its declaration or looks like a bomb."""
    copied = 0
    while data := src.read(CHUNK):
        copied += len(data)
        total = written + copied
        if total > declared:
            raise _Refused(f"decompression bomb: more than the {declared} bytes declared; stopped there")
        if _bomb(total, compressed(), limits):
            raise _Refused(
                f"decompression bomb: {total} bytes from {compressed()} compressed "
                f"(over {limits.max_ratio}:1); stopped at the cap"
            )
        out.write(data)
    return copied


def _bomb(expanded: int, compressed: int, limits: Limits) -> bool:
    return expanded > limits.ratio_floor_bytes and expanded > limits.max_ratio * max(compressed, 1)


def _skipped(name: str, reason: str) -> Member:
    return Member(name, Status.SKIPPED, reason)


def _refused(name: str, reason: str) -> Member:
    log.warning("archive member %r refused: %s", name, reason)
    return Member(name, Status.REFUSED, reason)
