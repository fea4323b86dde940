"""Command line: serve | import | status | reindex | delete | render | export | sr | worker | send | token | user |
label | audit | tls |
deidentify | deid-key."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from dcmnode import __version__, config
from dcmnode.errors import DcmnodeError, InvalidRequest, NotFound

log = logging.getLogger("dcmnode")

DEFAULT_CONFIG = Path("config/dcmnode.toml")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        config.configure_logging(settings.node.log_level)
        return int(args.func(args, settings))
    except DcmnodeError as err:
        print(f"dcmnode: {err.reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (default: $DCMNODE_CONFIG, else "
        "config/dcmnode.toml when present); it may hold only some settings",
    )
    common.add_argument("--data", help="data folder: index.sqlite + dicom/ (setting node.data_dir)")

    parser = argparse.ArgumentParser(prog="dcmnode", description="DICOM node: DIMSE + DICOMweb over an indexed store")
    parser.add_argument("--version", action="version", version=f"dcmnode {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the DIMSE SCP and the HTTP server",
        description="Run the node: DIMSE SCP and HTTP (DICOMweb under /dicom-web, viewer at /).",
    )
    serve.add_argument("--host", help="address both servers bind (settings dimse.host and http.host)")
    serve.add_argument("--http-port", type=int, help="HTTP port (http.port, default 8080)")
    serve.add_argument("--dimse-port", type=int, help="DIMSE port (dimse.port, default 11112)")
    serve.add_argument("--ae-title", help="this node's AE title (node.ae_title, default DCMNODE)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help='serve a non-loopback address with http.auth = "none" (anyone who reaches it may read and write)',
    )
    serve.set_defaults(func=cmd_serve)

    imp = sub.add_parser(
        "import",
        parents=[common],
        help="store DICOM files, folders (recursive) and ZIP/TAR/TAR.GZ archives",
        description="Store files, folders (recursive) and ZIP/TAR/TAR.GZ archives (read as streams) through the "
        "same checks as C-STORE.",
    )
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="counts of patients, studies, series, instances",
        description="Print counts of patients, studies, series, instances and bytes stored.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    reindex = sub.add_parser(
        "reindex",
        parents=[common],
        help="rebuild the index from the stored files",
        description="Rebuild index.sqlite from the files (the node must be stopped).",
    )
    reindex.set_defaults(func=cmd_reindex)

    dele = sub.add_parser(
        "delete",
        parents=[common],
        help="delete studies, series or instances (index rows, files, caches)",
        description="Delete stored studies, series or instances by UID: the index rows first, then the files and "
        "the cached metadata and renderings. Without --level each UID is looked up as a study, then a series, "
        "then an instance. Exit status 1 when a UID matched nothing.",
    )
    dele.add_argument("uids", nargs="+", metavar="UID")
    dele.add_argument("--level", choices=["study", "series", "instance"], help="what the UIDs name")
    dele.set_defaults(func=cmd_delete)

    rend = sub.add_parser(
        "render",
        parents=[common],
        help="render an instance (or a DICOM file) to PNG/JPEG, with windowing and enhancement",
        description="Render a stored instance (by SOP Instance UID) or a DICOM file to PNG, JPEG or GIF "
        "(by the output's extension), as /rendered does.",
    )
    rend.add_argument("source", help="SOP Instance UID in the store, or a path to a DICOM file")
    rend.add_argument("-o", "--output", type=Path, required=True, help="output file: .png, .jpg/.jpeg or .gif")
    rend.add_argument("--frame", type=int, default=1, help="frame number, from 1")
    rend.add_argument(
        "--window", help="center,width[,LINEAR|LINEAR_EXACT|SIGMOID] (default: the stored window); --window=-600,1500"
    )
    rend.add_argument("--viewport", help="width,height[,sx,sy,sw,sh]: fit into this many pixels")
    rend.add_argument("--enhance", help="operator pipeline, e.g. clahe:0.03,unsharp:1.0:0.5 (see README)")
    rend.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100")
    rend.set_defaults(func=cmd_render)

    exp = sub.add_parser(
        "export",
        parents=[common],
        help="export a series as a ZIP (DICOM + PNG) or a NIfTI volume",
        description="Export a stored series: --format zip (its DICOM files and a PNG of each) or nifti (.nii.gz, "
        "slices sorted by position, affine from Image Position/Orientation and Pixel Spacing).",
    )
    exp.add_argument("series", help="Series Instance UID")
    exp.add_argument("-o", "--output", type=Path, required=True)
    exp.add_argument("--format", choices=["zip", "nifti"], default="zip")
    exp.set_defaults(func=cmd_export)

    srp = sub.add_parser(
        "sr",
        parents=[common],
        help="super-resolve a stored series (queue a job; --wait to follow it)",
        description="Queue a super-resolution job for a stored series. The running node's worker takes it; "
        "--here runs it in this process instead (no node needed). The derived series, its uncertainty map and "
        "an SR report are stored, then sent to --send-to (default: the AE that sent the series, if declared).",
    )
    srp.add_argument("series", help="Series Instance UID")
    srp.add_argument("--factor", type=int, choices=[2, 4], default=2)
    srp.add_argument("--method", choices=["learned", "classical"], default="learned")
    srp.add_argument("--send-to", help='AE title of a declared peer; "-" = do not send')
    srp.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    srp.add_argument("--here", action="store_true", help="run the job in this process (implies --wait)")
    srp.set_defaults(func=cmd_sr)

    work = sub.add_parser(
        "worker",
        parents=[common],
        help="run the SR worker alone (beside a node started with sr.worker = off)",
        description="Run queued super-resolution jobs and the [[sr.rules]] until stopped (Ctrl-C).",
    )
    work.set_defaults(func=cmd_worker)

    snd = sub.add_parser(
        "send",
        parents=[common],
        help="send a stored series to a declared peer (C-STORE)",
        description="Send every instance of a stored series to a peer declared under [peers], with retries.",
    )
    snd.add_argument("series", help="Series Instance UID")
    snd.add_argument("ae_title", metavar="AET", help="the peer's AE title")
    snd.set_defaults(func=cmd_send)
    _deid_parsers(sub, common)
    _principal_parsers(sub, common)
    _tls_parser(sub, common)

    lab = sub.add_parser(
        "label",
        parents=[common],
        help="add, remove or list the labels of a stored study (per-study access)",
        description="Labels name the groups that see a study: a principal with groups sees only the studies "
        "carrying one of them. A label is 1-64 characters of A-Z a-z 0-9 _ . -",
    )
    lab.add_argument("action", choices=["add", "remove", "list"])
    lab.add_argument("study", metavar="STUDY_UID", help="Study Instance UID")
    lab.add_argument("labels", nargs="*", metavar="LABEL")
    lab.set_defaults(func=cmd_label)

    aud = sub.add_parser(
        "audit",
        parents=[common],
        help="print the audit trail's records, newest first (filters: time, user, study, event)",
        description="Print the records of the audit trail (data/audit/*.jsonl), newest first: one line each "
        "(time, event, action, outcome, who, studies), or the JSON records with --json.",
    )
    aud.add_argument("--since", help="ISO 8601 date or date-time (UTC unless a zone is given)")
    aud.add_argument("--until", help="ISO 8601 date or date-time; a date alone means the end of that day")
    aud.add_argument("--user", help="who made the request: token, user, calling AE title or anonymous")
    aud.add_argument("--study", help="Study Instance UID")
    aud.add_argument("--event", help="event code (110112) or meaning (Query)")
    aud.add_argument("--limit", type=int, default=1000, help="most records printed (default 1000)")
    aud.add_argument("--json", action="store_true", help="print the records as JSON Lines")
    aud.set_defaults(func=cmd_audit)
    return parser


def _tls_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    tls = sub.add_parser(
        "tls",
        help="make a local CA and TLS certificates (DIMSE TLS, HTTPS) for a site without a PKI",
        description="TLS for a site that has no PKI yet: a CA, a server certificate and a client certificate.",
    )
    tsub = tls.add_subparsers(required=True, metavar="ACTION")
    init = tsub.add_parser(
        "init",
        parents=[common],
        help="write ca.pem, server.pem, client.pem and their keys (0600); print the settings to use them",
    )
    init.add_argument("--hosts", help="comma-separated names and addresses of the server certificate "
                      "(default: localhost, 127.0.0.1 and this machine's name)")  # fmt: skip
    init.add_argument("--out", type=Path, help="folder to write into (default: <data folder>/tls)")
    init.add_argument("--force", action="store_true", help="replace an existing CA (its certificates stop working)")
    init.set_defaults(func=cmd_tls_init)


def cmd_tls_init(args: argparse.Namespace, settings: config.Settings) -> int:
    import socket

    from dcmnode.core import tls

    hosts = [h.strip() for h in (args.hosts or "").split(",") if h.strip()]
    hosts = list(dict.fromkeys(hosts or ["localhost", "127.0.0.1", socket.gethostname()]))
    site = tls.init_site(args.out or settings.data_dir / "tls", hosts, force=args.force)
    print(tls.setup_text(site, hosts, settings.node.ae_title, settings.http.port), end="")
    return 0


def _principal_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    scopes_help = "comma-separated: read, write, delete, sr, deidentify, admin"
    groups_help = "comma-separated study groups (labels) it may see; default: every study (*)"
    tok = sub.add_parser(
        "token",
        help="create, list or revoke API tokens (Authorization: Bearer)",
        description="API tokens for HTTP (Authorization: Bearer). Only a hash is kept, in the index, so this "
        "works beside a node running on the same data folder; a revoked token stops working within 10 s.",
    )
    tsub = tok.add_subparsers(required=True, metavar="ACTION")
    create = tsub.add_parser("create", parents=[common], help="create a token and print it once (last line)")
    create.add_argument("name")
    create.add_argument("--scopes", required=True, help=scopes_help)
    create.add_argument("--groups", help=groups_help)
    create.add_argument("--expires", type=float, metavar="DAYS", help="days until it stops working (default never)")
    create.set_defaults(func=cmd_token_create)
    tlist = tsub.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    tlist.add_argument("--json", action="store_true", help="print JSON")
    tlist.set_defaults(func=cmd_token_list)
    revoke = tsub.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_token_revoke)

    usr = sub.add_parser(
        "user",
        help="add, list, remove local users or change a password (viewer sign-in, DIMSE user identity)",
        description="Local users. The password is asked for (twice) on a terminal, or read from the first line of "
        "standard input when it is not one (scripts); only a scrypt hash is kept.",
    )
    usub = usr.add_subparsers(required=True, metavar="ACTION")
    add = usub.add_parser("add", parents=[common], help="add a user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--scopes", required=True, help=scopes_help)
    add.add_argument("--groups", help=groups_help)
    add.set_defaults(func=cmd_user_add)
    passwd = usub.add_parser("passwd", parents=[common], help="change a user's password")
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_user_passwd)
    remove = usub.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_user_remove)
    ulist = usub.add_parser("list", parents=[common], help="list users")
    ulist.add_argument("--json", action="store_true", help="print JSON")
    ulist.set_defaults(func=cmd_user_list)


def _settings(args: argparse.Namespace) -> config.Settings:
    path = args.config or (Path(os.environ["DCMNODE_CONFIG"]) if os.environ.get("DCMNODE_CONFIG") else None)
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    host = getattr(args, "host", None)
    overrides: dict[str, dict[str, Any]] = {
        "node": {"data_dir": args.data, "ae_title": getattr(args, "ae_title", None)},
        "dimse": {"port": getattr(args, "dimse_port", None), "host": host},
        "http": {"port": getattr(args, "http_port", None), "host": host},
    }
    return config.load(path, os.environ, overrides)


def cmd_serve(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode import server

    open_to = [
        f"{name} {host or '*'}"
        for name, host in (("HTTP", settings.http.host), ("DIMSE", settings.dimse.host))
        if not config.is_loopback(host)
    ]
    if settings.http.auth != "on" and open_to and not args.insecure_no_auth:
        print(
            f"dcmnode: refusing to serve {' and '.join(open_to)} without authentication (http.auth = "
            f'"{settings.http.auth}"): anyone who reaches it could read and write. Set [http] auth = "on" (or '
            "DCMNODE_HTTP_AUTH=on) and create a token with `dcmnode token create`, bind 127.0.0.1, or pass "
            "--insecure-no-auth.",
            file=sys.stderr,
        )
        return 2
    return server.run(settings)


def cmd_import(args: argparse.Namespace, settings: config.Settings) -> int:
    from tqdm import tqdm

    from dcmnode.core.archives import Limits
    from dcmnode.core.audit import Actor
    from dcmnode.core.importing import ImportReport, import_files, iter_files
    from dcmnode.core.services import Services

    logging.getLogger("dcmnode.core.ingest").setLevel(logging.WARNING)  # the bar and summary say it all
    logging.getLogger("dcmnode.core.importing").setLevel(logging.WARNING)
    logging.getLogger("dcmnode.core.archives").setLevel(logging.ERROR)  # refusals are listed in the summary
    files = list(iter_files(args.paths))  # archives (ZIP, TAR, TAR.GZ, by content) among them are expanded
    with Services.open(settings) as services:
        with tqdm(total=len(files), unit="file", disable=args.no_progress, file=sys.stderr, mininterval=0.5) as bar:

            def progress(path: str, report: ImportReport) -> None:
                bar.total = max(bar.total, report.files_total, report.expected)  # archives bring their members
                bar.update(1)
                # refresh=False: redraw at tqdm's pace, not once per file (a log file got every file)
                bar.set_postfix(
                    stored=report.stored, duplicate=report.duplicate, failed=len(report.failed), refresh=False
                )

            limits = Limits(
                max_member_bytes=settings.http.max_part_mb * 1024 * 1024,
                max_expanded_bytes=settings.http.max_archive_expanded_mb * 1024 * 1024,
            )
            transfers = services.audit.transfer_in(Actor.local(), "import")
            report = import_files(services.ingest, files, progress, limits, transfers)
    print(
        f"imported {report.files_total} file(s): {report.stored} stored ({report.bytes / 1e6:.1f} MB, "
        f"{len(report.studies)} studies), {report.duplicate} duplicate, {len(report.failed)} failed, "
        f"{len(report.skipped)} skipped"
    )
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}")
    for path, reason in report.skipped:
        print(f"  skipped: {path}: {reason}")
    return 1 if report.failed and not (report.stored or report.duplicate) else 0


def cmd_status(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core import tls
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        counts = services.catalog.counts()
    listeners = tls.listeners(settings)  # as configured: the node need not run
    if args.json:
        found = [item.to_json() for item in listeners]
        print(json.dumps({"data_dir": str(settings.data_dir.resolve()), **counts, "listeners": found}))
    else:
        print(f"data folder {settings.data_dir.resolve()}")
        for key in ("patients", "studies", "series", "instances", "bytes"):
            print(f"{key:>10}: {counts[key]}")
        http = " ".join(item.describe() for item in listeners if item.protocol == "HTTP")
        print(f"listeners: DIMSE {tls.describe_dimse(settings.node.ae_title, listeners)}  HTTP {http}")
    return 0


def cmd_reindex(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.reindex import reindex

    report = reindex(settings.data_dir)
    print(f"reindexed {report.indexed} instance(s); {len(report.failed)} file(s) could not be indexed")
    for path, reason in report.failed:
        print(f"  failed: {path}: {reason}")
    return 0


def cmd_delete(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.services import Services
    from dcmnode.model import Level

    level = {None: None, "study": Level.STUDY, "series": Level.SERIES, "instance": Level.IMAGE}[args.level]
    missing = 0
    with Services.open(settings) as services:
        for uid in args.uids:
            try:
                print(services.deletion.delete_uid(uid, level).describe())
            except NotFound as err:
                print(f"not found: {err.reason}", file=sys.stderr)
                missing += 1
    return 1 if missing else 0


def cmd_render(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core import render
    from dcmnode.imaging import enhance

    suffix = args.output.suffix.lower()
    media = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}.get(suffix)
    if media is None:
        raise InvalidRequest(f"output {args.output}: use .png, .jpg or .gif")
    job = render.RenderRequest(
        media_type=media,
        frame=args.frame,
        window=render.parse_window(args.window),
        viewport=render.parse_viewport(args.viewport),
        enhance=tuple(enhance.parse(args.enhance)),
        quality=args.quality,
    )
    path = Path(args.source)
    if not path.is_file():
        path = _stored(settings, args.source)
    args.output.write_bytes(render.render_file(path, job))
    print(f"wrote {args.output}")
    return 0


def _stored(settings: config.Settings, sop: str) -> Path:
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        path = services.catalog.instance_path(sop)
    if path is None:
        raise NotFound(f"no file {sop} and no stored instance with that SOP Instance UID")
    return path


def cmd_export(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core import export
    from dcmnode.core.audit import SUCCESS, Actor
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        items = services.catalog.select({"SeriesInstanceUID": args.series})
        if not items:
            raise NotFound(f"series {args.series} is not stored here")
        services.audit.guard()
        (export.write_zip if args.format == "zip" else export.write_nifti)(items, args.output)
        detail = {"via": "cli", "series": args.series, "format": args.format, "instances": len(items)}
        services.audit.export(Actor.local(), sorted({i.study for i in items}), SUCCESS, detail=detail)
    print(f"wrote {args.output} ({len(items)} instance(s))")
    return 0


def cmd_sr(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.jobs.queue import ENDED, Status, check_send_to
    from dcmnode.core.services import Services

    check_send_to(settings, args.send_to)
    with Services.open(settings) as services:
        job = services.jobs.submit(args.series, args.factor, args.method, args.send_to, origin="cli")
    print(f"SR job {job.id} queued: series {job.series} x{job.factor} ({job.method})")
    if args.here:
        from dcmnode import worker

        runner = threading.Thread(target=worker.run_job_here, args=(settings, job.id), daemon=True)
        runner.start()
    if not (args.wait or args.here):
        return 0
    with Services.open(settings) as services:
        job = _follow(services.jobs, job.id, ENDED)
    print(f"SR job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    if job.status == Status.DONE:
        series = job.result.get("series", {})
        for kind, label in (("sr", "derived series"), ("unc", "uncertainty"), ("report", "report")):
            print(f"  {label}: {series.get(kind)}")
    if job.send_status:
        print(f"  send: {job.send_status}")
    return 0 if job.status == Status.DONE else 1


def _follow(jobs: Any, job_id: int, ended: tuple[str, ...]) -> Any:
    import time

    from tqdm import tqdm

    with tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}") as bar:
        while True:
            job = jobs.get(job_id)
            bar.n = round(job.progress * 100)
            bar.set_postfix_str(f"{job.status}: {job.stage}"[:60], refresh=True)
            if job.status in ended and not (job.status == "done" and job.send_status == "sending"):
                return job
            time.sleep(0.5)


def cmd_worker(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode import worker

    return worker.run_process(settings, nice=0)


def cmd_send(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode import worker
    from dcmnode.core.query import Level
    from dcmnode.core.services import Services

    peer = settings.peers.get(args.ae_title)
    if peer is None:
        raise InvalidRequest(f"{args.ae_title} is not a declared peer ([peers.{args.ae_title}] host/port)")
    with Services.open(settings) as services:
        files = services.catalog.select({"SeriesInstanceUID": args.series}, Level.SERIES)
        if not files:
            raise NotFound(f"series {args.series} is not stored here")
        outcomes = worker.send_series(settings, files, peer)
    sent = [o for o in outcomes if o.status == "sent"]
    print(f"sent {len(sent)} of {len(outcomes)} instance(s) to {peer.ae_title} ({peer.host}:{peer.port})")
    for o in outcomes:
        if o.status != "sent":
            print(f"  failed: {o.sop}: {o.reason} {o.to_json()['dicom_status'] or ''}".rstrip())
    return 0 if len(sent) == len(outcomes) else 1


def _scopes(text: str) -> Any:
    from dcmnode.core.access import parse_scopes

    try:
        return parse_scopes(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _deid_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    deid = sub.add_parser(
        "deidentify",
        parents=[common],
        help="de-identify stored studies (PS3.15 Basic Profile and options) into a new study, a ZIP or a peer",
        description="De-identify stored studies (or series, --series) with a project's key: the same project gives "
        "the same new UIDs every time. Default output: a new study in this node; the source is untouched.",
    )
    deid.add_argument("uids", nargs="+", metavar="UID", help="Study Instance UIDs (Series Instance UIDs with --series)")
    deid.add_argument("--option", action="append", default=[], metavar="NAME", help="a profile option (repeatable)")
    deid.add_argument("--project", required=True, help="the project whose key de-identifies (letters, digits, -_.)")
    deid.add_argument("--patient-id", help="the replacement Patient ID (default: derived from the key)")
    deid.add_argument("--patient-name", help="the replacement Patient Name (default: derived from the key)")
    deid.add_argument("--series", action="store_true", help="the UIDs are Series Instance UIDs")
    out = deid.add_mutually_exclusive_group()
    out.add_argument("--zip", type=Path, metavar="FILE", help="write a ZIP of the de-identified files")
    out.add_argument("--send-to", metavar="AET", help="C-STORE the de-identified files to a declared peer")
    deid.add_argument("--no-progress", action="store_true", help="no progress bar")
    deid.set_defaults(func=cmd_deidentify)

    key = sub.add_parser("deid-key", help="move a de-identification project key between nodes")
    ksub = key.add_subparsers(required=True, metavar="ACTION")
    exp = ksub.add_parser("export", parents=[common], help="print the project's key (base64) or write it to a file")
    exp.add_argument("project")
    exp.add_argument("--out", type=Path, metavar="FILE", help="write it to FILE (mode 0600) instead of stdout")
    exp.set_defaults(func=cmd_deid_key_export)
    imp = ksub.add_parser("import", parents=[common], help="install a key exported on another node")
    imp.add_argument("project")
    imp.add_argument("file", metavar="FILE", help="the exported key, or - for stdin")
    imp.add_argument("--force", action="store_true", help="replace a different key (changes every new UID)")
    imp.set_defaults(func=cmd_deid_key_import)


def cmd_deidentify(args: argparse.Namespace, settings: config.Settings) -> int:
    import functools
    import shutil

    from tqdm import tqdm

    from dcmnode import worker
    from dcmnode.core.audit import Actor
    from dcmnode.core.deid import DeidJob, DeidRequest, KeyStore, pixel_masks
    from dcmnode.core.deid.job import DONE, resolve
    from dcmnode.core.services import Services

    output = "zip" if args.zip else "send" if args.send_to else "store"
    body: dict[str, Any] = {
        "series" if args.series else "studies": args.uids,
        "options": args.option,
        "project": args.project,
        "patient_id": args.patient_id,
        "patient_name": args.patient_name,
        "output": output,
    }
    if args.send_to:
        body["send_to"] = args.send_to
    request = DeidRequest.parse(body, settings.peers)
    logging.getLogger("dcmnode.core.ingest").setLevel(logging.WARNING)  # the bar and summary say it all
    with Services.open(settings) as services:
        files = resolve(services.catalog, request, None)
        keys = KeyStore(services.store.root / "secrets" / "deid")
        peer = settings.peers.get(args.send_to) if args.send_to else None
        # The job's files are de-identified already: not again for a peer declared with deidentify.
        send = functools.partial(worker.send_series, settings, coerce=False) if peer is not None else None
        with tqdm(total=len(files), unit="instance", disable=args.no_progress, file=sys.stderr, mininterval=0.5) as bar:

            def progress(job: DeidJob) -> None:
                bar.n = job.done + job.failed
                bar.set_postfix(done=job.done, failed=job.failed, refresh=False)

            job = DeidJob(
                0, request, files, keys.get(request.project), services.ingest, services.audit, Actor.local(),
                send=send, peer=peer, progress=progress, masks=pixel_masks(settings),
            )  # fmt: skip
            job.run()
            bar.n = job.done + job.failed
            bar.refresh()
        if job.archive is not None and args.zip:
            shutil.move(job.archive, args.zip)
    print(f"de-identified {job.done} of {len(files)} instance(s) ({job.state}), project {request.project}")
    for source, new in sorted(job.studies.items()):
        print(f"  study {source} -> {new}")
    for failure in job.failures:
        print(f"  failed: {failure['sop']}: {failure['reason']}")
    if job.error:
        print(f"  {job.error}")
    if args.zip and job.state == DONE:
        print(f"  archive: {args.zip}")
    return 0 if job.state == DONE and not job.failures else 1


def cmd_deid_key_export(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.deid import KeyStore

    text = KeyStore(Path(settings.data_dir) / "secrets" / "deid").export(args.project)
    if args.out is None:
        print(text)
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot create {args.out}: {exc.strerror} (an existing file is never overwritten)"
        ) from None
    with os.fdopen(fd, "w") as fp:
        fp.write(text + "\n")
    print(f"key of project {args.project} written to {args.out} (mode 0600): keep it secret", file=sys.stderr)
    return 0


def cmd_deid_key_import(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.deid import KeyStore
    from dcmnode.core.deid.keys import parse_key_text

    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {args.file}: {exc.strerror}") from None
    keys = KeyStore(Path(settings.data_dir) / "secrets" / "deid")
    changed = keys.import_key(args.project, parse_key_text(data), force=args.force)
    print(f"project {args.project}: {'key imported' if changed else 'the same key was already here'}")
    return 0


def cmd_token_create(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.auth import parse_groups
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        token = services.auth.create_token(args.name, _scopes(args.scopes), parse_groups(args.groups), args.expires)
    expires = f", expires in {args.expires:g} day(s)" if args.expires else ""
    print(f"token {args.name} created ({args.scopes}{expires}); it is shown once, keep it now:")
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        tokens = services.auth.tokens()
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "state": t.state,
            "scopes": sorted(t.scopes),
            "groups": sorted(t.groups),
            "created_at": t.created_at,
            "expires_at": t.expires_at,
            "revoked_at": t.revoked_at,
            "last_used_at": t.last_used_at,
        }
        for t in tokens
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(
            f"{r['name']:<24} {r['state']:<8} scopes={','.join(r['scopes'])} groups={','.join(r['groups'])} "
            f"created={r['created_at']} expires={r['expires_at'] or '-'} last_used={r['last_used_at'] or '-'}"
        )
    if not rows:
        print("no tokens")
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        services.auth.revoke_token(args.name)
    print(f"token {args.name} revoked (a running node stops accepting it within 10 s)")
    return 0


def _read_password(twice: bool) -> str:
    """From the terminal (hidden, asked twice for a new one), else the first line of standard input."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    password = getpass.getpass("password: ")
    if twice and getpass.getpass("again: ") != password:
        raise InvalidRequest("the two passwords differ")
    return password


def cmd_user_add(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.auth import parse_groups
    from dcmnode.core.services import Services

    scopes, groups = _scopes(args.scopes), parse_groups(args.groups)
    password = _read_password(twice=True)
    with Services.open(settings) as services:
        services.auth.add_user(args.name, password, scopes, groups)
    print(f"user {args.name} added ({','.join(sorted(scopes))}; groups {','.join(sorted(groups))})")
    return 0


def cmd_user_passwd(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.services import Services

    password = _read_password(twice=True)
    with Services.open(settings) as services:
        services.auth.set_password(args.name, password)
    print(f"password of {args.name} changed")
    return 0


def cmd_user_remove(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        services.auth.remove_user(args.name)
    print(f"user {args.name} removed")
    return 0


def cmd_user_list(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.services import Services

    with Services.open(settings) as services:
        users = services.auth.users()
    rows = [
        {"name": u.name, "scopes": sorted(u.scopes), "groups": sorted(u.groups), "created_at": u.created_at}
        for u in users
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(
            f"{r['name']:<24} scopes={','.join(r['scopes'])} groups={','.join(r['groups'])} created={r['created_at']}"
        )
    if not rows:
        print("no users")
    return 0


def cmd_label(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core import labels
    from dcmnode.core.services import Services

    names = labels.checked(args.labels)
    if args.action == "list" and names:
        raise InvalidRequest("label list takes no LABEL")
    if args.action != "list" and not names:
        raise InvalidRequest(f"label {args.action} needs at least one LABEL")
    with Services.open(settings) as services:
        for name in names:
            if args.action == "add":
                services.labels.add(args.study, name)
            elif not services.labels.remove(args.study, name):
                print(f"dcmnode: study {args.study} did not carry {name}", file=sys.stderr)
        found = services.labels.of(args.study)
    print(" ".join(found))
    return 0


def cmd_audit(args: argparse.Namespace, settings: config.Settings) -> int:
    from dcmnode.core.audit import parse_time
    from dcmnode.core.services import Services

    def when(name: str, text: str | None, end_of_day: bool = False) -> Any:
        try:
            return parse_time(text, end_of_day) if text else None
        except ValueError as exc:
            raise InvalidRequest(f"--{name} {text!r}: expected an ISO 8601 date or date-time") from exc

    since, until = when("since", args.since), when("until", args.until, True)
    with Services.open(settings) as services:
        records = services.audit.search(since, until, args.user, args.study, args.event, args.limit)
    for record in records:
        print(json.dumps(record) if args.json else _audit_line(record))
    return 0


def _audit_line(record: dict[str, Any]) -> str:
    event = record.get("event", {})
    who: dict[str, Any] = next((p for p in record.get("participants", []) if p.get("requestor")), {})
    place = f"@{who['address']}" if who.get("address") else ""
    studies = [o["id"] for o in record.get("objects", []) if o.get("id_type") == "110180"]
    kind = record.get("type", {}).get("meaning", "")
    return "  ".join(
        part
        for part in (
            record.get("time", ""),
            f"{event.get('code', '')} {event.get('meaning', '')}" + (f" ({kind})" if kind else ""),
            f"action={record.get('action', '')}",
            f"outcome={record.get('outcome', '')}",
            f"who={who.get('id', '')}{place}",
            f"study={','.join(studies)}" if studies else "",
        )
        if part
    )
