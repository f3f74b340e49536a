"""Anatomy 3's true pelvis, below the brim: the bladder on its floor, the muscles lining it, the
hip bone's ring, the femoral heads, and the muscle filling the cavity outside the ring.

Why: on the second real scan the bundled model took the 324 mL bladder for liver. Its phantoms
had no bladder, and their pelvis was bowel in fat. A real bladder lies in muscle and bone, and a
phantom bladder with 35 mm of muscle laid around it is painted as liver too (213 of its 266 mL),
where bare in fat it is not painted at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from train.phantoms.canvas import Canvas, ellipsoid_box, ellipsoid_q
from train.phantoms.tissues import (
    ASCITES,
    CORTEX,
    DISC,
    FAT,
    GUT_FLUID,
    GUT_WALL,
    MARROW,
    MESENTERIC_VESSEL,
    MUSCLE,
    URINARY_BLADDER,
    VISC_FAT,
)

if TYPE_CHECKING:
    from train.phantoms.anatomy import Anatomy


def brim_mm(anat: Anatomy) -> float:
    """Height w of the pelvic brim, where the true pelvis begins (the iliac wings lie above)."""
    return anat.b["iliac_top_mm"] - anat.b["true_pelvis"]["brim_below_iliac_mm"]


def floor_mm(anat: Anatomy) -> float:
    """Height w of the pelvic floor, where the bladder rests and the hip bone's ring ends."""
    return anat.b["iliac_top_mm"] - anat.b["bladder"]["floor_below_iliac_mm"]


def _inlet(anat: Anatomy, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The inlet's (inside the lining) half-width, half-depth and centre v at heights w: from
    behind the pubis to the front of the spine (the sacrum's place)."""
    p, bl = anat.b["true_pelvis"], anat.b["bladder"]
    front = -anat.BA * anat.z_scale(w) + p["pubis_gap_mm"] + p["bone_mm"]  # the pubis's back
    back = anat.v_spine - anat.vr[1]
    half_width = max(p["inlet_half_width_mm"], bl["radii_mm"][0] + bl["wall_mm"] + 3.0)
    return half_width, (back - front) / 2, (back + front) / 2


def paint_bladder(anat: Anatomy, c: Canvas) -> None:
    """The urinary bladder: urine in a muscular wall, on the pelvic floor just behind the pubis,
    pressing bowel and any pelvic ascites aside."""
    bl, p = anat.b["bladder"], anat.b["true_pelvis"]
    radii = bl["radii_mm"]
    w = floor_mm(anat) + radii[2]
    _, half_depth, centre_v = _inlet(anat, np.array([w], np.float32))
    pubis_back = float(centre_v[0] - half_depth[0])
    centre = (bl["x_mm"], pubis_back + p["lining_mm"] / 2 + bl["wall_mm"] + radii[1], w)
    outer = [r + bl["wall_mm"] for r in radii]
    box = c.box(*ellipsoid_box(centre, outer, 2))
    if box is None:
        return
    cavity = anat.at(box, "cavity")[None] < anat.z_scale(box.w) * 0.97
    free = (VISC_FAT, ASCITES, GUT_WALL, GUT_FLUID, MESENTERIC_VESSEL)
    c.paint(box, cavity & (ellipsoid_q(box, centre, radii) < 1), URINARY_BLADDER, free)
    c.paint(box, cavity & (ellipsoid_q(box, centre, outer) < 1), MUSCLE, free)


def paint_true_pelvis(anat: Anatomy, c: Canvas) -> None:
    """Under the brim, down to just below the pelvic floor: the hip bone's ring around the inlet
    (the pubis in front, the symphysis's cartilage at the midline, the ischia and acetabula at the
    sides, the sacrum behind), the obturator and levator muscles lining it (none behind the
    pubis, where the bladder lies in fat), the femoral heads in the acetabula, and the gluteal,
    iliopsoas and obturator externus muscle filling the cavity outside the ring. Below the floor
    only the muscle goes on (the thighs' roots)."""
    p = anat.b["true_pelvis"]
    floor = floor_mm(anat)
    box = c.box((-400, -400, -1e4), (400, 400, brim_mm(anat)))
    if box is None:
        return
    half_width, half_depth, centre_v = _inlet(anat, box.w)
    u, v = box.u[None], box.v[None]

    def inside(grow: float) -> np.ndarray:
        return (u / (half_width + grow)) ** 2 + ((v - centre_v) / (half_depth + grow)) ** 2 < 1

    lining, bone = p["lining_mm"], p["bone_mm"]
    ring_rows = box.w > floor - 15.0
    cavity = anat.at(box, "cavity")[None] < anat.z_scale(box.w) * 0.985
    ring = ring_rows & inside(lining + bone) & ~inside(lining)
    marrow = ring_rows & inside(lining + bone - 2.5) & ~inside(lining + 2.5)
    symphysis = (np.abs(u) < 2.5) & (v < centre_v)
    c.paint(box, ring & ~symphysis, CORTEX, (VISC_FAT, MUSCLE))
    c.paint(box, marrow & ~symphysis, MARROW, (CORTEX,))
    c.paint(box, ring & symphysis, DISC, (VISC_FAT, MUSCLE))
    # The femoral heads, half in the acetabulum (the ring).
    r = p["femoral_head_mm"]
    hip_w = floor + p["hip_above_floor_mm"]
    hip_v = float(np.mean(centre_v))
    for side in (-1, 1):
        centre = (side * (half_width + lining + bone + 0.5 * r), hip_v, hip_w)
        head = c.box(*ellipsoid_box(centre, (r, r, r), 2))
        if head is None:
            continue
        q = ellipsoid_q(head, centre, (r, r, r))
        shell = (1.0 - 2.5 / r) ** 2
        c.paint(head, q < 1, CORTEX, (VISC_FAT, MUSCLE, FAT, CORTEX, MARROW))
        c.paint(head, q < shell, MARROW, (CORTEX,))
    c.paint(box, cavity & ~inside(lining + bone), MUSCLE, (VISC_FAT,))
    behind_pubis = (np.abs(u) < 0.45 * half_width) & (v < centre_v)
    c.paint(box, ring_rows & inside(lining) & ~inside(0.0) & ~behind_pubis, MUSCLE, (VISC_FAT,))
