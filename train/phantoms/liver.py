"""The liver: its shape (a smooth union of ellipsoids, deformed), its vessels and its lesions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from train.phantoms.canvas import Box, Canvas, ellipsoid_box, ellipsoid_q, local, rotation, tube
from train.phantoms.tissues import (
    HEPATIC_VEIN,
    LESION_BASE,
    LIVER,
    LIVER_CODES,
    PORTAL_BRANCH,
    VISC_FAT,
)

if TYPE_CHECKING:
    from train.phantoms.anatomy import Anatomy


def liver_parts(anat: Anatomy) -> list[tuple[tuple, tuple, np.ndarray, float]]:
    """(centre, radii, rotation, left taper) of the ellipsoids whose smooth union is the liver."""
    o = anat.o
    # The liver follows the cavity's shape but only half its size variation (a liver is not
    # twice as big in a patient twice as wide): dimensions pulled towards a reference cavity.
    A, BA, BP = ((x * ref) ** 0.5 for x, ref in ((anat.A, 125.0), (anat.BA, 85.0), (anat.BP, 80.0)))
    s = o["liver_scale"]
    sh = o["liver_shift_mm"]
    rr = o["liver_right_radii"]
    right = (
        (-0.42 * A + sh[0], 0.01 * (BA + BP) + sh[1], -75.0 + sh[2]),
        (rr[0] * A * s, rr[1] * 0.5 * (BA + BP) * s, rr[2] * s),
        rotation(0.0, -o["liver_right_tilt_deg"]),
        0.0,
    )
    lc, lr = o["liver_left_centre"], o["liver_left_radii"]
    left = (
        (lc[0] * A + sh[0], lc[1] * BA + sh[1], lc[2] + sh[2]),
        (lr[0] * A * s, lr[1] * BA * s, lr[2] * s),
        rotation(0.0, 12.0),
        0.6,
    )
    caudate = (
        (-0.08 * A + sh[0], 0.2 * BP + sh[1], -55.0 + sh[2]),
        (28 * s, 28 * s, 40 * s),
        np.eye(3),
        0.0,
    )
    parts = [right, left, caudate]
    if o["liver_riedel"]:
        parts.append(
            (
                (-0.6 * A + sh[0], 0.05 * BA + sh[1], -150.0 + sh[2]),
                (35 * s, 45 * s, 55 * s),
                np.eye(3),
                0.0,
            )
        )
    return parts


def liver_implicit(anat: Anatomy, box: Box) -> np.ndarray:
    """Smooth union of the liver's ellipsoids plus a random deformation: < 0 inside, (nz, ny, nx)."""
    k = 0.12  # smooth-union softness, in normalised radius
    acc = None
    for centre, radii, rot, taper in liver_parts(anat):
        q = local(box, centre, rot)
        scale = 1.0
        if taper:  # the left lobe thins towards the patient's left
            scale = np.clip(1.0 - taper * np.maximum(q[0], 0) / radii[0], 0.15, 1.0)
        f = (
            np.sqrt(
                (q[0] / radii[0]) ** 2
                + (q[1] / (radii[1] * scale)) ** 2
                + (q[2] / (radii[2] * scale)) ** 2
            )
            - 1.0
        )
        e = np.exp(-f / k)
        acc = e if acc is None else acc + e
    f = -k * np.log(acc)
    return f + anat.o["liver_deform"] * anat.f_liver(box.xr, box.yr, box.w[:, 0, 0])


def paint_liver(anat: Anatomy, c: Canvas) -> None:
    """The liver parenchyma, inside the cavity and under the diaphragm."""
    parts = liver_parts(anat)
    lo = np.min([np.subtract(p[0], max(p[1])) for p in parts], axis=0) - 20
    hi = np.max([np.add(p[0], max(p[1])) for p in parts], axis=0) + 20
    # The liver never leaves the cavity nor rises above the right dome.
    lo = np.maximum(lo, [-1.2 * anat.a, -1.2 * anat.ba, -1e4])
    hi = np.minimum(hi, [1.2 * anat.a, 1.2 * anat.bp, 5.0])
    box = c.box(lo, hi)
    if box is None:
        return
    f = c.smooth_eval(box, lambda b: liver_implicit(anat, b), 3.0)
    zd = anat.at(box, "diaphragm")[None] - anat.b["diaphragm_mm"] - 0.5
    cav = anat.at(box, "cavity")[None] < anat.z_scale(box.w) * 0.995
    c.paint(box, (f < 0) & cav & (box.w < zd), LIVER, (VISC_FAT,))
    anat.texture_boxes.append((box, LIVER_CODES, "liver"))


def paint_liver_vessels(anat: Anatomy, c: Canvas) -> None:
    """Portal branches from the hilum and hepatic veins towards the IVC, as random trees."""
    rng = anat.rngs["vessels"]
    A, BA, BP = anat.A, anat.BA, anat.BP
    segs: list[tuple[tuple, tuple, float, float, int]] = []

    def grow(p, direction, length, radius, depth, code):
        d = np.asarray(direction, float)
        d /= np.linalg.norm(d)
        q = tuple(np.asarray(p) + d * length)
        r_end = max(radius * 0.7, 1.2)
        segs.append((tuple(p), q, radius, r_end, code))
        if depth == 0:
            return
        for _ in range(2):
            jitter = rng.normal(0, 0.6, 3)
            grow(q, d + jitter, length * rng.uniform(0.6, 0.85), r_end, depth - 1, code)

    h = anat.hilum
    grow(h, (-1.0, 0.1, 0.25), 0.25 * A, 6.5, 3, PORTAL_BRANCH)
    grow(h, (1.0, -0.6, 0.4), 0.22 * A, 5.5, 3, PORTAL_BRANCH)
    top = (-0.1 * A, -0.0 * BP - 15, -15.0)
    for target in (
        (-0.75 * A, 0.1 * BP, -55.0),
        (-0.3 * A, -0.55 * BA, -75.0),
        (0.12 * A, -0.5 * BA, -40.0),
    ):
        grow(
            top,
            np.subtract(target, top),
            0.35 * np.linalg.norm(np.subtract(target, top)),
            6.0,
            2,
            HEPATIC_VEIN,
        )
    for p0, p1, r0, r1, code in segs:
        tube(c, p0, p1, r0, r1, code, (LIVER,))


def paint_lesions(anat: Anatomy, c: Canvas) -> None:
    """Each lesion an ellipsoid in the right or left lobe, painted over the parenchyma."""
    parts = liver_parts(anat)
    for i, les in enumerate(anat.lesions):
        centre_p, radii_p, rot_p, _ = parts[0] if i % 3 else parts[min(1, len(parts) - 1)]
        pos = np.asarray(les["position"])
        pos = pos / max(1.0, float(np.linalg.norm(pos))) * 0.6
        centre = tuple(np.asarray(centre_p) + rot_p @ (pos * np.asarray(radii_p)))
        r = les["radius_mm"]
        radii = (r, r * les["elongation"][0], r * les["elongation"][1])
        box = c.box(*ellipsoid_box(centre, radii, 1))
        if box is None:
            continue
        q = ellipsoid_q(box, centre, radii)
        c.paint(box, q < 1, LESION_BASE + i, (LIVER, PORTAL_BRANCH, HEPATIC_VEIN))
