"""The per-phantom parameter draws: scan, body, organs and lesions, each from its own generator.

Each topic has its own generator (spawned from the seed, see make_phantom), so overriding one value
never changes another draw, and the values drawn are the same whatever the grid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from train.phantoms.tissues import MAX_LESIONS, PHASE_PROBABILITIES, PHASES

SCAN_KINDS = ("abdomen", "chest_abdomen", "liver", "slab")
SCAN_KIND_PROBABILITIES = (0.35, 0.1, 0.25, 0.3)
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
    """(how many lesions this phantom has, MAX_LESIONS drawn lesions): n_lesions picks a prefix."""
    n = 0 if rng.random() < 0.5 else int(rng.integers(1, 7))
    out = []
    for _ in range(MAX_LESIONS):  # always draw the maximum so an explicit count shifts nothing
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


def draw_scan(rng: np.random.Generator) -> dict[str, Any]:
    kind = str(rng.choice(SCAN_KINDS, p=SCAN_KIND_PROBABILITIES))
    top_abdomen, bottom_abdomen = uniform(rng, 20, 80), uniform(rng, -330, -230)
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
