"""`liverseg-pacs run ...` and `liverseg-pacs listen ...`: the command line of the PACS integration."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from client.jobs_client import JobsClient
from client.log_setup import configure_logging
from client.retry import GaveUp, RetryPolicy

log = logging.getLogger("liverseg.pacs")

EPILOG = """examples:
  liverseg-pacs run --dicomweb http://localhost:8042/dicom-web --service http://localhost:8000 --study 1.2.3
  liverseg-pacs run --dicomweb http://localhost:8042/dicom-web --service http://localhost:8000 --since 2024-05-01
  liverseg-pacs run --dicomweb http://localhost:8042/dicom-web --service http://localhost:8000 --watch --interval 60
  liverseg-pacs listen --ae-title LIVERSEG --port 11112 --service http://localhost:8000 --destination localhost:4242:ORTHANC
  liverseg-pacs listen --host 0.0.0.0 --allow ORTHANC --allow CT01 --port 11112 --service ... --destination ...

listen accepts associations on 127.0.0.1 only, from the destination's AE title only, unless --host
and --allow (or --allow-any) open it.
"""


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _say(text: str, *, error: bool = False) -> None:
    """The CLI's own output (the report), apart from the log on stderr."""
    stream = sys.stderr if error else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _date(text: str) -> dt.date:
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, pattern).date()
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD or YYYYMMDD)")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liverseg-pacs", description="Segment the liver in CT series from a PACS and store DICOM SEGs back.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--service", required=True, help="the liverseg service's URL, e.g. http://localhost:8000")
        p.add_argument("--api-key", help="X-API-Key for the service, when it requires one")
        p.add_argument("--model", help="model (registry name); default: the service's")
        p.add_argument("--retries", type=int, default=6, help="attempts per remote call before giving up (default 6)")
        p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time (default 1)")
        p.add_argument("--max-backoff", type=float, default=30.0, help="longest retry delay in seconds (default 30)")
        p.add_argument("--job-timeout", type=float, default=3600.0, help="give up on a segmentation after this many seconds")

    run = commands.add_parser("run", help="QIDO-RS -> WADO-RS -> service -> STOW-RS", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--dicomweb", required=True, help="the PACS's DICOMweb root, e.g. http://localhost:8042/dicom-web")
    run.add_argument("--dicomweb-header", type=_header, action="append", default=[], metavar="'NAME: VALUE'",
                     help="an HTTP header for every DICOMweb request (e.g. 'Authorization: Bearer ...'); repeatable")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--study", help="only this study (Study Instance UID)")
    which.add_argument("--since", type=_date, help="only studies dated on or after DATE (YYYY-MM-DD)")
    run.add_argument("--watch", action="store_true", help="keep polling for new series until stopped (without --study or --since: studies dated today on)")
    run.add_argument("--interval", type=float, default=60.0, help="seconds between polls with --watch (default 60)")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds per DICOMweb request (default 60)")
    run.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    common(run)

    listen = commands.add_parser("listen", help="C-STORE SCP -> service -> C-STORE of the SEG", epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    listen.add_argument("--ae-title", default="LIVERSEG", help="our AE title (default LIVERSEG)")
    listen.add_argument("--port", type=int, required=True, help="DICOM port to listen on")
    listen.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    listen.add_argument("--destination", required=True, help="where SEGs go: HOST:PORT:AET")
    listen.add_argument("--settle", type=float, default=10.0,
                        help="a series is complete after this many seconds without a new instance (default 10)")
    listen.add_argument("--spool", type=Path, help="folder for incoming instances (default: a temporary one)")
    callers = listen.add_mutually_exclusive_group()
    callers.add_argument("--allow", action="append", default=[], metavar="AET",
                         help="calling AE titles that may send (repeatable; default: only the destination's)")
    callers.add_argument("--allow-any", action="store_true", help="accept any calling AE title")
    common(listen)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `liverseg-pacs`; returns the exit status (1 when a series failed)."""
    args = build_parser().parse_args(argv)
    # UIDs kept: this runs beside the PACS, and a series UID is how an operator finds a failed one
    # there; patient names, IDs and dates are redacted as in the service (service/log_setup.py).
    configure_logging("debug" if args.verbose else "info", keep_uids=True)
    if not args.verbose:  # dicomweb-client logs every request at INFO, pynetdicom every association
        for noisy in ("dicomweb_client", "pynetdicom", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    retry = RetryPolicy(attempts=max(1, args.retries), first_delay_s=args.backoff, max_delay_s=args.max_backoff)
    service = JobsClient(args.service, api_key=args.api_key, model=args.model, retry=retry, job_timeout_s=args.job_timeout)
    with service:
        return _run(args, service, retry) if args.command == "run" else _listen(args, service, retry)


def _run(args: argparse.Namespace, service: JobsClient, retry: RetryPolicy) -> int:
    from dicomweb_client.api import DICOMwebClient

    from client.pacs.bridge import Bridge

    dicomweb = DICOMwebClient(args.dicomweb.rstrip("/"), headers=dict(args.dicomweb_header) or None, timeout=args.timeout)
    bridge = Bridge(dicomweb, service, retry=retry)
    if args.watch:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        report = bridge.watch(study=args.study, since=args.since, interval_s=args.interval, stop=stop)
    else:
        try:
            report = bridge.run(study=args.study, since=args.since)
        except GaveUp as error:
            _say(f"liverseg-pacs: the PACS could not be searched: {error}", error=True)
            return 2
    _say(report.text())
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
    return 0 if report.ok() else 1


def _listen(args: argparse.Namespace, service: JobsClient, retry: RetryPolicy) -> int:
    from client.pacs.listener import Destination, Listener

    try:
        destination = Destination.parse(args.destination)
    except ValueError as error:
        _say(f"liverseg-pacs: {error}", error=True)
        return 2
    listener = Listener(
        ae_title=args.ae_title, port=args.port, host=args.host, service=service, destination=destination,
        settle_s=args.settle, spool=args.spool, retry=retry,
        # Closed by default, as the service is: the PACS we send SEGs to may send us CTs, no one else.
        allowed_calling=None if args.allow_any else (args.allow or [destination.ae_title]),
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does: finish the series in hand
    listener.serve_forever()
    from client.pacs.bridge import Report

    _say(Report(listener.outcomes).text())
    return 0
