"""The body: outline and wall layers, arms and table, thorax and lungs, spine, ribs and pelvis."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from train.phantoms import pelvis
from train.phantoms.canvas import Canvas
from train.phantoms.tissues import (
    AIR,
    CARTILAGE,
    CORTEX,
    CSF,
    DISC,
    FAT,
    FOAM,
    LUNG,
    LUNG_VESSEL,
    MARROW,
    MUSCLE,
    SKIN,
    TABLE,
    VISC_FAT,
    YELLOW_MARROW,
)

if TYPE_CHECKING:
    from train.phantoms.anatomy import Anatomy


def paint_body(anat: Anatomy, c: Canvas) -> None:
    """Outline layers (skin, fat, muscle wall, visceral fat), arms at the sides, the table."""
    b = anat.b
    box = c.box((-1e4, -1e4, -1e4), (1e4, 1e4, 1e4))
    s = anat.z_scale(box.w)
    # Nested outlines: the number of outlines a voxel is inside of names its layer.
    depth = np.zeros(c.tissue.shape, np.uint8)
    for name in ("body", "skin", "fat", "cavity"):
        depth += anat.at(box, name)[None] < s
    c.tissue[...] = np.array([AIR, SKIN, FAT, MUSCLE, VISC_FAT], np.uint8)[depth]
    if b["arms"]:
        for side in (-1, 1):
            cu = side * (anat.a * float(s.max()) + b["arm_gap_mm"] + b["arm_radius_mm"])
            cv = b["arm_v_mm"]
            r = b["arm_radius_mm"]
            box2 = c.box((cu - r, cv - r, -1e4), (cu + r, cv + r, 1e4))
            if box2 is None:
                continue
            d2 = ((box2.u - cu) ** 2 + ((box2.v - cv) / 0.85) ** 2)[None]
            c.paint(box2, d2 < r**2, SKIN)
            c.paint(box2, d2 < (r - 2) ** 2, FAT)
            c.paint(box2, d2 < (r - 8) ** 2, MUSCLE)
            bu, bv = cu + side * 0.1 * r, cv + 0.2 * r
            e2 = ((box2.u - bu) ** 2 + (box2.v - bv) ** 2)[None]
            c.paint(box2, e2 < (0.28 * r) ** 2, CORTEX)
            c.paint(box2, e2 < (0.17 * r) ** 2, YELLOW_MARROW)
    if b["table"]:
        side = -1 if b["prone"] else 1
        v0 = side * (anat.bp * float(s.max()) + b["table_gap_mm"])
        box3 = c.box(
            (-260, min(v0, v0 + side * 80) - 5, -1e4), (260, max(v0, v0 + side * 80) + 5, 1e4)
        )
        if box3 is not None:
            curve = side * (box3.u**2) / (2 * b["table_curvature_mm"])
            depth = side * (box3.v - v0 - curve)  # mm below the table top
            inside = (np.abs(box3.u) < 240)[None]
            c.paint(box3, inside & (depth > 0) & (depth < 50), FOAM, (AIR,))
            c.paint(
                box3,
                inside & (((depth > 0) & (depth < 3)) | ((depth > 47) & (depth < 50))),
                TABLE,
            )


def paint_thorax(anat: Anatomy, c: Canvas) -> None:
    """Diaphragm sheet, lungs above it and mediastinal fat (the heart is painted next)."""
    box = c.box((-anat.a, -anat.ba, anat.zd_min), (anat.a, anat.bp, 1e4))
    if box is None:
        return
    zd = anat.at(box, "diaphragm")[None]
    rel = box.w - zd  # mm above the diaphragm
    above = rel > 0
    sub = c.tissue[box.sl]
    free = (anat.at(box, "cavity")[None] < anat.z_scale(box.w)) & above & (sub == VISC_FAT)
    sub[free] = np.where(rel[free] > anat.b["diaphragm_mm"], LUNG, MUSCLE).astype(np.uint8)
    # Mediastinum: a central band from the spine to the sternum, widening anteriorly.
    half = 22 + 20 * np.clip(-box.v / max(anat.BA, 1.0), 0, 1)
    med = (np.abs(box.u - 10) < half)[None] & above
    c.paint(box, med, VISC_FAT, (LUNG,))


def paint_lung_vessels(anat: Anatomy, c: Canvas) -> None:
    """Pulmonary vessels: thin ridges of a fine random field, in the lungs."""
    box = c.box((-anat.a, -anat.ba, anat.zd_min), (anat.a, anat.bp, 1e4))
    if box is None:
        return
    f = c.smooth_eval(box, lambda b: anat.f_fine(b.xr, b.yr, b.w[:, 0, 0]), 2.5)
    c.paint(box, np.abs(f) < 0.06, LUNG_VESSEL, (LUNG,))


def paint_spine(anat: Anatomy, c: Canvas) -> None:
    """Vertebrae with discs, arches and canal, paraspinal muscles and psoas."""
    b = anat.b
    vc = anat.v_spine
    ru, rv = anat.vr
    canal_v = vc + rv + 9
    box = c.box((-90, vc - rv - 10, -1e4), (90, anat.bp, 1e4))
    if box is None:
        return
    grow = np.clip(1.0 - 0.0012 * box.w, 0.8, 1.4)  # vertebrae get larger downwards
    phase = (box.w / b["vertebra_pitch_mm"] + b["vertebra_phase"]) % 1.0
    disc = phase < 0.22
    arch = (phase > 0.3) & (phase < 0.85)
    u, v = box.u[None], box.v[None]
    # Paraspinal muscles behind the spine (erector spinae), psoas beside it low down.
    for side in (-1, 1):
        q = ((u - side * 30) / 26) ** 2 + ((v - canal_v - 16) / 22) ** 2
        c.paint(box, q < 1, MUSCLE, (VISC_FAT, FAT, LUNG))
        pr = np.clip((-box.w - 110) / 6, 0, 25)
        q = (u - side * (ru * grow + pr * 0.9)) ** 2 + (v - vc) ** 2
        c.paint(box, (q < pr**2) & (pr > 2), MUSCLE, (VISC_FAT,))
    qb = (u / (ru * grow)) ** 2 + ((v - vc) / (rv * grow)) ** 2
    if anat.version >= 3:
        # The diaphragm's crura and the muscle beside the spine down to L3: the liver's bare area
        # lies on the right crus, not on bone, and nothing fills the gutter to the back muscles.
        crus = anat.rib_gap_mm + 1.0
        qc = (u / (ru * grow + crus)) ** 2 + ((v - vc) / (rv * grow + crus)) ** 2
        gutter = (np.abs(u) < ru * grow + crus) & (v > vc) & (v < canal_v + 10)
        c.paint(box, ((qc < 1) | gutter) & (box.w > -220.0), MUSCLE, (VISC_FAT, LUNG))
    c.paint(box, (qb < 1) & disc, DISC)
    c.paint(box, (qb < 1) & ~disc, CORTEX)
    shell = 1.0 - max(2.0, 0.6 * float(c.spacing[:2].min())) / (rv * 1.0)
    c.paint(box, (qb < shell**2) & ~disc, MARROW)
    d_canal = np.sqrt(u**2 + (v - canal_v) ** 2)
    ring = (d_canal < 14) & arch
    spinous = (np.abs(u) < 4) & (v > canal_v) & (v < canal_v + 38) & arch
    transverse = (np.abs(u) < 32) & (np.abs(v - canal_v + 2) < 4) & arch & (phase < 0.6)
    c.paint(box, ring | spinous | transverse, CORTEX)
    c.paint(box, (d_canal < 8.5) & (np.abs(u) < 12) & (v - canal_v < 9), CSF)


def paint_ribs(anat: Anatomy, c: Canvas) -> None:
    """Ribs along the cavity wall down to the costal margin, costal cartilage, sternum.

    Their inner surface lies `anat.rib_gap_mm` outside the cavity. Where that puts a rib past the
    muscle wall (anatomy 3), the wall's muscle is thickened over it, as the obliques and the
    intercostals cover real ribs."""
    b = anat.b
    box = c.box((-400, -400, -190), (400, 400, 1e4))
    if box is None:
        return
    # Only in-plane positions near the cavity wall can hold ribs: keep those pixels.
    rho = anat.at(box, "cavity")
    r = np.hypot(box.u, box.v)
    s = anat.z_scale(box.w)[:, 0, 0]
    ring = (rho > 0.8 * float(s.min())) & (rho < 1.3 * float(s.max()))
    iy, ix = np.nonzero(ring)
    rho_p, r_p = rho[iy, ix], r[iy, ix]
    alpha = np.arccos(np.clip(box.v[iy, ix] / np.maximum(r_p, 1e-3), -1, 1))  # 0 = posterior
    t, h = b["rib_size_mm"]
    out_mm = r_p[None] * (1.0 - s[:, None] / rho_p[None])  # mm outside the cavity
    dr = out_mm - t / 2 - anat.rib_gap_mm  # mm outward from the rib's centre line
    w = box.w[:, 0, :]  # (nz, 1)
    phi = (w + b["rib_slope_mm_per_rad"] * alpha[None]) / b["rib_pitch_mm"]
    k = np.round(phi)
    dw = (phi - k) * b["rib_pitch_mm"]
    rib_top = 10.0  # rib centre lines at w = pitch * k - slope * alpha; ribs exist up to k = 10
    low = -150.0 + (b["xiphoid_mm"] + 150.0) * (alpha / math.pi) ** 2  # costal margin
    w_centre = k * b["rib_pitch_mm"] - b["rib_slope_mm_per_rad"] * alpha[None]
    exists = (k <= rib_top) & (w_centre > low[None]) & (alpha[None] > 0.35)
    q = (dw / (h / 2)) ** 2 + (dr / (t / 2)) ** 2
    cart = alpha[None] > 2.3
    cortex_t = max(1.5, 0.6 * float(c.spacing[:2].min()))
    inner = (np.abs(dw) < h / 2 - cortex_t) & (np.abs(dr) < t / 2 - cortex_t)
    sub = c.tissue[box.sl]
    codes = np.where(cart, CARTILAGE, np.where(inner, MARROW, CORTEX)).astype(np.uint8)
    hit = exists & (q < 1)
    # Sternum: anterior midline plate above the xiphoid.
    stern = (
        (np.abs(box.u[iy, ix]) < 16)[None]
        & (alpha[None] > 2.9)
        & (w > b["xiphoid_mm"])
        & (np.abs(dr) < 6)
    )
    codes = np.where(stern, np.where(np.abs(dr) < 4, MARROW, CORTEX), codes).astype(np.uint8)
    hit = hit | stern
    flat = sub[:, iy, ix]
    if anat.version >= 3:
        cover = exists & (out_mm > 0) & (out_mm < anat.rib_gap_mm + t + 3.0) & ~cart
        flat = np.where(cover & (flat == FAT), MUSCLE, flat).astype(np.uint8)
    allowed = np.isin(flat, (MUSCLE, FAT, VISC_FAT, LUNG))
    flat = np.where(hit & allowed, codes, flat)
    sub[:, iy, ix] = flat


def paint_pelvis(anat: Anatomy, c: Canvas) -> None:
    """Iliac wings with their muscles below the iliac crest (anatomy 3: down to the brim, where
    pelvis.paint_true_pelvis takes over)."""
    top = anat.b["iliac_top_mm"]
    bottom = pelvis.brim_mm(anat) if anat.version >= 3 else -1e4
    box = c.box((-400, -400, bottom), (400, 400, top))
    if box is None:
        return
    rho = anat.at(box, "cavity")[None] / anat.z_scale(box.w)
    ang = np.abs(np.arctan2(box.u, box.v))[None]  # 0 = posterior
    depth = np.clip((top - box.w) / 60.0, 0, 1)
    wing = (ang > 0.45) & (ang < 1.9 - 0.4 * depth)
    band = (rho > 0.86 - 0.1 * depth) & (rho < 0.93 - 0.1 * depth)
    c.paint(box, wing & (rho > 0.7 - 0.1 * depth) & (rho < 0.86 - 0.1 * depth), MUSCLE, (VISC_FAT,))
    c.paint(box, wing & band, MARROW, (VISC_FAT, MUSCLE))
    edge = wing & (
        (np.abs(rho - 0.86 + 0.1 * depth) < 0.012) | (np.abs(rho - 0.93 + 0.1 * depth) < 0.012)
    )
    c.paint(box, edge, CORTEX, (MARROW, VISC_FAT, MUSCLE))
