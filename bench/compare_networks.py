"""Benchmark: the zoo's networks on the same cases, through the service's path.

For each checkpoint: parameters; mean Dice, HD95 and confidence AUROC (1 - confidence finding the
wrong voxels) on the same held-out phantoms and on the real scans present in ../shared/data; the
latency of `service.pipeline.segment` on the CT-sized phantom and its peak memory
(`bench/model_metrics.py` says which cases and how each figure is taken). Prints a Markdown table,
then the same as JSON (also written to --json PATH).

    .venv/bin/python bench/compare_networks.py [--device cuda] [--phantoms 10]
    .venv/bin/python bench/compare_networks.py --models dsn3d.toy unetpp3d.toy --model-dir runs/small/models --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.model_metrics import (  # noqa: E402
    ct_sized_phantom,
    describe,
    held_out_phantoms,
    options_for,
    parameter_count,
    real_scans,
    score_cases,
    time_segment,
)
from model_zoo.registry import load_model  # noqa: E402

NETWORKS = ("dsn3d.phantom_4mm", "unet3d_ds.phantom_4mm", "unetpp3d.phantom_4mm")


def comparison_rows(names: Sequence[str], model_dir: str | None, *, phantoms: list, scans: list,
                    device: str, backend: str, quick: bool, repeats: int) -> list[dict]:
    """One row per checkpoint, each at its card's defaults (a UNet++ at its full depth)."""
    image = ct_sized_phantom(quick)
    rows = []
    for name in names:
        model = load_model(name, model_dir, device=device, backend=backend)
        options = options_for(model, device)
        latency = time_segment(image, model, options, repeats)
        rows.append({
            "model": name,
            "arch": model.card.arch,
            "parameters": parameter_count(model.network),
            "held_out_phantoms": score_cases(model, phantoms, options),
            "real_scans": score_cases(model, scans, options),
            "latency_s": round(latency.seconds, 3),
            "peak_mib": None if latency.peak_mib is None else round(latency.peak_mib, 1),
        })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The comparison table in Markdown."""
    lines = ["| network | parameters | phantom Dice | HD95 (mm) | AUROC | real-scan Dice | HD95 (mm) | AUROC | "
             "latency (s) | peak memory (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, s = r["held_out_phantoms"], r["real_scans"]
        lines.append(f"| {r['model']} | {r['parameters']:,} | {describe(p['dice'])} | {describe(p['hd95_mm'], 1)} | "
                     f"{describe(p['confidence_auroc'])} | {describe(s['dice'])} | {describe(s['hd95_mm'], 1)} | "
                     f"{describe(s['confidence_auroc'])} | {r['latency_s']:.2f} | {describe(r['peak_mib'], 0)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(NETWORKS), help="checkpoint names")
    parser.add_argument("--model-dir", default=None, help="their folder (default: the bundled zoo)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino", "auto"),
                        help="the forward pass's runtime (model_zoo.backends); torch: the reference")
    parser.add_argument("--phantoms", type=int, default=10, help="held-out phantoms of each anatomy")
    parser.add_argument("--anatomy", type=int, nargs="+", default=[1], choices=(1, 2), help="their anatomies")
    parser.add_argument("--phantom-spacing", type=float, default=None, metavar="MM",
                        help="draw them on an isotropic MM grid (fast) instead of their scanner grids")
    parser.add_argument("--no-real-scans", action="store_true", help="leave the real scans out")
    parser.add_argument("--quick", action="store_true", help="time a 256x256x120 phantom instead of 512x512x300")
    parser.add_argument("--repeats", type=int, default=3, help="timed segmentations per network (median)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    phantoms = held_out_phantoms(args.phantoms, tuple(args.anatomy), args.phantom_spacing)
    scans = [] if args.no_real_scans else real_scans()
    rows = comparison_rows(args.models, args.model_dir, phantoms=phantoms, scans=scans, device=args.device,
                           backend=args.backend, quick=args.quick, repeats=args.repeats)
    report = {
        "device": args.device, "backend": args.backend, "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "ct_phantom": "256x256x120" if args.quick else "512x512x300", "repeats": args.repeats,
        "held_out_phantoms": [s.name for s in phantoms], "real_scans": [s.name for s in scans],
        "rows": rows,
    }
    print(f"networks on {report['device']} ({report['backend']}, {report['threads']} threads); latency of "  # noqa: T201
          f"service.pipeline.segment on the {report['ct_phantom']} phantom")
    print(format_table(rows))  # noqa: T201
    text = json.dumps(report, indent=1)
    print(text)  # noqa: T201
    if args.json:
        Path(args.json).write_text(text)
    return report


if __name__ == "__main__":
    main()
