#!/usr/bin/env python3
"""C-FIND, C-MOVE and C-GET against any DICOM node, the shapes of ../shared/bench/bench_node.py, median of N.

Run on purpose, never in the test suite (bench/README.md, "DIMSE profile (issue 19): C-FIND, C-MOVE, C-GET"). The
node must hold the series to retrieve and know the C-MOVE destination (``--move-dest``) as 127.0.0.1:``--scp-port``,
where this script starts a pynetdicom storage SCP (every transfer syntax, unlimited PDU, Nagle off: the harness's
receiver). Example (a dcmnode with ``[peers.BENCH] host = "127.0.0.1", port = 11413``)::

    /work/main/.venv/bin/python bench/bench_dimse_retrieve.py --port 11112 --aet DCMNODE --server-pid <PID> \\
        --patient-id-prefix BENCH42-C0- --instances 40 --rounds 30 --retrievals 10 --out-json /tmp/dcmnode.json

Measured, one association per shape (association set-up not counted, as in the harness):

  find_all      C-FIND STUDY (Study Root), PatientName=* and 9 empty return keys: every study of the node
  find_letter   C-FIND STUDY, PatientName=<L>* + PatientID=<prefix>* (L cycling through the names' first letters)
  move          C-MOVE of one series of ``--instances`` instances to the local SCP (a new association each)
  get           C-GET of such a series, CT Image Storage negotiated in SCP role, explicit and implicit VR LE

Each figure: median and p95 wall time, and with ``--server-pid`` the CPU the node's process tree used per
operation (utime + stime from /proc, summed over the process and its descendants): that one is steadier than wall
time on a loaded machine. Every operation is checked (final status Success, the expected studies, every instance
received once). Exit status 0 only if every check passed. The client is pynetdicom 3.0.4 with the fix of
``bench_node_client.py`` for its reactor race (a response taken off the queue: a C-FIND short of a study, or a
300 s stall); ``--stock-client`` leaves it out.

The client's own floor: ``--floor-serve PORT`` runs a canned responder instead (pynetdicom accepts the association;
the C-FIND and C-GET handlers write pre-encoded PDUs straight to the socket: each match's command and identifier,
captured once from the node given by ``--port``/``--aet``, or each file of the series read from ``--dataset``, a
make_dataset.py folder, command and data set in one PDU, waiting only for each C-STORE response, its DUL polling
every 50 us instead of 1 ms; no pending C-GET responses). Measuring it (``--port PORT --aet FLOOR --phases
find,get``) gives what the pynetdicom client and its receiving SCP cost with a server that costs next to nothing;
with ``--floor-compat`` (and PYTHONPATH at a dcmnode src/) the responder's own pynetdicom runs with dcmnode's
patches, so that it does not poll either::

    python bench/bench_dimse_retrieve.py --floor-serve 11499 --port 11112 --dataset /tmp/ds &
    python bench/bench_dimse_retrieve.py --port 11499 --aet FLOOR --phases find,get --patient-id-prefix BENCH42-C0-
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

FIND_KEYS = ("StudyInstanceUID", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
             "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")  # fmt: skip
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) of ``pid`` and all its descendants; None without a pid."""
    if pid is None:
        return None
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def ae(self) -> AE:
        ae = AE(ae_title=self.args.calling_aet)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, 300, 120
        return ae

    def associate(self, ae: AE, **kw: Any) -> Association:
        assoc = ae.associate(self.args.host, self.args.port, ae_title=self.args.aet, **kw)
        if not assoc.is_established:
            raise RuntimeError(f"no association with {self.args.aet}@{self.args.host}:{self.args.port}")
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        return assoc

    def find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        out = []
        for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                raise RuntimeError("C-FIND: no response")
            if status.Status in (0xFF00, 0xFF01):
                out.append(ident)
            elif status.Status != 0x0000:
                raise RuntimeError(f"C-FIND failed: 0x{status.Status:04X}")
        return out


def study_query(name: str, patient_id: str | None = None, keys: tuple[str, ...] = FIND_KEYS) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientName = name
    for kw in keys:
        setattr(q, kw, "")
    if patient_id is not None:
        q.PatientID = patient_id
    return q


def measure(n: int, pid: int | None, run: Callable[[int], str | None]) -> dict[str, Any]:
    """``run(i)`` n times: wall and server CPU per call; ``run`` returns an error text or None."""
    walls, cpus, errors = [], [], []
    for i in range(n):
        cpu0, t0 = tree_cpu(pid), time.perf_counter()
        error = run(i)
        walls.append(time.perf_counter() - t0)
        cpu1 = tree_cpu(pid)
        if cpu0 is not None and cpu1 is not None:
            cpus.append(cpu1 - cpu0)
        if error:
            errors.append(f"#{i}: {error}")
    walls.sort()
    out: dict[str, Any] = {
        "n": n,
        "median_ms": round(statistics.median(walls) * 1000, 1),
        "p95_ms": round(walls[min(n - 1, int(0.95 * n))] * 1000, 1),
        "errors": errors[:5],
        "failed": len(errors),
    }
    if cpus:
        out["server_cpu_ms_median"] = round(statistics.median(cpus) * 1000, 1)
        out["server_cpu_ms_mean"] = round(statistics.mean(cpus) * 1000, 1)
    return out


def series_to_retrieve(client: Client, studies: list[Dataset], instances: int, count: int) -> list[tuple[str, str]]:
    """Up to ``count`` (study, series) pairs whose series holds ``instances`` instances."""
    ae = client.ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = client.associate(ae)
    found = []
    try:
        for st in studies:
            q = Dataset()
            q.QueryRetrieveLevel = "SERIES"
            q.StudyInstanceUID = st.StudyInstanceUID
            q.SeriesInstanceUID = ""
            q.NumberOfSeriesRelatedInstances = ""
            for se in client.find(assoc, q):
                if int(se.NumberOfSeriesRelatedInstances or 0) == instances:
                    found.append((str(st.StudyInstanceUID), str(se.SeriesInstanceUID)))
            if len(found) >= count:
                break
    finally:
        assoc.release()
    return found[:count]


class Sink:
    """What the storage SCP (C-MOVE) or the C-GET requestor received: SOP Instance UIDs."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()

    def handler(self, event: evt.Event) -> int:
        event.request.DataSet.getvalue()  # the data set's bytes, as the harness keeps them
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


def retrieve(client: Client, kind: str, series: list[tuple[str, str]], n: int, instances: int) -> dict[str, Any]:
    sink = Sink()
    server = None
    kw: dict[str, Any] = {}
    ae = client.ae()
    if kind == "move":
        scp = AE(ae_title=client.args.move_dest)
        scp.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
        scp.maximum_pdu_size = 0

        def nodelay(event: evt.Event) -> None:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        handlers = [(evt.EVT_C_STORE, sink.handler), (evt.EVT_CONN_OPEN, nodelay)]
        server = scp.start_server(("127.0.0.1", client.args.scp_port), block=False, evt_handlers=handlers)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    else:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.maximum_pdu_size = 0
        kw = {"ext_neg": [build_role(CTImageStorage, scp_role=True)], "evt_handlers": [(evt.EVT_C_STORE, sink.handler)]}

    def one(i: int) -> str | None:
        study, uid = series[i % len(series)]
        sink.received.clear()
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study
        q.SeriesInstanceUID = uid
        assoc = client.associate(ae, **kw)
        final = None
        try:
            responses: Iterator[tuple[Dataset, Dataset | None]]
            if kind == "move":
                responses = assoc.send_c_move(q, client.args.move_dest, StudyRootQueryRetrieveInformationModelMove)
            else:
                responses = assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)
            for status, _ in responses:
                if status is None or "Status" not in status:
                    return "no final response"
                if status.Status != 0xFF00:
                    final = status
        finally:
            assoc.release()
        if final is None or final.Status != 0x0000:
            return f"final status {final.Status if final is not None else None}"
        if len(sink.received) != instances or len(set(sink.received)) != instances:
            return f"received {len(sink.received)} ({len(set(sink.received))} distinct), expected {instances}"
        return None

    try:
        out = measure(n, client.args.server_pid, one)
    finally:
        if server is not None:
            server.shutdown()
    out["instances_per_s_median"] = round(instances / (out["median_ms"] / 1000), 1)
    return out


_IMPLICIT = struct.Struct("<HHI")


def _element(elem: int, value: bytes | int, vr: str) -> bytes:
    if isinstance(value, int):
        data = struct.pack("<H", value)
    else:
        data = value + (b"\0" if len(value) % 2 and vr == "UI" else b" " if len(value) % 2 else b"")
    return _IMPLICIT.pack(0, elem, len(data)) + data


def command_set(*elements: tuple[int, bytes | int, str]) -> bytes:
    """An implicit VR little endian command set (group 0000) with its group length."""
    body = b"".join(_element(elem, value, vr) for elem, value, vr in sorted(elements))
    return _IMPLICIT.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def p_data(context_id: int, *pdvs: tuple[int, bytes]) -> bytes:
    """A P-DATA-TF PDU holding the PDVs (message control header, fragment)."""
    body = b"".join(struct.pack(">IBB", len(data) + 2, context_id, header) + data for header, data in pdvs)
    return struct.pack(">BBI", 4, 0, len(body)) + body


def floor_serve(args: argparse.Namespace) -> int:
    """The canned responder (module docstring): C-FIND from identifiers captured once, C-GET from the data set."""
    client = Client(args)
    ae = client.ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = client.associate(ae)
    series_of: dict[str, list[Dataset]] = {}
    try:
        studies = client.find(assoc, study_query("*"))
        for st in studies:
            q = Dataset()
            q.QueryRetrieveLevel = "SERIES"
            q.StudyInstanceUID = st.StudyInstanceUID
            q.SeriesInstanceUID = ""
            q.NumberOfSeriesRelatedInstances = ""
            series_of[str(st.StudyInstanceUID)] = client.find(assoc, q)
    finally:
        assoc.release()
    manifest = json.loads((args.dataset / "manifest.json").read_text()) if args.dataset else {"copies": []}
    series_files = {
        se["series_uid"]: [(args.dataset / i["file"], i["sop_uid"]) for i in se["instances"]]
        for copy in manifest["copies"]
        for st in copy["studies"]
        for se in st["series"]
    }
    canned: dict[tuple[str, int], bytes] = {}  # (SOP Instance UID, context ID) -> the C-STORE-RQ's data set PDV

    def on_find(event: evt.Event) -> Iterator[Any]:
        q = event.identifier
        name, pid = str(q.get("PatientName", "") or "*"), str(q.get("PatientID", "") or "*")
        cx, mid = event.context.context_id, event.request.MessageID
        sop_class = str(event.context.abstract_syntax).encode()
        command = command_set((2, sop_class, "UI"), (0x100, 0x8020, "US"), (0x120, mid, "US"), (0x800, 1, "US"),
                              (0x900, 0xFF00, "US"))  # fmt: skip
        if str(q.QueryRetrieveLevel) == "SERIES":
            found = [(se, encode(se, True, True) or b"") for se in series_of.get(str(q.StudyInstanceUID), [])]
        else:
            found = [
                (st, data)
                for st, data in matches
                if fnmatch.fnmatchcase(str(st.PatientName), name) and fnmatch.fnmatchcase(str(st.PatientID), pid)
            ]
        out = [p_data(cx, (3, command), (2, data)) for _, data in found]
        event.assoc.dul.socket.socket.sendall(b"".join(out))
        return iter(())

    def on_get(event: evt.Event) -> Iterator[Any]:
        files = series_files.get(str(event.identifier.SeriesInstanceUID), [])
        assoc = event.assoc
        cx = next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
        for n, (path, sop) in enumerate(files):
            if (sop, cx) not in canned:
                raw = path.read_bytes()
                canned[(sop, cx)] = raw[144 + int.from_bytes(raw[140:144], "little") :]  # after the File Meta
            command = command_set((2, CTImageStorage.encode(), "UI"), (0x100, 1, "US"), (0x110, 1000 + n, "US"),
                                  (0x700, 2, "US"), (0x800, 1, "US"), (0x1000, sop.encode(), "UI"))  # fmt: skip
            assoc.dul.socket.socket.sendall(p_data(cx, (3, command), (2, canned[(sop, cx)])))
            assoc.dimse.get_msg(block=True)  # its C-STORE response
        yield 0  # no sub-operations left to count: pynetdicom answers Success

    from pynetdicom.dsutils import encode

    matches = [(st, encode(st, True, True) or b"") for st in studies]  # identifiers in implicit VR LE
    scp = AE(ae_title="FLOOR")
    scp.maximum_pdu_size = 0
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelFind, [ImplicitVRLittleEndian])
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelGet, [ImplicitVRLittleEndian])
    scp.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian], scu_role=True, scp_role=True)

    def nodelay(event: evt.Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        event.assoc.dul._run_loop_delay = 0.00005  # its DUL notices each C-STORE response within 50 us, not 1 ms

    handlers = [(evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get), (evt.EVT_CONN_OPEN, nodelay)]
    server = scp.start_server(("127.0.0.1", args.floor_serve), block=False, evt_handlers=handlers)
    print(f"floor responder on 127.0.0.1:{args.floor_serve} (AE FLOOR): {len(studies)} studies, "
          f"{len(series_files)} series", flush=True)  # fmt: skip
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aet", default="DCMNODE", help="the node's AE title")
    ap.add_argument("--calling-aet", default="BENCH")
    ap.add_argument("--move-dest", default="BENCH", help="C-MOVE destination AE the node maps to --scp-port")
    ap.add_argument("--scp-port", type=int, default=11113)
    ap.add_argument("--server-pid", type=int, default=None, help="the node's PID: server CPU per operation")
    ap.add_argument("--patient-id-prefix", default=None, help="PatientID prefix of the selective C-FIND (default: "
                    "the first study's PatientID up to its last '-')")  # fmt: skip
    ap.add_argument("--instances", type=int, default=40, help="series of this many instances are retrieved")
    ap.add_argument("--rounds", type=int, default=30, help="C-FINDs per shape")
    ap.add_argument("--retrievals", type=int, default=10, help="C-MOVEs and C-GETs")
    ap.add_argument("--phases", default="find,move,get")
    ap.add_argument("--label", default="node")
    ap.add_argument("--out-json", type=Path, default=None)
    ap.add_argument("--stock-client", action="store_true", help="pynetdicom without bench_node_client's fix")
    ap.add_argument("--floor-serve", type=int, default=None, help="run the canned responder on this port instead")
    ap.add_argument("--dataset", type=Path, default=None, help="make_dataset.py folder (the responder's C-GET)")
    ap.add_argument("--floor-compat", action="store_true", help="the responder runs with dcmnode.dimse.compat's "
                    "patches (PYTHONPATH: the dcmnode src/ to take them from), so that its own pynetdicom "
                    "does not poll")  # fmt: skip
    args = ap.parse_args()
    if not args.stock_client:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_node_client import patch_pynetdicom

        patch_pynetdicom()
    if args.floor_serve is not None:
        if args.floor_compat:
            import dcmnode.dimse  # noqa: F401  (applies dcmnode's pynetdicom patches: its reactors, its encoders)
        return floor_serve(args)
    client = Client(args)
    phases = set(args.phases.split(","))
    result: dict[str, Any] = {"label": args.label, "node": f"{args.aet}@{args.host}:{args.port}", "metrics": {}}

    ae = client.ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = client.associate(ae)
    try:
        studies = client.find(assoc, study_query("*"))
        expected_all = {str(s.StudyInstanceUID) for s in studies}
        prefix = args.patient_id_prefix or str(studies[0].PatientID).rsplit("-", 1)[0] + "-"
        ours = [s for s in studies if str(s.PatientID).startswith(prefix)]
        letters = sorted({str(s.PatientName)[:1] for s in ours if str(s.PatientName)})
        if "find" in phases:

            def find_all(i: int) -> str | None:
                got = {str(s.StudyInstanceUID) for s in client.find(assoc, study_query("*"))}
                return None if got == expected_all else f"{len(got)} studies, expected {len(expected_all)}"

            def find_letter(i: int) -> str | None:
                letter = letters[i % len(letters)]
                expected = {str(s.StudyInstanceUID) for s in ours if str(s.PatientName).startswith(letter)}
                keys = ("StudyInstanceUID", "StudyDate", "NumberOfStudyRelatedInstances")
                got = {
                    str(s.StudyInstanceUID) for s in client.find(assoc, study_query(f"{letter}*", f"{prefix}*", keys))
                }
                return None if got == expected else f"{letter}*: {len(got)} studies, expected {len(expected)}"

            result["metrics"]["find_all"] = measure(args.rounds, args.server_pid, find_all) | {"results": len(studies)}
            counts = [sum(1 for s in ours if str(s.PatientName).startswith(x)) for x in letters]
            letter_metrics = measure(args.rounds, args.server_pid, find_letter)
            result["metrics"]["find_letter"] = letter_metrics | {"results": f"{min(counts)}-{max(counts)}"}
    finally:
        assoc.release()
    if phases & {"move", "get"}:
        series = series_to_retrieve(client, ours or studies, args.instances, 5)
        if not series:
            print(f"no series of {args.instances} instances found", file=sys.stderr)
            return 1
        for kind in ("move", "get"):
            if kind in phases:
                result["metrics"][kind] = retrieve(client, kind, series, args.retrievals, args.instances)
    ok = all(m["failed"] == 0 for m in result["metrics"].values())
    result["ok"] = ok
    for name, m in result["metrics"].items():
        cpu = f", server CPU {m['server_cpu_ms_mean']} ms (mean)" if "server_cpu_ms_mean" in m else ""
        print(f"{args.label} {name}: {m['median_ms']} / {m['p95_ms']} ms (median / p95, n={m['n']}){cpu}"
              f"{'' if not m['failed'] else ', FAILED: ' + '; '.join(m['errors'])}")  # fmt: skip
    if args.out_json:
        args.out_json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
