#!/usr/bin/env python3
"""What an access check costs per request: QIDO-RS and /rendered with ``http.auth`` off and on, in one run.

Run on purpose, never in the test suite. From the repository root, with the virtualenv's python::

    python bench/bench_auth.py --work /tmp/bench-auth --out-md bench/results/2026-12-01-auth/run1.md \\
        --out-json bench/results/2026-12-01-auth/run1.json

It generates a CT series (``tests.factories.ct_series``, 512x512 phantom slices), imports it into two fresh data
folders and starts ``dcmnode serve`` on each, on 127.0.0.1: one with ``http.auth = "none"`` and one with
``http.auth = "on"``, an API token (``dcmnode token create``, scope read) and ``[http.oidc]`` pointing at a JWKS
file it writes (a fresh RSA 2048 key; the JWT is RS256 with iss, aud, exp, sub and ``scope = "read"``). Three
variants are measured: ``off`` (no credential), ``token`` and ``oidc`` (``Authorization: Bearer``), each with its
own keep-alive ``httpx.Client`` (connection set-up is not measured), interleaved request by request so that the
machine's state drifts alike for all three: off, token, off, oidc, ... (each request follows one to the other
node; ``off`` has twice the samples). Metrics:

  qido_studies   GET /dicom-web/studies (one study)
  qido_series    GET /dicom-web/studies/{study}/series
  rendered_cold  GET .../instances/{i}/rendered, image/jpeg, a window (window=C,W) never asked before: a miss of
                 the render cache, so the frame is read (from the OS page cache) and rendered; instances cycle
  rendered_warm  the same request every time (answered from the render cache on disk)

Then, per variant, blocks of QIDO ``/studies`` requests with the HTTP process's CPU time (``/proc/PID/stat``)
read around each block: the server's CPU per request, which the client's clock cannot separate from the
client's own time. Every answer is checked (status, content type, a study's UID, a JPEG's size when decoded);
before anything is measured, the secured node must answer 401 without a credential and 200 with each one.
Bounded: ``--rounds`` x ``--per-round`` requests per metric and variant, and ``--max-seconds`` for the whole
measurement (it stops early and says so).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
from cryptography.hazmat.primitives.asymmetric import rsa
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.factories: the series the tests use

from tests.factories import ct_series, write_series  # noqa: E402

READY = re.compile(
    r"ready: DIMSE (\S+)@[\d.]+:(\d+) \((?:plain|TLS)\)(?:, [\d.]+:\d+ \(TLS\))?\s+HTTP https?://[\d.]+:(\d+)/"
)
ISSUER, AUDIENCE = "https://issuer.bench.local/realms/dcmnode", "dcmnode-bench"
VARIANTS = ("off", "token", "oidc")
METRICS = ("qido_studies", "qido_series", "rendered_cold", "rendered_warm")
A_JSON = "application/dicom+json"
TICK = os.sysconf("SC_CLK_TCK")


def dcmnode(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dcmnode", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"dcmnode {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


class Server:
    """``dcmnode serve`` as a subprocess on free ports; its parent process is the HTTP process."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.log = data.parent / f"serve-{data.name}.log"
        self._log = open(self.log, "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "dcmnode", "serve", "--data", str(data), "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*cmd, "--http-port", "0", "--dimse-port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "DCMNODE_SR_WORKER": "off", **env},
            cwd=data.parent,  # not the repository: config/dcmnode.toml is not read
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = READY.search(line)
        if found is None:
            self.proc.kill()
            raise SystemExit(f"serve did not start: {line!r}\n{self.log.read_text()[-2000:]}")
        self.base = f"http://127.0.0.1:{found[3]}/dicom-web"

    def cpu(self) -> float:
        """CPU seconds of the HTTP process so far, every thread included, in nanoseconds' precision (the sum of
        its threads' ``schedstat``; ``stat`` counts 10 ms ticks). A thread that ended in between is not counted."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total / 1e9

    def family_cpu(self) -> float:
        """CPU seconds of the HTTP process and its children (DIMSE processes, metadata workers)."""
        total, pids = 0.0, [self.proc.pid]
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / TICK
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pids += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def wait_idle(self, quiet: float = 1.0, limit: float = 300.0) -> float:
        """Wait until the node's processes used no CPU for ``quiet`` seconds (the start-up metadata precompute
        is over); returns how long it took."""
        started = time.monotonic()
        last, since = self.family_cpu(), time.monotonic()
        while time.monotonic() - started < limit:
            time.sleep(0.2)
            now = self.family_cpu()
            if now - last > 0.011:  # more than one clock tick
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return time.monotonic() - started
        raise SystemExit(f"the node at {self.base} did not become idle in {limit:.0f} s")

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


def issuer_files(folder: Path) -> tuple[Path, str]:
    """A JWKS file with a fresh RSA key and an RS256 JWT signed by it (valid for two hours)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    path = folder / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "bench1", "use": "sig", "alg": "RS256"}]}))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench", "scope": "read", "iat": now, "exp": now + 7200}
    return path, jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench1"})


def machine_state() -> dict[str, Any]:
    load = Path("/proc/loadavg").read_text().split()[:3]
    top = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:6]
    return {
        "cores": os.cpu_count(),
        "loadavg": " ".join(load),
        "top_processes": [" ".join(line.split()) for line in top],  # command names only, never arguments
    }


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "median_ms": statistics.median(ordered), "p95_ms": p95}


def median_diff_ci(on: list[float], off: list[float], rng: np.random.Generator) -> tuple[float, float]:
    """A bootstrap 95 % interval of median(on) - median(off) (1,000 resamples)."""
    a, b = np.asarray(on), np.asarray(off)
    diffs = [float(np.median(rng.choice(a, a.size)) - np.median(rng.choice(b, b.size))) for _ in range(1000)]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


class Variant:
    def __init__(self, name: str, server: Server, token: str | None, uids: tuple[str, str, list[str]]) -> None:
        self.name, self.server = name, server
        headers = {"Accept-Encoding": "gzip, deflate"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(base_url=server.base, headers=headers, timeout=60)
        self.study, self.series, self.instances = uids
        self.windows = 0
        self.index = VARIANTS.index(name)

    def url(self, metric: str) -> tuple[str, dict[str, str], str]:
        """(path, query, Accept) of the next request of ``metric``."""
        if metric == "qido_studies":
            return "/studies", {}, A_JSON
        if metric == "qido_series":
            return f"/studies/{self.study}/series", {}, A_JSON
        rendered = f"/studies/{self.study}/series/{self.series}/instances/%s/rendered"
        if metric == "rendered_warm":
            return rendered % self.instances[0], {"window": "40,400"}, "image/jpeg"
        self.windows += 1  # a window no request of any variant asked before: a miss of the render cache
        n = self.windows
        window = f"{40 + n % 97},{400 + 3 * self.index + 10 * (n // 97)}"
        return rendered % self.instances[n % len(self.instances)], {"window": window}, "image/jpeg"

    def timed(self, metric: str, decode: bool = False) -> float:
        path, params, accept = self.url(metric)
        started = time.perf_counter()
        response = self.client.get(path, params=params, headers={"Accept": accept})
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{self.name} {metric}: HTTP {response.status_code} {response.text[:200]}")
        kind = response.headers.get("content-type", "")
        if accept == A_JSON:
            if not kind.startswith(A_JSON) or (metric == "qido_studies" and self.study not in response.text):
                raise SystemExit(f"{self.name} {metric}: unexpected answer {kind} {response.text[:200]}")
        elif kind != "image/jpeg" or response.content[:2] != b"\xff\xd8":
            raise SystemExit(f"{self.name} {metric}: not a JPEG ({kind})")
        elif decode:
            picture = np.asarray(Image.open(io.BytesIO(response.content)))
            if picture.shape != (512, 512) or picture.std() < 1:
                raise SystemExit(f"{self.name} {metric}: unexpected image {picture.shape}")
        return elapsed


def prepare(work: Path, slices: int) -> tuple[Path, Path, str, Path, str, tuple[str, str, list[str]]]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    datasets = ct_series(slices, 512, 512, patient_id="AUTH-BENCH", patient_name="Auth^Bench", phantom=True)
    write_series(work / "series", datasets)
    uids = (datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID, [d.SOPInstanceUID for d in datasets])
    env = {"DCMNODE_STORE_FSYNC": "false"}
    data_off, data_on = work / "data-off", work / "data-on"
    for data in (data_off, data_on):
        dcmnode("import", "--data", str(data), str(work / "series"), env=env, cwd=work)
    token = dcmnode("token", "create", "bench", "--scopes", "read", "--data", str(data_on), cwd=work)
    jwks, id_token = issuer_files(work)
    return data_off, data_on, token.strip().splitlines()[-1], jwks, id_token, uids


def check_doors(on: Server, study: str, token: str, id_token: str) -> None:
    """The secured node refuses without a credential and with a bad one, and answers with each good one."""
    with httpx.Client(base_url=on.base, timeout=30) as client:
        for headers, expected in (
            ({}, 401),
            ({"Authorization": "Bearer dcm_not-a-token"}, 401),
            ({"Authorization": f"Bearer {id_token[:-4]}AAAA"}, 401),
            ({"Authorization": f"Bearer {token}"}, 200),
            ({"Authorization": f"Bearer {id_token}"}, 200),
        ):
            got = client.get("/studies", headers={**headers, "Accept": A_JSON})
            if got.status_code != expected or (expected == 200 and study not in got.text):
                raise SystemExit(f"secured node: expected {expected}, got {got.status_code} {got.text[:200]}")


async def _noop(scope: Any, receive: Any, send: Any) -> None:
    return None


def check_alone(work: Path, jwks: Path, id_token: str, uids: tuple[str, str, list[str]]) -> dict[str, float]:
    """The check by itself, in this process: ``dicomweb.access.AccessControl`` around an app that does nothing,
    called with the ASGI scope of each request (as uvicorn builds it), minus the bare app; best of 5 x 20,000.
    No network, no handler: what the middleware adds to a request whose credential was decided within the
    cache's 10 s (a first sight also reads the index or checks the RS256 signature, once per credential)."""
    import asyncio

    from dcmnode import config
    from dcmnode.core.access import Scope
    from dcmnode.core.services import Services
    from dcmnode.dicomweb.access import AccessControl

    oidc = {"issuer": ISSUER, "audience": AUDIENCE, "jwks": str(jwks)}
    overrides = {"node": {"data_dir": str(work / "data-check")}, "http": {"auth": "on"}, "oidc": oidc}
    services = Services.open(config.load(None, {}, overrides))
    token = services.auth.create_token("check", frozenset({Scope.READ}), frozenset({"*"}))
    app = AccessControl(_noop, services.auth, audit=services.audit)
    study, series, instances = uids
    paths = {
        "qido_studies": "/dicom-web/studies",
        "rendered": f"/dicom-web/studies/{study}/series/{series}/instances/{instances[0]}/rendered",
    }

    def scope(path: str, credential: str) -> dict[str, Any]:
        headers = [(b"host", b"127.0.0.1:8080"), (b"accept", b"image/jpeg"), (b"user-agent", b"python-httpx/0.28")]
        headers.append((b"authorization", f"Bearer {credential}".encode()))
        return {"type": "http", "method": "GET", "path": path, "headers": headers, "client": ("127.0.0.1", 50000)}

    async def per_call(target: Any, path: str, credential: str, n: int = 20000) -> float:
        scopes = [scope(path, credential) for _ in range(n)]
        started = time.perf_counter()
        for one in scopes:
            await target(one, None, None)
        return (time.perf_counter() - started) * 1e6 / n

    async def run() -> dict[str, float]:
        found: dict[str, float] = {}
        for metric, path in paths.items():
            for name, credential in (("token", token), ("oidc", id_token)):
                await app(scope(path, credential), None, None)  # the first sight, not measured
                bare = min([await per_call(_noop, path, credential) for _ in range(5)])
                checked = min([await per_call(app, path, credential) for _ in range(5)])
                found[f"{metric}_{name}_us"] = round(checked - bare, 2)
        return found

    try:
        return asyncio.run(run())
    finally:
        services.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    before = machine_state()
    data_off, data_on, token, jwks, id_token, uids = prepare(work, args.slices)
    secured = {
        "DCMNODE_HTTP_AUTH": "on",
        "DCMNODE_HTTP_OIDC_ISSUER": ISSUER,
        "DCMNODE_HTTP_OIDC_AUDIENCE": AUDIENCE,
        "DCMNODE_HTTP_OIDC_JWKS": str(jwks),
    }
    off = Server(data_off, {"DCMNODE_HTTP_AUTH": "none"})
    on = Server(data_on, secured)
    variants: list[Variant] = []
    try:
        idle = (off.wait_idle(), on.wait_idle())
        check_doors(on, uids[0], token, id_token)
        variants = [
            Variant("off", off, None, uids),
            Variant("token", on, token, uids),
            Variant("oidc", on, id_token, uids),
        ]
        for variant in variants:  # unmeasured: first requests pay for lazy start-up work and the warm cache entry
            for metric in METRICS:
                for _ in range(10):
                    variant.timed(metric, decode=True)
        samples: dict[str, dict[str, list[float]]] = {v: {m: [] for m in METRICS} for v in VARIANTS}
        deadline = time.monotonic() + args.max_seconds
        stopped_early = False
        started = time.monotonic()
        for round_no in range(args.rounds):
            # Each request follows one to the other node (off, token, off, oidc, ...; odd rounds start on the
            # secured node): a process that has just answered answers its next request faster, and a plain
            # off, token, oidc order would hand that to whichever variant follows another on the same node.
            off_v, token_v, oidc_v = variants
            order = [off_v, token_v, off_v, oidc_v] if round_no % 2 == 0 else [token_v, off_v, oidc_v, off_v]
            for metric in METRICS:
                for i in range(args.per_round):
                    for variant in order:
                        samples[variant.name][metric].append(variant.timed(metric, decode=i % 25 == 0))
            if time.monotonic() > deadline:
                stopped_early = round_no + 1 < args.rounds
                break
        latency_seconds = time.monotonic() - started
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for round_no in range(args.cpu_rounds):  # blocks in turn, the order rotated every round
            for variant in variants[round_no % 3 :] + variants[: round_no % 3]:
                first = variant.server.cpu()
                for _ in range(args.cpu_block):
                    variant.timed("qido_studies")
                cpu[variant.name].append((variant.server.cpu() - first) * 1000 / args.cpu_block)
    finally:
        for variant in variants:
            variant.client.close()
        off.stop()
        on.stop()
    alone = check_alone(work, jwks, id_token, uids)
    rng = np.random.default_rng(0)
    table: dict[str, Any] = {}
    for metric in METRICS:
        row: dict[str, Any] = {v: stats(samples[v][metric]) for v in VARIANTS}
        for v in ("token", "oidc"):
            row[f"{v}_minus_off_ms"] = row[v]["median_ms"] - row["off"]["median_ms"]
            row[f"{v}_minus_off_p95_ms"] = row[v]["p95_ms"] - row["off"]["p95_ms"]
            row[f"{v}_minus_off_ci95"] = median_diff_ci(samples[v][metric], samples["off"][metric], rng)
        table[metric] = row
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "slices": args.slices,
        "rounds": args.rounds,
        "per_round": args.per_round,
        "stopped_early": stopped_early,
        "latency_seconds": round(latency_seconds, 1),
        "idle_wait_seconds": [round(s, 1) for s in idle],
        "machine_before": before,
        "machine_after": machine_state(),
        "latency": table,
        "server_cpu_ms_per_qido": {
            v: {
                "blocks": cpu[v],
                "median": statistics.median(cpu[v]),
                "min": min(cpu[v]),
                # the same round's off block subtracted: the machine's state changes over seconds, a round is ~1 s
                "paired_minus_off": statistics.median(a - b for a, b in zip(cpu[v], cpu["off"], strict=True)),
            }
            for v in VARIANTS
        },
        "cpu_block": args.cpu_block,
        "check_alone_us": alone,
    }


def markdown(result: dict[str, Any]) -> str:
    early = ", stopped early by --max-seconds" if result["stopped_early"] else ""
    lines = [
        f"# Auth on vs off, {result['date']} (commit {result['commit']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['slices']} CT slices 512x512; {result['rounds']} rounds x {result['per_round']} requests per metric"
        f" and variant (off: twice that), interleaved ({result['latency_seconds']} s{early}).",
        f"Machine before: {result['machine_before']['cores']} cores, load {result['machine_before']['loadavg']}, "
        f"busiest: {'; '.join(result['machine_before']['top_processes'][:4])}.",
        f"Machine after: load {result['machine_after']['loadavg']}, "
        f"busiest: {'; '.join(result['machine_after']['top_processes'][:4])}.",
        "",
        "| metric | off p50 / p95 | token p50 / p95 | oidc p50 / p95 | token - off p50 [95% CI] "
        "| oidc - off p50 [95% CI] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for metric, row in result["latency"].items():
        cells = [f"{row[v]['median_ms']:.2f} / {row[v]['p95_ms']:.2f} ms" for v in VARIANTS]
        diffs = [
            "{:+.3f} ms [{:+.3f}, {:+.3f}]".format(row[f"{v}_minus_off_ms"], *row[f"{v}_minus_off_ci95"])
            for v in ("token", "oidc")
        ]
        lines.append(
            f"| {metric} (n={row['token']['n']}, off {row['off']['n']}) | {' | '.join(cells)} | {' | '.join(diffs)} |"
        )
    cpu = result["server_cpu_ms_per_qido"]
    lines += [
        "",
        f"HTTP process CPU per QIDO `/studies` ({len(cpu['off']['blocks'])} rounds of one block of "
        f"{result['cpu_block']} requests per variant; the spread between blocks is the machine's): median "
        + ", ".join(f"{v} {cpu[v]['median']:.3f}" for v in VARIANTS)
        + " ms; minimum "
        + ", ".join(f"{v} {cpu[v]['min']:.3f}" for v in VARIANTS)
        + " ms; median of the paired differences (same round) "
        + ", ".join(f"{v} - off {cpu[v]['paired_minus_off']:+.3f} ms" for v in ("token", "oidc"))
        + ".",
        "",
        "The check alone, in process (AccessControl around a no-op app, decided credential, best of 5 x 20,000): "
        + ", ".join(f"{k.removesuffix('_us')} {v:.1f} us" for k, v in result["check_alone_us"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-auth"), help="emptied and filled each run")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=40, help="requests per metric and variant in a round")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="the latency rounds stop after this")
    parser.add_argument("--cpu-rounds", type=int, default=30)
    parser.add_argument("--cpu-block", type=int, default=100)
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args()
    result = measure(args)
    text = markdown(result)
    print(text)
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(result, indent=1))
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
