#!/usr/bin/env python3
"""What TLS costs: C-STORE instances/s and association set-up over plain DIMSE and DICOM TLS, QIDO-RS latency
over HTTP and HTTPS, side by side in one run.

Run on purpose, never in the test suite. From the repository root, with the virtualenv's python::

    python bench/bench_tls.py --work /tmp/bench-tls --out-md bench/results/2026-12-02-tls/run1.md \\
        --out-json bench/results/2026-12-02-tls/run1.json

It makes a site PKI with ``core.tls.init_site`` (a CA, a server certificate for 127.0.0.1, a client
certificate), generates a CT series (``tests.factories.ct_series``, 512x512 phantom slices), imports it into two
fresh data folders and starts ``dcmnode serve`` on each, on 127.0.0.1:

  plain  HTTP, and DIMSE on a plain port and a TLS port (``[dimse] tls_port``, client certificates required)
  https  HTTPS (``[http] tls_cert``/``tls_key``), the same DIMSE listeners

Metrics, interleaved round by round (plain, TLS, plain, TLS, ...) so that the machine's drift hits both alike:

  store          one association storing ``--store-slices`` instances (fresh UIDs each round) with pynetdicom's
                 SCU, explicit VR little endian: instances/s and MB/s over the plain and the TLS port
  associate      an association opened (A-ASSOCIATE, TLS handshake with client certificate on TLS), one
                 C-ECHO, released: ms each
  qido_studies   GET /dicom-web/studies on a keep-alive connection (http vs https)
  qido_series    GET /dicom-web/studies/{study}/series, keep-alive
  qido_new_conn  GET /dicom-web/studies on a new connection each time (TCP + TLS handshake included)

Both clients turn Nagle's algorithm off (TCP_NODELAY), as dcmtk, curl and browsers do: without it pynetdicom's
SCU and httpx wait for delayed ACKs on plain TCP (~40 ms on a new HTTP connection), which TLS's single record
writes happen to avoid, and the comparison would flatter TLS.

Every answer is checked (C-STORE status 0x0000 and the instance count in QIDO afterwards, C-ECHO status, HTTP
200 with the study's UID). Bounded: ``--rounds`` rounds and ``--max-seconds`` for the whole measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.transport import AssociationSocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.factories: the series the tests use
sys.path.insert(0, str(ROOT / "src"))

from tests.factories import ct_series, write_series  # noqa: E402

from dcmnode.core import tls  # noqa: E402

HOST = "127.0.0.1"
DIMSE = re.compile(r"(\d+) \((plain|TLS)\)")
HTTP = re.compile(r"HTTP (https?)://[\d.]+:(\d+)/")
A_JSON = "application/dicom+json"


NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
_create_socket = AssociationSocket._create_socket


def _create_nodelay_socket(self: AssociationSocket, address: Any) -> socket.socket:
    sock = _create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


AssociationSocket._create_socket = _create_nodelay_socket  # type: ignore[method-assign]


def http_client(base_url: str, verify: bool | str) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=verify, socket_options=NODELAY)
    return httpx.Client(base_url=base_url, timeout=60, transport=transport)


def dcmnode(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dcmnode", *args], capture_output=True, text=True, cwd=cwd, timeout=900, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"dcmnode {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


class Server:
    """``dcmnode serve --config`` as a subprocess on free ports."""

    def __init__(self, data: Path, config: Path) -> None:
        self.log = data.parent / f"serve-{data.name}.log"
        self._log = open(self.log, "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "dcmnode", "serve", "--data", str(data), "--config", str(config)]
        self.proc = subprocess.Popen(
            [*cmd, "--host", HOST, "--http-port", "0", "--dimse-port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "DCMNODE_SR_WORKER": "off", "DCMNODE_STORE_FSYNC": "false"},
            cwd=data.parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        ports = dict((kind, int(port)) for port, kind in DIMSE.findall(line))
        http = HTTP.search(line)
        if http is None or set(ports) != {"plain", "TLS"}:
            self.proc.kill()
            raise SystemExit(f"serve did not start as expected: {line!r}\n{self.log.read_text()[-2000:]}")
        self.dimse, self.dimse_tls = ports["plain"], ports["TLS"]
        self.base = f"{http[1]}://{HOST}:{http[2]}/dicom-web"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def config(work: Path, site: tls.SitePki, https: bool) -> Path:
    lines = [
        "[dimse]",
        "tls_port = 0",
        f'tls_cert = "{site.server_cert}"',
        f'tls_key = "{site.server_key}"',
        f'tls_ca = "{site.ca_cert}"',
        'tls_client_cert = "required"',
        "[sr]",
        'worker = "off"',
    ]
    if https:
        lines += ["[http]", f'tls_cert = "{site.server_cert}"', f'tls_key = "{site.server_key}"']
    path = work / f"{'https' if https else 'plain'}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "median": statistics.median(ordered), "p95": p95}


class Dimse:
    """The SCU side: one AE, plain or TLS (the site's client certificate, the server name checked)."""

    def __init__(self, site: tls.SitePki, port: int, use_tls: bool) -> None:
        self.ae = AE(ae_title="BENCHSCU")
        self.ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        self.ae.add_requested_context(Verification)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 120
        self.port = port
        self.tls_args = None
        if use_tls:
            ctx = tls.client_context(site.ca_cert, site.client_cert, site.client_key)
            self.tls_args = (ctx, HOST)

    def associate(self) -> Any:
        assoc = self.ae.associate(HOST, self.port, ae_title="DCMNODE", tls_args=self.tls_args)
        if not assoc.is_established:
            raise SystemExit(f"association to port {self.port} failed")
        return assoc

    def echo_ms(self) -> float:
        started = time.perf_counter()
        assoc = self.associate()
        status = assoc.send_c_echo()
        assoc.release()
        elapsed = (time.perf_counter() - started) * 1000
        if status.Status != 0:
            raise SystemExit(f"C-ECHO status {status.Status:#06x}")
        return elapsed

    def store(self, datasets: list[Dataset]) -> float:
        """Seconds for one association storing all of ``datasets`` (the association's set-up included)."""
        started = time.perf_counter()
        assoc = self.associate()
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status.Status != 0:
                raise SystemExit(f"C-STORE status {status.Status:#06x}")
        assoc.release()
        return time.perf_counter() - started


def fresh_copy(datasets: list[Dataset], study: str) -> list[Dataset]:
    """The same images under new Series and SOP Instance UIDs in ``study`` (every round stores new instances)."""
    series = generate_uid()
    for ds in datasets:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return datasets


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    site = tls.init_site(work / "pki", [HOST, "localhost"])
    query_series = ct_series(args.query_slices, 512, 512, patient_id="TLS-BENCH", patient_name="Tls^Bench")
    write_series(work / "series", query_series)
    study = query_series[0].StudyInstanceUID
    store_series = ct_series(args.store_slices, 512, 512, patient_id="TLS-STORE", patient_name="Tls^Store")
    megabytes = sum(len(ds.PixelData) for ds in store_series) / 1e6
    servers: dict[str, Server] = {}
    for name in ("plain", "https"):
        data = work / f"data-{name}"
        dcmnode("import", "--data", str(data), "--no-progress", str(work / "series"), cwd=work)
        servers[name] = Server(data, config(work, site, name == "https"))
    plain, https = servers["plain"], servers["https"]
    results: dict[str, dict[str, list[float]]] = {
        "store_s": {"plain": [], "tls": []},
        "associate_ms": {"plain": [], "tls": []},
        "qido_studies_ms": {"http": [], "https": []},
        "qido_series_ms": {"http": [], "https": []},
        "qido_new_conn_ms": {"http": [], "https": []},
    }
    scu = {"plain": Dimse(site, plain.dimse, False), "tls": Dimse(site, plain.dimse_tls, True)}
    clients = {"http": http_client(plain.base, True), "https": http_client(https.base, str(site.ca_cert))}
    fresh = {"http": http_client(plain.base, True), "https": http_client(https.base, str(site.ca_cert))}
    stored_study = generate_uid()

    def qido(variant: str, path: str, new: bool) -> float:
        started = time.perf_counter()
        # "Connection: close": the server closes after answering, so the next request opens a new connection
        # (TCP, and TLS with its handshake) on the same client: its set-up (CA bundle loading) is not measured.
        headers = {"Accept": A_JSON, **({"Connection": "close"} if new else {})}
        answer = (fresh if new else clients)[variant].get(path, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200 or (path == "/studies" and study not in answer.text):
            raise SystemExit(f"{variant} {path}: HTTP {answer.status_code} {answer.text[:200]}")
        return elapsed

    for variant in clients:  # warm: connections open, metadata precomputed
        for _ in range(20):
            qido(variant, "/studies", False)
    deadline = time.monotonic() + args.max_seconds
    rounds = 0
    for _ in range(args.rounds):
        if time.monotonic() > deadline:
            break
        rounds += 1
        for variant in ("plain", "tls"):
            results["store_s"][variant].append(scu[variant].store(fresh_copy(store_series, stored_study)))
            for _ in range(args.per_round // 4):
                results["associate_ms"][variant].append(scu[variant].echo_ms())
        for _ in range(args.per_round):
            for variant in ("http", "https"):
                results["qido_studies_ms"][variant].append(qido(variant, "/studies", False))
                results["qido_series_ms"][variant].append(qido(variant, f"/studies/{study}/series", False))
        for _ in range(args.per_round // 4):
            for variant in ("http", "https"):
                results["qido_new_conn_ms"][variant].append(qido(variant, "/studies", True))
    counted = clients["http"].get("/instances", params={"StudyInstanceUID": stored_study, "limit": "100000"})
    expected = 2 * rounds * args.store_slices
    if counted.status_code != 200 or len(counted.json()) != expected:
        raise SystemExit(f"stored {len(counted.json()) if counted.status_code == 200 else '?'} of {expected}")
    for client in [*clients.values(), *fresh.values()]:
        client.close()
    for server in servers.values():
        server.stop()
    summary: dict[str, Any] = {}
    for metric, variants in results.items():
        summary[metric] = {name: stats(values) for name, values in variants.items()}
    for variant in ("plain", "tls"):
        seconds = statistics.median(results["store_s"][variant])
        summary["store_s"][variant] |= {
            "instances_per_s": args.store_slices / seconds,
            "mb_per_s": megabytes / seconds,
        }
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "rounds": rounds,
        "store_slices": args.store_slices,
        "store_megabytes": megabytes,
        "instances_verified": expected,
        "metrics": summary,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["metrics"]
    store = m["store_s"]
    lines = [
        f"# TLS cost, {result['when']} ({result['cores']} cores, load after {' '.join(result['loadavg_after'])})",
        "",
        f"{result['rounds']} rounds; each store round: one association, {result['store_slices']} CT instances "
        f"512x512 ({result['store_megabytes']:.1f} MB of pixels); {result['instances_verified']} instances "
        "verified in the index afterwards.",
        "",
        "| metric | plain | TLS | TLS / plain |",
        "| --- | --- | --- | --- |",
    ]
    ips = (store["plain"]["instances_per_s"], store["tls"]["instances_per_s"])
    lines.append(f"| C-STORE instances/s (median round) | {ips[0]:.1f} | {ips[1]:.1f} | {ips[1] / ips[0]:.2f} |")
    mbs = (store["plain"]["mb_per_s"], store["tls"]["mb_per_s"])
    lines.append(f"| C-STORE MB/s | {mbs[0]:.1f} | {mbs[1]:.1f} | {mbs[1] / mbs[0]:.2f} |")
    for metric, label, plain, secure in (
        ("associate_ms", "associate + C-ECHO + release, ms", "plain", "tls"),
        ("qido_studies_ms", "QIDO /studies keep-alive, ms", "http", "https"),
        ("qido_series_ms", "QIDO /studies/{s}/series keep-alive, ms", "http", "https"),
        ("qido_new_conn_ms", "QIDO /studies new connection, ms", "http", "https"),
    ):
        a, b = m[metric][plain], m[metric][secure]
        lines.append(
            f"| {label} (median / p95, n={a['n']}) | {a['median']:.2f} / {a['p95']:.2f} | "
            f"{b['median']:.2f} / {b['p95']:.2f} | {b['median'] / a['median']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-tls"), help="emptied and filled each run")
    parser.add_argument("--store-slices", type=int, default=100, help="instances per store round")
    parser.add_argument("--query-slices", type=int, default=16, help="instances of the series QIDO reads")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=40, help="QIDO requests per metric and variant a round")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args()
    result = measure(args)
    text = markdown(result)
    print(text)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
