"""`liverseg segment CT -o mask.nii.gz`: the command-line client of a liverseg server's jobs API.

Built on `client.jobs_client.JobsClient`, the same client the PACS tools use (retries, 4xx as
the server's answer). It checks that every output can be written before it uploads anything,
prints the server's warnings about the input and why review is recommended, and shows a progress
bar only on a terminal (a line per state change when its output is piped to a log).

Exit status: 0 done; 1 the server refused the CT or the job failed, or the server is unreachable;
2 bad arguments (an output that cannot be written among them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from client.jobs_client import JobsClient, ServiceRefused, job_warnings
from client.retry import GaveUp, RetryPolicy


def upload_of(ct: Path) -> tuple[list[Path], str]:
    """(files, multipart field) for a volume file or zip ("file"), or a folder of DICOM files ("files")."""
    if ct.is_dir():
        files = sorted(p for p in ct.rglob("*") if p.is_file() and not p.name.startswith("."))
        return files, "files"
    return [ct], "file"


def unwritable(path: Path) -> str | None:
    """Why `path` cannot be written (checked before the upload, not after the segmentation), or None."""
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{path} cannot be written (permission denied)"
    return None


class Progress:
    """A tqdm bar on a terminal; elsewhere one line per change of state, not a bar redrawn into a log."""

    def __init__(self, quiet: bool):
        self.interactive = not quiet and sys.stderr.isatty()
        self.quiet = quiet
        self.bar = tqdm(total=100, desc="segmenting", unit="%", file=sys.stderr, disable=not self.interactive)
        self.last_state: str | None = None

    def __call__(self, job: dict) -> None:
        state, position = job["state"], job.get("queue_position")
        described = state + (f", {position} ahead" if position else "")
        if self.interactive:
            self.bar.n = round(100 * job["progress"])
            self.bar.set_postfix_str(described)
            self.bar.refresh()
        elif not self.quiet and described != self.last_state:
            print(f"job {job['id']}: {described}", file=sys.stderr)
        self.last_state = described

    def close(self) -> None:
        self.bar.close()


def segment(args: argparse.Namespace, files: list[Path], field: str) -> int:
    """Upload `files` in multipart `field`, wait, download; the summary line and warnings on the way out."""
    params = {"confidence": str(bool(args.confidence)).lower()}
    if args.tta is not None:  # unsaid, the model card decides
        params["tta"] = str(args.tta).lower()
    retry = RetryPolicy(attempts=args.attempts)
    progress = Progress(args.quiet)
    with JobsClient(args.server, api_key=args.api_key, model=args.model, retry=retry, poll_s=args.poll) as service:
        job_id = service.submit(files, field=field, params=params)
        try:
            job = service.wait(job_id, on_poll=progress)
        finally:
            progress.close()
        links = job["links"]
        args.output.write_bytes(service.fetch(links["mask"], "the mask"))
        if args.confidence:
            args.confidence.write_bytes(service.fetch(links["confidence"], "the confidence map"))
    summary = job["summary"]
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    for warning in job_warnings(job):
        print(f"warning: {warning}", file=sys.stderr)
    confidence = summary["confidence"]
    for note in summary.get("notes", []):
        print(f"note: {note['sentence']}", file=sys.stderr)
    if summary["review_recommended"]:
        for reason in summary["review_reasons"]:
            print(f"review recommended: {reason['sentence']}", file=sys.stderr)
    if not args.quiet:
        print(
            f"liver {summary['liver_volume_ml']:.1f} mL, mean {summary['liver_mean_hu']} HU, "
            f"confidence {confidence['mean_in_liver']:.3f}"
            + (", REVIEW RECOMMENDED" if summary["review_recommended"] else "")
            + f" -> {args.output}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liverseg", description="Client of a liverseg server.")
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser(
        "segment", help="segment the liver in a CT and save the mask",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    seg.add_argument("ct", type=Path, help="a .nii/.nii.gz/.mha/.nrrd file, a .zip of a DICOM series, or a folder of DICOM files")
    seg.add_argument("-o", "--output", type=Path, required=True, help="where to write the mask (.nii.gz)")
    seg.add_argument("--json", type=Path, help="also write the JSON summary here")
    seg.add_argument("--confidence", type=Path, help="also write the confidence map (.nii.gz) here")
    seg.add_argument("--server", default="http://127.0.0.1:8000", help="the service's base URL")
    seg.add_argument("--api-key", help="sent as X-API-Key")
    seg.add_argument("--model", help="model name (default: the server's)")
    seg.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                     help="mirror test-time augmentation on or off (default: the model card's)")
    seg.add_argument("--poll", type=float, default=0.5, help="seconds between status checks")
    seg.add_argument("--attempts", type=int, default=5, help="tries of each call while the server is busy or unreachable")
    seg.add_argument("--quiet", action="store_true", help="no progress or result line (warnings still go to stderr)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.ct.exists():
        parser.error(f"{args.ct} does not exist")
    files, field = upload_of(args.ct)  # a folder is listed once, here
    if not files:
        parser.error(f"{args.ct} holds no files")
    for path in (args.output, args.json, args.confidence):
        if path is not None and (why := unwritable(path)):
            parser.error(why)
    try:
        return segment(args, files, field)
    except ServiceRefused as refused:
        print(f"error: {refused.code}: {refused.detail}", file=sys.stderr)
    except GaveUp as gave_up:
        print(f"error: {gave_up}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
