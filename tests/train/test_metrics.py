"""Metrics against hand-computed values: offset cubes (exact geometry) and concentric spheres."""

from __future__ import annotations

import math

import numpy as np
import pytest

from train.metrics import (
    dice,
    error_split,
    evaluate_masks,
    relative_volume_difference,
    surface,
    surface_distances,
    volumetric_overlap_error,
)

SPACING = (2.5, 0.8, 0.8)  # (z, y, x) mm: thick slices, as in most CT


def _cubes(side: int, offset: int, pad: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A: a side^3 cube; B: the same cube moved `offset` voxels along z (axis 0)."""
    shape = (side + offset + 2 * pad, side + 2 * pad, side + 2 * pad)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[pad:pad + side, pad:pad + side, pad:pad + side] = True
    b[pad + offset:pad + offset + side, pad:pad + side, pad:pad + side] = True
    return a, b


def _cube_distances(side: int, k: int, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distances (mm) from the surface of A to that of B, worked out by hand (0 < k < side - 1).

    A's surface: bottom face (z=0), top face (z=L-1), and a ring of 4L-4 voxels per layer between.
    B's surface lies at z >= k.
      - bottom face: L^2 voxels, straight below B's bottom face: k * sz;
      - ring at layer z in 1..L-2: below B's bottom face for z < k ((k - z) sz), on B's ring else (0);
      - top face: ring voxels lie on B's side (0); interior voxel (x, y), m = min(x, y, L-1-x, L-1-y)
        voxels from the side: min(k * sz, m * sxy) (B's top face or B's side, whichever is nearer).
    By symmetry B -> A gives the same list.
    """
    sz, sxy = spacing[0], spacing[1]
    L = side
    d = [k * sz] * (L * L)
    for z in range(1, L - 1):
        d += [max(k - z, 0) * sz] * (4 * L - 4)
    d += [0.0] * (4 * L - 4)
    for x in range(1, L - 1):
        for y in range(1, L - 1):
            m = min(x, y, L - 1 - x, L - 1 - y)
            d.append(min(k * sz, m * sxy))
    return np.array(d)


@pytest.mark.parametrize(("side", "offset"), [(10, 2), (12, 3), (9, 1)])
def test_offset_cubes_match_hand_computation(side, offset):
    a, b = _cubes(side, offset)
    metrics = evaluate_masks(a, b, SPACING)
    assert metrics.dice == pytest.approx((side - offset) / side)
    assert metrics.voe_pct == pytest.approx(100 * (1 - (side - offset) / (side + offset)))
    assert metrics.rvd_pct == 0.0
    expected = _cube_distances(side, offset, SPACING)
    assert len(expected) == surface(a).sum()  # the hand count of A's surface is right
    a_to_b, b_to_a = surface_distances(a, b, SPACING)
    assert np.sort(a_to_b) == pytest.approx(np.sort(expected))
    assert np.sort(b_to_a) == pytest.approx(np.sort(expected))
    pooled = np.concatenate([expected, expected])
    assert metrics.assd_mm == pytest.approx(pooled.mean())
    assert metrics.hd95_mm == pytest.approx(np.percentile(pooled, 95))
    assert metrics.hd_mm == pytest.approx(offset * SPACING[0])


def test_concentric_spheres_give_the_radius_difference():
    spacing = (2.0, 1.0, 1.0)
    shape = (30, 56, 56)
    zz, yy, xx = np.indices(shape).astype(float)
    radius = np.sqrt(((zz - 15) * spacing[0]) ** 2 + ((yy - 28) * spacing[1]) ** 2 + ((xx - 28) * spacing[2]) ** 2)
    inner, outer = radius <= 14.0, radius <= 20.0
    metrics = evaluate_masks(inner, outer, spacing)
    # surfaces are 6 mm apart; voxelisation moves each by under one voxel (<= 2 mm along z)
    assert metrics.assd_mm == pytest.approx(6.0, abs=1.0)
    assert metrics.hd95_mm == pytest.approx(6.0, abs=1.5)
    # volumes: (14/20)^3 of the outer sphere, up to voxelisation
    ratio = inner.sum() / outer.sum()
    assert ratio == pytest.approx((14 / 20) ** 3, rel=0.05)
    assert metrics.dice == pytest.approx(2 * ratio / (1 + ratio))
    assert metrics.rvd_pct == pytest.approx(100 * (ratio - 1))
    assert metrics.voe_pct == pytest.approx(100 * (1 - ratio))


def test_identical_masks_are_perfect_and_spacing_only_scales_distances():
    a, b = _cubes(8, 2)
    perfect = evaluate_masks(a, a, (1.0, 1.0, 1.0))
    assert (perfect.dice, perfect.hd95_mm, perfect.assd_mm, perfect.voe_pct, perfect.rvd_pct) == (1, 0, 0, 0, 0)
    one = evaluate_masks(a, b, (1.0, 1.0, 1.0))
    three = evaluate_masks(a, b, (3.0, 3.0, 3.0))
    assert three.assd_mm == pytest.approx(3 * one.assd_mm)
    assert three.hd95_mm == pytest.approx(3 * one.hd95_mm)


def test_empty_masks_are_defined():
    empty = np.zeros((5, 5, 5), bool)
    full = empty.copy()
    full[1:4, 1:4, 1:4] = True
    both = evaluate_masks(empty, empty, (1, 1, 1))
    assert (both.dice, both.hd95_mm, both.assd_mm, both.voe_pct, both.rvd_pct) == (1.0, 0.0, 0.0, 0.0, 0.0)
    missed = evaluate_masks(empty, full, (1, 1, 1))  # segmentation empty
    assert missed.dice == 0.0 and math.isinf(missed.hd95_mm) and math.isinf(missed.assd_mm)
    assert missed.voe_pct == 100.0 and missed.rvd_pct == -100.0
    spurious = evaluate_masks(full, empty, (1, 1, 1))  # reference empty
    assert spurious.dice == 0.0 and math.isinf(spurious.hd95_mm) and math.isinf(spurious.rvd_pct)


def test_mask_touching_the_border_has_a_surface_there():
    mask = np.ones((4, 4, 4), bool)
    assert surface(mask).sum() == 4**3 - 2**3


def test_overlap_functions_and_errors():
    a, b = _cubes(6, 3)
    assert dice(a, b) == pytest.approx(0.5)
    assert volumetric_overlap_error(a, b) == pytest.approx(100 * (1 - 3 / 9))
    assert relative_volume_difference(a[:, :, :7], b[:, :, :7]) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        dice(a, b[:-1])
    with pytest.raises(ValueError, match="must be 3D"):
        dice(a[0], b[0])


def test_error_split_counts_by_hand_what_is_near_the_boundary_and_what_is_far() -> None:
    spacing = (2.0, 2.0, 2.0)  # 8 uL voxels: 125 voxels = 1 mL
    reference = np.zeros((40, 40, 40), bool)
    reference[10:20, 10:20, 10:20] = True
    mask = reference.copy()
    mask[10:20, 10:20, 20] = True  # a layer beside the +x face: 100 voxels 2 mm out
    mask[30:32, 30:32, 30:32] = True  # a blob 10 voxels clear of the reference: 8 voxels
    mask[10, 10:20, 10:20] = False  # the first slice of the reference: 100 voxels 2 mm in
    mask[15, 15, 15] = False  # a hole at the centre, 5 voxels (10 mm) from outside: 1 voxel
    split = error_split(mask, reference, spacing, near_mm=2.0)
    assert split.extra_near_ml == pytest.approx(100 / 125) and split.extra_far_ml == pytest.approx(8 / 125)
    assert split.missed_near_ml == pytest.approx(100 / 125) and split.missed_far_ml == pytest.approx(1 / 125)
    assert split.near_ml == pytest.approx(200 / 125) and split.far_ml == pytest.approx(9 / 125)
    # Near is "within near_mm": at 20 mm the blob (11 voxels off on each axis, 38 mm) stays far and
    # the hole (10 mm in) joins the near errors.
    wider = error_split(mask, reference, spacing, near_mm=20.0)
    assert wider.extra_far_ml == pytest.approx(8 / 125) and wider.missed_far_ml == 0.0


def test_error_split_of_a_perfect_mask_and_of_an_empty_one() -> None:
    reference = np.zeros((12, 12, 12), bool)
    reference[3:9, 3:9, 3:9] = True
    assert error_split(reference, reference, (1.0, 1.0, 1.0), 1.0).near_ml == 0.0
    nothing = error_split(np.zeros_like(reference), reference, (1.0, 1.0, 1.0), 1.0)
    # every reference voxel missed: the 6^3 - 4^3 of its outer layer near, the inner 4^3 far
    assert nothing.missed_near_ml == pytest.approx((216 - 64) / 1000) and nothing.missed_far_ml == pytest.approx(64 / 1000)
    assert nothing.extra_near_ml == nothing.extra_far_ml == 0.0
