"""The model part of a request: input contract -> sliding window -> postprocess -> input grid.

Each stage is a plain function of arrays and geometry, testable without HTTP or a GPU:

    prepare (model_zoo) -> predict_probabilities -> postprocess -> restore_to_input (+ summary)

What a request may cost is bounded before it is spent: the model grid's voxels before the scan
is resampled onto it (TooLarge, LIVERSEG_MAX_MODEL_GRID_VOXELS), and the windows times mirror
passes the sliding window would run, counted with the engine's own step grid on the prepared
volume before the first window runs (InvalidOption, LIVERSEG_MAX_WINDOWS: the request's overlap
and tta buy them). Every window of the grid counts, the air windows that would be skipped too,
so the cost is known without looking at the scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from model_zoo.card import ModelCard
from model_zoo.preprocessing import (
    AIR_HU,
    PreparedVolume,
    hu_to_input_units,
    model_grid_size,
    prepare,
    reference_region,
    restore,
)
from model_zoo.registry import LoadedModel
from service.confidence import ConfidenceSummary, confidence_map, summarise_confidence
from service.errors import InvalidOption, TooLarge
from service.options import InferenceOptions, check_options
from service.plausibility import (
    Finding,
    body_midline_x,
    component_volumes_ml,
    cut_mask_in_thorax,
    liver_component,
    plausibility_findings,
    voxel_ml,
)
from service.sliding_window import RegionOfInterest, sliding_window_inference, window_starts

Progress = Callable[[float], None]
# The predictor gives the liver alone (channel 0): the windows whose central part holds liver run.
LIVER_ROI = RegionOfInterest(channel=0, threshold=0.5)


@dataclass
class Segmentation:
    """A mask (and optionally a confidence map) on the input's grid, and what was found."""

    mask: sitk.Image  # uint8 0/1, the input's exact geometry
    confidence: sitk.Image | None  # float32 in [0, 1] on the input grid, when asked for
    confidence_summary: ConfidenceSummary
    liver_volume_ml: float
    liver_mean_hu: float | None
    bbox_start_xyz: list[int] | None
    bbox_size_xyz: list[int] | None
    bbox_min_lps_mm: list[float] | None
    bbox_max_lps_mm: list[float] | None
    windows_total: int = 0
    windows_skipped: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    options: InferenceOptions = field(default_factory=InferenceOptions)
    findings: list[Finding] = field(default_factory=list)  # anatomical plausibility (service.plausibility)
    # The liver probability before the mask's threshold, component choice and hole filling, on
    # the box of the input grid that can see the kept liver (zero outside it): (start_xyz, (D, H, W)
    # float32). Only the box: a whole-grid float map of a 512x512x800 scan would take 800 MB.
    liver_probability: tuple[list[int], np.ndarray] | None = None


def check_model_grid(image: sitk.Image, card: ModelCard, max_voxels: int) -> None:
    """TooLarge if the card's grid over the scan's physical extent holds more than `max_voxels`.

    Checked before `prepare` allocates it: by the end of a request each grid voxel costs ~50
    bytes (the HU grid, the network's input, the blended outputs and their weights).
    """
    size = model_grid_size(image, card.input)
    voxels = size[0] * size[1] * size[2]
    if voxels > max_voxels:
        extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
        raise TooLarge(
            f"The scan spans {' x '.join(f'{e:,.0f}' for e in extent)} mm, which {card.name}'s "
            f"{' x '.join(f'{s:g}' for s in card.input.spacing_xyz_mm)} mm grid covers with "
            f"{' x '.join(f'{n:,}' for n in size)} = {voxels:,} voxels; this service resamples at most "
            f"{max_voxels:,} (LIVERSEG_MAX_MODEL_GRID_VOXELS)."
        )


def window_cost(grid_dhw: tuple[int, ...], card: ModelCard, options: InferenceOptions) -> tuple[int, int]:
    """(windows, passes per window) the sliding window runs on a (D, H, W) model grid.

    The windows are the engine's own step grid (`window_starts` on the grid padded to a patch, as
    the engine pads it); each runs once, and once more per combination of mirrored axes.
    """
    patch = tuple(int(p) for p in card.input.patch_size_dhw)
    padded = tuple(max(int(n), p) for n, p in zip(grid_dhw, patch, strict=True))
    windows = len(window_starts(padded, patch, (options.overlap,) * 3))
    mirrored = set(options.mirror_axes) if options.tta else set()
    return windows, 2 ** len(mirrored)


def check_window_cost(
    grid_dhw: tuple[int, ...], card: ModelCard, options: InferenceOptions, max_windows: int
) -> None:
    """InvalidOption if windows x mirror passes on this grid exceed `max_windows`, saying what fits."""
    windows, passes = window_cost(grid_dhw, card, options)
    cost = windows * passes
    if cost <= max_windows:
        return
    ways = []
    if passes > 1 and windows <= max_windows:
        ways.append(f"leave tta off ({windows:,})")
    default = card.inference.overlap
    if options.overlap > default:
        at_default = window_cost(grid_dhw, card, replace(options, overlap=default))[0] * passes
        if at_default <= max_windows:
            ways.append(f"use overlap {default:g}, the model's default ({at_default:,})")
    if not ways:
        ways.append("lower the overlap, leave tta off, or send a smaller field of view")
    raise InvalidOption(
        f"This request would run {windows:,} windows x {passes} pass(es) each = {cost:,} network passes "
        f"(overlap {options.overlap:g}, tta {'on' if passes > 1 else 'off'}) on the "
        f"{' x '.join(map(str, grid_dhw))} model grid; this service runs at most {max_windows:,} per "
        f"request (LIVERSEG_MAX_WINDOWS): {' or '.join(ways)}."
    )


def predict_probabilities(
    model: LoadedModel, prepared: PreparedVolume, options: InferenceOptions,
    progress: Progress | None = None,
) -> tuple[list[np.ndarray], int, int]:
    """The liver's softmax probability from the main output and from every deep-supervision head.

    Only the liver channel is blended: a network that also learnt the liver's neighbours (the
    card's channel_def) costs the engine no more memory than a two-class one. With `options.roi`
    only the windows that can hold liver run (`LIVER_ROI`); every output, the heads that the
    confidence map comes from included, is blended from those same windows, and is 0 elsewhere.
    The model's runtime (PyTorch or OpenVINO, model_zoo.backends) runs each window batch.

    Returns:
        ([(1, D, H, W) float32 per output, main first], windows_total, windows_skipped), all on
        the model grid; windows_skipped counts every window not sent to the network.
    """
    card = model.card
    runtime, depth = model.runtime, options.depth
    liver = slice(card.liver_channel, card.liver_channel + 1)

    def predictor(window: torch.Tensor) -> list[torch.Tensor]:
        return [torch.softmax(o.float(), dim=1)[:, liver] for o in runtime(window, depth)]

    skip_below = None
    if options.skip_air_hu is not None:
        skip_below = hu_to_input_units(options.skip_air_hu, card.input)
    image = torch.from_numpy(np.ascontiguousarray(prepared.array, dtype=np.float32))[None, None]
    result = sliding_window_inference(
        image,
        card.input.patch_size_dhw,
        predictor,
        overlap=options.overlap,
        batch_size=options.batch_size,
        mode=options.mode,
        sigma_scale=options.sigma_scale,
        window_device=torch.device(options.window_device),
        output_device=torch.device(options.output_device or options.window_device),
        heads=depth != 1,  # a UNet++ pruned to depth 1 has its one head on X0,1 and no other
        mirror_axes=options.mirror_axes if options.tta else (),
        skip_below=skip_below,
        pad_value=hu_to_input_units(AIR_HU, card.input),  # beyond the scan is air, in any normalisation
        roi=LIVER_ROI if options.roi else None,
        progress=None if progress is None else (lambda done, total: progress(done / max(total, 1))),
    )
    outputs = [result.main, *result.heads]
    return (
        [o[0].float().cpu().numpy() for o in outputs],
        result.windows_total,
        result.windows_skipped,
    )


def postprocess(
    liver_probability: np.ndarray, geometry: sitk.Image | None = None, midline_x: float | None = None
) -> np.ndarray:
    """Probabilities (D, H, W) -> bool mask: threshold 0.5, one connected component, holes filled.

    The component is the largest, or with the grid's `geometry` and the body's `midline_x` (LPS
    mm) the one `liver_component` picks: a large region wholly above it on the right wins.
    """
    mask = liver_probability > 0.5
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    if geometry is None or midline_x is None:
        sizes[0] = 0
        kept = int(sizes.argmax())
    else:
        kept = liver_component(labels, sizes, geometry, midline_x)
    return ndimage.binary_fill_holes(labels == kept)


def _grid_like(reference: sitk.Image, start_xyz: list[int], size_xyz: list[int]) -> sitk.Image:
    """An empty image on a box of the reference grid (same spacing and direction)."""
    box = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    box.SetSpacing(reference.GetSpacing())
    box.SetDirection(reference.GetDirection())
    box.SetOrigin(reference.TransformIndexToPhysicalPoint([int(s) for s in start_xyz]))
    return box


def restore_kept(
    channels: np.ndarray,
    keep: np.ndarray,
    prepared: PreparedVolume,
    image: sitk.Image,
    outside: list[float],
) -> tuple[tuple[list[int], list[int]], np.ndarray] | None:
    """Model-grid channels (liver probability first) restored onto the input-grid box of the kept liver.

    The probability is zeroed outside the kept component dilated by a voxel (so its edge
    interpolates as before and dropped components stay dropped). Only the box of the input grid
    that can see that component is resampled: a 512x512x800 float map never exists. Returns
    ((start_xyz, size_xyz), (C, D, H, W) on the box), or None when the component lies wholly
    beyond the scan (padding of an oblique grid) or nothing was kept.
    """
    near = ndimage.binary_dilation(keep, iterations=1)
    region = reference_region(near, prepared.image, image)
    if region is None:
        return None
    clean = np.array(channels, dtype=np.float32)
    clean[0] = np.where(near, clean[0], 0.0)
    return region, restore(clean, prepared, _grid_like(image, *region), outside=outside)


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    return postprocess(mask.astype(np.float32))


def segment(
    image: sitk.Image, model: LoadedModel, options: InferenceOptions, progress: Progress | None = None
) -> Segmentation:
    """Segment the liver in a CT (HU) and return everything on the input's own grid."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    check_options(model.card, options)
    check_model_grid(image, model.card, options.max_model_grid_voxels)
    prepared = prepare(image, model.card.input)
    # On the prepared grid (after any body crop): exact, and still before any window runs.
    check_window_cost(prepared.array.shape, model.card, options, options.max_windows)
    timings["preprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    probabilities, windows_total, windows_skipped = predict_probabilities(model, prepared, options, progress)
    timings["inference"] = time.perf_counter() - t

    t = time.perf_counter()
    liver_outputs = [p[0] for p in probabilities]
    # Before one component is kept: a second large region is a reason for review.
    components_ml = component_volumes_ml(liver_outputs[0] > 0.5, voxel_ml(prepared.image))
    midline_x = body_midline_x(sitk.GetArrayViewFromImage(image), image)
    keep = postprocess(liver_outputs[0], prepared.image, midline_x)
    kept_ml = float(keep.sum(dtype=np.int64)) * voxel_ml(prepared.image)
    confidence_model = confidence_map(liver_outputs, keep)
    timings["postprocess"] = time.perf_counter() - t

    t = time.perf_counter()
    size_xyz = list(image.GetSize())
    full_mask = np.zeros(size_xyz[::-1], dtype=np.uint8)
    confidence_image = None
    stats = dict.fromkeys(("liver_mean_hu", "bbox_start_xyz", "bbox_size_xyz", "bbox_min_lps_mm", "bbox_max_lps_mm"))
    summary = summarise_confidence(
        confidence_model, keep, low=options.low_confidence, review_fraction=options.review_fraction
    )
    kept = restore_kept(np.stack([liver_outputs[0], confidence_model]), keep, prepared, image, [0.0, 1.0])
    liver_probability, thorax_cut = None, None
    if kept is not None:
        (start, size), restored = kept
        liver_probability = (start, restored[0].copy())  # a copy: the view would keep the confidence too
        region_mask = _largest_component_filled(restored[0] > 0.5)
        # No liver lies above the right dome on the heart's side: a painted heart loses that part.
        thorax_cut = cut_mask_in_thorax(region_mask, _grid_like(image, start, size), midline_x)
        if thorax_cut is not None:
            region_mask = _largest_component_filled(region_mask)  # what the cut left apart goes too
        z, y, x = (slice(start[i], start[i] + size[i]) for i in (2, 1, 0))
        full_mask[z, y, x] = region_mask
        if region_mask.any():
            summary = summarise_confidence(
                restored[1], region_mask, low=options.low_confidence, review_fraction=options.review_fraction
            )
            stats = _mask_statistics(image, region_mask, start)
    mask_image = sitk.GetImageFromArray(full_mask)
    mask_image.CopyInformation(image)
    liver_volume_ml = float(full_mask.sum(dtype=np.int64)) * voxel_ml(image)
    del full_mask  # the image holds its own copy: two whole-grid masks need not live at once
    if options.confidence_map:
        confidence_full = restore(confidence_model[None], prepared, image, outside=[1.0], tolerance=1e-3)[0]
        confidence_image = sitk.GetImageFromArray(confidence_full.astype(np.float32))
        confidence_image.CopyInformation(image)
    # Checked on the mask as the client gets it (its time counts as the restore stage's).
    findings = plausibility_findings(mask_image, image, components_ml, thorax_cut, kept_ml)
    timings["restore"] = time.perf_counter() - t

    return Segmentation(
        mask=mask_image,
        confidence=confidence_image,
        confidence_summary=summary,
        liver_volume_ml=liver_volume_ml,
        windows_total=windows_total,
        windows_skipped=windows_skipped,
        timings_s=timings,
        options=options,
        findings=findings,
        liver_probability=liver_probability,
        **stats,
    )


def _mask_statistics(image: sitk.Image, mask: np.ndarray, region_start_xyz: Sequence[int]) -> dict[str, object]:
    """Mean HU inside the mask and its bounding box in voxels (x, y, z) and in LPS millimetres.

    `mask` (z, y, x) is the region of the image's grid whose first voxel is `region_start_xyz`: the box
    comes from its projections, where np.nonzero over a whole 512x512x300 grid took 0.5 s.
    """
    offset = list(region_start_xyz)[::-1]
    inner = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        inner.append(slice(int(hit[0]), int(hit[-1]) + 1))
    lo = [int(part.start) + o for part, o in zip(inner, offset, strict=True)]
    hi = [int(part.stop) - 1 + o for part, o in zip(inner, offset, strict=True)]
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    hu = sitk.GetArrayViewFromImage(image)[box][mask[tuple(inner)].astype(bool)]
    start_xyz, end_xyz = lo[::-1], hi[::-1]
    corners = np.array([
        image.TransformIndexToPhysicalPoint((x, y, z))
        for x in (start_xyz[0], end_xyz[0]) for y in (start_xyz[1], end_xyz[1]) for z in (start_xyz[2], end_xyz[2])
    ])
    return {
        "liver_mean_hu": float(hu.mean()),
        "bbox_start_xyz": start_xyz,
        "bbox_size_xyz": [e - s + 1 for s, e in zip(start_xyz, end_xyz, strict=True)],
        "bbox_min_lps_mm": [round(float(v), 2) for v in corners.min(0)],
        "bbox_max_lps_mm": [round(float(v), 2) for v in corners.max(0)],
    }


def with_fallback(options: InferenceOptions) -> InferenceOptions:
    """The options for a retry after CUDA ran out of memory: one window at a time, host aggregation."""
    return replace(options, batch_size=1, output_device="cpu")
