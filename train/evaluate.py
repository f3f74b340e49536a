"""Evaluate a checkpoint on labelled cases through exactly the service's inference path.

Per case: `service.pipeline.segment` (prepare with the card's contract -> sliding window with the
card's defaults -> postprocess: threshold, largest component, holes filled -> back onto the input
grid), then Dice, HD95, ASSD, VOE, RVD against the reference on the input grid
(`train.metrics`), optionally the AUROC of (1 - confidence) for finding the wrong voxels.

    python -m train.evaluate --model unet3d_ds.phantom_3mm --synthetic 4
    python -m train.evaluate --model NAME --data /data/Task03_Liver --format msd --cases 10
    python -m train.evaluate --model NAME --synthetic 10 --grid-ceiling   # what the grid allows

prints a table (with whether the summary recommended review, and every case under Dice 0.90
that it did not), and writes `metrics.csv` and `montage.png` (a few axial slices per case, CT with
the reference outline in green and the prediction's in red; yellow where they agree) to --out.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import stats

from model_zoo.device import resolve_device
from model_zoo.registry import LoadedModel, load_model, record_metrics
from service.io.preview import outline_overlay
from train.config import VALIDATION_PHANTOM_SEED
from train.data import DATA_FORMATS, find_cases, load_case_with_organs, phantom_sources
from train.metrics import CaseMetrics, ErrorSplit, error_split, evaluate_masks, summarise
from train.organ_leaks import (
    GROUPS,
    PHANTOM_GROUPS,
    TOTALSEGMENTATOR_GROUPS,
    false_positive_ml_by_organ,
)
from train.phantoms import ANATOMIES

log = logging.getLogger(__name__)

TILE_PX = 192
_GREEN, _RED, _YELLOW = (40, 220, 40), (235, 40, 40), (250, 230, 40)


@dataclass
class CaseEvaluation:
    """One case's result: metrics, the predicted mask (uint8, input grid), montage tiles, timing."""

    name: str
    metrics: CaseMetrics
    prediction: sitk.Image
    seconds: float
    confidence_auroc: float | None = None
    low_confidence_fraction: float | None = None  # of the predicted liver (the summary's figure)
    tiles: list[np.ndarray] | None = None  # RGB uint8 (TILE_PX, TILE_PX, 3)
    leaks_ml: dict[str, float] | None = None  # false-positive mL by organ group (train.organ_leaks)
    errors: ErrorSplit | None = None  # the wrong mL near the reference's boundary and far from it
    review_reasons: tuple[str, ...] | None = None  # the summary's review_reasons codes (model only)

    def worst_neighbour(self) -> tuple[str, float] | None:
        """The neighbouring organ that holds most of the false positives, and its mL."""
        if not self.leaks_ml:
            return None
        neighbours = {g: v for g, v in self.leaks_ml.items() if g not in NOT_NEIGHBOURS}
        return max(neighbours.items(), key=lambda item: item[1])


def predict_case(
    image: sitk.Image, model: LoadedModel, *, device: str = "cpu", confidence: bool = False,
    tta: bool | None = None, overlap: float | None = None,
) -> tuple[sitk.Image, sitk.Image | None, float, tuple[str, ...]]:
    """The service's mask (uint8 0/1 on `image`'s grid), its confidence map if asked for, the
    fraction of the liver below the low-confidence line, and the codes of the summary's
    `review_reasons` (empty: no review recommended). `tta` and `overlap` are the request's options
    of the same names (None: the card's)."""
    from service.options import SegmentParams, resolve_options  # the service's own path
    from service.pipeline import segment
    from service.summary import review_reasons

    request = SegmentParams(tta=tta, overlap=overlap, confidence=confidence)
    options = replace(resolve_options(model.card, request), window_device=device)
    result = segment(image, model, options)
    reasons = tuple(r.code for r in review_reasons(result))
    return result.mask, result.confidence, result.confidence_summary.fraction_below_threshold, reasons


def reference_through_grid(image: sitk.Image, reference: sitk.Image, model: LoadedModel) -> sitk.Image:
    """The reference mask sent through the model's grid and back, as the service sends a prediction.

    The reference is brought onto the grid `prepare` builds for `image` as a probability (its
    liver fractions under an antialiasing contract, the very target such a model trains on;
    otherwise sampled linearly), then post-processed and restored by the functions
    `service.pipeline.segment` uses for the network's output. Its Dice against the reference is the
    ceiling for any model on that grid: what the spacing alone costs.
    """
    from model_zoo.preprocessing import label_to_model_grid, prepare
    from service.pipeline import postprocess, restore_kept

    prepared = prepare(image, model.card.input)
    if model.card.input.antialias:
        on_grid = label_to_model_grid(reference, prepared)
    else:
        truth = sitk.Cast(reference > 0, sitk.sitkFloat32)
        on_grid = sitk.GetArrayFromImage(
            sitk.Resample(truth, prepared.image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        )
    full = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    kept = restore_kept(on_grid[None], postprocess(on_grid), prepared, image, [0.0])
    if kept is not None:
        (start, size), restored = kept
        z, y, x = (slice(start[i], start[i] + size[i]) for i in (2, 1, 0))
        full[z, y, x] = postprocess(restored[0])
    mask = sitk.GetImageFromArray(full)
    mask.CopyInformation(image)
    return mask


def confidence_auroc(confidence: np.ndarray, prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """AUROC of (1 - confidence) for predicting wrong voxels, inside the box of the union (+5 voxels).

    The box keeps the easy air far from the liver from inflating the score. None when the box has
    no wrong or no right voxel (AUROC undefined). Mann-Whitney U from ranks (ties averaged).
    """
    union = prediction | reference
    if not union.any():
        return None
    coords = np.argwhere(union)
    lo = np.maximum(coords.min(0) - 5, 0)
    hi = coords.max(0) + 6
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    wrong = (prediction[box] != reference[box]).ravel()
    n_wrong = int(wrong.sum())
    n_right = wrong.size - n_wrong
    if n_wrong == 0 or n_right == 0:
        return None
    ranks = stats.rankdata(1.0 - confidence[box].ravel())
    u = ranks[wrong].sum() - n_wrong * (n_wrong + 1) / 2
    return float(u / (n_wrong * n_right))


def evaluate_case(
    image: sitk.Image,
    reference: sitk.Image,
    *,
    model: LoadedModel | None = None,
    prediction: sitk.Image | None = None,
    device: str = "cpu",
    name: str = "case",
    confidence: bool = False,
    tta: bool | None = None,
    overlap: float | None = None,
    tiles: int = 0,
    organs: sitk.Image | None = None,
    organ_groups: dict[str, tuple[int, ...]] | None = None,
) -> CaseEvaluation:
    """Score one case: CT `image` (HU) and `reference` liver mask (0/1) on the same grid.

    The prediction is `prediction` when given (any 0/1 image on the reference's grid), else the
    service's output of `model` (with the request options `tta` and `overlap`). `confidence`
    (model only) adds the AUROC of 1 - confidence for the wrong voxels; `tiles` > 0 renders that
    many axial montage tiles. `organs` (a label map on the same grid, read with `organ_groups`)
    adds the false-positive mL by neighbouring organ. Distances use the reference's spacing. Raises ValueError when neither or both of model/prediction are given,
    or when the grids differ in size.
    """
    if (model is None) == (prediction is None):
        raise ValueError("evaluate_case needs exactly one of model= or prediction=")
    start = time.perf_counter()
    confidence_image, low_fraction, reasons = None, None, None
    if prediction is None:
        prediction, confidence_image, low_fraction, reasons = predict_case(
            image, model, device=device, confidence=confidence, tta=tta, overlap=overlap)
    if prediction.GetSize() != reference.GetSize():
        raise ValueError(f"prediction size {prediction.GetSize()} != reference size {reference.GetSize()}")
    predicted = sitk.GetArrayViewFromImage(prediction) > 0
    truth = sitk.GetArrayViewFromImage(reference) > 0
    metrics = evaluate_masks(predicted, truth, reference.GetSpacing()[::-1])
    # Near the boundary: within one voxel of the model's grid (of the reference's without a model),
    # an edge drawn one voxel off; anything farther is tissue taken or missed.
    near_mm = max(model.card.input.spacing_xyz_mm) if model is not None else max(reference.GetSpacing())
    errors = error_split(predicted, truth, reference.GetSpacing()[::-1], near_mm)
    auroc = None
    if confidence_image is not None:
        auroc = confidence_auroc(sitk.GetArrayViewFromImage(confidence_image), predicted, truth)
    rendered = montage_tiles(image, truth, predicted, count=tiles) if tiles > 0 else None
    leaks = None
    if organs is not None:
        voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
        labels = sitk.GetArrayViewFromImage(organs)
        leaks = false_positive_ml_by_organ(predicted, truth, labels, organ_groups, voxel_ml)
    return CaseEvaluation(name=name, metrics=metrics, prediction=prediction,
                          seconds=time.perf_counter() - start, confidence_auroc=auroc,
                          low_confidence_fraction=low_fraction, tiles=rendered, leaks_ml=leaks, errors=errors,
                          review_reasons=reasons)


def montage_tiles(
    image: sitk.Image, reference: np.ndarray, prediction: np.ndarray, *, count: int = 3
) -> list[np.ndarray]:
    """`count` slices along the first array axis (axial for axial series) through the liver.

    Slices at evenly spaced quantiles of the reference's extent (the prediction's, or the middle,
    when it is empty); CT in an abdominal window, outlines: reference green, prediction red, both
    yellow. Returns RGB uint8 tiles (TILE_PX, TILE_PX, 3), aspect kept from the in-plane spacing.
    """
    hu = sitk.GetArrayViewFromImage(image)
    extent = np.flatnonzero(reference.any((1, 2))) if reference.any() else np.flatnonzero(prediction.any((1, 2)))
    if extent.size == 0:
        extent = np.array([hu.shape[0] // 2])
    picks = [int(extent[int(round(q * (extent.size - 1)))]) for q in np.linspace(0.2, 0.8, count)]
    spacing_x, spacing_y = image.GetSpacing()[:2]
    tiles = []
    for z in picks:
        outlines = [(reference[z], _GREEN), (prediction[z], _RED)]
        rgb = outline_overlay(hu[z], outlines, width=1, coincide_rgb=_YELLOW).astype(np.uint8)
        height_mm, width_mm = rgb.shape[0] * spacing_y, rgb.shape[1] * spacing_x
        scale = TILE_PX / max(height_mm, width_mm)
        size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
        tile = Image.new("RGB", (TILE_PX, TILE_PX))
        tile.paste(Image.fromarray(rgb).resize(size, Image.NEAREST),
                   ((TILE_PX - size[0]) // 2, (TILE_PX - size[1]) // 2))
        ImageDraw.Draw(tile).text((3, 3), f"z={z}", fill=(255, 255, 255))
        tiles.append(np.asarray(tile))
    return tiles


def save_montage(results: Sequence[CaseEvaluation], path: Path) -> None:
    """One row per case (its tiles), the case name and Dice written on the first tile; PNG."""
    rows = [r for r in results if r.tiles]
    if not rows:
        return
    columns = max(len(r.tiles or []) for r in rows)
    sheet = Image.new("RGB", (columns * TILE_PX, len(rows) * TILE_PX))
    draw = ImageDraw.Draw(sheet)
    for row, result in enumerate(rows):
        for column, tile in enumerate(result.tiles or []):
            sheet.paste(Image.fromarray(tile), (column * TILE_PX, row * TILE_PX))
        draw.text((3, row * TILE_PX + TILE_PX - 14), f"{result.name}  Dice {result.metrics.dice:.3f}",
                  fill=(255, 255, 255))
    sheet.save(path)


COLUMNS = ("dice", "hd95_mm", "assd_mm", "voe_pct", "rvd_pct")
# Where false positives are not an organ taken for liver: the liver label itself (a reference that
# differs from the label map), unlabelled voxels (fat, which TotalSegmentator does not label),
# and the body wall.
NOT_NEIGHBOURS = ("liver", "unlabelled", "body_wall")
# A mask under this Dice is one a reader must be sent to look at: issue 14 asks for the review
# flag on every hand-labelled scan under 0.90. A case under it without the flag is a missed review.
REVIEW_DICE = 0.90


def missed_reviews(results: Sequence[CaseEvaluation]) -> list[CaseEvaluation]:
    """The cases under REVIEW_DICE whose summary recommended no review (cases without the
    service's summary, given predictions, are left out)."""
    return [r for r in results if r.review_reasons == () and r.metrics.dice < REVIEW_DICE]


def review_line(results: Sequence[CaseEvaluation]) -> str:
    """One sentence: how many cases recommend review, and whether every case under REVIEW_DICE does."""
    judged = [r for r in results if r.review_reasons is not None]
    if not judged:
        return ""
    flagged = sum(1 for r in judged if r.review_reasons)
    under = [r for r in judged if r.metrics.dice < REVIEW_DICE]
    missed = missed_reviews(judged)
    line = f"review recommended on {flagged} of {len(judged)} cases; {len(under)} under Dice {REVIEW_DICE:.2f}"
    if missed:
        return line + ", not flagged: " + ", ".join(f"{r.name} ({r.metrics.dice:.3f})" for r in missed)
    return line + (", every one flagged" if under else "")


def format_table(results: Sequence[CaseEvaluation]) -> str:
    """A plain-text table: one row per case and the mean (finite values) at the bottom."""
    header = (f"{'case':<24}" + "".join(f"{c:>10}" for c in COLUMNS) + f"{'auroc':>8}{'s':>7}"
              + f"{'near mL':>9}{'far mL':>8}{'review':>8}  worst leak (mL)")
    lines = [header, "-" * len(header)]
    for r in results:
        values = r.metrics.as_dict()
        auroc = "" if r.confidence_auroc is None else f"{r.confidence_auroc:.3f}"
        worst = r.worst_neighbour()
        leak = "" if worst is None else f"  {worst[0]} {worst[1]:.1f}"
        near, far = ("", "") if r.errors is None else (f"{r.errors.near_ml:.1f}", f"{r.errors.far_ml:.1f}")
        review = "" if r.review_reasons is None else ("yes" if r.review_reasons else "no")
        lines.append(f"{r.name[:24]:<24}" + "".join(f"{values[c]:>10.3f}" for c in COLUMNS)
                     + f"{auroc:>8}{r.seconds:>7.1f}{near:>9}{far:>8}{review:>8}{leak}")
    means = []
    for c in COLUMNS:
        finite = [r.metrics.as_dict()[c] for r in results if math.isfinite(r.metrics.as_dict()[c])]
        means.append(f"{np.mean(finite):>10.3f}" if finite else f"{'-':>10}")
    lines += ["-" * len(header), f"{'mean':<24}" + "".join(means)]
    if summary := review_line(results):
        lines.append(summary)
    return "\n".join(lines)


def mean_metrics(results: Sequence[CaseEvaluation], prefix: str) -> dict[str, float]:
    """`train.metrics.summarise` of the cases (rounded) and their mean confidence AUROC."""
    out = {key: round(value, 4) for key, value in summarise([r.metrics for r in results], prefix).items()}
    aurocs = [r.confidence_auroc for r in results if r.confidence_auroc is not None]
    if aurocs:
        out[f"{prefix}_confidence_auroc"] = round(float(np.mean(aurocs)), 4)
    worst = [w[1] for r in results if (w := r.worst_neighbour()) is not None]
    if worst:
        out[f"{prefix}_max_neighbour_fp_ml"] = round(float(max(worst)), 2)
    judged = [r for r in results if r.review_reasons is not None]
    if judged:
        out[f"{prefix}_review_cases"] = float(sum(1 for r in judged if r.review_reasons))
        out[f"{prefix}_missed_reviews"] = float(len(missed_reviews(judged)))
    return out


def write_csv(results: Sequence[CaseEvaluation], path: Path) -> None:
    """metrics.csv: case, every metric, confidence AUROC, seconds, the false positives by organ, the
    wrong mL near the reference's boundary and far from it (train.metrics.ErrorSplit), and the
    summary's review_reasons codes (space-separated; empty when none, or without the summary)."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        fields = list(CaseMetrics.__dataclass_fields__)
        groups = [*GROUPS, "unlabelled"]
        split = list(ErrorSplit.__dataclass_fields__)  # near_mm, then the four mL
        writer.writerow(["case", *fields, "confidence_auroc", "low_confidence_fraction", "seconds",
                         *(f"fp_{g}_ml" for g in groups), *split, "review_reasons"])
        for r in results:
            values = r.metrics.as_dict()
            writer.writerow([r.name, *(f"{values[f]:.6g}" for f in fields),
                             "" if r.confidence_auroc is None else f"{r.confidence_auroc:.4f}",
                             "" if r.low_confidence_fraction is None else f"{r.low_confidence_fraction:.4f}",
                             f"{r.seconds:.2f}",
                             *("" if r.leaks_ml is None else f"{r.leaks_ml[g]:.2f}" for g in groups),
                             *("" if r.errors is None else f"{getattr(r.errors, k):.2f}" for k in split),
                             " ".join(r.review_reasons or ())])


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m train.evaluate`: score a checkpoint on labelled cases; table, CSV and montage."""
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=main.__doc__)
    parser.add_argument("--model", required=True, help="checkpoint name, e.g. unet3d_ds.phantom_3mm")
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: model_zoo/checkpoints)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a folder (msd, lits) or a JSON datalist")
    source.add_argument("--synthetic", type=int, metavar="N", help="N phantoms (validation seeds)")
    parser.add_argument("--format", default="msd", choices=DATA_FORMATS)
    parser.add_argument("--first-seed", type=int, default=VALIDATION_PHANTOM_SEED,
                        help="first phantom seed (default: the trainer's validation seeds)")
    parser.add_argument("--anatomy", type=int, default=1, choices=ANATOMIES,
                        help="phantoms' anatomy: 1 the classic set (the README's held-out figures), 2 heart and "
                             "disease, 3 that with the ribs set inside the wall's muscle")
    parser.add_argument("--sick", action="store_true",
                        help="anatomy 2 or 3: every phantom drawn with a cirrhotic liver carrying HCC (train.data.SICK_LIVER), "
                             "the diseased livers real scans show")
    parser.add_argument("--ascites", action="store_true",
                        help="with --sick: every one inside heavy ascites (train.data.HEAVY_ASCITES_MM)")
    parser.add_argument("--native", action="store_true",
                        help="every phantom scanned without contrast (make_phantom's phase 'native'), "
                             "as the second real scan is")
    parser.add_argument("--cases", type=int, default=None, help="evaluate only the first N cases")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--confidence", action="store_true", help="also score the confidence map (AUROC)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="mirror test-time augmentation on or off (the request's tta; default: the card's)")
    parser.add_argument("--overlap", type=float, default=None, help="window overlap (default: the card's)")
    parser.add_argument("--montage-cases", type=int, default=6, help="cases shown in montage.png")
    parser.add_argument("--out", default=None, help="output folder (default: runs/eval/MODEL)")
    parser.add_argument("--record", metavar="PREFIX", default=None,
                        help="write the mean metrics into the model's card as PREFIX_dice, ...")
    parser.add_argument("--grid-ceiling", action="store_true",
                        help="score the reference itself sent through the model's grid and back "
                             "(no network): the best any model on that grid can reach")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    device = resolve_device(args.device)
    model = load_model(args.model, args.checkpoints, device=device)
    if args.sick and (args.anatomy == 1 or not args.synthetic):
        parser.error("--sick needs --synthetic N --anatomy 2 or 3")
    if args.ascites and not args.sick:
        parser.error("--ascites needs --sick")
    if args.native and not args.synthetic:
        parser.error("--native needs --synthetic N")
    sources = (phantom_sources(args.synthetic, args.first_seed, anatomy=args.anatomy, sick_fraction=float(args.sick),
                               ascites_fraction=float(args.ascites), native_fraction=float(args.native))
               if args.synthetic else find_cases(args.data, args.format))
    sources = sources[: args.cases] if args.cases else sources
    out = Path(args.out or Path("runs") / "eval" / args.model)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, case in enumerate(sources):
        image, reference, organs = load_case_with_organs(case)
        tiles = 3 if index < args.montage_cases else 0
        leaks = {"organs": organs, "organ_groups": PHANTOM_GROUPS if case.phantom_seed is not None else TOTALSEGMENTATOR_GROUPS}
        if args.grid_ceiling:
            ceiling = reference_through_grid(image, reference, model)
            result = evaluate_case(image, reference, prediction=ceiling, name=case.name, tiles=tiles, **leaks)
        else:
            result = evaluate_case(image, reference, model=model, device=device, name=case.name,
                                   confidence=args.confidence, tta=args.tta, overlap=args.overlap,
                                   tiles=tiles, **leaks)
        log.info("%s: Dice %.4f, HD95 %.2f mm, %.1f s", case.name, result.metrics.dice,
                 result.metrics.hd95_mm, result.seconds)
        result.prediction = None  # type: ignore[assignment]  # keep memory flat over many cases
        results.append(result)
    print(format_table(results))  # noqa: T201  (the CLI's output)
    write_csv(results, out / "metrics.csv")
    save_montage(results, out / "montage.png")
    print(f"\nwrote {out / 'metrics.csv'} and {out / 'montage.png'}")  # noqa: T201
    if args.record:
        recorded = mean_metrics(results, args.record)
        record_metrics(args.model, recorded, args.checkpoints)
        print(f"recorded in the card of {args.model}: {recorded}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
