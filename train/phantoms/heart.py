"""The heart above the central tendon of the diaphragm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from train.phantoms.canvas import Canvas, ellipsoid_box, ellipsoid_q, rotation
from train.phantoms.tissues import HEART, LUNG, VISC_FAT

if TYPE_CHECKING:
    from train.phantoms.anatomy import Anatomy


def paint_classic_heart(anat: Anatomy, c: Canvas) -> None:
    """Anatomy 1's heart: one ellipsoid of HEART in a rim of mediastinal fat, above the diaphragm."""
    o = anat.o
    centre = (0.15 * anat.A, -0.25 * anat.BA, o["heart_radii_mm"][2] * 0.9)
    hb = c.box(*ellipsoid_box(centre, o["heart_radii_mm"]))
    if hb is not None:
        zd2 = anat.at(hb, "diaphragm")[None]
        q = ellipsoid_q(hb, centre, o["heart_radii_mm"], rotation(-30.0, 0.0, 10.0))
        up = hb.w > zd2 + anat.b["diaphragm_mm"]
        c.paint(hb, (q < 1.25) & up, VISC_FAT, (LUNG,))
        c.paint(hb, (q < 1.0) & up, HEART, (LUNG, VISC_FAT))
