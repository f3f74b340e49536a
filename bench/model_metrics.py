"""What the model benchmarks (bench/pruning.py, bench/compare_networks.py) measure, in one place.

The cases: held-out phantoms (seeds 200000 and up, as the README's held-out figures and
`train.calibrate`; training draws from 0 and validation from 100000) and the real scans of
`train/datalists/real_scans.json` that are present in ../shared/data. The latency: one
`service.pipeline.segment` (the /segment path without HTTP: preprocess, sliding window,
postprocess, restore) of bench/service.py's CT-sized phantom (seed 7, 512x512x300 at
0.8x0.8x1.5 mm). Peak memory: CUDA's peak allocation on a GPU; on the CPU the process's peak
resident set above what it held before (Linux: VmHWM, reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from model_zoo.registry import LoadedModel
from service.options import InferenceOptions, SegmentParams, resolve_options
from service.pipeline import segment
from train.data import CaseSource, find_cases, load_case, phantom_sources
from train.evaluate import confidence_auroc
from train.metrics import evaluate_masks

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_PHANTOM_SEED = 200_000
REAL_SCANS = REPO / "train" / "datalists" / "real_scans.json"
CT_SIZED_XYZ, QUICK_XYZ = (512, 512, 300), (256, 256, 120)  # bench/service.py's two sizes


def held_out_phantoms(count: int, anatomies: tuple[int, ...] = (1,), spacing_mm: float | None = None) -> list[CaseSource]:
    """`count` held-out phantoms of each anatomy, on their own scanner grids unless `spacing_mm`."""
    return [s for a in anatomies for s in phantom_sources(count, HELD_OUT_PHANTOM_SEED, spacing_mm, anatomy=a)]


def real_scans() -> list[CaseSource]:
    """The real scans of train/datalists/real_scans.json whose image and label are present."""
    try:
        cases = find_cases(REAL_SCANS, "datalist")
    except FileNotFoundError:
        return []
    return [c for c in cases if c.image is not None and c.image.exists() and c.label is not None and c.label.exists()]


def ct_sized_phantom(quick: bool = False) -> sitk.Image:
    """bench/service.py's phantom (seed 7, 0.8x0.8x1.5 mm): 512x512x300, or 256x256x120 when quick."""
    from train.phantoms import make_phantom

    return make_phantom(7, spacing_xyz_mm=(0.8, 0.8, 1.5), size_xyz=QUICK_XYZ if quick else CT_SIZED_XYZ).ct


def options_for(model: LoadedModel, device: str, **request: object) -> InferenceOptions:
    """What the service would run for a request with these query parameters, on `device`."""
    return replace(resolve_options(model.card, SegmentParams(**request)), window_device=device)


def _rss_kib(field: str) -> int | None:
    try:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return None


def _reset_peak(device: str) -> int | None:
    """Start counting the peak; returns the baseline (bytes) it is measured above, None if unknown."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        return None
    rss = _rss_kib("VmRSS")
    return None if rss is None else rss * 1024


def _peak_above(device: str, baseline: int | None) -> float | None:
    """MiB of the peak above `baseline` since `_reset_peak`."""
    if baseline is None:
        return None
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    peak = _rss_kib("VmHWM")
    return None if peak is None else (peak * 1024 - baseline) / 2**20


@dataclass
class Latency:
    """Median seconds of one segmentation and its peak memory (MiB above the baseline; None: unknown)."""

    seconds: float
    peak_mib: float | None


def time_segment(image: sitk.Image, model: LoadedModel, options: InferenceOptions, repeats: int = 3) -> Latency:
    """Segment `image` once to warm up, then `repeats` times: the median time and the peak memory."""
    segment(image, model, options)
    baseline = _reset_peak(options.window_device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segment(image, model, options)
        if options.window_device.startswith("cuda"):
            torch.cuda.synchronize(options.window_device)
        times.append(time.perf_counter() - start)
    return Latency(statistics.median(times), _peak_above(options.window_device, baseline))


def score_cases(model: LoadedModel, sources: list[CaseSource], options: InferenceOptions) -> dict[str, float | None]:
    """Mean Dice, HD95 (mm) and confidence AUROC (1 - confidence finding the wrong voxels,
    `train.evaluate.confidence_auroc`) of the service's masks on `sources`; None where no case."""
    options = replace(options, confidence_map=True)
    dices, hd95s, aurocs = [], [], []
    for source in sources:
        image, reference = load_case(source)
        result = segment(image, model, options)
        predicted = sitk.GetArrayViewFromImage(result.mask) > 0
        truth = sitk.GetArrayViewFromImage(reference) > 0
        metrics = evaluate_masks(predicted, truth, reference.GetSpacing()[::-1])
        dices.append(metrics.dice)
        hd95s.append(metrics.hd95_mm)
        aurocs.append(confidence_auroc(sitk.GetArrayViewFromImage(result.confidence), predicted, truth))
    return {"cases": len(sources), "dice": _mean(dices), "hd95_mm": _mean(hd95s), "confidence_auroc": _mean(aurocs)}


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None


def parameter_count(network: torch.nn.Module) -> int:
    """Every parameter of `network`."""
    return sum(p.numel() for p in network.parameters())


def describe(value: float | None, digits: int = 3) -> str:
    """A table cell: the number, or '-' where there is none."""
    return "-" if value is None else f"{value:.{digits}f}"
