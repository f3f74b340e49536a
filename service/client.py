"""`liverseg segment CT -o mask.nii.gz`: a command-line client of the jobs API (httpx)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from tqdm import tqdm


def _parts(ct: Path, stack: ExitStack) -> list[tuple[str, tuple[str, object, str]]]:
    """Multipart fields for a file, a .zip, or a folder of DICOM files."""
    if ct.is_dir():
        files = sorted(p for p in ct.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise SystemExit(f"error: {ct} holds no files")
        return [("files", (p.name, stack.enter_context(p.open("rb")), "application/dicom")) for p in files]
    return [("file", (ct.name, stack.enter_context(ct.open("rb")), "application/octet-stream"))]


def _fail(response: httpx.Response) -> None:
    try:
        body = response.json()
        message = f"{body.get('error')}: {body.get('detail')}"
    except ValueError:
        message = response.text[:500]
    raise SystemExit(f"error: the server answered {response.status_code}: {message}")


def segment(args: argparse.Namespace) -> int:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    params = {"confidence": str(bool(args.confidence)).lower(), "tta": str(args.tta).lower()}
    if args.model:
        params["model"] = args.model
    with httpx.Client(base_url=args.server, headers=headers, timeout=httpx.Timeout(60.0, read=600.0)) as client, ExitStack() as stack:
        response = client.post("/jobs", params=params, files=_parts(args.ct, stack))
        if response.status_code != 202:
            _fail(response)
        job_url = response.headers["Location"]
        with tqdm(total=100, desc="segmenting", unit="%", disable=args.quiet, file=sys.stderr) as bar:
            while True:
                job = client.get(job_url)
                if job.status_code != 200:
                    _fail(job)
                state = job.json()
                bar.n = round(100 * state["progress"])
                position = state.get("queue_position")
                bar.set_postfix_str(state["state"] + (f", {position} ahead" if position else ""))
                bar.refresh()
                if state["state"] in ("done", "failed"):
                    break
                time.sleep(args.poll)
        if state["state"] == "failed":
            error = state.get("error") or {}
            raise SystemExit(f"error: the job failed: {error.get('error')}: {error.get('detail')}")
        downloads = [("mask", args.output)] + ([("confidence", args.confidence)] if args.confidence else [])
        for link, path in downloads:
            data = client.get(state["links"][link])
            if data.status_code != 200:
                _fail(data)
            path.write_bytes(data.content)
        if args.json:
            args.json.write_text(json.dumps(state["summary"], indent=2))
    summary = state["summary"]
    if not args.quiet:
        print(
            f"liver {summary['liver_volume_ml']:.1f} mL, mean {summary['liver_mean_hu']} HU, "
            f"confidence {summary['confidence']['mean_in_liver']:.3f}"
            + (", REVIEW RECOMMENDED" if summary["confidence"]["review_recommended"] else "")
            + f" -> {args.output}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liverseg", description="Client of a liverseg server.")
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser("segment", help="segment the liver in a CT and save the mask")
    seg.add_argument("ct", type=Path, help="a .nii/.nii.gz/.mha/.nrrd file, a .zip of a DICOM series, or a folder of DICOM files")
    seg.add_argument("-o", "--output", type=Path, required=True, help="where to write the mask (.nii.gz)")
    seg.add_argument("--json", type=Path, help="also write the JSON summary here")
    seg.add_argument("--confidence", type=Path, help="also write the confidence map (.nii.gz) here")
    seg.add_argument("--server", default="http://127.0.0.1:8000", help="the service's base URL")
    seg.add_argument("--api-key", help="sent as X-API-Key")
    seg.add_argument("--model", help="model name (default: the server's)")
    seg.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    seg.add_argument("--poll", type=float, default=0.5, help="seconds between status checks")
    seg.add_argument("--quiet", action="store_true", help="no progress bar or result line")
    args = parser.parse_args(argv)
    if not args.ct.exists():
        parser.error(f"{args.ct} does not exist")
    try:
        return segment(args)
    except httpx.TransportError as error:
        raise SystemExit(f"error: cannot reach {args.server}: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
