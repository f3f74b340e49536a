"""make_phantom: draw a phantom's parameters from its seed, paint its anatomy, scan it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from train.phantoms.anatomy import Anatomy
from train.phantoms.canvas import Canvas
from train.phantoms.parameters import (
    draw_bladder,
    draw_body,
    draw_disease,
    draw_heart,
    draw_lesions,
    draw_liver_tip,
    draw_organs,
    draw_rib_gap,
    draw_scan,
    draw_streaks,
    draw_true_pelvis,
    draw_tumours,
    resolve_disease,
    tumour_lesions,
)
from train.phantoms.scanner import (
    as_direction,
    axis_grid,
    image,
    intensities,
    signed_permutation,
    to_image_axes,
)
from train.phantoms.tissues import (
    AIR,
    ANATOMY2_TISSUES,
    CLASSIC_TISSUES,
    LIVER_CODES,
    PHASES,
    TEXTURE_HU,
    hu_values,
)


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT (HU, int16) and its liver label (uint8 0/1) on the same grid.

    `tissues` holds the generator's own label map (codes such as LUNG, SPLEEN, LIVER_CODES) for
    tests and hard-negative analysis. `params` holds every value that was drawn (or given), JSON-friendly; the body frame's anchor
    is `params["geometry"]["dome_xyz_mm"]` (LPS point at the top of the liver dome).
    """

    ct: sitk.Image
    liver: sitk.Image
    params: dict[str, Any] = field(default_factory=dict)
    tissues: sitk.Image | None = None  # uint8 tissue codes (AIR, LUNG, LIVER, ...) on the same grid


ANATOMIES: tuple[int, ...] = (1, 2, 3)
# The generators of anatomy 1, in spawn order: never reorder, insert into or shorten this list.
CLASSIC_GENERATORS = (
    "scan",
    "body",
    "organs",
    "lesions",
    "hu",
    "fields",
    "vessels",
    "bowel",
    "noise",
    "texture",
)
# Anatomy 2's, in spawn order after the classic ones: append only.
ANATOMY2_GENERATORS = (
    "heart",
    "disease",
    "tumours",
    "hu2",
    "fields2",
    "ducts",
    "streaks",
    "liver_tip",
)
# Anatomy 3's, after anatomy 2's: append only.
ANATOMY3_GENERATORS = ("ribs", "pelvis")


def make_phantom(
    seed: int,
    *,
    spacing_xyz_mm: Sequence[float] | None = None,
    size_xyz: Sequence[int] | None = None,
    phase: str | None = None,
    z_range: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    fov_mm: float | None = None,
    slice_thickness_mm: float | None = None,
    noise_sd_hu: float | None = None,
    blur_sigma_mm: float | None = None,
    n_lesions: int | None = None,
    fatty_liver: bool | None = None,
    arms: bool | None = None,
    table: bool | None = None,
    fov_circle: bool | None = None,
    anatomy: int = 2,
    disease: Mapping[str, bool | str | float] | None = None,
) -> Phantom:
    """A synthetic abdominal CT (HU, int16) and its liver label (uint8 0/1) on the same grid.

    Everything random comes from `numpy.random.SeedSequence(seed)`; the same seed gives identical
    arrays and geometry, and a keyword given here replaces its draw without changing the others
    (the anatomy of a seed is the same whatever the grid). Arguments, all optional:
      spacing_xyz_mm, size_xyz: along the image's own axes (x, y, z). In-plane, if neither is
        given the image is 512 wide over the drawn field of view; along z the range decides.
      phase: one of PHASES ("native", "arterial", "portal", "delayed").
      z_range: (lo, hi) mm along the patient's superior axis relative to the top of the liver
        dome (params["geometry"]["dome_xyz_mm"]), e.g. (-60, -20) for a slab in the liver.
        Slices sit on a lattice anchored at the dome, so a slab of a seed is an exact crop of
        that seed's longer scan at the same spacing (labels equal; noise differs). With
        size_xyz given too, the slices are centred on the range.
      direction: 9 direction cosines (row-major, SimpleITK's order). A signed permutation (axis
        flips, axis swaps) is rasterised exactly; an oblique one is resampled from an LPS grid.
        The anatomy stays at the same physical place whatever the direction.
      fov_mm (in-plane field of view), slice_thickness_mm, noise_sd_hu, blur_sigma_mm,
      n_lesions (0..MAX_LESIONS; anatomy 1: 0..CLASSIC_MAX_LESIONS), fatty_liver, arms, table,
      fov_circle (pad outside the reconstruction circle).
      anatomy: which anatomy to draw (ANATOMIES). 1 is the classic generator, kept so that its
        phantoms (the old held-out set, the bundled model's training data) stay reproducible:
        anatomy=1 gives exactly the arrays and params it always gave. 2 (the default) adds what
        real scans hold (see the package docstring); a seed's classic draws are the same in both.
        2 is frozen too, since the bundled model's card trains on it; 3 is 2 with muscle
        between the liver and bone (see the package docstring) and is the anatomy that grows now.
        A seed's anatomy 3 is its anatomy 2 but for the ribs, the crura and what they displace.
      disease (anatomy 2 and 3): replaces drawn disease flags, e.g. {"cirrhosis": True, "ascites":
        True, "tumours": "hcc", "lipiodol": True, "biliary_dilatation": False, "hepatomegaly":
        False}; tumours is one of "none", "benign", "hcc", "metastases"
        (parameters.TUMOUR_BURDENS), lipiodol needs "hcc". A magnitude of draw_disease may be
        given as well, e.g. {"ascites": True, "ascites_mm": 30.0} for heavy ascites.
    Raises ValueError for a negative seed, an unknown phase or anatomy, a non-orthonormal
    direction, a bad size, or a disease that cannot be (or disease with anatomy 1).
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    seq = np.random.SeedSequence(int(seed))
    # One generator per topic. Anatomy 2's come after the classic ones: a SeedSequence child keeps
    # its index whatever is spawned after it, so the classic draws are the same in both anatomies.
    names = CLASSIC_GENERATORS + ANATOMY2_GENERATORS + ANATOMY3_GENERATORS
    rngs = dict(zip(names, (np.random.default_rng(s) for s in seq.spawn(len(names))), strict=True))
    scan = draw_scan(rngs["scan"], anatomy)
    body = draw_body(rngs["body"])
    organs = draw_organs(rngs["organs"])
    n_drawn, all_lesions = draw_lesions(rngs["lesions"])
    hu_u = {name: float(rngs["hu"].uniform()) for name in CLASSIC_TISSUES}
    tex = {name: float(rngs["texture"].uniform(0.3, 1.5)) for name in sorted(TEXTURE_HU)}
    heart = sick = streaks = None
    if anatomy >= 2:
        heart = draw_heart(rngs["heart"])
        sick = resolve_disease(draw_disease(rngs["disease"]), dict(disease or {}))
        n_drawn, all_lesions = tumour_lesions(draw_tumours(rngs["tumours"]), sick)
        hu_u |= {name: float(rngs["hu2"].uniform()) for name in ANATOMY2_TISSUES}
        streaks = draw_streaks(rngs["streaks"])
        organs["liver_tip"] = draw_liver_tip(rngs["liver_tip"])
    elif disease is not None:
        raise ValueError("disease is anatomy 2's and 3's: anatomy 1 draws no liver disease")
    if anatomy >= 3:
        body["rib_gap_mm"] = draw_rib_gap(rngs["ribs"])
        body["bladder"] = draw_bladder(rngs["pelvis"])
        body["true_pelvis"] = draw_true_pelvis(rngs["pelvis"])
        hu_u["urine"] = body["bladder"]["urine_u"]

    if phase is not None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        scan["phase"] = phase
    if z_range is not None:
        lo, hi = float(z_range[0]), float(z_range[1])
        if not hi > lo:
            raise ValueError(f"z_range must be (lo, hi) with hi > lo, got {tuple(z_range)}")
        scan["kind"], scan["z_range_mm"] = "given", [lo, hi]
    for key, value in (
        ("fov_mm", fov_mm),
        ("noise_sd_hu", noise_sd_hu),
        ("blur_sigma_mm", blur_sigma_mm),
        ("fov_circle", fov_circle),
    ):
        if value is not None:
            scan[key] = value
    if arms is not None:
        body["arms"] = bool(arms)
    if table is not None:
        body["table"] = bool(table)
    if fatty_liver is not None:
        organs["fatty_liver"] = bool(fatty_liver)
    if n_lesions is not None:
        most = len(all_lesions)
        if not 0 <= n_lesions <= most:
            raise ValueError(
                f"n_lesions must be in 0..{most} for anatomy {anatomy}, got {n_lesions}"
            )
        n_drawn = n_lesions
    lesions = all_lesions[:n_drawn]

    d = (
        as_direction(direction)
        if direction is not None
        else np.diag([float(f) for f in scan["direction_flip"]])
    )
    sp = signed_permutation(d)
    perm, signs = sp if sp is not None else ([0, 1, 2], [1, 1, 1])
    spacing_phys: list[float | None] = [None, None, None]
    size_phys: list[int | None] = [None, None, None]
    for j in range(3):
        if spacing_xyz_mm is not None:
            spacing_phys[perm[j]] = float(spacing_xyz_mm[j])
        if size_xyz is not None:
            if int(size_xyz[j]) < 1:
                raise ValueError(f"size_xyz must be positive, got {tuple(size_xyz)}")
            size_phys[perm[j]] = int(size_xyz[j])

    fov = float(scan["fov_mm"])
    fcx, fcy = scan["fov_centre_xy_mm"]
    sx, nx = axis_grid(-fov / 2, fov / 2, spacing_phys[0], size_phys[0], scan["inplane_size"], None)
    sy, ny = axis_grid(-fov / 2, fov / 2, spacing_phys[1], size_phys[1], scan["inplane_size"], None)
    zlo, zhi = scan["z_range_mm"]
    ph = scan["z_phase"]
    if size_phys[2] is not None:
        nz = size_phys[2]
        sz = spacing_phys[2] if spacing_phys[2] is not None else (zhi - zlo) / nz
        k0 = int(round((zlo + zhi) / 2 / sz - ph - (nz - 1) / 2))
    else:
        sz = spacing_phys[2] if spacing_phys[2] is not None else scan["slice_spacing_mm"]
        k0 = math.ceil(zlo / sz - ph - 1e-9)
        nz = max(1, math.floor(zhi / sz - ph + 1e-9) - k0 + 1)
    scan["slice_thickness_mm"] = (
        float(slice_thickness_mm)
        if slice_thickness_mm is not None
        else float(sz * scan["slice_thickness_factor"])
    )
    dome_z = scan["dome_z_mm"]
    bcx, bcy = fcx + scan["body_offset_xy_mm"][0], fcy + scan["body_offset_xy_mm"][1]
    scan["body_centre_xy_mm"] = [bcx, bcy]
    spacing_c = np.array([sx, sy, sz])
    size_c = np.array([nx, ny, nz])
    origin_c = np.array([fcx - (nx - 1) / 2 * sx, fcy - (ny - 1) / 2 * sy, dome_z + (k0 + ph) * sz])

    if sp is None:  # oblique: render on an LPS grid covering the requested one, then resample
        target_spacing, target_size = spacing_c.copy(), size_c.copy()
        centre = origin_c + (size_c - 1) / 2 * spacing_c
        target_origin = centre - d @ ((target_size - 1) / 2 * target_spacing)
        corners = np.array(
            [
                target_origin + d @ (np.array(c3) * (target_size - 1) * target_spacing)
                for c3 in np.ndindex(2, 2, 2)
            ]
        )
        iso = float(target_spacing.min())
        origin_c = corners.min(0) - iso
        size_c = np.ceil((corners.max(0) + iso - origin_c) / iso).astype(int) + 1
        spacing_c = np.full(3, iso)

    canvas = Canvas(origin_c, spacing_c, size_c, (bcx, bcy), dome_z, math.radians(body["roll_deg"]))
    anat = Anatomy(body, organs, lesions, rngs, anatomy, heart, sick)
    anat.paint(canvas)
    hu = hu_values(scan["phase"], hu_u, organs, lesions, scan["hu_offset"])
    img = intensities(anat, canvas, hu, scan, tex, rngs["noise"], len(lesions), streaks)
    is_liver = np.zeros(256, np.uint8)
    is_liver[list(LIVER_CODES)] = 1
    label = is_liver[canvas.tissue]
    np.rint(img, out=img)
    ct = np.clip(img, -32768, 32767, out=img).astype(np.int16)
    del img

    if sp is not None:
        ct_arr, lab_arr = to_image_axes(ct, perm, signs), to_image_axes(label, perm, signs)
        origin = np.array(
            [
                origin_c[perm[j]]
                + (0 if signs[j] > 0 else (size_c[perm[j]] - 1) * spacing_c[perm[j]])
                for j in range(3)
            ]
        )
        origin_phys = np.zeros(3)
        for j in range(3):
            origin_phys[perm[j]] = origin[j]
        spacing_img = [spacing_c[perm[j]] for j in range(3)]
        ct_img = image(ct_arr, origin_phys, spacing_img, d)
        lab_img = image(lab_arr, origin_phys, spacing_img, d)
        tis_img = image(to_image_axes(canvas.tissue, perm, signs), origin_phys, spacing_img, d)
    else:
        ref = sitk.Image([int(v) for v in target_size], sitk.sitkUInt8)
        ref.SetOrigin(tuple(float(v) for v in target_origin))
        ref.SetSpacing(tuple(float(v) for v in target_spacing))
        ref.SetDirection(tuple(float(v) for v in d.ravel()))
        src_ct = image(ct, origin_c, spacing_c, np.eye(3))
        src_lab = image(label, origin_c, spacing_c, np.eye(3))
        ct_img = sitk.Resample(
            src_ct, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16
        )
        lab_img = sitk.Resample(
            src_lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
        src_tis = image(canvas.tissue, origin_c, spacing_c, np.eye(3))
        tis_img = sitk.Resample(
            src_tis, ref, sitk.Transform(), sitk.sitkNearestNeighbor, AIR, sitk.sitkUInt8
        )

    params = {
        "seed": int(seed),
        "phase": scan["phase"],
        "geometry": {
            "spacing_xyz_mm": list(ct_img.GetSpacing()),
            "size_xyz": list(ct_img.GetSize()),
            "origin_xyz_mm": list(ct_img.GetOrigin()),
            "direction": list(ct_img.GetDirection()),
            "dome_xyz_mm": [float(bcx), float(bcy), float(dome_z)],
            "body_centre_xy_mm": [float(bcx), float(bcy)],
        },
        "scan": scan,
        "body": body,
        "organs": organs,
        "lesions": lesions,
        "hu": hu,
        "texture": tex,
        "liver_volume_ml": float(
            sitk.GetArrayViewFromImage(lab_img).sum() * np.prod(lab_img.GetSpacing()) / 1000.0
        ),
    }
    if anatomy != 1:  # anatomy 1's params stay exactly what they were: no key means anatomy 1
        params = {"seed": params.pop("seed"), "anatomy": anatomy, **params}
        params |= {"heart": heart, "disease": sick, "streaks": streaks}
    return Phantom(ct=ct_img, liver=lab_img, params=params, tissues=tis_img)
