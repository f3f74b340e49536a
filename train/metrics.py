"""Segmentation metrics of the liver challenges, spacing-aware, on binary masks (D, H, W).

Volume overlap (Heimann et al., "Comparison and evaluation of methods for liver segmentation from
CT datasets", IEEE TMI 2009, the SLiver07 paper), with A the segmentation and B the reference:

    Dice = 2 |A n B| / (|A| + |B|)
    VOE  = 100 (1 - |A n B| / |A u B|)          volumetric overlap error, %
    RVD  = 100 (|A| - |B|) / |B|                 relative volume difference, % (signed)

Surface distances: the surface S(X) of a mask is its voxels with at least one 6-neighbour outside
the mask (voxels on the array border count as surface). For every surface voxel of one mask, d is
the Euclidean distance in mm (voxel centres, `spacing_dhw_mm`) to the nearest surface voxel of the
other, computed with `scipy.ndimage.distance_transform_edt(..., sampling=spacing)`. Then

    ASSD = (sum_{a in S(A)} d(a, S(B)) + sum_{b in S(B)} d(b, S(A))) / (|S(A)| + |S(B)|)   (SLiver07)
    HD95 = 95th percentile of both directions' distances pooled (as MedPy's hd95)
    HD   = the maximum of them (SLiver07's maximum symmetric surface distance)

Where the wrong volume lies (`error_split`): each false positive and false negative is near (its
centre within `near_mm` of the other side of the reference's boundary) or far, in mL. A mask that
is a voxel off all round is near error; a taken organ or a missed lobe is far.

Empty masks, defined so that a summary over cases stays meaningful:
  - both empty: Dice 1, VOE 0, RVD 0, distances 0 (nothing to find, nothing found);
  - reference empty, segmentation not: Dice 0, VOE 100, RVD +inf, distances +inf;
  - segmentation empty, reference not: Dice 0, VOE 100, RVD -100, distances +inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one case; distances in mm, VOE and RVD in percent."""

    dice: float
    hd95_mm: float
    assd_mm: float
    hd_mm: float
    voe_pct: float
    rvd_pct: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict, for CSV rows and JSON cards."""
        return asdict(self)


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"masks must be 3D (D, H, W), got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_pair(segmentation: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_bool(segmentation), _as_bool(reference)
    if a.shape != b.shape:
        raise ValueError(f"segmentation {a.shape} and reference {b.shape} differ in shape")
    return a, b


def dice(segmentation: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two binary masks (D, H, W); 1 when both are empty."""
    a, b = _check_pair(segmentation, reference)
    size = int(a.sum()) + int(b.sum())
    if size == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / size


def volumetric_overlap_error(segmentation: np.ndarray, reference: np.ndarray) -> float:
    """VOE in percent, 100 (1 - Jaccard); 0 when both masks are empty."""
    a, b = _check_pair(segmentation, reference)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 0.0
    return 100.0 * (1.0 - int(np.logical_and(a, b).sum()) / union)


def relative_volume_difference(segmentation: np.ndarray, reference: np.ndarray) -> float:
    """Signed RVD in percent, 100 (|A| - |B|) / |B|; 0 if both empty, +inf if only B is empty."""
    a, b = _check_pair(segmentation, reference)
    size_a, size_b = int(a.sum()), int(b.sum())
    if size_b == 0:
        return 0.0 if size_a == 0 else math.inf
    return 100.0 * (size_a - size_b) / size_b


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary mask (D, H, W): in the mask, with a 6-neighbour outside it."""
    mask = _as_bool(mask)
    return mask & ~ndimage.binary_erosion(mask, structure=_SIX_NEIGHBOURS, border_value=0)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one voxel.

    Distances between the two surfaces only involve voxels inside that box, and the margin keeps
    the surface of masks that do not touch the array border as it was; a 512^2 x 400 CT shrinks
    to the liver's box, which makes the distance transforms ~20x cheaper.
    """
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(0) - 1, 0)
    hi = coords.max(0) + 2
    box = tuple(slice(int(low), int(high)) for low, high in zip(lo, hi, strict=True))
    return a[box], b[box]


def surface_distances(
    segmentation: np.ndarray, reference: np.ndarray, spacing_dhw_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of A to S(B), and from each of S(B) to S(A).

    Both masks must be non-empty (the empty cases are defined by the callers).
    """
    a, b = _check_pair(segmentation, reference)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    spacing = tuple(float(s) for s in spacing_dhw_mm)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_dhw_mm must be 3 positive numbers, got {spacing_dhw_mm}")
    a, b = _crop_to_union(a, b)
    surface_a, surface_b = surface(a), surface(b)
    # EDT gives, for each non-zero voxel, the distance to the nearest zero: zeros = the surface.
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


def evaluate_masks(
    segmentation: np.ndarray, reference: np.ndarray, spacing_dhw_mm: Sequence[float]
) -> CaseMetrics:
    """All metrics of a binary segmentation (D, H, W) against a reference; spacing in (z, y, x) mm."""
    a, b = _check_pair(segmentation, reference)
    overlap = dict(
        dice=dice(a, b), voe_pct=volumetric_overlap_error(a, b), rvd_pct=relative_volume_difference(a, b)
    )
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return CaseMetrics(hd95_mm=0.0, assd_mm=0.0, hd_mm=0.0, **overlap)
    if not has_a or not has_b:
        return CaseMetrics(hd95_mm=math.inf, assd_mm=math.inf, hd_mm=math.inf, **overlap)
    a_to_b, b_to_a = surface_distances(a, b, spacing_dhw_mm)
    pooled = np.concatenate([a_to_b, b_to_a])
    return CaseMetrics(
        hd95_mm=float(np.percentile(pooled, 95)),
        assd_mm=float(pooled.mean()),
        hd_mm=float(pooled.max()),
        **overlap,
    )


@dataclass(frozen=True)
class ErrorSplit:
    """A mask's wrong volume in mL, split by how far each wrong voxel lies from the reference's
    boundary: extra (false positives, outside the reference) and missed (false negatives, inside
    it), each near (within `near_mm` of the other side) or far. Near errors are an edge drawn a little off; far
    ones are tissue taken or missed outright (an organ, a lobe, the tip of the right lobe)."""

    near_mm: float
    extra_near_ml: float
    extra_far_ml: float
    missed_near_ml: float
    missed_far_ml: float

    @property
    def near_ml(self) -> float:
        return self.extra_near_ml + self.missed_near_ml

    @property
    def far_ml(self) -> float:
        return self.extra_far_ml + self.missed_far_ml


def error_split(
    segmentation: np.ndarray, reference: np.ndarray, spacing_dhw_mm: Sequence[float], near_mm: float
) -> ErrorSplit:
    """The wrong voxels of `segmentation` split near / far from `reference`'s boundary (ErrorSplit).

    A false positive's distance is from its centre to the nearest reference voxel's centre, a false
    negative's to the nearest voxel outside the reference (Euclidean, mm, `spacing_dhw_mm`); a voxel
    next to the boundary is one voxel's spacing away. With no reference voxel (or no voxel outside
    it) every error counts as far."""
    a, b = _check_pair(segmentation, reference)
    spacing = tuple(float(s) for s in spacing_dhw_mm)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    wrong = a ^ b
    if not wrong.any():
        return ErrorSplit(near_mm, 0.0, 0.0, 0.0, 0.0)
    # Only the errors' box, widened by near_mm, can hold a voxel near enough to count: the distance
    # transform runs there, not over a whole CT.
    margin = int(math.ceil(near_mm / min(spacing))) + 1
    where = np.argwhere(wrong)
    box = tuple(slice(max(0, int(lo) - margin), int(hi) + 1 + margin)
                for lo, hi in zip(where.min(0), where.max(0), strict=True))
    a, b = a[box], b[box]
    fp, fn = a & ~b, b & ~a

    def near(errors: np.ndarray, target: np.ndarray) -> int:
        if not errors.any() or not target.any():
            return 0
        distance = ndimage.distance_transform_edt(~target, sampling=spacing)
        return int((errors & (distance <= near_mm)).sum())

    extra_near, missed_near = near(fp, b), near(fn, ~b)
    return ErrorSplit(near_mm=near_mm,
                      extra_near_ml=extra_near * voxel_ml, extra_far_ml=(int(fp.sum()) - extra_near) * voxel_ml,
                      missed_near_ml=missed_near * voxel_ml, missed_far_ml=(int(fn.sum()) - missed_near) * voxel_ml)


def summarise(rows: Sequence[CaseMetrics], prefix: str) -> dict[str, float]:
    """Mean of each metric over cases, as "PREFIX_<metric>", for a model card. A metric that is
    not finite for some case (no surface: nothing predicted) is left out, since a card holds finite
    numbers, and those cases are counted in "PREFIX_cases_without_surface"."""
    out: dict[str, float] = {f"{prefix}_cases": float(len(rows))}
    if not rows:
        return out
    infinite = sum(1 for r in rows if not math.isfinite(r.hd95_mm))
    for key in rows[0].as_dict():
        values = [r.as_dict()[key] for r in rows]
        if all(math.isfinite(v) for v in values):
            out[f"{prefix}_{key}"] = float(np.mean(values))
    if infinite:
        out[f"{prefix}_cases_without_surface"] = float(infinite)
    return out
