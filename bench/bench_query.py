#!/usr/bin/env python3
"""Query/retrieve benchmark at scale for any DICOM node (DICOMweb + DIMSE), every figure correctness-checked.

Run on purpose, never in the test suite (see bench/README.md). The data set is the one written by
make_query_dataset.py (1,000 studies, ~100,000 instances, one 500-instance 512x512 CT series), already loaded
into the node. Expected results are computed from its manifest.json::

    /tmp/benchvenv/bin/python bench/bench_query.py --dataset /tmp/qbench-ds \\
        --dimse-host 127.0.0.1 --dimse-port 4343 --aet ORTHANC --calling-aet BENCH \\
        --dicomweb-base http://127.0.0.1:8043/dicom-web --label orthanc \\
        --out-json /tmp/qbench-results/orthanc.json --out-md /tmp/qbench-results/orthanc.md

Phases (--phases, comma separated; default all, in this order):

  metadata_first   series /metadata of the big series, ONE call: run this right after loading the node, so
                   that it is the first time the node answers it (the bench cannot know; the report says so)
  qido             /studies?PatientName=<L>*&StudyDate=<from>-<to> (letter and range vary per repetition);
                   the same + &limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060 (as OHIF);
                   /studies?limit=101 (OHIF's first call) and its OHIF form
  find             C-FIND STUDY level (Study Root), PatientName=<L>* + StudyDate=<from>-<to>, one association
  metadata         series /metadata of the big series, repeated (warm/cached)
  wado_instance    30 different instances of the big series, multipart/related; type="application/dicom";
                   transfer-syntax=*: latency and MB/s; SOP UID and pixel data checked
  frames           /frames/1 of 30 instances, multipart/related; type="application/octet-stream";
                   transfer-syntax=*: bytes must equal the stored PixelData
  series_retrieve  the whole 500-instance series as multipart DICOM: MB/s; every part checked

Query strings are sent with * ^ , - unencoded: Orthanc 1.10.1 does not percent-decode query values (one probe
reports whether %2A works). Client sockets have Nagle off (HTTP and DIMSE). Every request has a bounded timeout
and every phase a deadline (--phase-timeout). Exit status 0 only if every requested phase passed its checks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import socket
import sys
import threading
import time
import traceback
from urllib.parse import quote

import numpy as np
import pydicom
from pydicom.dataset import Dataset

ALL_PHASES = ["metadata_first", "qido", "find", "metadata", "wado_instance", "frames", "series_retrieve"]
WEB_PHASES = {"metadata_first", "qido", "metadata", "wado_instance", "frames", "series_retrieve"}
A_JSON = "application/dicom+json"
A_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
A_FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OHIF_TAIL = "limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060"
UNCOMPRESSED_LE = {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}


# --------------------------------------------------------------------------- utilities
def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def lat_stats(samples_s: list[float]) -> dict:
    """Latency summary in milliseconds (p95 = nearest rank)."""
    if not samples_s:
        return {"n": 0}
    a = sorted(samples_s)
    p95 = a[max(0, math.ceil(0.95 * len(a)) - 1)]
    return {
        "n": len(a),
        "median_ms": round(1000 * float(np.median(a)), 2),
        "p95_ms": round(1000 * p95, 2),
        "mean_ms": round(1000 * float(np.mean(a)), 2),
        "min_ms": round(1000 * a[0], 2),
        "max_ms": round(1000 * a[-1], 2),
    }


def parse_multipart(body: bytes, content_type: str) -> list[tuple[dict, bytes]]:
    """Split a multipart/related body into (headers, payload) parts."""
    m = re.search(r'boundary=("([^"]+)"|[^;\s]+)', content_type, re.I)
    if not m:
        raise ValueError(f"no boundary in Content-Type {content_type!r}")
    dash = b"--" + (m.group(2) or m.group(1)).encode()
    start = body.find(dash)
    if start < 0:
        raise ValueError("no multipart boundary in the body")
    pos = start + len(dash)
    parts = []
    while body[pos : pos + 2] != b"--":
        hdr_end = body.find(b"\r\n\r\n", pos)  # pos is at the CRLF that ends the boundary line
        if hdr_end < 0:
            raise ValueError("multipart part without header terminator")
        headers = {}
        for line in body[pos:hdr_end].split(b"\r\n"):
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.strip().lower().decode()] = v.strip().decode(errors="replace")
        nxt = body.find(b"\r\n" + dash, hdr_end + 4)
        if nxt < 0:
            raise ValueError("multipart body without closing boundary")
        parts.append((headers, body[hdr_end + 4 : nxt]))
        pos = nxt + 2 + len(dash)
    return parts


def first_value(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def pn_text(v) -> str | None:
    if isinstance(v, dict):
        return v.get("Alphabetic")
    return v


class ServerMonitor:
    """Peak VmRSS (sampled every 0.1 s) and CPU seconds of the node's process(es), per phase."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self._peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        for pid in pids:
            if not os.path.isdir(f"/proc/{pid}"):
                raise SystemExit(f"--server-pid {pid}: no such process")
        if pids:
            threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def _status(pid: int, key: str) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    @staticmethod
    def _cpu(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return None

    def _run(self):
        while not self._stop.wait(0.1):
            with self._lock:
                for pid in self.pids:
                    rss = self._status(pid, "VmRSS") or 0
                    self._peak[pid] = max(self._peak.get(pid, 0), rss)

    def begin(self):
        with self._lock:
            self._peak = {pid: self._status(pid, "VmRSS") or 0 for pid in self.pids}
        return {pid: self._cpu(pid) for pid in self.pids}

    def end(self, cpu0) -> dict:
        if not self.pids:
            return {}
        with self._lock:
            peak = {pid: max(self._peak.get(pid, 0), self._status(pid, "VmRSS") or 0) for pid in self.pids}
        cpu = 0.0
        for pid in self.pids:
            c1 = self._cpu(pid)
            if c1 is not None and cpu0.get(pid) is not None:
                cpu += c1 - cpu0[pid]
        return {
            "server_peak_rss_MiB": {str(p): round(v / 1024, 1) for p, v in peak.items()},
            "server_cpu_s": round(cpu, 2),
        }

    def summary(self) -> dict:
        return {
            str(pid): {
                "vm_hwm_MiB": round((self._status(pid, "VmHWM") or 0) / 1024, 1),
                "vm_rss_end_MiB": round((self._status(pid, "VmRSS") or 0) / 1024, 1),
            }
            for pid in self.pids
        }

    def stop(self):
        self._stop.set()


class PhaseResult:
    def __init__(self, name: str):
        self.name = name
        self.metrics: dict = {}
        self.checks: list[dict] = []
        self.probes: list[dict] = []
        self.notes: list[str] = []
        self.error: str | None = None
        self.wall_s = 0.0
        self.server: dict = {}

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        return bool(ok)

    def probe(self, name: str, fn) -> None:
        """Informational finding: recorded, never counted as a failure."""
        try:
            ok, detail = fn()
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        self.probes.append({"probe": name, "supported": bool(ok), "detail": detail})

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c["ok"] for c in self.checks)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "error": self.error,
            "wall_s": round(self.wall_s, 2),
            "metrics": self.metrics,
            "checks": self.checks,
            "probes": self.probes,
            "notes": self.notes,
            "server": self.server,
        }


# --------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args):
        self.a = args
        with open(os.path.join(args.dataset, "manifest.json"), encoding="utf-8") as f:
            self.man = json.load(f)
        if self.man.get("generator") != "bench/make_query_dataset.py":
            raise SystemExit(f"{args.dataset}/manifest.json was not written by make_query_dataset.py")
        self.studies = {st["study_uid"]: st for st in self.man["studies"]}
        self.prefix = self.man["patient_id_prefix"]
        big = next(st for st in self.man["studies"] if st["big"])
        self.big_study = big
        self.big_series = big["series"][0]
        self.big_insts = self.big_series["instance_list"]
        self.letters = sorted({st["patient_name"][0] for st in self.man["studies"]})
        self.web = args.dicomweb_base.rstrip("/") if args.dicomweb_base not in ("", "none") else None
        self.http = None
        if self.web:
            import httpx

            transport = httpx.HTTPTransport(
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if args.client_nodelay else None
            )
            self.http = httpx.Client(
                transport=transport,
                follow_redirects=False,
                timeout=httpx.Timeout(args.http_timeout, connect=10.0),
                headers={"User-Agent": "bench_query/1", "Accept-Encoding": args.accept_encoding},
            )
        self.deadline = 0.0

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    # ----- expected results
    def queries(self, n: int, salt: str) -> list[tuple[str, str, str, set[str]]]:
        """n (letter, from, to, expected study UIDs) queries: letters in turn, random date ranges of 1 month to
        2 years in 2015-2023; a range is redrawn (bounded) until 1..100 studies match (so limit=101 keeps all)."""
        out = []
        d0, d1 = dt.date(2015, 1, 1), dt.date(2023, 12, 31)
        for i in range(n):
            rng = random.Random(f"{self.a.seed}/{salt}/{i}")
            L = self.letters[(i * 5) % len(self.letters)]
            best = None
            for _ in range(60):
                width = rng.choice([31, 92, 183, 365, 730])
                lo = d0 + dt.timedelta(days=rng.randrange(0, (d1 - d0).days - width))
                hi = lo + dt.timedelta(days=width)
                slo, shi = lo.strftime("%Y%m%d"), hi.strftime("%Y%m%d")
                exp = {
                    u
                    for u, st in self.studies.items()
                    if st["patient_name"].startswith(L) and slo <= st["study_date"] <= shi
                }
                best = (L, slo, shi, exp)
                if 1 <= len(exp) <= 100:
                    break
            out.append(best)
        return out

    def ours(self, uids_with_pid: list[tuple[str, str | None]]) -> tuple[set[str], int]:
        """The study UIDs of a result; with --allow-foreign, results whose PatientID lacks our prefix are dropped
        (and counted)."""
        if not self.a.allow_foreign:
            return {u for u, _ in uids_with_pid}, 0
        keep = {u for u, pid in uids_with_pid if pid and pid.startswith(self.prefix)}
        return keep, len({u for u, _ in uids_with_pid}) - len(keep)

    # ----- HTTP
    def get(self, path: str, accept: str, query: str | None = None):
        """GET base+path?query (query sent as given: callers keep * ^ , - literal). Returns (seconds to the last
        body byte, response, body)."""
        url = self.web + path + (f"?{query}" if query else "")
        t0 = time.perf_counter()
        r = self.http.get(url, headers={"Accept": accept})
        body = r.content
        return time.perf_counter() - t0, r, body

    def series_path(self, with_instance: dict | None = None) -> str:
        p = f"/studies/{self.big_study['study_uid']}/series/{self.big_series['series_uid']}"
        return p + (f"/instances/{with_instance['sop_uid']}" if with_instance else "")

    # ----- DIMSE
    def associate_find(self):
        from pynetdicom import AE
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as F

        ae = AE(ae_title=self.a.calling_aet)
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.network_timeout = 120
        ae.connection_timeout = 10
        ae.add_requested_context(F)
        assoc = ae.associate(self.a.dimse_host, self.a.dimse_port, ae_title=self.a.aet)
        if not assoc.is_established:
            raise RuntimeError(
                f"association with {self.a.aet}@{self.a.dimse_host}:{self.a.dimse_port} not "
                f"established (rejected={assoc.is_rejected}, aborted={assoc.is_aborted})"
            )
        if self.a.client_nodelay:
            try:
                assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except Exception:
                pass
        return assoc, F

    # ======================================================================= phases
    def _metadata_once(self) -> tuple[float, str | None, dict]:
        el, r, body = self.get(self.series_path() + "/metadata", A_JSON)
        info = {"bytes": len(body), "content_encoding": r.headers.get("content-encoding", "identity")}
        try:
            assert r.status_code == 200, f"HTTP {r.status_code}"
            js = json.loads(body)
            got = [first_value(x, "00080018") for x in js]
            exp = set(self.big_series["sop_uids"])
            assert len(got) == len(exp) and set(got) == exp, (
                f"{len(got)} items, {len(set(got) & exp)} of the {len(exp)} expected SOP UIDs"
            )
            bad_rows = sum(1 for x in js if first_value(x, "00280010") != 512)
            assert bad_rows == 0, f"{bad_rows} items without Rows=512"
            return el, None, info
        except (AssertionError, ValueError) as e:
            return el, str(e), info

    def phase_metadata_first(self, res: PhaseResult):
        n = self.big_series["instances"]
        el, err, info = self._metadata_once()
        res.metrics["series_metadata_first_call"] = {
            **lat_stats([el]),
            **info,
            "request": f"GET series /metadata ({n} instances, 512x512 CT)",
            "note": "first /metadata request of this run for this series; it is the node's first answer only if "
            "nothing asked for it since the data were loaded",
        }
        res.check(
            f"series /metadata (first call) lists exactly the {n} SOP Instance UIDs, Rows=512", err is None, err or ""
        )

    def phase_metadata(self, res: PhaseResult):
        n = self.big_series["instances"]
        lats, bad, sizes, encs = [], [], [], set()
        for _ in range(self.a.n_slow):
            if not self.time_left():
                res.notes.append("phase deadline reached")
                break
            el, err, info = self._metadata_once()
            lats.append(el)
            sizes.append(info["bytes"])
            encs.add(info["content_encoding"])
            if err:
                bad.append(err)
        res.metrics["series_metadata_cached"] = {
            **lat_stats(lats),
            "request": f"GET series /metadata ({n} instances), repeated",
            "bytes": int(np.median(sizes)) if sizes else None,
            "content_encoding": ",".join(sorted(encs)),
        }
        res.check(
            f"series /metadata (repeated) lists exactly the {n} SOP Instance UIDs every time",
            len(lats) == self.a.n_slow and not bad,
            "; ".join(bad[:3]) or f"{len(lats)}/{self.a.n_slow} done",
        )

    def phase_qido(self, res: PhaseResult):
        N = self.a.n
        qs = self.queries(N, "qido")

        def study_items(r, body) -> list[dict]:
            assert r.status_code in (200, 204), f"HTTP {r.status_code}"
            return json.loads(body) if body.strip() else []

        def run(name: str, describe: str, mk, verify):
            lats, bad, counts, encs, foreign = [], [], [], set(), 0
            for i in range(N):
                if not self.time_left():
                    res.notes.append(f"{name}: phase deadline reached")
                    break
                query, exp = mk(i)
                el, r, body = self.get("/studies", A_JSON, query)
                lats.append(el)
                encs.add(r.headers.get("content-encoding", "identity"))
                try:
                    items = study_items(r, body)
                    nres, nforeign = verify(items, exp)
                    counts.append(nres)
                    foreign += nforeign
                except (AssertionError, ValueError) as e:
                    bad.append(f"?{query}: {e}")
            m = lat_stats(lats)
            m.update(
                {
                    "query": describe,
                    "content_encoding": ",".join(sorted(encs)),
                    "results": (
                        f"{min(counts)}-{max(counts)}"
                        if counts and min(counts) != max(counts)
                        else (str(counts[0]) if counts else None)
                    ),
                }
            )
            if self.a.allow_foreign:
                m["foreign_results_ignored"] = foreign
            res.metrics[name] = m
            res.check(f"{name}: {describe}", len(lats) == N and not bad, "; ".join(bad[:3]) or f"{len(lats)}/{N} done")

        def exact(items, exp):
            got, nf = self.ours([(first_value(x, "0020000D"), first_value(x, "00100020")) for x in items])
            assert got == exp, (
                f"{len(got)} results, expected {len(exp)} ({len(got - exp)} extra, {len(exp - got)} missing)"
            )
            return len(got), nf

        def exact_ohif(items, exp):
            n, nf = exact(items, exp)
            wrong = [
                first_value(x, "0020000D")
                for x in items
                if first_value(x, "0020000D") in self.studies
                and first_value(x, "00081030") != self.studies[first_value(x, "0020000D")]["description"]
            ]
            assert not wrong, f"{len(wrong)} results without the right StudyDescription (includefield=00081030)"
            return n, nf

        def mk_name_date(i):
            L, lo, hi, exp = qs[i]
            return f"PatientName={quote(L, safe='')}*&StudyDate={lo}-{hi}", exp

        def mk_name_date_ohif(i):
            q, exp = mk_name_date(i)
            return f"{q}&{OHIF_TAIL}", exp

        nexp = [len(x[3]) for x in qs]
        run(
            "qido_name_date",
            f"/studies?PatientName=<L>*&StudyDate=<from>-<to> ({min(nexp)}-{max(nexp)} expected): "
            "exactly the expected studies",
            mk_name_date,
            exact,
        )
        run(
            "qido_name_date_ohif",
            "/studies?PatientName=<L>*&StudyDate=<from>-<to>&"
            + OHIF_TAIL
            + ": exactly the expected studies, StudyDescription right",
            mk_name_date_ohif,
            exact_ohif,
        )

        def limit101(items, exp):
            uids = [first_value(x, "0020000D") for x in items]
            assert len(uids) == len(set(uids)), "duplicate studies"
            got, nf = self.ours([(u, first_value(x, "00100020")) for u, x in zip(uids, items, strict=True)])
            want = min(101, len(self.studies))
            if self.a.allow_foreign:
                assert len(uids) == 101 or len(got) == len(self.studies), f"{len(uids)} results"
            else:
                assert len(uids) == want, f"{len(uids)} results, expected {want}"
            assert got <= set(self.studies), f"{len(got - set(self.studies))} results not in the data set"
            return len(uids), nf

        run(
            "qido_limit101",
            "/studies?limit=101 (OHIF's first call): 101 distinct studies of the data set",
            lambda i: ("limit=101", None),
            limit101,
        )
        run(
            "qido_limit101_ohif",
            "/studies?" + OHIF_TAIL + ": 101 distinct studies of the data set",
            lambda i: (OHIF_TAIL, None),
            limit101,
        )

        # informational probes
        L, lo, hi, exp = qs[0]

        def pr_pct():
            _, r, body = self.get("/studies", A_JSON, f"PatientName={L}%2A&StudyDate={lo}-{hi}")
            got, _ = self.ours(
                [
                    (first_value(x, "0020000D"), first_value(x, "00100020"))
                    for x in (json.loads(body) if r.status_code == 200 and body.strip() else [])
                ]
            )
            return got == exp, f"PatientName={L}%2A: HTTP {r.status_code}, {len(got)} results (expected {len(exp)})"

        res.probe("QIDO percent-encoded wildcard (%2A) is decoded", pr_pct)

        def pr_modalities():
            _, r, body = self.get("/studies", A_JSON, f"PatientName={L}*&StudyDate={lo}-{hi}&{OHIF_TAIL}")
            items = json.loads(body) if body.strip() else []
            ok = sum(
                1
                for x in items
                if sorted(x.get("00080061", {}).get("Value", []))
                == self.studies.get(first_value(x, "0020000D"), {}).get("modalities")
            )
            return ok == len(items) > 0, f"ModalitiesInStudy right in {ok}/{len(items)} results"

        res.probe("QIDO ModalitiesInStudy (00080061) matches the series' modalities", pr_modalities)

    def phase_find(self, res: PhaseResult):
        N = self.a.n
        qs = self.queries(N, "find")
        assoc, F = self.associate_find()
        lats, bad, counts, foreign = [], [], [], 0
        try:
            for i, (L, lo, hi, exp) in enumerate(qs):
                if not self.time_left():
                    res.notes.append("phase deadline reached")
                    break
                q = Dataset()
                q.QueryRetrieveLevel = "STUDY"
                q.PatientName = f"{L}*"
                q.StudyDate = f"{lo}-{hi}"
                for kw in (
                    "StudyInstanceUID",
                    "PatientID",
                    "StudyTime",
                    "AccessionNumber",
                    "StudyDescription",
                    "ModalitiesInStudy",
                    "NumberOfStudyRelatedSeries",
                    "NumberOfStudyRelatedInstances",
                ):
                    setattr(q, kw, "")
                t0 = time.perf_counter()
                found, status_bad = [], None
                for status, ident in assoc.send_c_find(q, F):
                    if status is None or "Status" not in status:
                        status_bad = "no/invalid response (timeout or abort)"
                        break
                    if status.Status in (0xFF00, 0xFF01):
                        found.append(ident)
                    elif status.Status != 0x0000:
                        status_bad = f"status 0x{status.Status:04X}"
                lats.append(time.perf_counter() - t0)
                if status_bad:
                    bad.append(f"q{i}: {status_bad}")
                    if not assoc.is_established:
                        break
                    continue
                got, nf = self.ours([(str(d.get("StudyInstanceUID", "")), str(d.get("PatientID", ""))) for d in found])
                foreign += nf
                counts.append(len(got))
                if got != exp:
                    bad.append(f"{L}* {lo}-{hi}: {len(got)} results, expected {len(exp)}")
                    continue
                wrong = [
                    d
                    for d in found
                    if str(d.get("StudyInstanceUID")) in self.studies
                    and str(d.get("NumberOfStudyRelatedInstances", "") or "")
                    not in ("", str(sum(se["instances"] for se in self.studies[str(d.StudyInstanceUID)]["series"])))
                ]
                if wrong:
                    bad.append(f"{L}* {lo}-{hi}: {len(wrong)} results with a wrong NumberOfStudyRelatedInstances")
        finally:
            if assoc.is_established:
                assoc.release()
        m = lat_stats(lats)
        m.update(
            {
                "query": "C-FIND STUDY (Study Root) PatientName=<L>* StudyDate=<from>-<to>, 8 return keys, "
                "one association",
                "results": (
                    None
                    if not counts
                    else str(counts[0])
                    if min(counts) == max(counts)
                    else f"{min(counts)}-{max(counts)}"
                ),
            }
        )
        if self.a.allow_foreign:
            m["foreign_results_ignored"] = foreign
        res.metrics["c_find_study_name_date"] = m
        res.check(
            "C-FIND STUDY PatientName=<L>* + StudyDate range: exactly the expected studies "
            "(and NumberOfStudyRelatedInstances right when returned)",
            len(lats) == N and not bad,
            "; ".join(bad[:3]) or f"{len(lats)}/{N} done",
        )

    def _sample(self, offset: int) -> list[dict]:
        n = len(self.big_insts)
        k = self.a.n_wado
        return [self.big_insts[(offset + (j * n) // k) % n] for j in range(k)]

    @staticmethod
    def _pixels_sha1(ds) -> str:
        ts = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else ""
        if ts in UNCOMPRESSED_LE or not ts:
            return hashlib.sha1(bytes(ds.PixelData)).hexdigest()
        return hashlib.sha1(np.ascontiguousarray(ds.pixel_array.astype("<i2")).tobytes()).hexdigest()

    def _check_instance(self, data: bytes, exp: dict) -> None:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        assert str(ds.SOPInstanceUID) == exp["sop_uid"], "wrong SOP Instance UID"
        assert self._pixels_sha1(ds) == exp["pixel_sha1"], "pixel data differ from the file sent"

    def phase_wado_instance(self, res: PhaseResult):
        sample = self._sample(3)
        lats, bad, sizes, encs, tss = [], [], [], set(), set()
        for inst in sample:
            if not self.time_left():
                res.notes.append("phase deadline reached")
                break
            el, r, body = self.get(self.series_path(inst), A_DICOM)
            lats.append(el)
            sizes.append(len(body))
            encs.add(r.headers.get("content-encoding", "identity"))
            try:
                assert r.status_code == 200, f"HTTP {r.status_code}"
                parts = parse_multipart(body, r.headers.get("content-type", ""))
                assert len(parts) == 1, f"{len(parts)} parts"
                tss.add(parts[0][0].get("content-type", ""))
                self._check_instance(parts[0][1], inst)
            except (AssertionError, ValueError) as e:
                bad.append(f"{inst['sop_uid'][-10:]}: {e}")
            except Exception as e:  # a decoding error is a failed check too
                bad.append(f"{inst['sop_uid'][-10:]}: {type(e).__name__}: {e}")
        m = lat_stats(lats)
        if lats:
            m.update(
                {
                    "MB_per_s": round(sum(sizes) / 1e6 / sum(lats), 1),
                    "MB_per_s_median_request": round(
                        float(np.median([s / 1e6 / t for s, t in zip(sizes, lats, strict=True)])), 1
                    ),
                }
            )
        m.update(
            {
                "request": f"{len(sample)} different instances of the big series, Accept: {A_DICOM}",
                "response_bytes_median": int(np.median(sizes)) if sizes else None,
                "content_encoding": ",".join(sorted(encs)),
                "part_content_type": " | ".join(sorted(tss)),
            }
        )
        res.metrics["wado_instance"] = m
        res.check(
            "WADO-RS instance: one part each, SOP UID and pixel data identical to the file sent",
            len(lats) == len(sample) and not bad,
            "; ".join(bad[:3]) or f"{len(lats)}/{len(sample)} done",
        )

    def phase_frames(self, res: PhaseResult):
        sample = self._sample(11)
        lats, bad, sizes, encs, tss = [], [], [], set(), set()
        for inst in sample:
            if not self.time_left():
                res.notes.append("phase deadline reached")
                break
            el, r, body = self.get(self.series_path(inst) + "/frames/1", A_FRAME)
            lats.append(el)
            sizes.append(len(body))
            encs.add(r.headers.get("content-encoding", "identity"))
            try:
                assert r.status_code == 200, f"HTTP {r.status_code}"
                parts = parse_multipart(body, r.headers.get("content-type", ""))
                assert len(parts) == 1, f"{len(parts)} parts"
                tss.add(parts[0][0].get("content-type", ""))
                data = parts[0][1]
                assert len(data) == 512 * 512 * 2, f"{len(data)} bytes (part {parts[0][0].get('content-type')})"
                assert hashlib.sha1(data).hexdigest() == inst["pixel_sha1"], "frame bytes differ from PixelData"
            except (AssertionError, ValueError) as e:
                bad.append(f"{inst['sop_uid'][-10:]}: {e}")
        m = lat_stats(lats)
        if lats:
            m["MB_per_s"] = round(sum(sizes) / 1e6 / sum(lats), 1)
        m.update(
            {
                "request": f"/frames/1 of {len(sample)} instances of the big series, Accept: {A_FRAME}",
                "response_bytes_median": int(np.median(sizes)) if sizes else None,
                "content_encoding": ",".join(sorted(encs)),
                "part_content_type": " | ".join(sorted(tss)),
            }
        )
        res.metrics["wado_frames1"] = m
        res.check(
            "/frames/1: one part each, bytes identical to the stored PixelData",
            len(lats) == len(sample) and not bad,
            "; ".join(bad[:3]) or f"{len(lats)}/{len(sample)} done",
        )

    def phase_series_retrieve(self, res: PhaseResult):
        n_inst = self.big_series["instances"]
        exp = {x["sop_uid"]: x for x in self.big_insts}
        lats, ttfb, bad, sizes, encs = [], [], [], [], set()
        url = self.web + self.series_path()
        first_sig = None
        for k in range(self.a.n_slow):
            if not self.time_left():
                res.notes.append("phase deadline reached")
                break
            buf = bytearray()
            t0 = time.perf_counter()
            first = None
            with self.http.stream("GET", url, headers={"Accept": A_DICOM}) as r:
                for chunk in r.iter_bytes(1 << 20):
                    if first is None:
                        first = time.perf_counter() - t0
                    buf += chunk
            el = time.perf_counter() - t0
            lats.append(el)
            ttfb.append(first if first is not None else el)
            sizes.append(len(buf))
            encs.add(r.headers.get("content-encoding", "identity"))
            try:
                assert r.status_code == 200, f"HTTP {r.status_code}"
                parts = parse_multipart(bytes(buf), r.headers.get("content-type", ""))
                assert len(parts) == n_inst, f"{len(parts)} parts, expected {n_inst}"
                sig = hashlib.sha1(b"".join(sorted(hashlib.sha1(d).digest() for _, d in parts))).hexdigest()
                if first_sig is None or self.a.verify_all:
                    seen = set()
                    for _, data in parts:
                        ds = pydicom.dcmread(io.BytesIO(data), force=True)
                        x = exp.get(str(ds.SOPInstanceUID))
                        assert x is not None, f"unexpected SOP UID {ds.SOPInstanceUID}"
                        assert self._pixels_sha1(ds) == x["pixel_sha1"], "pixel data differ"
                        seen.add(x["sop_uid"])
                    assert seen == set(exp), f"{len(seen)} distinct instances"
                    first_sig = first_sig or sig
                else:  # later repetitions: the same parts as the fully verified first response
                    assert sig == first_sig, "response differs from the verified first response"
            except (AssertionError, ValueError) as e:
                bad.append(f"rep {k}: {e}")
            except Exception as e:
                bad.append(f"rep {k}: {type(e).__name__}: {e}")
            del buf
        m = lat_stats(lats)
        if lats:
            med = float(np.median(lats))
            m.update(
                {
                    "MB_per_s_median": round(float(np.median(sizes)) / 1e6 / med, 1),
                    "instances_per_s_median": round(n_inst / med, 1),
                    "time_to_first_byte": lat_stats(ttfb),
                }
            )
        m.update(
            {
                "request": f"whole big series ({n_inst} instances), Accept: {A_DICOM}",
                "response_bytes_median": int(np.median(sizes)) if sizes else None,
                "content_encoding": ",".join(sorted(encs)),
            }
        )
        res.metrics["wado_series_retrieve"] = m
        res.check(
            f"whole series: {n_inst} parts, exactly the series' SOP UIDs, pixel data identical",
            len(lats) == self.a.n_slow and not bad,
            "; ".join(bad[:3]) or f"{len(lats)}/{self.a.n_slow} done",
        )


# --------------------------------------------------------------------------- report
def fmt(m: dict) -> str:
    if not m.get("n"):
        return "-"
    s = f"{m['median_ms']:.1f} / {m['p95_ms']:.1f} ms (n={m['n']})"
    if m["n"] == 1:
        s = f"{m['median_ms']:.1f} ms (n=1)"
    return s


def extra(m: dict) -> str:
    bits = []
    if m.get("results") is not None:
        bits.append(f"{m['results']} results")
    if m.get("MB_per_s") is not None:
        bits.append(f"{m['MB_per_s']} MB/s overall")
    if m.get("MB_per_s_median") is not None:
        bits.append(f"{m['MB_per_s_median']} MB/s, {m['instances_per_s_median']} inst/s (median)")
    if m.get("time_to_first_byte"):
        bits.append(f"first byte {m['time_to_first_byte']['median_ms']:.0f} ms")
    if m.get("bytes") or m.get("response_bytes_median"):
        b = m.get("bytes") or m.get("response_bytes_median")
        bits.append(f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} KB")
    if m.get("content_encoding") and m["content_encoding"] != "identity":
        bits.append(f"Content-Encoding {m['content_encoding']}")
    return "; ".join(bits)


def report_md(out: dict) -> str:
    L = [f"## {out['label']} ({out['date']})", ""]
    n = out["node"]
    L.append(f"node: DIMSE {n['aet']}@{n['dimse']} (calling AE {n['calling_aet']}), DICOMweb {n['dicomweb']}")
    d = out["dataset"]
    L.append(
        f"data set: {d['path']}: {d['studies']} studies, {d['instances']} instances, {d['patients']} patients, "
        f"{d['total_bytes'] / 1e9:.2f} GB; big series {d['big_series_instances']} x 512x512 CT"
    )
    c = out["client"]
    L.append(
        f"client: {c['host']}, {c['cpus']} CPUs, Python {c['python']}, pydicom {c['pydicom']}, "
        f"Accept-Encoding {c['accept_encoding']!r}, TCP_NODELAY={c['nodelay']}"
    )
    if out.get("server_process"):
        L.append(
            "server process(es): "
            + ", ".join(f"PID {p}: peak RSS {v['vm_hwm_MiB']} MiB" for p, v in out["server_process"].items())
        )
    L += ["", "| phase | metric | median / p95 | throughput, results, size | check |", "|---|---|---|---|---|"]
    for ph, r in out["phases"].items():
        chk = "PASS" if r["ok"] else "FAIL"
        if r["error"]:
            L.append(f"| {ph} | (error) | {r['error'][:120]} | | FAIL |")
        first = True
        for name, m in r["metrics"].items():
            L.append(f"| {ph if first else ''} | {name} | {fmt(m)} | {extra(m)} | {chk if first else ''} |")
            first = False
    L.append("")
    L.append("Requests:")
    L.append("")
    for r in out["phases"].values():
        for name, m in r["metrics"].items():
            L.append(f"- `{name}`: {m.get('query') or m.get('request')}" + (f" ({m['note']})" if m.get("note") else ""))
    probes = [(ph, p) for ph, r in out["phases"].items() for p in r["probes"]]
    if probes:
        L += ["", "Probes (informational, never failures):", "", "| probe | result | detail |", "|---|---|---|"]
        for _, p in probes:
            L.append(f"| {p['probe']} | {'yes' if p['supported'] else 'NO'} | {p['detail'][:200]} |")
    L.append("")
    fails = [(ph, ch) for ph, r in out["phases"].items() for ch in r["checks"] if not ch["ok"]]
    if fails:
        L.append("Failed checks:")
        L += [f"- {ph}: {ch['check']} -- {ch['detail']}" for ph, ch in fails]
    else:
        L.append(f"All {sum(len(r['checks']) for r in out['phases'].values())} correctness checks passed.")
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="/tmp/qbench-ds", help="directory written by make_query_dataset.py")
    ap.add_argument("--dimse-host", default="127.0.0.1")
    ap.add_argument("--dimse-port", type=int, default=4343)
    ap.add_argument("--aet", default="ORTHANC", help="called AE title of the node")
    ap.add_argument("--calling-aet", default="BENCH")
    ap.add_argument("--dicomweb-base", default="http://127.0.0.1:8043/dicom-web", help="'none' skips web phases")
    ap.add_argument("--phases", default="all", help=f"comma separated, from {','.join(ALL_PHASES)}")
    ap.add_argument("--n", type=int, default=50, help="repetitions of each QIDO and C-FIND query (default 50)")
    ap.add_argument(
        "--n-slow",
        type=int,
        default=10,
        help="repetitions of the slow ones: cached series /metadata, whole-series retrieve (default 10)",
    )
    ap.add_argument("--n-wado", type=int, default=30, help="instances for WADO-RS instance and /frames/1")
    ap.add_argument("--seed", type=int, default=1, help="seed of the query letters and date ranges")
    ap.add_argument(
        "--accept-encoding",
        default="gzip, deflate",
        help="Accept-Encoding of every DICOMweb request (default 'gzip, deflate' like browsers/httpx)",
    )
    ap.add_argument(
        "--client-nodelay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Nagle off on the client's HTTP and DIMSE sockets (default on)",
    )
    ap.add_argument(
        "--allow-foreign",
        action="store_true",
        help="the node may hold other studies: results whose PatientID lacks the data set's prefix "
        "are ignored (and counted) instead of failing the exact-set checks",
    )
    ap.add_argument(
        "--verify-all",
        action="store_true",
        help="decode every instance of every whole-series repetition (default: the first one fully, "
        "later ones compared with it)",
    )
    ap.add_argument("--server-pid", default="", help="PID(s) of the node, comma separated: peak RSS and CPU")
    ap.add_argument("--phase-timeout", type=float, default=900, help="seconds per phase; loops stop after it")
    ap.add_argument("--http-timeout", type=float, default=120, help="seconds per HTTP read (connect 10 s)")
    ap.add_argument("--label", default="node")
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    args = ap.parse_args()
    for k in ("n", "n_slow", "n_wado"):
        if not 1 <= getattr(args, k) <= 10000:
            ap.error(f"--{k.replace('_', '-')} must be 1..10000")
    phases = ALL_PHASES if args.phases == "all" else [p.strip() for p in args.phases.split(",") if p.strip()]
    for p in phases:
        if p not in ALL_PHASES:
            ap.error(f"unknown phase {p}")
    pids = [int(x) for x in args.server_pid.split(",") if x.strip()]

    bench = Bench(args)
    if not bench.web:
        phases = [p for p in phases if p not in WEB_PHASES]
    mon = ServerMonitor(pids)
    man = bench.man
    import pynetdicom

    out = {
        "label": args.label,
        "date": now_iso(),
        "tool": "bench/bench_query.py",
        "node": {
            "dimse": f"{args.dimse_host}:{args.dimse_port}",
            "aet": args.aet,
            "calling_aet": args.calling_aet,
            "dicomweb": bench.web,
        },
        "dataset": {
            "path": os.path.abspath(args.dataset),
            "seed": man["seed"],
            "tag": man["tag"],
            "studies": man["studies_count"],
            "instances": man["instances_count"],
            "patients": man["patients_count"],
            "total_bytes": man["total_bytes"],
            "big_study_uid": bench.big_study["study_uid"],
            "big_series_uid": bench.big_series["series_uid"],
            "big_series_instances": bench.big_series["instances"],
        },
        "client": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "pynetdicom": pynetdicom.__version__,
            "nodelay": args.client_nodelay,
            "accept_encoding": args.accept_encoding,
        },
        "settings": vars(args),
        "phases": {},
    }
    for p in phases:
        res = PhaseResult(p)
        bench.deadline = time.monotonic() + args.phase_timeout
        print(f"[{time.strftime('%H:%M:%S')}] phase {p} ...", flush=True)
        cpu0 = mon.begin()
        t0 = time.perf_counter()
        try:
            getattr(bench, f"phase_{p}")(res)
        except Exception as e:
            res.error = f"{type(e).__name__}: {e}"
            res.notes.append(traceback.format_exc()[-3000:])
        res.wall_s = time.perf_counter() - t0
        res.server = mon.end(cpu0)
        out["phases"][p] = res.to_json()
        print(
            f"[{time.strftime('%H:%M:%S')}] phase {p}: {'ok' if res.ok else 'FAILED'} in {res.wall_s:.1f} s"
            + (f" ({res.error})" if res.error else ""),
            flush=True,
        )
        for c in res.checks:
            if not c["ok"]:
                print(f"    check failed: {c['check']}: {c['detail']}", flush=True)
    out["server_process"] = mon.summary()
    mon.stop()
    out["all_ok"] = bool(out["phases"]) and all(r["ok"] for r in out["phases"].values())
    md = report_md(out)
    print()
    print(md)
    if args.out_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_json)), exist_ok=True)
        with open(args.out_json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    if args.out_md:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_md)), exist_ok=True)
        with open(args.out_md, "w") as f:
            f.write(md)
    return 0 if out["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
