"""Hostile archives (issue 17, notes §3.6) through the upload endpoint of a running node and through
`dcmnode import`: Windows, drive and NUL names, 4 KB names, tar link escapes, overlapping and forged-size ZIP
entries, deep nests, the archive-level expansion cap, and the peak memory of a bomb. Every archive is built here
(zipfile, tarfile, struct); a walk of the test's folder before and after shows no file outside the data folder."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from tests.conftest import LiveServer, temp_files
from tests.factories import ct_series, part10
from tests.test_upload import MIB, Zeros, finish, open_job, put, wait_ended

DICM = b"\0" * 128 + b"DICM"


# -- building hostile archives ------------------------------------------------------------------------------------
def hostile_zip(path: Path, good: list[Dataset], evil: list[Dataset]) -> dict[str, str]:
    """Good members and members with hostile names (each a valid DICOM file, so that only the name can stop it).
    Returns each hostile name as the report shows it → a word its reason must hold."""
    names = {
        "..\\evil0.dcm": "leaves the archive",
        "C:/evil1.dcm": "absolute path",
        "C:evil2.dcm": "absolute path",
        "a/../../evil3.dcm": "leaves the archive",
        "\\\\server\\share\\evil4.dcm": "absolute path",
        "ok/evil5.dcm\\x00../../x": "control character",  # a NUL, patched in below
        "n" * 4096 + ".dcm": "4100 bytes, more than the limit",
        "d/" + "c" * 300 + ".dcm": "longer than 255 bytes",
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for i, ds in enumerate(good):
            out.writestr(f"ok/IM{i}.dcm", part10(ds))
        for name, ds in zip(names, evil, strict=True):
            out.writestr(name.replace("\\x00", "\x01"), part10(ds))
    data = path.read_bytes()
    # zipfile cuts a name at a NUL when it writes it: put the NUL in the local and central headers by hand
    assert data.count(b"evil5.dcm\x01") == 2
    path.write_bytes(data.replace(b"evil5.dcm\x01", b"evil5.dcm\x00"))
    return {(n[:200] + f"... ({len(n)} bytes)" if len(n) > 200 else n): why for n, why in names.items()}


def add_member(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


def add_link(out: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    out.addfile(info)


def hostile_tar(path: Path, good: list[Dataset], evil: list[Dataset], outside: Path) -> dict[str, str]:
    """A symlink then a file written through it, a hard link to a deeper symlink then a file through the hard
    link (the CVE-2025-4517 / tarfile-filter pattern), a file replacing a link, PAX names with a NUL or 4 KB."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as out:
        for i, ds in enumerate(good):
            add_member(out, f"ok/IM{i}.dcm", part10(ds))
        add_link(out, "escape", str(outside), tarfile.SYMTYPE)
        add_member(out, "escape/evil0.dcm", part10(evil[0]))
        add_link(out, "deep/a/b/c", "../../../..", tarfile.SYMTYPE)
        add_link(out, "hard", "deep/a/b/c", tarfile.LNKTYPE)
        add_member(out, "hard/evil1.dcm", part10(evil[1]))
        add_member(out, "./escape", part10(evil[2]))  # a regular file in the place of the link
        add_member(out, "p" * 120 + "/evil3.dcm\x00../../x", part10(evil[3]))  # long: a PAX path keeps the NUL
        add_member(out, "q" * 4096, part10(evil[4]))
    return {
        "escape/evil0.dcm": "goes through the link 'escape'",
        "hard/evil1.dcm": "goes through the link 'hard'",
        "./escape": "replaces the link 'escape'",
        "p" * 120 + "/evil3.dcm\\x00../../x": "control character",
        "q" * 200 + "... (4096 bytes)": "4096 bytes, more than the limit",
    }


def _lfh(name: bytes, crc: int, csize: int, usize: int, method: int = 8) -> bytes:
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, csize, usize, len(name), 0) + name


def _cdh(name: bytes, crc: int, csize: int, usize: int, offset: int, method: int = 8) -> bytes:
    fields = (b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, csize, usize, len(name), 0, 0, 0, 0, 0, offset)
    return struct.pack("<4s6H3L5HLL", *fields) + name


def _eocd(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)


def _deflate(data_size: int) -> tuple[bytes, int]:
    """Raw deflate of DICM + zeros, and its CRC-32, without holding the plain bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    out, crc, left = [comp.compress(DICM)], zlib.crc32(DICM), data_size - len(DICM)
    while left > 0:
        chunk = bytes(min(left, MIB))
        out.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    out.append(comp.flush())
    return b"".join(out), crc


def full_overlap_bomb(path: Path, entries: int, kernel_size: int) -> None:
    """``entries`` central-directory entries, all of one name, all pointing at one local header."""
    kernel, crc = _deflate(kernel_size)
    name = b"bomb.dcm"
    local = _lfh(name, crc, len(kernel), kernel_size) + kernel
    cd = _cdh(name, crc, len(kernel), kernel_size, 0) * entries
    path.write_bytes(local + cd + _eocd(entries, len(cd), len(local)))


def quoted_overlap_bomb(path: Path, files: int, kernel_size: int) -> None:
    """Fifield's quoted overlap: each file's deflate stream starts with a stored block that quotes the next
    file's local header, then runs on into the next file's data, down to one shared kernel."""
    kernel, kernel_crc = _deflate(kernel_size)
    names = [f"{i:02d}.dcm".encode() for i in range(files)]
    headers: list[bytes] = [b""] * files
    sizes: list[tuple[int, int, int]] = [(0, 0, 0)] * files  # crc, csize, usize
    sizes[-1] = (kernel_crc, len(kernel), kernel_size)
    headers[-1] = _lfh(names[-1], *sizes[-1])
    for i in range(files - 2, -1, -1):
        quoted = b"".join(headers[i + 1 :])  # what file i's stream yields before the kernel's bytes
        crc = zlib.crc32(DICM, zlib.crc32(quoted))
        crc = zlib.crc32(bytes(kernel_size - len(DICM)), crc)
        csize = 5 + len(headers[i + 1]) + sizes[i + 1][1]
        sizes[i] = (crc, csize, len(headers[i + 1]) + sizes[i + 1][2])
        headers[i] = _lfh(names[i], *sizes[i])
    body, offsets = b"", []
    for i in range(files):
        offsets.append(len(body))
        body += headers[i]
        if i < files - 1:  # a non-final stored block (BFINAL=0, BTYPE=00) holding the next local header
            size = len(headers[i + 1])
            body += struct.pack("<BHH", 0, size, size ^ 0xFFFF)
    body += kernel
    cd = b"".join(_cdh(names[i], *sizes[i], offsets[i]) for i in range(files))
    path.write_bytes(body + cd + _eocd(files, len(cd), len(body)))


def patch_central(path: Path, name: str, **values: int) -> None:
    """Lie in one entry's central-directory record: compress_size and/or file_size."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02" + bytes(0))
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == name.encode():
            if "compress_size" in values:
                struct.pack_into("<L", data, at + 20, values["compress_size"])
            if "file_size" in values:
                struct.pack_into("<L", data, at + 24, values["file_size"])
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 46)
    raise AssertionError(f"{name} not in the central directory")


def forged_zip(path: Path, good: list[Dataset]) -> dict[str, str]:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("a/IM0.dcm", part10(good[0]))
        out.writestr("csize.dcm", DICM + bytes(MIB))
        out.writestr("a/IM1.dcm", part10(good[1]))
        out.writestr("usize.dcm", DICM + bytes(MIB))
        out.writestr("small.dcm", DICM + bytes(5 * MIB))
        out.writestr("a/IM2.dcm", part10(good[2]))
    patch_central(path, "csize.dcm", compress_size=0xFFFFFFFE)
    patch_central(path, "usize.dcm", file_size=0xFFFFFFFE)
    patch_central(path, "small.dcm", file_size=1000)
    return {
        "csize.dcm": "running past the archive's file data",
        "usize.dcm": "4294967294 bytes uncompressed, more than the limit",
        "small.dcm": "Bad CRC-32",  # zipfile stops at the 1000 bytes declared; the CRC then fails
    }


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return buffer.getvalue()


def nests(folder: Path, good: Dataset, evil: Dataset) -> tuple[Path, Path]:
    """A 20-deep zip-in-zip (a DICOM file at the bottom) and a 42.zip-style nest (16 wide, 4 deep)."""
    inner = zip_of({"bottom.dcm": part10(evil)})
    for depth in range(19, 1, -1):
        inner = zip_of({f"d{depth}.zip": inner})
    deep = folder / "deep.zip"
    deep.write_bytes(zip_of({"d1.zip": inner, "good.dcm": part10(good)}))
    leaf = zip_of({"0.dat": bytes(MIB)})
    for _ in range(3):
        leaf = zip_of({f"lib {i:x}.zip": leaf for i in range(16)})
    wide = folder / "42.zip"
    with zipfile.ZipFile(io.BytesIO(leaf)) as top:
        members = {info.filename: top.read(info) for info in top.infolist()}
    wide.write_bytes(zip_of(members))
    return deep, wide


# -- checks -------------------------------------------------------------------------------------------------------
def walk(root: Path) -> set[str]:
    """Every entry below ``root`` (files, folders, links, not followed)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def assert_nothing_outside(root: Path, before: set[str], data: Path) -> None:
    """What appeared under ``root`` is inside the data folder, and nothing is left in its tmp folder."""
    prefix = os.path.relpath(data, root)
    new = walk(root) - before
    outside = sorted(p for p in new if p != prefix and not p.startswith(prefix + os.sep))
    assert outside == [], f"created outside the data folder: {outside}"
    assert temp_files(data) == []


def reasons(items: list[dict[str, str]], archive: str) -> dict[str, str]:
    return {item["path"].removeprefix(archive + "/"): item["reason"] for item in items}


def assert_reasons(got: dict[str, str], expected: dict[str, str]) -> None:
    assert set(expected) <= set(got), sorted(set(expected) - set(got))
    for name, words in expected.items():
        assert words in got[name], (name, got[name])


# The child reports its own high-water mark (VmHWM of its memory map) as it exits. wait4's ru_maxrss would not
# do: Linux carries the parent's RSS at fork into the child's maxrss across exec, so under a long pytest run it
# reports the test process's size, not the import's.
PEAK_SCRIPT = """
import atexit, sys
from dcmnode.cli import main
def peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK-KIB {kib}\\n")
atexit.register(peak)
sys.exit(main(sys.argv[1:]))
"""


def run_measured(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], int]:
    """``dcmnode import`` as a child process, and its peak resident set size in bytes (its own VmHWM)."""
    cmd = [sys.executable, "-c", PEAK_SCRIPT, "import", "--no-progress", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    found = re.search(r"^PEAK-KIB (\d+)$", done.stderr, re.M)
    assert found is not None, done.stderr[-2000:]
    return done, int(found[1]) * 1024


def cli_lines(stdout: str, archive: Path, kind: str) -> dict[str, str]:
    """``  failed: PATH: REASON`` lines of one archive's members, by member name."""
    found = {}
    for line in stdout.splitlines():
        head = f"  {kind}: {archive}/"
        if line.startswith(head):
            name, _, reason = line[len(head) :].partition(": ")
            found[name] = reason
    return found


def stored(live: LiveServer, datasets: list[Dataset]) -> list[bool]:
    index = live.node.services.store.index
    return [index.instance(str(ds.SOPInstanceUID)) is not None for ds in datasets]


# -- hostile names and links --------------------------------------------------------------------------------------
def test_hostile_names_and_tar_links_over_upload(live: LiveServer, tmp_path: Path) -> None:
    good, evil = ct_series(8, rows=16, cols=16), ct_series(13, rows=16, cols=16, patient_id="EVIL", seed=3)
    outside = tmp_path / "outside"
    outside.mkdir()
    zipped, tarred = tmp_path / "names.zip", tmp_path / "links.tar.gz"
    zip_expected = hostile_zip(zipped, good[:4], evil[:8])
    tar_expected = hostile_tar(tarred, good[4:], evil[8:], outside)
    before = walk(tmp_path)

    job = open_job(live, name="hostile")
    assert put(live, job["id"], "names.zip", zipped).status_code == 202
    assert put(live, job["id"], "links.tar.gz", tarred).status_code == 202
    finish(live, job["id"])
    job = wait_ended(live, job["id"])

    assert job["state"] == "done" and job["stored"] == 8
    assert_reasons(reasons(job["failed"], "names.zip"), zip_expected)
    assert_reasons(reasons(job["failed"], "links.tar.gz"), tar_expected)
    skipped = reasons(job["skipped"], "links.tar.gz")
    assert skipped["escape"] == f"symbolic link to {str(outside)!r}: not imported"
    assert skipped["hard"] == "hard link to 'deep/a/b/c': not imported"
    assert job["failed_count"] == len(zip_expected) + len(tar_expected)
    assert all(stored(live, good)) and not any(stored(live, evil))
    assert_nothing_outside(tmp_path, before, live.node.services.store.root)
    assert list(outside.iterdir()) == []


def test_hostile_names_and_tar_links_over_cli(tmp_path: Path) -> None:
    good, evil = ct_series(8, rows=16, cols=16), ct_series(13, rows=16, cols=16, patient_id="EVIL", seed=3)
    outside = tmp_path / "outside"
    outside.mkdir()
    zipped, tarred = tmp_path / "names.zip", tmp_path / "links.tar.gz"
    zip_expected = hostile_zip(zipped, good[:4], evil[:8])
    tar_expected = hostile_tar(tarred, good[4:], evil[8:], outside)
    data = tmp_path / "data"
    before = walk(tmp_path)

    result, _ = run_measured(str(zipped), str(tarred), "--data", str(data))

    assert result.returncode == 0, result.stderr
    assert "8 stored" in result.stdout and f"{len(zip_expected) + len(tar_expected)} failed" in result.stdout
    assert_reasons(cli_lines(result.stdout, zipped, "failed"), zip_expected)
    assert_reasons(cli_lines(result.stdout, tarred, "failed"), tar_expected)
    assert "symbolic link to" in cli_lines(result.stdout, tarred, "skipped")["escape"]
    assert_nothing_outside(tmp_path, before, data)
    assert list(outside.iterdir()) == []


# -- bombs ----------------------------------------------------------------------------------------------------------
def test_overlap_and_forged_size_bombs_over_upload(live: LiveServer, tmp_path: Path) -> None:
    good = ct_series(6, rows=16, cols=16)
    full, quoted, forged = tmp_path / "full.zip", tmp_path / "quoted.zip", tmp_path / "forged.zip"
    full_overlap_bomb(full, entries=200, kernel_size=20 * MIB)  # 4 GB of "DICOM" from 20 KB
    quoted_overlap_bomb(quoted, files=12, kernel_size=20 * MIB)
    forged_expected = forged_zip(forged, good[:3])
    for bomb in (full, quoted):  # this Python's zipfile reads every entry of them without a word
        with zipfile.ZipFile(bomb) as archive, archive.open(archive.infolist()[0]) as first:
            assert len(first.read()) >= 20 * MIB
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as out:
        for i, ds in enumerate(good[3:]):
            out.writestr(f"ok/IM{i}.dcm", part10(ds))
    before = walk(tmp_path)

    job = open_job(live, name="bombs")
    for archive in (full, quoted, forged, plain):
        assert put(live, job["id"], archive.name, archive).status_code == 202
    finish(live, job["id"])
    job = wait_ended(live, job["id"])

    assert sum(1 for f in job["failed"] if f["path"] == "full.zip/bomb.dcm") == 200
    assert all("overlaps 199 other entr" in f["reason"] for f in job["failed"] if f["path"] == "full.zip/bomb.dcm")
    quoted_failed = reasons(job["failed"], "quoted.zip")
    assert all("overlaps 11 other entr" in quoted_failed[f"{i:02d}.dcm"] for i in range(12))
    assert_reasons(reasons(job["failed"], "forged.zip"), forged_expected)
    assert job["stored"] == 6 and job["state"] == "done"
    assert all(stored(live, good))
    assert_nothing_outside(tmp_path, before, live.node.services.store.root)


def test_deep_and_wide_nests_are_skipped(live: LiveServer, tmp_path: Path) -> None:
    good, evil = ct_series(2, rows=16, cols=16), ct_series(1, rows=16, cols=16, patient_id="EVIL", seed=5)
    deep, wide = nests(tmp_path, good[0], evil[0])
    job = open_job(live, name="nests")
    assert put(live, job["id"], "deep.zip", deep).status_code == 202
    assert put(live, job["id"], "42.zip", wide).status_code == 202
    assert put(live, job["id"], "good.dcm", part10(good[1])).status_code == 200
    finish(live, job["id"])
    job = wait_ended(live, job["id"])
    skipped = {s["path"]: s["reason"] for s in job["skipped"]}
    assert skipped == {"deep.zip/d1.zip": "nested ZIP archive: not expanded"} | {
        f"42.zip/lib {i:x}.zip": "nested ZIP archive: not expanded" for i in range(16)
    }
    assert job["stored"] == 2 and job["failed"] == [] and stored(live, evil) == [False]


def test_archive_expansion_cap_setting(live_factory: Any, tmp_path: Path) -> None:
    live = live_factory(http={"max_archive_expanded_mb": 5})  # the setting http.max_archive_expanded_mb
    big = ct_series(5, rows=1024, cols=1024, seed=7)  # 2 MiB each
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for i, ds in enumerate(big):
            out.writestr(f"s/IM{i}.dcm", part10(ds))
    job = open_job(live, name="big")
    assert put(live, job["id"], "big.zip", archive).status_code == 202
    finish(live, job["id"])
    job = wait_ended(live, job["id"])
    failed = {f["path"]: f["reason"] for f in job["failed"]}
    capped = "the archive expands to more than 5242880 bytes (the limit for one archive)"
    assert set(failed) == {"big.zip/s/IM2.dcm", "big.zip"} and all(capped in r for r in failed.values())
    assert job["stored"] == 2 and stored(live, big) == [True, True, False, False, False]
    assert temp_files(live.node.services.store.root) == []

    data = tmp_path / "cli-data"
    result, _ = run_measured(str(archive), "--data", str(data), env={"DCMNODE_HTTP_MAX_ARCHIVE_EXPANDED_MB": "5"})
    assert "2 stored" in result.stdout and f"  failed: {archive}: {capped}" in result.stdout
    assert temp_files(data) == []


def test_bombs_peak_memory_of_dcmnode_import(tmp_path: Path) -> None:
    """The RSS high-water mark of a `dcmnode import` of every bomb here together stays well under 256 MiB."""
    good = ct_series(4, rows=16, cols=16)
    folder = tmp_path / "in"
    folder.mkdir()
    full_overlap_bomb(folder / "full.zip", entries=200, kernel_size=20 * MIB)
    quoted_overlap_bomb(folder / "quoted.zip", files=12, kernel_size=20 * MIB)
    with zipfile.ZipFile(folder / "big.zip", "w", zipfile.ZIP_DEFLATED) as out:  # honest sizes: 1:1000
        out.writestr("a/IM0.dcm", part10(good[0]))
        with out.open("a/bomb.dcm", "w", force_zip64=True) as bomb:
            bomb.write(DICM)
            for _ in range(512):
                bomb.write(bytes(MIB))
        out.writestr("a/IM1.dcm", part10(good[1]))
    with tarfile.open(folder / "big.tar.gz", "w:gz", compresslevel=1) as out:  # read through after refusal
        add_member(out, "b/IM2.dcm", part10(good[2]))
        info = tarfile.TarInfo("b/bomb.dcm")
        info.size = 512 * MIB
        out.addfile(info, io.BufferedReader(Zeros(info.size, dicm=True)))
        add_member(out, "b/IM3.dcm", part10(good[3]))
    data = tmp_path / "data"
    before = walk(tmp_path)

    result, peak = run_measured(str(folder), "--data", str(data))

    print(f"dcmnode import of the bombs: peak RSS {peak / MIB:.1f} MiB")
    assert result.returncode == 0, result.stderr
    assert "4 stored" in result.stdout and "214 failed" in result.stdout, result.stdout
    assert peak < 256 * MIB, f"peak RSS {peak / MIB:.1f} MiB"
    assert_nothing_outside(tmp_path, before, data)


def test_refused_tar_gz_members_count_against_the_cap(live_factory: Any, tmp_path: Path) -> None:
    """Members refused by name are still decompressed by tarfile to skip them: their bytes count, so three
    6 MiB members named `../x` stop the archive at a 5 MiB cap instead of being inflated whole for nothing."""
    live = live_factory(http={"max_archive_expanded_mb": 5})
    archive = tmp_path / "skipped.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as out:
        for i in range(3):
            info = tarfile.TarInfo(f"../escape{i}.dcm")
            info.size = 6 * MIB
            out.addfile(info, io.BufferedReader(Zeros(info.size, dicm=True)))
    job = open_job(live, name="skipped")
    assert put(live, job["id"], "skipped.tar.gz", archive).status_code == 202
    finish(live, job["id"])
    job = wait_ended(live, job["id"])
    reasons = {f["path"]: f["reason"] for f in job["failed"]}
    assert "the archive expands to more than 5242880 bytes" in reasons["skipped.tar.gz"], reasons
    assert "skipped.tar.gz/../escape2.dcm" not in reasons  # the third member was never read
    assert temp_files(live.node.services.store.root) == []
