"""Benchmark: UNet++ pruned to depth L (Zhou et al.'s main claim), L = 1 .. the network's depth.

For each L, the `depth=L` request option of /segment (only the nodes X_{i,j} with i + j <= L run,
and the answer is the head on X0,L): the parameters that answer uses, the latency of
`service.pipeline.segment` on the CT-sized phantom with its peak memory, and the mean Dice
(HD95, confidence AUROC) on held-out phantoms and on the real scans present in ../shared/data
(`bench/model_metrics.py` says which cases and how each figure is taken). Prints a table, then
the same as JSON (also written to --json PATH).

    .venv/bin/python bench/pruning.py --model unetpp3d.phantom_4mm [--device cuda] [--phantoms 10]
    .venv/bin/python bench/pruning.py --model NAME --model-dir runs/small/models --quick --phantoms 2 --phantom-spacing 4
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
from torch import nn  # noqa: E402

from bench.model_metrics import (  # noqa: E402
    ct_sized_phantom,
    describe,
    held_out_phantoms,
    options_for,
    real_scans,
    score_cases,
    time_segment,
)
from model_zoo.registry import load_model  # noqa: E402


def parameters_at_depth(network: nn.Module, depth: int) -> int:
    """Parameters the depth-`depth` answer depends on: those a backward pass from it reaches
    (measured, so it counts exactly what `UNetPlusPlus3D.forward(depth=...)` runs)."""
    side = 2 * network.total_stride  # the deepest level keeps 2 voxels a side for instance norm
    network.zero_grad(set_to_none=True)
    with torch.enable_grad():
        network(torch.zeros(1, 1, side, side, side, device=next(network.parameters()).device),
                deep_supervision=False, depth=depth).sum().backward()
    used = sum(p.numel() for p in network.parameters() if p.grad is not None)
    network.zero_grad(set_to_none=True)
    return used


def pruning_rows(model, *, phantoms: list, scans: list, device: str, quick: bool, repeats: int) -> list[dict]:
    """One row per depth L = 1 .. max_depth (see the module docstring)."""
    network = model.network
    if not hasattr(network, "max_depth"):
        raise SystemExit(f"{model.card.name} is a {model.card.arch}: pruning needs a unetpp3d")
    image = ct_sized_phantom(quick)
    rows = []
    for depth in range(1, network.max_depth + 1):
        options = options_for(model, device, depth=depth)
        latency = time_segment(image, model, options, repeats)
        rows.append({
            "depth": depth,
            "parameters": parameters_at_depth(network, depth),
            "latency_s": round(latency.seconds, 3),
            "peak_mib": None if latency.peak_mib is None else round(latency.peak_mib, 1),
            "held_out_phantoms": score_cases(model, phantoms, options),
            "real_scans": score_cases(model, scans, options),
        })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The pruning table in Markdown."""
    lines = ["| L | parameters | latency (s) | peak memory (MiB) | held-out phantom Dice | HD95 (mm) | real-scan Dice | HD95 (mm) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, s = r["held_out_phantoms"], r["real_scans"]
        lines.append(f"| {r['depth']} | {r['parameters']:,} | {r['latency_s']:.2f} | {describe(r['peak_mib'], 0)} | "
                     f"{describe(p['dice'])} | {describe(p['hd95_mm'], 1)} | {describe(s['dice'])} | {describe(s['hd95_mm'], 1)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="unetpp3d.phantom_4mm", help="a unetpp3d checkpoint")
    parser.add_argument("--model-dir", default=None, help="its folder (default: the bundled zoo)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino", "auto"),
                        help="the forward pass's runtime (model_zoo.backends); torch: the reference")
    parser.add_argument("--phantoms", type=int, default=10, help="held-out phantoms of each anatomy")
    parser.add_argument("--anatomy", type=int, nargs="+", default=[1], choices=(1, 2), help="their anatomies")
    parser.add_argument("--phantom-spacing", type=float, default=None, metavar="MM",
                        help="draw them on an isotropic MM grid (fast) instead of their scanner grids")
    parser.add_argument("--no-real-scans", action="store_true", help="leave the real scans out")
    parser.add_argument("--quick", action="store_true", help="time a 256x256x120 phantom instead of 512x512x300")
    parser.add_argument("--repeats", type=int, default=3, help="timed segmentations per depth (median)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    model = load_model(args.model, args.model_dir, device=args.device, backend=args.backend)
    phantoms = held_out_phantoms(args.phantoms, tuple(args.anatomy), args.phantom_spacing)
    scans = [] if args.no_real_scans else real_scans()
    rows = pruning_rows(model, phantoms=phantoms, scans=scans, device=args.device, quick=args.quick,
                        repeats=args.repeats)
    report = {
        "model": model.card.name, "device": args.device, "backend": model.runtime.name,
        "threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
        "ct_phantom": "256x256x120" if args.quick else "512x512x300", "repeats": args.repeats,
        "held_out_phantoms": [s.name for s in phantoms], "real_scans": [s.name for s in scans],
        "rows": rows,
    }
    print(f"UNet++ pruning: {report['model']} on {report['device']} ({report['backend']}, "  # noqa: T201
          f"{report['threads']} threads), latency of service.pipeline.segment on the {report['ct_phantom']} phantom")
    print(format_table(rows))  # noqa: T201
    text = json.dumps(report, indent=1)
    print(text)  # noqa: T201
    if args.json:
        Path(args.json).write_text(text)
    return report


if __name__ == "__main__":
    main()
