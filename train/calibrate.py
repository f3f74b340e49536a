"""Fit the temperature of a checkpoint's liver probability on held-out phantoms, and record it.

    python -m train.calibrate --model unet3d_ds.phantom_4mm               # fit, measure, write the card
    python -m train.calibrate --model NAME --fit-cases 2 --test-cases 2 --dry-run

Each phantom runs through the service's own path (`service.pipeline.segment`), and the map a
client would get (`service.io.probability.probability_levels`: uint8, value / 255) is compared
with the phantom's liver voxel by voxel, inside the box of the reference and the mask together
(5 voxels of margin; the air far from the liver would make any map look calibrated). Because the
stored map takes 256 values, each case reduces to two counts per value (liver, not liver). The
expected calibration error (ECE: 15 equal bins of the served value, each weighted by its voxels,
sum |fraction liver - mean value|) of the map served at temperature T of sigmoid(logit(p) / T)
follows from those counts, and T is the one of least ECE on the fitting phantoms (T = 1 among
the candidates, so the fit never does worse there). The ECE is then measured on other phantoms,
at temperature 1 and at T, with the map served at each. The seeds are held out: training draws
from 0, its validation from 100000, the tests' held-out phantom is 300001; this draws from 200000.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import SimpleITK as sitk
from scipy import optimize

from model_zoo.card import Calibration
from model_zoo.device import resolve_device
from model_zoo.registry import LoadedModel, load_model, record_calibration
from service.io.probability import LEVELS, calibrated, probability_levels
from service.options import resolve_options
from service.pipeline import Segmentation, segment
from train.data import load_case, phantom_sources
from train.phantoms import ANATOMIES

log = logging.getLogger(__name__)

CALIBRATION_SEED = 200_000
BINS = 15
MARGIN_VOXELS = 5
Counts = np.ndarray  # (2, 256) int64: voxels not liver / liver at each stored value


def liver_box(*masks: np.ndarray) -> tuple[slice, ...]:
    """The box of the masks' union, MARGIN_VOXELS wider on every side (the whole grid if empty)."""
    union = np.logical_or.reduce(masks)
    if not union.any():
        return tuple(slice(None) for _ in union.shape)
    coords = np.argwhere(union)
    lo = np.maximum(coords.min(0) - MARGIN_VOXELS, 0)
    hi = coords.max(0) + MARGIN_VOXELS + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def value_counts(result: Segmentation, truth: np.ndarray, temperature: float) -> Counts:
    """The served map's voxels in the liver's box, counted by stored value and by truth."""
    levels = probability_levels(result.mask, result.liver_probability, temperature)
    box = liver_box(truth, sitk.GetArrayViewFromImage(result.mask) > 0)
    levels, inside = levels[box].ravel(), truth[box].ravel()
    return np.stack([np.bincount(levels[~inside], minlength=LEVELS + 1), np.bincount(levels[inside], minlength=LEVELS + 1)])


def expected_calibration_error(counts: Counts, bins: int = BINS) -> float:
    """ECE of value counts: over equal-width bins of the value, the voxel-weighted |fraction liver - mean value|."""
    values = np.arange(LEVELS + 1) / LEVELS
    which = np.minimum((values * bins).astype(int), bins - 1)
    total = counts.sum()
    error = 0.0
    for b in range(bins):
        n = counts[:, which == b].sum(axis=0)  # voxels at each value of the bin
        if n.sum() == 0:
            continue
        positive = counts[1, which == b].sum()
        mean_value = float((n * values[which == b]).sum() / n.sum())
        error += n.sum() / total * abs(positive / n.sum() - mean_value)
    return float(error)


def counts_at(counts: Counts, temperature: float) -> Counts:
    """The counts of the map served at `temperature`, from those of the map at temperature 1."""
    levels = np.rint(calibrated(np.arange(LEVELS + 1) / LEVELS, temperature) * LEVELS).astype(int)
    return np.stack([np.bincount(levels, weights=c, minlength=LEVELS + 1).astype(np.int64) for c in counts])


def fit_temperature(counts: Counts) -> float:
    """The T in [0.2, 5] whose served map has the least ECE on `counts` (the map at T = 1).

    ECE, not the negative log-likelihood of Guo et al.: on phantoms the likelihood is ruled by
    the few confidently wrong voxels (a leak at p = 1), and its T (1.9 for the bundled model)
    softened the confidently right edge until the ECE was worse than at T = 1. A log grid
    (T = 1 on it) and a bounded search between the best point's neighbours.
    """
    grid = np.exp(np.linspace(np.log(0.2), np.log(5.0), 161))
    errors = [expected_calibration_error(counts_at(counts, t)) for t in grid]
    best = int(np.argmin(errors))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = optimize.minimize_scalar(
        lambda t: expected_calibration_error(counts_at(counts, float(t))), bounds=(lo, hi), method="bounded"
    )
    return float(found.x) if found.fun < errors[best] else float(grid[best])


def _cases(model: LoadedModel, first_seed: int, count: int, anatomy: int, device: str, spacing_mm: float | None):
    """(name, the service's Segmentation, the reference liver (D, H, W) bool) per phantom."""
    options = replace(resolve_options(model.card), window_device=device)
    for source in phantom_sources(count, first_seed, spacing_mm=spacing_mm, anatomy=anatomy):
        image, reference = load_case(source)
        result = segment(image, model, options)
        yield source.name, result, sitk.GetArrayViewFromImage(reference) > 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m train.calibrate`: fit a checkpoint's probability temperature on held-out phantoms."""
    parser = argparse.ArgumentParser(prog="python -m train.calibrate", description=main.__doc__)
    parser.add_argument("--model", required=True, help="checkpoint name, e.g. unet3d_ds.phantom_4mm")
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: model_zoo/checkpoints)")
    parser.add_argument("--fit-cases", type=int, default=4, help="phantoms the temperature is fitted on")
    parser.add_argument("--test-cases", type=int, default=4, help="further phantoms the ECE is measured on")
    parser.add_argument("--first-seed", type=int, default=CALIBRATION_SEED, help="first phantom seed (held out)")
    parser.add_argument("--anatomy", type=int, default=1, choices=ANATOMIES, help="phantoms' anatomy (train.evaluate's)")
    parser.add_argument("--phantom-spacing", type=float, default=None, metavar="MM",
                        help="draw the phantoms on an isotropic grid (quick checks; default: each scanner's own grid, as served)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, leave the card as it is")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    device = resolve_device(args.device)
    model = load_model(args.model, args.checkpoints, device=device)
    fit = np.zeros((2, LEVELS + 1), dtype=np.int64)
    for name, result, truth in _cases(model, args.first_seed, args.fit_cases, args.anatomy, device, args.phantom_spacing):
        fit += value_counts(result, truth, 1.0)
        log.info("fit %s: ECE at T=1 %.4f", name, expected_calibration_error(value_counts(result, truth, 1.0)))
    temperature = fit_temperature(fit)
    before = np.zeros_like(fit)
    after = np.zeros_like(fit)
    test_seed = args.first_seed + args.fit_cases
    for name, result, truth in _cases(model, test_seed, args.test_cases, args.anatomy, device, args.phantom_spacing):
        before += value_counts(result, truth, 1.0)
        after += value_counts(result, truth, temperature)
        log.info("test %s done", name)
    grid = "each scanner's own grid" if args.phantom_spacing is None else f"{args.phantom_spacing:g} mm grid"
    calibration = Calibration(
        temperature=round(temperature, 4),
        ece_before=round(expected_calibration_error(before), 5),
        ece_after=round(expected_calibration_error(after), 5),
        data=(
            f"fitted on {args.fit_cases} held-out phantoms (anatomy {args.anatomy}, "
            f"{grid}, seeds {args.first_seed}-"
            f"{test_seed - 1}), ECE measured on {args.test_cases} others (seeds {test_seed}-"
            f"{test_seed + args.test_cases - 1}): {BINS} equal bins of the served value, voxels in the box of "
            f"the reference and the mask (+{MARGIN_VOXELS} voxels), {int(after.sum()):,} of them"
        ),
        command="python -m train.calibrate " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    print(calibration.model_dump_json(indent=2))  # noqa: T201  (the CLI's output)
    if not args.dry_run:
        record_calibration(args.model, calibration, args.checkpoints)
        print(f"recorded in the card of {args.model}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
