"""The liver: its shape (a smooth union of ellipsoids, deformed), its vessels and its lesions,
and anatomy 2's liver disease (cirrhotic shape, tumours with necrosis and lipiodol, dilated bile
ducts, ascites)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from train.phantoms.canvas import Box, Canvas, ellipsoid_box, ellipsoid_q, local, rotation, tube
from train.phantoms.tissues import (
    ASCITES,
    BILE_DUCT,
    HEPATIC_VEIN,
    LIPIODOL,
    LIVER,
    LIVER_CODES,
    NECROSIS,
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
    s = o["liver_scale"] * anat.liver_size
    sr = s * anat.right_lobe_size
    sc = s * anat.caudate_size
    sh = o["liver_shift_mm"]
    rr = o["liver_right_radii"]
    lc, lr = o["liver_left_centre"], o["liver_left_radii"]
    # A smaller (cirrhotic) or a larger liver keeps its dome and its left lobe's top under the
    # diaphragm: it shrinks upwards and grows downwards (0 in anatomy 1).
    rise_right = (1.0 - anat.liver_size * anat.right_lobe_size) * rr[2] * o["liver_scale"]
    rise_left = (1.0 - anat.liver_size) * lr[2] * o["liver_scale"] + anat.left_lobe_lift_mm
    right = (
        (-0.42 * A + sh[0], 0.01 * (BA + BP) + sh[1], -75.0 + sh[2] + rise_right),
        (rr[0] * A * sr, rr[1] * 0.5 * (BA + BP) * sr, rr[2] * sr),
        rotation(0.0, -o["liver_right_tilt_deg"]),
        0.0,
    )
    left = (
        (lc[0] * A + sh[0], lc[1] * BA + sh[1], lc[2] + sh[2] + rise_left),
        (lr[0] * A * s, lr[1] * BA * s, lr[2] * s),
        rotation(0.0, 12.0),
        0.6,
    )
    caudate = (
        (-0.08 * A + sh[0], 0.2 * BP + sh[1], -55.0 + sh[2]),
        (28 * sc, 28 * sc, 40 * sc),
        np.eye(3),
        0.0,
    )
    parts = [right, left, caudate]
    if o["liver_riedel"]:
        parts.append(
            (
                (-0.6 * A + sh[0], 0.05 * BA + sh[1], -150.0 + sh[2] + rise_right),
                (35 * sr, 45 * sr, 55 * sr),  # it hangs from the right lobe
                np.eye(3),
                0.0,
            )
        )
    tip = o.get("liver_tip")  # anatomy 2 only
    if tip and tip["present"]:
        # A sheet from inside the lobe (halfway out from its centre: so the two always join) down
        # to the lateral wall `length` below the lobe's bottom; the cavity crops what lies outside
        # it, so below the lobe the sheet lies along the wall's curve.
        t, length = tip["thickness_mm"] * sr, tip["length_mm"] * sr
        y = tip["y"] * BA + sh[1]
        top = np.array([right[0][0] - 0.5 * right[1][0], y, right[0][2]])
        low = np.array([-anat.A + 0.5 * t, y, right[0][2] - 0.85 * right[1][2] - length])
        axis = top - low
        parts.append(
            (
                tuple(0.5 * (top + low)),
                (t, tip["depth_mm"] * sr, 0.5 * float(np.linalg.norm(axis))),
                rotation(0.0, math.degrees(math.atan2(axis[0], axis[2]))),
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
    f = f + anat.o["liver_deform"] * anat.f_liver(box.xr, box.yr, box.w[:, 0, 0])
    if anat.nodularity:  # cirrhosis: regenerative nodules, a fine field on the surface
        f = f + anat.nodularity * anat.f_nodules(box.xr, box.yr, box.w[:, 0, 0])
    return f


def paint_liver(anat: Anatomy, c: Canvas) -> None:
    """The liver parenchyma, inside the cavity and under the diaphragm (anatomy 1 leaves a gap
    of fat under the sheet; anatomy 2's liver touches it, as a real one does)."""
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
    zd = anat.at(box, "diaphragm")[None] - anat.liver_gap_mm - 0.5
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


def lesion_ellipsoid(anat: Anatomy, i: int) -> tuple[tuple, tuple]:
    """(centre, radii) of lesion i: every third in the left lobe (anatomy 1 from the first,
    anatomy 2 from the third, so that its large first HCC grows in the right lobe), the others
    in the right."""
    les = anat.lesions[i]
    parts = liver_parts(anat)
    left = i % 3 == (0 if anat.version == 1 else 2)
    centre_p, radii_p, rot_p, _ = parts[min(1, len(parts) - 1)] if left else parts[0]
    pos = np.asarray(les["position"])
    pos = pos / max(1.0, float(np.linalg.norm(pos))) * 0.6
    centre = tuple(np.asarray(centre_p) + rot_p @ (pos * np.asarray(radii_p)))
    r = les["radius_mm"]
    return centre, (r, r * les["elongation"][0], r * les["elongation"][1])


def paint_lesions(anat: Anatomy, c: Canvas) -> None:
    """Each lesion an ellipsoid painted over the parenchyma, its vessels and ducts; anatomy 2's
    may hold a necrotic centre and lipiodol deposits (after TACE)."""
    for i, les in enumerate(anat.lesions):
        centre, radii = lesion_ellipsoid(anat, i)
        box = c.box(*ellipsoid_box(centre, radii, 1))
        if box is None:
            continue
        q = ellipsoid_q(box, centre, radii)
        code = anat.lesion_base + i
        c.paint(box, q < 1, code, (LIVER, PORTAL_BRANCH, HEPATIC_VEIN, BILE_DUCT))
        if les["kind"] == "hcc":  # a large HCC bulges out of the liver's contour a little
            bulge = c.smooth_eval(box, lambda b: liver_implicit(anat, b), 3.0) < 0.1
            c.paint(box, (q < 1) & bulge & anat.clip_below(box), code, (VISC_FAT,))
        necrosis, cut = les.get("necrosis_fraction", 0.0), les.get("lipiodol_cut")
        if not necrosis and cut is None:
            continue
        f = anat.f_lesion(box.xr, box.yr, box.w[:, 0, 0])
        if necrosis:  # an irregular centre, of about this fraction of the radius
            edge = necrosis * (1.0 + 0.15 * f)
            c.paint(box, q < edge**2, NECROSIS, (code,))
        if cut is not None:  # dense patches where the field is high, around the necrosis
            c.paint(box, (q < 1) & (f > cut), LIPIODOL, (code,))


def paint_bile_ducts(anat: Anatomy, c: Canvas) -> None:
    """Dilated intrahepatic bile ducts: a branching tree from the hilum along the portal
    branches' course, into the parenchyma."""
    rng = anat.rngs["ducts"]
    A = anat.A

    def grow(p, direction, length, radius, depth):
        d = np.asarray(direction, float)
        d /= np.linalg.norm(d)
        q = tuple(np.asarray(p) + d * length)
        r_end = max(radius * 0.75, 1.5)
        tube(c, p, q, radius, r_end, BILE_DUCT, (LIVER,))
        if depth:
            for _ in range(2):
                jitter = rng.normal(0, 0.6, 3)
                grow(q, d + jitter, length * rng.uniform(0.6, 0.85), r_end, depth - 1)

    r = anat.disease["duct_radius_mm"]
    h = np.add(anat.hilum, (0.0, -6.0, 4.0))  # ducts run in front of the portal branches
    grow(h, (-1.0, 0.1, 0.25), 0.25 * A, r, 3)
    grow(h, (1.0, -0.6, 0.4), 0.22 * A, 0.85 * r, 3)


def paint_ascites_rim(anat: Anatomy, c: Canvas) -> None:
    """Ascites along the peritoneal wall (flanks, around the liver's lateral and anterior
    surfaces) and a pool in the pelvis: free fluid in the fat in front of the spine."""
    d = anat.disease
    box = c.box((-anat.a, -anat.ba, -1e4), (anat.a, anat.bp, 10.0))
    if box is None:
        return
    s = anat.z_scale(box.w)
    rim = anat.at(box, "cavity")[None] > s * (1.0 - d["ascites_mm"] / anat.A)
    pelvis = box.w < anat.b["iliac_top_mm"] + d["ascites_pelvis_mm"]
    front = (box.v < anat.v_spine - anat.vr[1])[None]  # intraperitoneal: not behind the kidneys
    c.paint(box, (rim | pelvis) & front & anat.clip_below(box), ASCITES, (VISC_FAT,))


def paint_perihepatic_ascites(anat: Anatomy, c: Canvas) -> None:
    """Ascites in the fat next to the liver's other surfaces: a shell of the liver's implicit."""
    parts = liver_parts(anat)
    pad = anat.disease["ascites_mm"] + 20
    lo = np.min([np.subtract(p[0], max(p[1])) for p in parts], axis=0) - pad
    hi = np.max([np.add(p[0], max(p[1])) for p in parts], axis=0) + pad
    box = c.box(lo, np.minimum(hi, [1e4, 1e4, 5.0]))
    if box is None:
        return
    f = c.smooth_eval(box, lambda b: liver_implicit(anat, b), 3.0)
    r = float(np.mean([max(p[1]) for p in parts]))  # mm per unit of the implicit, about
    shell = f < 0.5 * anat.disease["ascites_mm"] / r
    front = (box.v < anat.v_spine - anat.vr[1])[None]
    c.paint(box, shell & front & anat.clip_below(box), ASCITES, (VISC_FAT,))
