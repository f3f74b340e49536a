"""The abdominal organs around the liver: great vessels, kidneys, spleen, pancreas, stomach,
gallbladder, colon and small bowel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from train.phantoms.canvas import Canvas, ellipsoid_box, ellipsoid_q, local, rotation, tube
from train.phantoms.tissues import (
    AORTA,
    GALLBLADDER,
    GAS,
    GUT_FLUID,
    GUT_WALL,
    IVC,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    KIDNEY_PELVIS,
    LUNG,
    MESENTERIC_VESSEL,
    MUSCLE,
    ORAL_CONTRAST,
    PANCREAS,
    PORTAL_VEIN,
    RENAL_SINUS,
    SPLEEN,
    STOOL,
    VISC_FAT,
)

if TYPE_CHECKING:
    from train.phantoms.anatomy import Anatomy


def paint_great_vessels(anat: Anatomy, c: Canvas) -> None:
    """Aorta with the iliac arteries, IVC, extrahepatic portal and splenic veins."""
    o = anat.o
    vc, rv = anat.v_spine, anat.vr[1]
    r = o["aorta_radius_mm"]
    pts = [
        (22.0, vc - 4, 200.0),
        (20.0, vc - rv * 0.6 - r, 0.0),
        (12.0, vc - rv - r - 2, -120.0),
        (8.0, vc - rv - r - 2, -260.0),
    ]
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        tube(c, p0, p1, r, r * 0.95, AORTA, (VISC_FAT, LUNG, MUSCLE))
    for side in (-1, 1):  # iliac arteries
        tube(c, pts[-1], (side * 60.0, vc - rv, -400.0), r * 0.7, r * 0.6, AORTA, (VISC_FAT,))
    ra, rb = o["ivc_radii_mm"]
    ivc = [(-25.0, vc - rv - 10, -280.0), (-25.0, vc - rv - 14, -150.0), (-28.0, vc - rv - 22, -60.0),
           (-22.0, vc - rv - 20, -5.0), (-10.0, vc - rv - 30, 20.0)]  # fmt: skip
    for p0, p1 in zip(ivc[:-1], ivc[1:], strict=True):
        tube(c, p0, p1, (ra + rb) / 2, (ra + rb) / 2, IVC, (VISC_FAT, MUSCLE, LUNG))
    # Extrahepatic portal vein: from the confluence behind the pancreas to the porta hepatis.
    conf = (0.02 * anat.A, vc - rv - 2 * r - 12, -115.0)
    tube(c, conf, anat.hilum, 7.0, 7.0, PORTAL_VEIN, (VISC_FAT,))
    tube(
        c, conf, (0.5 * anat.A, vc - rv, -90.0), 4.5, 4.0, PORTAL_VEIN, (VISC_FAT,)
    )  # splenic vein


def paint_kidneys(anat: Anatomy, c: Canvas) -> None:
    """Both kidneys: cortex, medulla, pelvis and sinus fat in perirenal fat."""
    o = anat.o
    radii = o["kidney_radii_mm"]
    for side in (-1, 1):
        w = o["kidney_w_mm"] + (o["kidney_left_higher_mm"] if side > 0 else 0.0)
        centre = (side * (anat.vr[0] + o["kidney_offset_mm"]), anat.v_spine + 5.0, w)
        rot = rotation(side * -30.0, side * 15.0, -10.0)
        box = c.box(*ellipsoid_box(centre, radii, 2))
        if box is None:
            continue
        q = local(box, centre, rot)
        qn = (q[0] / radii[0]) ** 2 + (q[1] / radii[1]) ** 2 + (q[2] / radii[2]) ** 2
        inner = (
            (q[0] / (radii[0] - 7)) ** 2
            + (q[1] / (radii[1] - 7)) ** 2
            + (q[2] / (radii[2] - 7)) ** 2
        )
        hilum = (-side * q[0] > 0.35 * radii[0]) & (np.abs(q[2]) < 0.45 * radii[2])
        free = (VISC_FAT, MUSCLE)
        c.paint(box, (qn < 1.35) & ~hilum, VISC_FAT, (VISC_FAT,))  # perirenal fat
        c.paint(box, (qn < 1) & ~hilum, KIDNEY_CORTEX, free)
        c.paint(box, (inner < 1) & ~hilum, KIDNEY_MEDULLA, (KIDNEY_CORTEX,))
        sinus = (qn < 1) & hilum
        c.paint(box, sinus, RENAL_SINUS, free)
        pelvis = (q[0] ** 2 + (q[1] / 0.6) ** 2 + (q[2] / 2.0) ** 2) < (0.45 * radii[0]) ** 2
        c.paint(
            box,
            pelvis & (qn < 1.2),
            KIDNEY_PELVIS,
            free + (RENAL_SINUS, KIDNEY_MEDULLA, KIDNEY_CORTEX),
        )


def paint_spleen(anat: Anatomy, c: Canvas) -> None:
    """The spleen, deformed by a smooth field, with a hilar notch."""
    o = anat.o
    s = o["spleen_scale"]
    radii = (22 * s, 55 * s, 55 * s)
    centre = (0.62 * anat.A, 0.45 * anat.BP, o["spleen_w_mm"])
    box = c.box(*ellipsoid_box(centre, radii, 30))
    if box is None:
        return
    rot = rotation(-50.0, -10.0)
    q = ellipsoid_q(box, centre, radii, rot)
    hilum = ellipsoid_q(
        box, (centre[0] - 30 * s, centre[1] - 20 * s, centre[2]), (25 * s, 30 * s, 40 * s), rot
    )
    d = anat.f_organ(box.xr, box.yr, box.w[:, 0, 0]) * 0.15
    c.paint(box, (q + d < 1) & (hilum > 1) & anat.clip_below(box), SPLEEN, (VISC_FAT,))
    anat.texture_boxes.append((box, (SPLEEN,), "spleen"))


def paint_pancreas(anat: Anatomy, c: Canvas) -> None:
    """The pancreas: a tapered tube from the tail at the spleen to the head."""
    vc, rv = anat.v_spine, anat.vr[1]
    r = anat.o["pancreas_radius_mm"]
    pts = [
        (0.45 * anat.A, vc - 5, -85.0),
        (0.05 * anat.A, vc - rv - 45, -100.0),
        (-0.22 * anat.A, vc - rv - 30, -118.0),
    ]
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        tube(c, p0, p1, r * 0.8, r * 1.2, PANCREAS, (VISC_FAT,))


def paint_stomach(anat: Anatomy, c: Canvas) -> None:
    """The stomach: wall, fluid or oral contrast, an air-fluid level, the antrum."""
    o = anat.o
    radii = np.array(o["stomach_radii_mm"]) * (0.6 if o["stomach_empty"] else 1.0)
    centre = (0.35 * anat.A, -0.2 * anat.BA, o["stomach_w_mm"])
    box = c.box(*ellipsoid_box(centre, radii, 10))
    if box is None:
        return
    rot = rotation(25.0, -20.0)
    q = ellipsoid_q(box, centre, radii, rot)
    d = anat.f_organ(box.xr, box.yr, box.w[:, 0, 0]) * 0.1
    clip = anat.clip_below(box)
    wall = 8.0 if o["stomach_empty"] else 4.0
    inner = ellipsoid_q(box, centre, radii - wall, rot)
    c.paint(box, (q + d < 1) & clip, GUT_WALL, (VISC_FAT,))
    content = ORAL_CONTRAST if o["oral_contrast"] else GUT_FLUID
    c.paint(box, (inner + d < 1) & clip, content, (GUT_WALL,))
    g = -1.0 if anat.b["prone"] else 1.0  # gas rises: anterior (small v) when supine
    level = centre[1] - g * radii[1] * (1.0 - 2.0 * o["stomach_air"])
    c.paint(box, (g * (box.v[None] - level) < 0) & (inner + d < 1) & clip, GAS, (content,))
    # Antrum towards the pylorus, right of the midline.
    tube(
        c,
        centre,
        (-0.1 * anat.A, -0.55 * anat.BA, -105.0),
        radii[1] * 0.6,
        12.0,
        GUT_FLUID,
        (VISC_FAT,),
        (4.0, GUT_WALL),
    )


def paint_gallbladder(anat: Anatomy, c: Canvas) -> None:
    """The gallbladder (when drawn) with its wall, under the liver."""
    o = anat.o
    if not o["gallbladder"]:
        return
    cu, cv, cw = o["gallbladder_centre"]
    centre = (cu * anat.A, cv * anat.BA, cw)
    radii = o["gallbladder_radii_mm"]
    box = c.box(*ellipsoid_box(centre, radii, 3))
    if box is None:
        return
    rot = rotation(20.0, 0.0, 35.0)
    q = ellipsoid_q(box, centre, radii, rot)
    c.paint(box, (q < 1) & anat.clip_below(box), GALLBLADDER, (VISC_FAT,))
    c.paint(box, (q < 1.12) & (q >= 1) & anat.clip_below(box), GUT_WALL, (VISC_FAT,))


def paint_colon(anat: Anatomy, c: Canvas) -> None:
    """The colon: a walled tube of stool with gas, and mesenteric vessels in the fat."""
    o, A, BA = anat.o, anat.A, anat.BA
    rng = anat.rngs["bowel"]
    pts = [(-0.62 * A, 0.0, -330.0), (-0.62 * A, -0.05 * BA, -170.0), (-0.3 * A, -0.55 * BA, -160.0),
           (0.2 * A, -0.6 * BA, -190.0), (0.6 * A, -0.1 * BA, -120.0), (0.62 * A, 0.15 * BA, -330.0)]  # fmt: skip
    pts = [tuple(np.add(p, rng.normal(0, 10, 3))) for p in pts]
    r = o["colon_radius_mm"]
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        tube(c, p0, p1, r, r, STOOL, (VISC_FAT,), (3.0, GUT_WALL))
    box = c.box((-A, -BA, -400), (A, anat.BP, 0))
    if box is None:
        return
    fine = c.smooth_eval(box, lambda b: anat.f_fine(b.xr, b.yr, b.w[:, 0, 0]), 2.5)
    c.paint(box, fine > o["colon_gas"], GAS, (STOOL,))
    # Mesenteric vessels: thin ridges of the same field through the visceral fat.
    c.paint(box, np.abs(fine) < 0.05, MESENTERIC_VESSEL, (VISC_FAT,))


def paint_small_bowel(anat: Anatomy, c: Canvas) -> None:
    """Small bowel loops: ridges of smooth random fields below the transverse colon."""
    o = anat.o
    box = c.box((-0.75 * anat.A, -anat.BA, -420), (0.75 * anat.A, 0.4 * anat.BP, -150))
    if box is None:
        return
    f1 = c.smooth_eval(box, lambda b: anat.f_bowel1(b.xr, b.yr, b.w[:, 0, 0]), 3.0)
    f2 = c.smooth_eval(box, lambda b: anat.f_bowel2(b.xr, b.yr, b.w[:, 0, 0]), 3.0)
    band = 0.35 + 0.5 * o["bowel_density"]
    wall = np.abs(f1) < band
    lumen = np.abs(f1) < band - 0.2
    below = np.clip((-150.0 - box.w) / 40.0, 0, 1)  # fade in below the transverse colon
    region = anat.at(box, "cavity")[None] < anat.z_scale(box.w) * 0.97
    c.paint(box, wall & region & (below > 0.5), GUT_WALL, (VISC_FAT,))
    content = ORAL_CONTRAST if o["oral_contrast"] else GUT_FLUID
    c.paint(box, lumen, content, (GUT_WALL,))
    c.paint(box, lumen & (f2 > 1.3), GAS, (content,))
