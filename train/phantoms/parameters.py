"""The per-phantom parameter draws, each topic from its own generator: scan, body, organs and
lesions (anatomy 1), and anatomy 2's heart, liver disease, tumours and lipiodol streaks.

Each topic has its own generator (spawned from the seed, see make_phantom), so overriding one value
never changes another draw, and the values drawn are the same whatever the grid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from train.phantoms.tissues import CLASSIC_MAX_LESIONS, MAX_LESIONS, PHASE_PROBABILITIES, PHASES

SCAN_KINDS = ("abdomen", "chest_abdomen", "liver", "slab")
SCAN_KIND_PROBABILITIES = (0.35, 0.1, 0.25, 0.3)
# Anatomy 2: chest-to-pelvis scans are common in real work, and an abdomen scan starts 20-120 mm
# above the dome, so the heart is often in view.
SCAN_KIND_PROBABILITIES_2 = (0.3, 0.35, 0.15, 0.2)
ABDOMEN_TOP_MM = {1: (20.0, 80.0), 2: (20.0, 120.0), 3: (20.0, 120.0)}
# Where abdomen scans end below the dome. Anatomy 3's reach the pelvic floor, as abdomen-pelvis
# scans do (the second real scan ends below its bladder), so its bladder is in view.
ABDOMEN_BOTTOM_MM = {1: (-330.0, -230.0), 2: (-330.0, -230.0), 3: (-470.0, -230.0)}
# Anatomy 2's liver disease, per phantom. Liver size: cirrhosis (small, nodular, large caudate)
# or hepatomegaly, else normal. Ascites: with cirrhosis 60%, without 5%. Tumour burden, by
# cirrhosis or not: none, benign (hypo/hyperdense lesions and cysts, as anatomy 1's), HCC, or
# metastases. Lipiodol after TACE in 35% of HCC livers. Biliary dilatation 8%. (Fatty liver, 10%,
# is anatomy 1's draw.)
CIRRHOSIS_P, HEPATOMEGALY_P = 0.15, 0.1
ASCITES_P = {True: 0.6, False: 0.05}
TUMOUR_BURDENS = ("none", "benign", "hcc", "metastases")
TUMOUR_BURDEN_P = {True: (0.3, 0.1, 0.5, 0.1), False: (0.45, 0.25, 0.12, 0.18)}
LIPIODOL_P, BILIARY_DILATATION_P = 0.35, 0.08
DISEASE_FLAGS = (
    "cirrhosis",
    "hepatomegaly",
    "ascites",
    "tumours",
    "lipiodol",
    "biliary_dilatation",
)
SLICE_SPACINGS_MM = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
FLIPS = tuple((sx, sy, sz) for sx in (1, -1) for sy in (1, -1) for sz in (1, -1))


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw in [lo, hi), as a plain float."""
    return float(rng.uniform(lo, hi))


def draw_body(rng: np.random.Generator) -> dict[str, Any]:
    adiposity = uniform(rng, 0.0, 1.0)
    a = uniform(rng, 125, 175) + 25 * adiposity
    b_ant = a * uniform(rng, 0.62, 0.85)  # abdomens are 1.2 to 1.6 times wider than deep
    return {
        "half_width_mm": a,
        "half_depth_ant_mm": b_ant,
        "half_depth_post_mm": b_ant * uniform(rng, 0.8, 1.0),
        "exponent": uniform(rng, 2.0, 2.8),
        "exponent_post": uniform(rng, 2.4, 3.5),
        "shape_harmonics": [
            [uniform(rng, -0.04, 0.04), uniform(rng, 0, 2 * math.pi)] for _ in range(4)
        ],
        "adiposity": adiposity,
        "fat_ant_mm": uniform(rng, 4, 15) + 45 * adiposity * uniform(rng, 0.5, 1.0),
        "fat_lat_mm": uniform(rng, 4, 12) + 40 * adiposity * uniform(rng, 0.5, 1.0),
        "fat_post_mm": uniform(rng, 3, 10) + 25 * adiposity * uniform(rng, 0.5, 1.0),
        "muscle_mm": uniform(rng, 6, 14),
        "muscle_post_mm": uniform(rng, 14, 26),
        "skin_mm": uniform(rng, 1.5, 3.0),
        "z_profile": [
            [uniform(rng, -0.05, 0.05), uniform(rng, 150, 400), uniform(rng, 0, 2 * math.pi)]
            for _ in range(2)
        ],
        "roll_deg": float(np.clip(rng.normal(0, 4), -12, 12)),
        "arms": bool(rng.random() < 0.35),
        "arm_radius_mm": uniform(rng, 35, 55),
        "arm_gap_mm": uniform(rng, 3, 40),
        "arm_v_mm": uniform(rng, -30, 30),
        "table": bool(rng.random() < 0.7),
        "table_gap_mm": uniform(rng, 0, 25),
        "table_curvature_mm": uniform(rng, 500, 1500),
        "prone": bool(rng.random() < 0.03),
        "dome_left_drop_mm": uniform(rng, 5, 25),
        "dome_drop_lat_mm": uniform(rng, 25, 55),
        "dome_drop_post_mm": uniform(rng, 50, 110),
        "dome_drop_ant_mm": uniform(rng, 20, 50),
        "dome_power": uniform(rng, 2.5, 4.0),
        "tendon_drop_mm": uniform(rng, 10, 30),
        "diaphragm_mm": uniform(rng, 3, 6),
        "spine_depth_mm": uniform(rng, 45, 70),
        "vertebra_radii_mm": [uniform(rng, 18, 25), uniform(rng, 13, 18)],
        "vertebra_pitch_mm": uniform(rng, 27, 35),
        "vertebra_phase": uniform(rng, 0, 1),
        "rib_pitch_mm": uniform(rng, 22, 30),
        "rib_slope_mm_per_rad": uniform(rng, 35, 60),
        "rib_size_mm": [uniform(rng, 7, 11), uniform(rng, 8, 13)],
        "xiphoid_mm": uniform(rng, -60, -25),
        "iliac_top_mm": uniform(rng, -300, -240),
    }


def draw_organs(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "liver_scale": uniform(rng, 0.85, 1.05)
        * (uniform(rng, 1.1, 1.25) if rng.random() < 0.1 else 1.0),
        "liver_shift_mm": [uniform(rng, -10, 10), uniform(rng, -10, 10), uniform(rng, -10, 10)],
        "liver_right_radii": [
            uniform(rng, 0.58, 0.75),
            uniform(rng, 0.8, 0.95),
            uniform(rng, 80, 105),
        ],
        "liver_right_tilt_deg": uniform(rng, 5, 30),
        "liver_left_radii": [uniform(rng, 0.45, 0.7), uniform(rng, 0.3, 0.5), uniform(rng, 35, 55)],
        "liver_left_centre": [
            uniform(rng, 0.0, 0.2),
            uniform(rng, -0.6, -0.35),
            uniform(rng, -60, -35),
        ],
        "liver_riedel": bool(rng.random() < 0.25),
        "liver_deform": uniform(rng, 0.06, 0.2),
        "liver_deform_step_mm": uniform(rng, 35, 70),
        "fatty_liver": bool(rng.random() < 0.1),
        "fatty_shift_u": uniform(rng, 0, 1),
        "gallbladder": bool(rng.random() < 0.85),
        "gallbladder_radii_mm": [uniform(rng, 12, 22), uniform(rng, 12, 22), uniform(rng, 30, 50)],
        "gallbladder_centre": [
            uniform(rng, -0.35, -0.1),
            uniform(rng, -0.6, -0.3),
            uniform(rng, -130, -95),
        ],
        "spleen_scale": uniform(rng, 0.8, 1.2)
        * (uniform(rng, 1.2, 1.6) if rng.random() < 0.15 else 1.0),
        "spleen_w_mm": uniform(rng, -85, -50),
        "kidney_w_mm": uniform(rng, -160, -120),
        "kidney_left_higher_mm": uniform(rng, 0, 25),
        "kidney_radii_mm": [uniform(rng, 20, 28), uniform(rng, 18, 26), uniform(rng, 45, 60)],
        "kidney_offset_mm": uniform(rng, 40, 60),
        "stomach_empty": bool(rng.random() < 0.3),
        "stomach_radii_mm": [uniform(rng, 30, 50), uniform(rng, 22, 40), uniform(rng, 40, 65)],
        "stomach_w_mm": uniform(rng, -85, -50),
        "stomach_air": uniform(rng, 0.0, 0.4),
        "oral_contrast": bool(rng.random() < 0.2),
        "colon_radius_mm": uniform(rng, 15, 28),
        "colon_gas": uniform(rng, -0.5, 1.0),
        "bowel_density": uniform(rng, 0.3, 0.9),
        "aorta_radius_mm": uniform(rng, 9, 15),
        "ivc_radii_mm": [uniform(rng, 10, 16), uniform(rng, 7, 12)],
        "heart_radii_mm": [uniform(rng, 55, 75), uniform(rng, 45, 60), uniform(rng, 50, 65)],
        "pancreas_radius_mm": uniform(rng, 8, 14),
    }


def draw_lesions(rng: np.random.Generator) -> tuple[int, list[dict[str, Any]]]:
    """Anatomy 1's (how many lesions, CLASSIC_MAX_LESIONS lesions): n_lesions picks a prefix."""
    n = 0 if rng.random() < 0.5 else int(rng.integers(1, 7))
    out = []
    for _ in range(
        CLASSIC_MAX_LESIONS
    ):  # always draw the maximum: an explicit count shifts nothing
        kind = str(rng.choice(["hypo", "hypo", "cyst", "hyper"]))
        out.append(
            {
                "kind": kind,
                "position": [uniform(rng, -1, 1), uniform(rng, -1, 1), uniform(rng, -1, 1)],
                "radius_mm": float(np.exp(rng.uniform(math.log(4), math.log(35)))),
                "elongation": [uniform(rng, 0.7, 1.3), uniform(rng, 0.7, 1.3)],
                "delta_hu": uniform(rng, -70, -15) if kind == "hypo" else uniform(rng, 15, 60),
                "cyst_hu": uniform(rng, 0, 20),
            }
        )
    return n, out


def draw_scan(rng: np.random.Generator, anatomy: int = 1) -> dict[str, Any]:
    """The scan: coverage, grid, scanner and phase. Anatomy 2 takes the same draws, read with
    its own coverage probabilities and abdomen top (so nothing else moves)."""
    p = SCAN_KIND_PROBABILITIES if anatomy == 1 else SCAN_KIND_PROBABILITIES_2
    kind = str(rng.choice(SCAN_KINDS, p=p))
    top_abdomen = uniform(rng, *ABDOMEN_TOP_MM[anatomy])
    bottom_abdomen = uniform(rng, *ABDOMEN_BOTTOM_MM[anatomy])
    top_chest = uniform(rng, 120, 220)
    top_liver, bottom_liver = uniform(rng, 10, 50), uniform(rng, -230, -170)
    slab_len, slab_centre = uniform(rng, 20, 120), uniform(rng, -160, -10)
    z_range = {
        "abdomen": (bottom_abdomen, top_abdomen),
        "chest_abdomen": (bottom_abdomen, top_chest),
        "liver": (bottom_liver, top_liver),
        "slab": (slab_centre - slab_len / 2, slab_centre + slab_len / 2),
    }[kind]
    fov = uniform(rng, 330, 500)
    slice_spacing = float(rng.choice(SLICE_SPACINGS_MM))
    flip = FLIPS[int(rng.integers(1, len(FLIPS)))] if rng.random() < 0.3 else (1, 1, 1)
    return {
        "kind": kind,
        "z_range_mm": [float(z_range[0]), float(z_range[1])],
        "fov_mm": fov,
        "inplane_size": 512,
        "slice_spacing_mm": slice_spacing,
        "slice_thickness_factor": float(rng.choice([1.0, 1.0, 1.25, 1.5])),
        "z_phase": uniform(rng, 0, 1),
        "fov_centre_xy_mm": [uniform(rng, -20, 20), uniform(rng, -250, 50)],
        "body_offset_xy_mm": [uniform(rng, -25, 25), uniform(rng, -40, 40)],
        "dome_z_mm": uniform(rng, -800, 200),
        "direction_flip": [int(f) for f in flip],
        "noise_sd_hu": float(np.exp(rng.uniform(math.log(5), math.log(35)))),
        "blur_sigma_mm": uniform(rng, 0.3, 1.0),
        "hu_offset": uniform(rng, -5, 5),
        "cupping_hu": uniform(rng, 0, 8),
        "fov_circle": bool(rng.random() < 0.35),
        "fov_fill_hu": float(rng.choice([-1024.0, -1024.0, -2048.0, -3024.0])),
        "phase": str(rng.choice(PHASES, p=PHASE_PROBABILITIES)),
    }


# ----------------------------------------------------------------------------------------------
# Anatomy 2's draws, each from a generator of its own.


def _log_uniform(u: float, lo: float, hi: float) -> float:
    """The value at quantile u of a log-uniform distribution on [lo, hi]."""
    return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))


def draw_heart(rng: np.random.Generator) -> dict[str, Any]:
    """The heart's size, orientation (long axis to the patient's left, front and down), place over
    the central tendon, how deep it sinks onto the diaphragm, and its layers' thicknesses."""
    return {
        "radii_mm": [uniform(rng, 55, 70), uniform(rng, 40, 52), uniform(rng, 38, 48)],
        "yaw_deg": uniform(rng, -55, -30),
        "tilt_deg": uniform(rng, 20, 45),
        "centre_uv": [uniform(rng, 0.1, 0.3), uniform(rng, -0.4, -0.2)],  # of A, BA
        "sink": uniform(rng, 0.15, 0.35),  # of its half-height, below the diaphragm's top
        "epicardial_fat_mm": uniform(rng, 1.5, 7),
        "pericardium_mm": uniform(rng, 1.5, 3.0),
        "lv_wall_mm": uniform(rng, 8, 12),
        "rv_wall_mm": uniform(rng, 3, 5),
        "atrial_wall_mm": uniform(rng, 2, 3),
        # Real scans show the inferior wall a few mm over the dome: the heart lies on the thin
        # central tendon, and its fat sits in the grooves, not under it (the failure to learn:
        # a heart joined to the liver across the diaphragm). Drawn last: the draws above stay.
        "tendon_mm": uniform(rng, 1.5, 3.0),
        "inferior_fat_mm": uniform(rng, 0.0, 1.5),
    }


def draw_liver_tip(rng: np.random.Generator) -> dict[str, Any]:
    """The right lobe's thin inferior tip (anatomy 2, 60%): a sheet of liver that hangs 30-70 mm
    below the lobe along the lateral abdominal wall, between the wall and the colon, as in real
    scans (a 44 mL tip of a native-phase scan at 37 HU was the real example's largest miss).
    `thickness_mm` and `depth_mm` are the sheet's half-axes (liver.liver_parts uses them as
    radii): 12-36 mm thick and 50-100 mm front to back, as the real tip is 12-30 mm and 60-100 mm
    over its lowest 40 mm. Its front-back place is a fraction of the cavity's half-depth."""
    return {
        "present": bool(rng.random() < 0.6),
        "thickness_mm": uniform(rng, 6, 18),
        "depth_mm": uniform(rng, 25, 50),
        "length_mm": uniform(rng, 30, 70),
        "y": uniform(rng, -0.35, 0.25),
    }


def draw_rib_gap(rng: np.random.Generator) -> float:
    """Anatomy 3: mm of muscle between the cavity (where the liver lies) and the ribs' inner
    surface, the diaphragm and the innermost intercostals. Anatomy 1 and 2 leave 1 mm, so a
    fifth of their livers' surface lies within 3 mm of bone; on the two real scans none does, and
    the nearest tenth of the surface near bone is 5.7-6.7 mm from it."""
    return uniform(rng, 2, 7)


def draw_bladder(rng: np.random.Generator) -> dict[str, Any]:
    """Anatomy 3: the urinary bladder, empty to full (about 20-600 mL), on the pelvic floor
    behind the pubis. On the second real scan the bundled model, which had never seen one, took
    its 324 mL of urine for liver. `urine_u` is the quantile of its HU."""
    fill = float(rng.uniform())
    return {
        "radii_mm": [20 + 35 * fill * uniform(rng, 0.8, 1.2), 15 + 30 * fill * uniform(rng, 0.8, 1.2),
                     15 + 35 * fill * uniform(rng, 0.8, 1.2)],
        "x_mm": uniform(rng, -15, 15),
        "floor_below_iliac_mm": uniform(rng, 130, 170),  # the pelvic floor under the iliac crest
        "wall_mm": uniform(rng, 2, 5),
        "urine_u": float(rng.uniform()),
    }


def draw_true_pelvis(rng: np.random.Generator) -> dict[str, Any]:
    """Anatomy 3: the true pelvis (pelvis.paint_true_pelvis). The inlet is 110-140 mm wide, as
    an adult's is; the hip bone's ring 7-12 mm thick, lined by 10-20 mm of muscle."""
    return {
        "brim_below_iliac_mm": uniform(rng, 40, 60),
        "inlet_half_width_mm": uniform(rng, 55, 70),
        "pubis_gap_mm": uniform(rng, 3, 10),  # between the cavity's front and the pubis
        "lining_mm": uniform(rng, 10, 20),
        "bone_mm": uniform(rng, 7, 12),
        "femoral_head_mm": uniform(rng, 21, 26),
        "hip_above_floor_mm": uniform(rng, 30, 50),
    }


def draw_disease(rng: np.random.Generator) -> dict[str, Any]:
    """The uniforms that decide the disease flags (read by resolve_disease) and every magnitude."""
    return {
        "u": {
            name: float(rng.random())
            for name in ("size", "ascites", "tumours", "lipiodol", "ducts")
        },
        "cirrhosis_scale": uniform(rng, 0.82, 0.95),  # linear: 0.55-0.85 of the volume
        "right_lobe_atrophy": uniform(rng, 0.8, 0.95),
        "caudate_scale": uniform(rng, 1.3, 1.7),
        "nodularity": uniform(rng, 0.02, 0.05),  # of the liver's normalised radius
        "hepatomegaly_scale": uniform(rng, 1.1, 1.25),
        "ascites_mm": _log_uniform(float(rng.random()), 4, 30),  # mostly a thin rim
        "ascites_pelvis_mm": uniform(rng, 0, 40),  # pool height above the iliac crest
        "duct_radius_mm": uniform(rng, 3, 6),
    }


def resolve_disease(drawn: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The disease flags (DISEASE_FLAGS) from the drawn uniforms, `given` ones replacing theirs,
    the dependent probabilities following what was given; plus the magnitudes, a given one (e.g.
    "ascites_mm") replacing its draw.

    Raises ValueError for an unknown flag, magnitude or burden, cirrhosis with hepatomegaly, or
    lipiodol without HCC.
    """
    magnitudes = {k: v for k, v in drawn.items() if k != "u"}
    unknown = sorted(set(given) - set(DISEASE_FLAGS) - set(magnitudes))
    if unknown:
        raise ValueError(f"unknown disease keys {unknown}; use {DISEASE_FLAGS} or a magnitude {sorted(magnitudes)}")
    u = drawn["u"]
    out: dict[str, Any] = {}
    out["cirrhosis"] = bool(given.get("cirrhosis", u["size"] < CIRRHOSIS_P))
    hepatomegaly = not out["cirrhosis"] and CIRRHOSIS_P <= u["size"] < CIRRHOSIS_P + HEPATOMEGALY_P
    out["hepatomegaly"] = bool(given.get("hepatomegaly", hepatomegaly))
    if out["cirrhosis"] and out["hepatomegaly"]:
        raise ValueError("a liver is either cirrhotic (small) or enlarged, not both")
    out["ascites"] = bool(given.get("ascites", u["ascites"] < ASCITES_P[out["cirrhosis"]]))
    cdf = np.cumsum(TUMOUR_BURDEN_P[out["cirrhosis"]])
    drawn_burden = TUMOUR_BURDENS[min(int(np.searchsorted(cdf, u["tumours"], "right")), 3)]
    out["tumours"] = str(given.get("tumours", drawn_burden))
    if out["tumours"] not in TUMOUR_BURDENS:
        raise ValueError(f"tumours must be one of {TUMOUR_BURDENS}, got {out['tumours']!r}")
    hcc = out["tumours"] == "hcc"
    out["lipiodol"] = bool(given.get("lipiodol", hcc and u["lipiodol"] < LIPIODOL_P))
    if out["lipiodol"] and not hcc:
        raise ValueError("lipiodol is given to HCC: it needs tumours='hcc'")
    duct = u["ducts"] < BILIARY_DILATATION_P
    out["biliary_dilatation"] = bool(given.get("biliary_dilatation", duct))
    return out | magnitudes | {k: float(v) for k, v in given.items() if k in magnitudes}


def draw_tumours(rng: np.random.Generator) -> dict[str, Any]:
    """Anatomy 2's lesions before the burden is known: a count per burden and MAX_LESIONS lesions
    with every value any kind needs (always all drawn, so an override shifts nothing)."""
    counts = {
        "benign": int(rng.integers(1, 7)),
        "hcc": int(rng.integers(1, 5)),
        "metastases": int(rng.integers(6, MAX_LESIONS + 1)),
    }
    lesions = []
    for _ in range(MAX_LESIONS):
        lesions.append(
            {
                "position": [uniform(rng, -1, 1), uniform(rng, -1, 1), uniform(rng, -1, 1)],
                "elongation": [uniform(rng, 0.7, 1.3), uniform(rng, 0.7, 1.3)],
                "size_u": float(rng.random()),
                "benign_kind": str(rng.choice(["hypo", "hypo", "cyst", "hyper"])),
                "benign_delta_u": float(rng.random()),
                "cyst_hu": uniform(rng, 0, 20),
                # HCC against the liver: a little darker unenhanced, bright in the arterial phase,
                # washed out (darker than the liver) in the portal and delayed phases.
                "hcc_delta_hu": [
                    uniform(rng, -20, -5),
                    uniform(rng, 30, 90),
                    uniform(rng, -35, -10),
                    uniform(rng, -40, -10),
                ],
                "metastasis_delta_hu": uniform(rng, -60, -20),
                "necrosis_u": float(rng.random()),
                "necrosis_fraction": uniform(rng, 0.35, 0.7),  # of the radius
                "lipiodol_u": float(rng.random()),
                "lipiodol_cut": uniform(rng, -0.8, 0.3),  # field level: lower fills more
            }
        )
    return {"counts": counts, "lesions": lesions}


def tumour_lesions(drawn: dict[str, Any], disease: dict[str, Any]) -> tuple[int, list[dict]]:
    """(how many lesions the burden has, MAX_LESIONS lesions of its kinds): n_lesions picks a
    prefix. A burden of none has benign lesions for an explicit count to pick."""
    burden = disease["tumours"]
    n = 0 if burden == "none" else drawn["counts"][burden]
    out = []
    for i, raw in enumerate(drawn["lesions"]):
        les = {"position": raw["position"], "elongation": raw["elongation"]}
        if burden == "hcc":
            # The first is large (2-7 cm radius), the others smaller satellites or nodules.
            r = (
                _log_uniform(raw["size_u"], 20, 70)
                if i == 0
                else _log_uniform(raw["size_u"], 6, 30)
            )
            les |= {"kind": "hcc", "radius_mm": r, "delta_hu": raw["hcc_delta_hu"]}
            necrotic = r > 20 and raw["necrosis_u"] < 0.6
            treated = disease["lipiodol"] and (i == 0 or raw["lipiodol_u"] < 0.5)
            les["lipiodol_cut"] = raw["lipiodol_cut"] if treated else None
        elif burden == "metastases":
            r = _log_uniform(raw["size_u"], 4, 25)
            les |= {"kind": "metastasis", "radius_mm": r, "delta_hu": raw["metastasis_delta_hu"]}
            necrotic = r > 15 and raw["necrosis_u"] < 0.3
        else:
            kind = raw["benign_kind"]
            lo, hi = (-70, -15) if kind == "hypo" else (15, 60)
            les |= {
                "kind": kind,
                "radius_mm": _log_uniform(raw["size_u"], 4, 35),
                "delta_hu": lo + raw["benign_delta_u"] * (hi - lo),
                "cyst_hu": raw["cyst_hu"],
            }
            necrotic = False
        les["necrosis_fraction"] = raw["necrosis_fraction"] if necrotic else 0.0
        out.append(les)
    return n, out


def draw_streaks(rng: np.random.Generator) -> dict[str, Any]:
    """Lipiodol's streak artefact: angular harmonics (bright and dark rays through a deposit),
    strength (HU at the edge of a 2 cm^2 deposit; at most 1.5 times that for larger ones) and
    fall-off with distance."""
    k = 6
    return {
        "harmonics": [int(n) for n in rng.integers(6, 40, k)],
        "weights": [uniform(rng, 0.2, 1.0) for _ in range(k)],
        "phases": [uniform(rng, 0, 2 * math.pi) for _ in range(k)],
        "strength_hu": uniform(rng, 40, 150),
        "falloff_mm": uniform(rng, 20, 60),
    }
