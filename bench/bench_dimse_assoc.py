#!/usr/bin/env python3
"""C-ECHO latency of a DIMSE SCP: a new association per echo, and echoes inside one association; and what idle
associations cost the server in CPU.

Run on purpose, never in the test suite. From the repository root, with the virtualenv's python::

    python bench/bench_dimse_assoc.py --dcmnode 2 --dcmnode 0 --bare --rounds 3 \\
        --out-md bench/results/2026-12-08-dimse/assoc-run.md
    python bench/bench_dimse_assoc.py --port 4242 --aet ORTHANC            # any SCP that answers C-ECHO

Targets (each measured round by round, interleaved, so that the machine's drift hits all alike):

  --host/--port/--aet   an SCP that is already running (``--server-pid`` for its idle CPU figure)
  --dcmnode P           a fresh ``dcmnode serve`` (empty data folder under ``--work``, default settings) with
                        ``dimse.processes = P``; repeatable (``--dcmnode 2 --dcmnode 0``)
  --baseline SRC        beside each ``--dcmnode P``, the same from another source tree (before/after in one run:
                        ``git worktree add /tmp/before <commit>`` then ``--baseline /tmp/before/src``)
  --bare                a bare pynetdicom SCP (one ``AE.start_server`` with a C-ECHO handler) started here, in a
                        subprocess, as the yardstick
  --ideal               the client's floor: a raw-socket responder started here, in a subprocess, that answers
                        the A-ASSOCIATE-RQ, each C-ECHO-RQ and the A-RELEASE-RQ with canned PDUs the moment they
                        arrive (no DICOM stack: what is left is the pynetdicom client's own time)

Metrics per target, per round:

  new_association   ``associate`` + ``send_c_echo`` + ``release``, ``--new`` times: median and p95 in ms, and
                    the medians of the three steps (associate, echo, release)
  in_association    ``send_c_echo`` ``--inside`` times in one association: median and p95 in ms
  server_cpu        the server's CPU time (its whole process tree, from /proc: 10 ms ticks, so over the round)
                    per new association and per C-ECHO inside one (a figure scheduling noise does not move)
  client sleeps     with ``--client-sleeps N``, after the rounds: the client's ``time.sleep`` calls per calling
                    line and thread (main, the DUL's, the association reactor's) over N new associations and 3N
                    echoes: the client's own floor, whatever the server does
  dcmtk             with ``--dcmtk N``, after the rounds, per round: N runs of dcmtk's ``echoscu`` (a process each:
                    start, associate, C-ECHO, release) and the per-echo time of ``echoscu --repeat 10N``: a client
                    that blocks in its socket instead of polling, so the server's own latency shows
  idle_cpu          ``--idle`` associations opened and left idle for ``--idle-seconds``: the server's CPU time
                    over that span (its whole process tree, from /proc), in % of one core

The client is pynetdicom 3.0.4 as in ``../shared/bench/bench_node.py`` (Nagle off once associated, via
``setsockopt`` on ``assoc.dul.socket.socket``), so its own polling counts: its DUL reactor sleeps 1 ms when idle and
its association waits in 0.1 ms steps, which sets a floor under every figure whatever the server does. Every
C-ECHO status is checked (0x0000); a failure stops the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STALL_TIMEOUT = 5.0  # seconds: the client's DIMSE timeout, after which a C-ECHO counts as a stall
READY = re.compile(r"DIMSE (\S+)@[\d.]+:(\d+) \(plain\)")

BARE_SCP = """
import sys
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
ae = AE(ae_title="BARE")
ae.add_supported_context(Verification)
server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)])
print(server.server_address[1], flush=True)
sys.stdin.read()  # until the bench closes our stdin
server.shutdown()
"""


IDEAL_SCP = r"""
import socket, struct, sys, threading

def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf

def item(kind, body):
    return struct.pack(">BBH", kind, 0, len(body)) + body

def accept(rq):
    # A-ASSOCIATE-AC (PS3.8 9.3.3): every presentation context accepted with its first transfer syntax
    called, calling = rq[4:20], rq[20:36]
    items, pos = [], 68
    while pos < len(rq):
        kind, length = rq[pos], struct.unpack(">H", rq[pos + 2:pos + 4])[0]
        body = rq[pos + 4:pos + 4 + length]
        if kind == 0x10:
            items.append(item(0x10, body))
        elif kind == 0x20:
            sub, first = 4, None
            while sub < len(body):
                skind, slen = body[sub], struct.unpack(">H", body[sub + 2:sub + 4])[0]
                if skind == 0x40 and first is None:
                    first = body[sub + 4:sub + 4 + slen]
                sub += 4 + slen
            items.append(item(0x21, bytes([body[0], 0, 0, 0]) + item(0x40, first)))
        pos += 4 + length
    user = item(0x51, struct.pack(">I", 0)) + item(0x52, b"1.2.826.0.1.3680043.9.9999.1")
    items.append(item(0x50, user))
    body = struct.pack(">HH", 1, 0) + called + calling + bytes(32) + b"".join(items)
    return struct.pack(">BBI", 2, 0, len(body)) + body

def element(group, elem, value):
    return struct.pack("<HHI", group, elem, len(value)) + value

def echo_rsp(pdata):
    # the C-ECHO-RQ's command set (one PDV, implicit VR little endian): its Message ID, answered 0x0000
    context_id, pos, message_id = pdata[4], 6, 1
    while pos + 8 <= len(pdata):
        group, elem, length = struct.unpack("<HHI", pdata[pos:pos + 8])
        if (group, elem) == (0, 0x0110):
            message_id = struct.unpack("<H", pdata[pos + 8:pos + 10])[0]
        pos += 8 + length
    uid = b"1.2.840.10008.1.1\0"
    rest = (element(0, 2, uid) + element(0, 0x100, struct.pack("<H", 0x8030))
            + element(0, 0x120, struct.pack("<H", message_id)) + element(0, 0x800, struct.pack("<H", 0x0101))
            + element(0, 0x900, struct.pack("<H", 0)))
    command = element(0, 0, struct.pack("<I", len(rest))) + rest
    pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBI", 4, 0, len(pdv)) + pdv

def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            kind, _, length = struct.unpack(">BBI", recv_exact(conn, 6))
            body = recv_exact(conn, length)
            if kind == 1:
                conn.sendall(accept(body))
            elif kind == 4:
                conn.sendall(echo_rsp(body))
            elif kind == 5:
                conn.sendall(bytes([6, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
            else:
                break
    except (EOFError, OSError):
        pass
    finally:
        conn.close()

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
threading.Thread(target=lambda: sys.stdin.read() or listener.close() or sys.exit(), daemon=True).start()
while True:
    try:
        conn, _ = listener.accept()
    except OSError:
        break
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class Target:
    """An SCP to measure: name, address, called AE title, and the pid of its process tree (0: unknown)."""

    def __init__(self, name: str, port: int, aet: str, pid: int = 0, proc: subprocess.Popen[str] | None = None):
        self.name, self.port, self.aet, self.pid, self.proc = name, port, aet, pid, proc

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_dcmnode(work: Path, processes: int, src: Path, label: str = "") -> Target:
    stem = f"dcmnode{label and '-' + label}-p{processes}"
    data = work / stem
    shutil.rmtree(data, ignore_errors=True)
    log = open(work / f"{stem}.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "DCMNODE_DIMSE_PROCESSES": str(processes),
        "DCMNODE_SR_WORKER": "off",
    }
    cmd = [sys.executable, "-m", "dcmnode", "serve", "--data", str(data), "--host", HOST]
    proc = subprocess.Popen(
        [*cmd, "--http-port", "0", "--dimse-port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=work,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = READY.search(line)
    if found is None:
        proc.kill()
        raise SystemExit(f"dcmnode serve did not start: {line!r}\n{(work / log.name).read_text()[-2000:]}")
    name = f"dcmnode{label and ' ' + label} (dimse.processes={processes})"
    return Target(name, int(found[2]), found[1], proc.pid, proc)


def start_bare() -> Target:
    proc = subprocess.Popen([sys.executable, "-c", BARE_SCP], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return Target("bare pynetdicom SCP", int(proc.stdout.readline()), "BARE", proc.pid, proc)


def start_ideal() -> Target:
    proc = subprocess.Popen([sys.executable, "-c", IDEAL_SCP], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return Target("ideal responder (client floor)", int(proc.stdout.readline()), "IDEAL", proc.pid, proc)


def client_ae(calling: str) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 30
    ae.dimse_timeout = STALL_TIMEOUT
    ae.network_timeout = 120
    ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    return ae


def associate(ae: AE, target: Target) -> Association:
    assoc = ae.associate(HOST if target.proc else ARGS.host, target.port, ae_title=target.aet)
    if not assoc.is_established:
        raise SystemExit(f"{target.name}: association not established (rejected={assoc.is_rejected})")
    if not ARGS.client_nagle:
        assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


class ClientRaces(logging.Handler):
    """Counts pynetdicom's "Received unexpected C-ECHO service message": the client's own reactor took the
    response off the DIMSE queue before ``send_c_echo`` could (a race in pynetdicom 3.0.4's pause handshake,
    ``dimse/compat.py`` patch 6); ``send_c_echo`` then waits ``dimse_timeout`` and aborts."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Received unexpected" in record.getMessage():
            self.count += 1


RACES = ClientRaces()
STALLS: dict[str, int] = {}


def echo(assoc: Association, target: Target) -> bool:
    """One C-ECHO; False when no answer came within the client's DIMSE timeout (the association is aborted)."""
    status = assoc.send_c_echo()
    if not status:
        STALLS[target.name] = STALLS.get(target.name, 0) + 1
        return False
    if status.Status != 0x0000:
        raise SystemExit(f"{target.name}: C-ECHO failed: {status}")
    return True


def stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 3),
    }


def new_association(ae: AE, target: Target, n: int) -> dict[str, Any]:
    total, steps = [], []
    cpu0 = tree_cpu_seconds(target.pid) if target.pid else 0.0
    while len(total) < n:
        t0 = time.perf_counter()
        assoc = associate(ae, target)
        t1 = time.perf_counter()
        if not echo(assoc, target):
            continue  # a stall, counted; not a sample
        t2 = time.perf_counter()
        assoc.release()
        t3 = time.perf_counter()
        total.append(t3 - t0)
        steps.append((t1 - t0, t2 - t1, t3 - t2))
    out: dict[str, Any] = stats(total)
    if target.pid:
        out["server_cpu_ms"] = round((tree_cpu_seconds(target.pid) - cpu0) * 1000 / n, 3)
    for i, step in enumerate(("associate", "echo", "release")):
        out[f"{step}_median_ms"] = round(statistics.median(s[i] for s in steps) * 1000, 3)
    return out


def in_association(ae: AE, target: Target, n: int) -> dict[str, Any]:
    assoc = associate(ae, target)
    try:
        times: list[float] = []
        warm_up = min(20, n)
        cpu0 = 0.0
        while len(times) < warm_up + n:
            if not assoc.is_established:  # aborted after a stall
                assoc = associate(ae, target)
            if len(times) == warm_up:
                cpu0 = tree_cpu_seconds(target.pid) if target.pid else 0.0
            t0 = time.perf_counter()
            if echo(assoc, target):
                times.append(time.perf_counter() - t0)
        times = times[warm_up:]
        cpu = (tree_cpu_seconds(target.pid) - cpu0) * 1000 / n if target.pid else None
    finally:
        if assoc.is_established:
            assoc.release()
    out: dict[str, Any] = stats(times)
    if cpu is not None:
        out["server_cpu_ms"] = round(cpu, 3)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (live ones; /proc/<pid>/task/*/children)."""
    ticks = os.sysconf("SC_CLK_TCK")
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def idle_cpu(ae: AE, target: Target, count: int, seconds: float) -> dict[str, Any]:
    if not target.pid:
        return {}
    base0 = tree_cpu_seconds(target.pid)
    time.sleep(seconds)
    base = (tree_cpu_seconds(target.pid) - base0) / seconds
    assocs = [associate(ae, target) for _ in range(count)]
    try:
        for assoc in assocs:
            echo(assoc, target)  # a stall here leaves one association fewer: harmless for the figure
        time.sleep(1.0)  # past any "recently busy" phase (dcmnode's pacer: 0.25 s)
        cpu0 = tree_cpu_seconds(target.pid)
        time.sleep(seconds)
        busy = (tree_cpu_seconds(target.pid) - cpu0) / seconds
    finally:
        for assoc in assocs:
            if assoc.is_established:
                assoc.release()
    return {
        "associations": count,
        "no_association_pct": round(100 * base, 2),
        "idle_associations_pct": round(100 * busy, 2),
        "per_idle_association_pct": round(100 * (busy - base) / count, 2),
    }


def main() -> int:
    work = Path(ARGS.work or tempfile.mkdtemp(prefix="bench-dimse-assoc-"))
    work.mkdir(parents=True, exist_ok=True)
    targets: list[Target] = []
    try:
        for processes in ARGS.dcmnode:
            if ARGS.baseline:
                targets.append(start_dcmnode(work, processes, Path(ARGS.baseline), "baseline"))
            targets.append(start_dcmnode(work, processes, ROOT / "src"))
        if ARGS.bare:
            targets.append(start_bare())
        if ARGS.ideal:
            targets.append(start_ideal())
        if ARGS.port:
            targets.append(Target(f"{ARGS.aet}@{ARGS.host}:{ARGS.port}", ARGS.port, ARGS.aet, ARGS.server_pid))
        if not targets:
            raise SystemExit("nothing to measure: give --port, --dcmnode P, --bare or --ideal")
        logging.getLogger("pynetdicom").addHandler(RACES)
        ae = client_ae(ARGS.calling_aet)
        for target in targets:  # warm-up: imports, first association
            new_association(ae, target, 3)
        rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for r in range(ARGS.rounds):
            for target in targets:
                row = {
                    "new_association": new_association(ae, target, ARGS.new),
                    "in_association": in_association(ae, target, ARGS.inside),
                }
                if ARGS.idle:
                    row["idle_cpu"] = idle_cpu(ae, target, ARGS.idle, ARGS.idle_seconds)
                rounds[target.name].append(row)
                print(f"round {r + 1} {target.name}: {json.dumps(row)}", flush=True)
                if ARGS.out_json:  # so far, in case a later round fails
                    Path(ARGS.out_json).write_text(json.dumps({"rounds": rounds}, indent=1))
        sleeps = {t.name: client_sleeps(ae, t, ARGS.client_sleeps) for t in targets} if ARGS.client_sleeps else {}
        dcmtk: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets} if ARGS.dcmtk else {}
        for _ in range(ARGS.rounds if ARGS.dcmtk else 0):
            for target in targets:
                dcmtk[target.name].append(dcmtk_echo(target, ARGS.dcmtk))
                print(f"dcmtk {target.name}: {json.dumps(dcmtk[target.name][-1])}", flush=True)
    finally:
        for target in targets:
            target.stop()
    report(rounds, sleeps, dcmtk)
    return 0


def client_sleeps(ae: AE, target: Target, n: int) -> dict[str, dict[str, list[float]]]:
    """Where the pynetdicom client sleeps: ``time.sleep`` counted per calling line over ``n`` new associations
    and ``3n`` echoes in one association (per association / per echo: [calls, ms slept])."""
    real = time.sleep
    tally: dict[str, list[float]] = {}

    def counting(seconds: float) -> None:
        frame = sys._getframe(1)
        thread = threading.current_thread().name.split("@")[0].split("-")[0]
        where = f"{thread}: {frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})"
        t0 = time.perf_counter()
        real(seconds)
        entry = tally.setdefault(where, [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - t0

    out: dict[str, dict[str, list[float]]] = {}
    time.sleep = counting
    try:
        for phase, count, run in (
            ("per new association", n, lambda: new_association(ae, target, n)),
            ("per echo in one association", 3 * n, lambda: in_association(ae, target, 3 * n)),
        ):
            tally.clear()
            run()
            out[phase] = {k: [round(v[0] / count, 2), round(v[1] * 1000 / count, 3)] for k, v in tally.items()}
    finally:
        time.sleep = real
    return out


DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk's own switch for Nagle (as ../shared/bench sets it)


def dcmtk_echo(target: Target, n: int) -> dict[str, Any]:
    """dcmtk's echoscu (C, blocking I/O: no polling of its own): ``n`` runs of one association with one C-ECHO
    (process start included; the ideal responder's figure is that floor), and ``--repeat 10n`` in one association
    against ``--repeat 1`` for the per-echo time inside it."""
    host = HOST if target.proc else ARGS.host
    base = ["echoscu", "-aet", ARGS.calling_aet, "-aec", target.aet, host, str(target.port)]

    def run(*extra: str) -> float:
        t0 = time.perf_counter()
        done = subprocess.run([*base, *extra], capture_output=True, text=True, env=DCMTK_ENV)
        if done.returncode != 0:
            raise SystemExit(f"{target.name}: echoscu failed: {done.stdout}{done.stderr}")
        return time.perf_counter() - t0

    runs = [run() for _ in range(n)]
    single = statistics.median(run() for _ in range(5))
    repeated = statistics.median(run("--repeat", str(10 * n)) for _ in range(3))
    return {
        "new_association_process_median_ms": round(statistics.median(runs) * 1000, 3),
        "in_association_ms": round((repeated - single) * 1000 / (10 * n - 1), 3),
    }


def median_of(rows: list[dict[str, Any]], phase: str, key: str) -> float | None:
    values = [row[phase][key] for row in rows if key in row.get(phase, {})]
    return round(statistics.median(values), 2) if values else None


def report(rounds: dict[str, list[dict[str, Any]]], sleeps: dict[str, Any], dcmtk: dict[str, Any]) -> None:
    head = (
        f"C-ECHO, {ARGS.rounds} rounds (median of the rounds' figures), {ARGS.new} new associations and "
        f"{ARGS.inside} echoes in one association per round; client pynetdicom, Nagle "
        f"{'on' if ARGS.client_nagle else 'off'}; {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    lines = [
        head,
        "",
        "| target | new assoc median | p95 | associate | echo | release | server CPU | in-assoc median | p95 "
        "| server CPU | idle CPU/assoc |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, rows in rounds.items():
        new = [median_of(rows, "new_association", k) for k in ("median_ms", "p95_ms")]
        steps = [median_of(rows, "new_association", f"{s}_median_ms") for s in ("associate", "echo", "release")]
        steps.append(median_of(rows, "new_association", "server_cpu_ms"))
        inside = [median_of(rows, "in_association", k) for k in ("median_ms", "p95_ms", "server_cpu_ms")]
        idle = median_of(rows, "idle_cpu", "per_idle_association_pct")
        cells = [*new, *steps, *inside]
        lines.append(
            f"| {name} | "
            + " | ".join("" if c is None else f"{c} ms" for c in cells)
            + f" | {'' if idle is None else f'{idle} %'} |"
        )
    stalls = ", ".join(f"{name} {count}" for name, count in STALLS.items()) or "none"
    lines += [
        "",
        f"C-ECHOes unanswered within the client's {STALL_TIMEOUT:g} s DIMSE timeout (left out of the figures): "
        f"{stalls}; of them, the pynetdicom client's own pause race (its reactor took the response): "
        f"{RACES.count}.",
    ]
    if dcmtk:
        lines += [
            "",
            f"dcmtk echoscu, {ARGS.rounds} rounds (medians): {ARGS.dcmtk} runs of one association with one C-ECHO "
            f"(a new echoscu process each, its start included), and the time per echo of "
            f"``--repeat {10 * ARGS.dcmtk}``:",
            "",
            "| target | echoscu run (new association + C-ECHO + release) | C-ECHO inside one association |",
            "| --- | --- | --- |",
        ]
        for name, rows in dcmtk.items():
            new = statistics.median(r["new_association_process_median_ms"] for r in rows)
            inside = statistics.median(r["in_association_ms"] for r in rows)
            lines.append(f"| {name} | {new:.2f} ms | {inside:.3f} ms |")
    for name, phases in sleeps.items():
        lines += ["", f"Client sleeps against {name} (``time.sleep`` calls / ms slept, by thread and line):", ""]
        lines += ["| phase | where | calls | ms |", "| --- | --- | --- | --- |"]
        for phase, found in phases.items():
            for where, (calls, ms) in sorted(found.items(), key=lambda item: -item[1][1]):
                lines.append(f"| {phase} | {where} | {calls} | {ms} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if ARGS.out_md:
        Path(ARGS.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(ARGS.out_md).write_text(text)
    if ARGS.out_json:
        result = {"rounds": rounds, "client_sleeps": sleeps, "dcmtk": dcmtk}
        Path(ARGS.out_json).write_text(json.dumps(result, indent=1))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0, help="an SCP already running (0: none)")
    parser.add_argument("--aet", default="DCMNODE", help="its AE title (called AE)")
    parser.add_argument("--server-pid", type=int, default=0, help="its pid, for the idle CPU figure")
    parser.add_argument("--calling-aet", default="BENCH")
    parser.add_argument("--dcmnode", type=int, action="append", default=[], metavar="PROCESSES")
    parser.add_argument(
        "--baseline", help="a dcmnode src folder (e.g. an older commit's) to run beside each --dcmnode, interleaved"
    )
    parser.add_argument("--bare", action="store_true", help="also measure a bare pynetdicom SCP")
    parser.add_argument("--ideal", action="store_true", help="also measure the client's floor (canned answers)")
    parser.add_argument("--new", type=int, default=100, help="new associations per round")
    parser.add_argument("--inside", type=int, default=300, help="C-ECHOes in one association per round")
    parser.add_argument("--idle", type=int, default=0, help="idle associations for the CPU figure (0: skip)")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dcmtk", type=int, default=0, metavar="N", help="then time dcmtk's echoscu per round: N runs, 10N echoes"
    )
    parser.add_argument(
        "--client-sleeps", type=int, default=0, metavar="N", help="then profile the client's sleeps over N associations"
    )
    parser.add_argument("--client-nagle", action="store_true", help="leave Nagle on in the client")
    parser.add_argument("--work", help="folder for the started nodes' data and logs (default: a new temp dir)")
    parser.add_argument("--out-md")
    parser.add_argument("--out-json")
    return parser.parse_args()


ARGS = parse_args() if __name__ == "__main__" else argparse.Namespace()

if __name__ == "__main__":
    sys.exit(main())
