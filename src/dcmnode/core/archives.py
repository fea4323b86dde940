"""Read ZIP, TAR and TAR.GZ archives as a stream of members.

An archive is recognised by its first bytes, never by its name. Members are read one at a time in 1 MiB chunks
and each DICOM member is spooled into a store temp file, so neither the archive nor a member is ever held in
memory. What is not imported is reported with its reason and the rest goes on:

- skipped: directories (silently), symbolic and hard links, devices, FIFOs, sparse files, nested archives (never
  expanded, whatever their depth: a 42.zip-style nest costs one 512-byte read per outer member), and members
  without the DICM prefix at byte 128;
- refused: absolute and drive paths, ``..`` components, with ``\\`` read as ``/`` (zip-slip, Windows style),
  names with control characters (NUL) or longer than ``max_name_bytes`` (or a component over 255 bytes), paths
  that go through (or replace) a link member seen earlier (the tar symlink/hardlink escape of CVE-2025-4517),
  members larger than ``max_member_bytes``, encrypted ZIP members, ZIP entries whose local-header ranges overlap
  another entry's (Fifield's "quoted overlap" bomb; this Python's zipfile does not check it, cpython#109858) or
  run past the file data (a forged compressed size), and decompression bombs: a member whose bytes outgrow its
  declared size, or whose expansion passes ``max_ratio``:1 beyond ``ratio_floor_bytes`` (declared in the ZIP
  directory, or seen while reading). Spooling stops as soon as a cap is passed; a TAR.GZ, which has no index, is
  then read through (nothing kept) to reach the next member.

Nothing is ever written under a member's name: members are spooled into store temp files with names of the
store's own, so a hostile name can only be reported. Every byte decompressed (kept, drained or sniffed) counts
against ``max_expanded_bytes`` for the archive as a whole: past it, the member being read is refused and the rest
of the archive is not read (InvalidRequest after the members already yielded).

A ZIP that declares more than ``max_members`` entries is refused whole, before its directory is read; a TAR,
which declares no count, is cut off at that many members.
"""

from __future__ import annotations

import logging
import stat
import struct
import tarfile
import unicodedata
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
    max_expanded_bytes: int = 32 * 1024 * MIB  # every member of one archive together
    max_name_bytes: int = 1024


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


class _Capped(Exception):
    """The archive as a whole expanded past ``max_expanded_bytes``: the member being read and the rest refused."""


NAME_MAX = 255  # bytes in one path component (POSIX NAME_MAX on Linux)
SHOWN = 200  # characters of a member name shown in reports and logs


class _Budget:
    """Bytes decompressed from one archive so far, against ``max_expanded_bytes``."""

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.max_expanded_bytes
        self.expanded = 0

    def take(self, count: int) -> None:
        self.expanded += count
        if self.expanded > self.limit:
            raise _Capped(
                f"the archive expands to more than {self.limit} bytes (the limit for one archive); "
                "stopped there, the rest of the archive not read"
            )


class _Links:
    """Names of the link members seen so far in one archive: a later member whose path goes through one (or
    replaces one) would be written through the link by an extractor; it is refused."""

    def __init__(self) -> None:
        self._names: set[tuple[str, ...]] = set()

    def add(self, name: str) -> None:
        self._names.add(_parts(name))

    def through(self, name: str) -> str | None:
        parts = _parts(name)
        for end in range(1, len(parts) + 1):
            if parts[:end] in self._names:
                link = "/".join(parts[:end])
                how = "replaces" if end == len(parts) else "goes through"
                return f"path {shown(name)!r} {how} the link {shown(link)!r} met earlier in the archive: refused"
        return None


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", "."))


def _control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"  # C0, DEL, C1: NUL and its kind, never in a real file name


def shown(name: str) -> str:
    """A member name as reports and logs show it: control characters escaped, cut to SHOWN characters."""
    safe = "".join(f"\\x{ord(c):02x}" if _control(c) else c for c in name)
    if len(safe) > SHOWN:
        return f"{safe[:SHOWN]}... ({len(name.encode('utf-8', 'surrogateescape'))} bytes)"
    return safe


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


def unsafe_name(name: str, max_bytes: int = 1024) -> str | None:
    """Why a member name must not be trusted (zip-slip, Windows and drive paths, NUL, length), or None."""
    if any(_control(c) for c in name):
        return f"control character in member name {shown(name)!r}: refused"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > max_bytes:
        return f"member name of {size} bytes, more than the limit of {max_bytes}: refused"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return f"absolute path {shown(name)!r} refused"
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        return f"path {shown(name)!r} leaves the archive ('..'): refused"
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in parts):
        return f"a component of {shown(name)!r} is longer than {NAME_MAX} bytes: refused"
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
            if len(entries) > limits.max_members:  # the directory held more entries than its end record said
                raise InvalidRequest(
                    f"the ZIP holds {len(entries)} members, more than the limit of {limits.max_members}"
                )
            if declared is not None:
                declared(len(entries))
            overlaps = zip_overlaps(fp, archive.infolist(), archive.start_dir)
            budget, links = _Budget(limits), _Links()
            for info in entries:
                try:
                    yield _zip_member(archive, info, overlaps.get(id(info)), files, limits, budget, links)
                except _Capped as capped:
                    yield _refused(shown(info.orig_filename), str(capped))
                    raise InvalidRequest(str(capped)) from None


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


_LOCAL = struct.Struct("<4s22xHH")  # local file header: signature, ..., name length, extra length (30 bytes)


def zip_overlaps(fp: BinaryIO, infos: list[zipfile.ZipInfo], start_dir: int) -> dict[int, str]:
    """Why entries must not be read, by ``id(info)``: their bytes (local header, name, extra field, compressed
    data as declared) overlap another entry's, or run past the start of the central directory. A well-formed
    ZIP never does either (APPNOTE 4.3.6: file entries are laid one after the other); an overlap is how a
    zip bomb makes many entries of one kernel (Fifield, "A better zip bomb", 2019), a range past the data is
    a forged ``compress_size`` (e.g. 0xFFFFFFFE). Python's zipfile checks neither before 3.12 (cpython#109858).
    One 30-byte read per entry; overlapping entries are refused in groups (every entry of a cluster)."""
    spans: list[tuple[int, int, int]] = []  # start, end, id
    reasons: dict[int, str] = {}
    for info in infos:
        fp.seek(info.header_offset)
        header = fp.read(_LOCAL.size)
        if len(header) < _LOCAL.size or header[:4] != b"PK\x03\x04":
            reasons[id(info)] = f"no local file header at offset {info.header_offset}: refused"
            continue
        _, name_len, extra_len = _LOCAL.unpack(header)
        end = info.header_offset + _LOCAL.size + name_len + extra_len + info.compress_size
        if end > start_dir:
            reasons[id(info)] = (
                f"declares {info.compress_size} compressed bytes, running past the archive's file data "
                f"(a forged size): refused"
            )
            continue
        spans.append((info.header_offset, end, id(info)))
    spans.sort()
    cluster: list[int] = []
    cluster_end = -1
    for start, end, ident in [*spans, (start_dir + 1, start_dir + 1, 0)]:  # a sentinel closes the last cluster
        if start < cluster_end:
            cluster.append(ident)
            cluster_end = max(cluster_end, end)
            continue
        if len(cluster) > 1:
            for member in cluster:
                reasons[member] = f"overlaps {len(cluster) - 1} other entr(ies) of the ZIP (a zip bomb): refused"
        cluster, cluster_end = [ident], end
    fp.seek(0)
    return reasons


def _zip_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    overlap: str | None,
    files: Files,
    limits: Limits,
    budget: _Budget,
    links: _Links,
) -> Member:
    raw = info.orig_filename  # zipfile cuts ``filename`` at a NUL; the name as the archive has it
    name = shown(raw)
    reason = unsafe_name(raw, limits.max_name_bytes) or links.through(raw) or overlap or _zip_refusal(info, limits)
    if reason:
        return _refused(name, reason)
    if stat.S_ISLNK(info.external_attr >> 16):
        links.add(raw)
        return _skipped(name, "symbolic link: not followed")
    try:
        with archive.open(info) as src:
            return _read_member(name, src, info.file_size, lambda: info.compress_size, files, limits, budget)
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
            budget, links = _Budget(limits), _Links()
            while (info := _next(archive, kind)) is not None:
                # stream mode keeps every header otherwise: memory grows with the count. typeshed leaves out the
                # (undocumented) TarFile.members list; getmembers() would read the whole stream first.
                archive.members.clear()  # type: ignore[attr-defined]
                if info.isdir():
                    continue
                seen += 1
                if seen > limits.max_members:
                    raise InvalidRequest(f"the {kind} holds more than {limits.max_members} members: the rest refused")
                gz = counting if kind == Kind.TAR_GZ else None
                try:
                    yield _tar_member(archive, info, gz, files, limits, budget, links)
                except _Capped as capped:
                    yield _refused(shown(info.name), str(capped))
                    raise InvalidRequest(str(capped)) from None


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
    archive: tarfile.TarFile,
    info: tarfile.TarInfo,
    counting: _Counting | None,
    files: Files,
    limits: Limits,
    budget: _Budget,
    links: _Links,
) -> Member:
    name = shown(info.name)
    reason = unsafe_name(info.name, limits.max_name_bytes) or links.through(info.name)
    if info.issym() or info.islnk():
        # never followed, never made: remembered so that a later member written "through" it is refused
        # (a symlink then a file below it; a hard link to a deeper symlink, CVE-2025-4517)
        links.add(info.name)
    if reason or (info.isreg() and info.size > limits.max_member_bytes):
        # tarfile still reads past a member it is not asked for (a TAR.GZ stream decompresses all of it):
        # those bytes count against the archive's budget like any other
        if info.isreg():
            budget.take(info.size)
        return _refused(name, reason or f"{info.size} bytes, more than the limit of {limits.max_member_bytes}")
    if not info.isreg() or info.issparse():
        return _skipped(name, f"{_tar_type(info)}: not imported")
    src = archive.extractfile(info)
    assert src is not None  # a regular file always has a reader
    start = counting.count if counting is not None else 0

    def compressed() -> int:  # compressed bytes taken since the member began (TAR.GZ); plain TAR: no ratio
        return counting.count - start if counting is not None else info.size

    try:
        with src:
            member = _read_member(name, src, info.size, compressed, files, limits, budget)
            _drain(src, budget)
            return member
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise InvalidRequest(f"unreadable member {name!r} (truncated or corrupt archive): {exc}") from exc


def _drain(src: IO[bytes], budget: _Budget) -> None:
    """A TAR stream goes on to the next member only by reading through this one. tarfile would skip it 10 KiB at
    a time, re-slicing its whole decompressed buffer each time (minutes for a highly compressed member):
    read the rest in 1 MiB chunks instead. Bounded by the member's declared size (≤ max_member_bytes) and by
    the archive's budget."""
    while data := src.read(CHUNK):
        budget.take(len(data))


def _tar_type(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symbolic link to {shown(info.linkname)!r}"
    if info.islnk():
        return f"hard link to {shown(info.linkname)!r}"
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "FIFO"
    if info.issparse():
        return "sparse file"
    return f"member of TAR type {info.type!r}"


# -- one member ---------------------------------------------------------------------------------------------------
def _read_member(
    name: str, src: IO[bytes], declared: int, compressed: _SizeFn, files: Files, limits: Limits, budget: _Budget
) -> Member:
    head = _read_head(src)
    budget.take(len(head))
    kind = kind_of(head)
    if kind in ARCHIVES:
        what = "gzip (TAR.GZ?)" if kind == Kind.TAR_GZ else kind.upper()
        return _skipped(name, f"nested {what} archive: not expanded")
    if kind != Kind.DICOM:
        return _skipped(name, skip_reason(head))
    try:
        with files.temp(".member") as (temp, out):
            out.write(head)
            size = len(head) + _copy(src, out, declared, len(head), compressed, limits, budget)
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


def _copy(
    src: IO[bytes],
    out: BinaryIO,
    declared: int,
    written: int,
    compressed: _SizeFn,
    limits: Limits,
    budget: _Budget,
) -> int:
    """Copy the rest of a member in chunks, stopping as soon as it outgrows its declaration or looks like a bomb
    (or the archive outgrows its budget: _Capped, the temp file removed on the way out)."""
    copied = 0
    while data := src.read(CHUNK):
        copied += len(data)
        budget.take(len(data))
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
    log.info("archive member %r skipped: %s", name, reason)
    return Member(name, Status.SKIPPED, reason)


def _refused(name: str, reason: str) -> Member:
    log.warning("archive member %r refused: %s", name, reason)
    return Member(name, Status.REFUSED, reason)
