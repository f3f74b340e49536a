"""The heart above the central tendon of the diaphragm: anatomy 1's one ellipsoid, and anatomy
2's chambers, myocardium, epicardial fat and pericardium resting on the diaphragm."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from train.phantoms.canvas import Canvas, ellipsoid_box, ellipsoid_q, local, rotation
from train.phantoms.tissues import (
    EPICARDIAL_FAT,
    HEART,
    HEART_LA,
    HEART_LV,
    HEART_RA,
    HEART_RV,
    LUNG,
    MUSCLE,
    MYOCARDIUM,
    PERICARDIUM,
    VISC_FAT,
)

if TYPE_CHECKING:
    from train.phantoms.anatomy import Anatomy

# The chambers in the heart's own frame (x from the base to the apex, y towards the patient's
# left and back, z up), centre and radii as fractions of the heart's radii; the wall's draw. The
# ventricles fill the apical half (the left one behind and left of the right one), the atria the
# base (the left one at the back).
CHAMBERS = (
    (HEART_LV, (0.25, 0.25, 0.0), (0.75, 0.72, 0.8), "lv_wall_mm"),
    (HEART_RV, (0.1, -0.4, 0.05), (0.7, 0.65, 0.7), "rv_wall_mm"),
    (HEART_LA, (-0.65, 0.3, 0.15), (0.42, 0.55, 0.55), "atrial_wall_mm"),
    (HEART_RA, (-0.6, -0.45, 0.0), (0.45, 0.55, 0.6), "atrial_wall_mm"),
)
MEDIASTINAL_FAT_MM = 6.0  # fat around the pericardial sac, where it meets the lungs


def paint_classic_heart(anat: Anatomy, c: Canvas) -> None:
    """Anatomy 1's heart: one ellipsoid of HEART in mediastinal fat, above the diaphragm."""
    o = anat.o
    centre = (0.15 * anat.A, -0.25 * anat.BA, o["heart_radii_mm"][2] * 0.9)
    hb = c.box(*ellipsoid_box(centre, o["heart_radii_mm"]))
    if hb is not None:
        zd2 = anat.at(hb, "diaphragm")[None]
        q = ellipsoid_q(hb, centre, o["heart_radii_mm"], rotation(-30.0, 0.0, 10.0))
        up = hb.w > zd2 + anat.b["diaphragm_mm"]
        c.paint(hb, (q < 1.25) & up, VISC_FAT, (LUNG,))
        c.paint(hb, (q < 1.0) & up, HEART, (LUNG, VISC_FAT))


def heart_centre(anat: Anatomy) -> tuple[float, float, float]:
    """Where anatomy 2's heart sits: over the central tendon, sunk by `sink` of its half-height
    into the diaphragm's place, so that its lower surface lies flat on the diaphragm."""
    h = anat.heart
    cu, cv = h["centre_uv"][0] * anat.A, h["centre_uv"][1] * anat.BA
    zd = float(anat.diaphragm(np.array([cu]), np.array([cv]))[0])
    rot = rotation(h["yaw_deg"], h["tilt_deg"])
    half_height = float(np.sqrt(((rot[2] * np.asarray(h["radii_mm"])) ** 2).sum()))
    return cu, cv, zd + h["tendon_mm"] + half_height * (1.0 - h["sink"])


def paint_heart(anat: Anatomy, c: Canvas) -> None:
    """Anatomy 2's heart: pericardium, epicardial fat, myocardium and four blood pools, nested,
    each layer cut flat a little higher where the heart lies on the diaphragm. Under the sac
    the diaphragm thins to the central tendon (the pericardium takes the muscle's place), and
    the inferior wall sits on the pericardium with little or no fat between."""
    h = anat.heart
    radii = np.asarray(h["radii_mm"])
    fat, peri = h["epicardial_fat_mm"], h["pericardium_mm"]
    centre = heart_centre(anat)
    rot = rotation(h["yaw_deg"], h["tilt_deg"])
    box = c.box(*ellipsoid_box(centre, radii, fat + peri + MEDIASTINAL_FAT_MM))
    if box is None:
        return
    q = [x.astype(np.float32) for x in local(box, centre, rot)]
    zd = anat.at(box, "diaphragm")[None]
    floor = zd + h["tendon_mm"]
    under = h["inferior_fat_mm"]

    def chamber(k: int, pad: float) -> np.ndarray:
        """Inside chamber k grown by pad mm (shrunk where pad < 0)."""
        _, at, size, _ = CHAMBERS[k]
        return (
            sum(((q[i] - at[i] * radii[i]) / (size[i] * radii[i] + pad)) ** 2 for i in range(3))
            < 1.0
        )

    def heart(pad: float) -> np.ndarray:
        return np.logical_or.reduce([chamber(k, pad) for k in range(len(CHAMBERS))])

    def above(mm: float) -> np.ndarray:
        return box.w > floor + mm

    c.paint(box, heart(fat + peri + MEDIASTINAL_FAT_MM) & above(0.0), VISC_FAT, (LUNG,))
    sac = heart(fat + peri) & above(0.0)
    c.paint(box, sac, PERICARDIUM, (LUNG, VISC_FAT))
    tendon = box.w < zd + anat.b["diaphragm_mm"]  # the diaphragm's muscle, not the chest wall's
    c.paint(box, sac & tendon, PERICARDIUM, (MUSCLE,))
    c.paint(box, heart(fat) & above(peri), EPICARDIAL_FAT, (PERICARDIUM,))
    c.paint(box, heart(0.0) & above(peri + under), MYOCARDIUM, (EPICARDIAL_FAT,))
    for k, (code, _, _, wall_key) in enumerate(CHAMBERS):
        wall = h[wall_key]
        cavity = chamber(k, -wall) & above(peri + under + wall)
        for earlier in range(k):  # the septa: a cavity stays out of the chambers before it
            cavity &= ~chamber(earlier, 0.0)
        c.paint(box, cavity, code, (MYOCARDIUM,))
