"""Tests for train/phantoms/heart.py: anatomy 2's heart, its parts, where it lies, its HU."""

from __future__ import annotations

import numpy as np
import pytest

from tests.train.phantoms.conftest import HEALTHY, IDENTITY, NOISELESS, arrays, column_gaps_mm
from train.phantoms import (
    EPICARDIAL_FAT,
    HEART,
    HEART_CODES,
    HEART_LA,
    HEART_LV,
    HEART_RA,
    HEART_RV,
    HU_RANGES,
    MYOCARDIUM,
    PERICARDIUM,
    PHASES,
    make_phantom,
)

CHEST = {"spacing_xyz_mm": (3.0, 3.0, 3.0), "z_range": (-90.0, 150.0), "direction": IDENTITY}
PARTS = {
    HEART_LV: "lv_blood",
    HEART_RV: "rv_blood",
    HEART_LA: "la_blood",
    HEART_RA: "ra_blood",
    MYOCARDIUM: "myocardium",
    EPICARDIAL_FAT: "epicardial_fat",
    PERICARDIUM: "pericardium",
}


@pytest.fixture(scope="module")
def by_phase() -> dict[str, tuple]:
    """One noiseless chest-and-upper-abdomen phantom per phase (seed 2, healthy liver)."""
    return {
        ph: arrays(make_phantom(2, phase=ph, disease=HEALTHY, **NOISELESS, **CHEST))
        for ph in PHASES
    }


def test_the_heart_has_its_chambers_and_layers_and_is_not_liver(by_phase) -> None:
    _, liver, tissues = by_phase["portal"]
    voxel_ml = 3.0**3 / 1000.0
    for code in PARTS:
        assert (tissues == code).sum() * voxel_ml > 2.0, f"code {code} ({PARTS[code]}) missing"
    assert not (tissues == HEART).any()  # anatomy 1's one-piece heart is gone
    heart = np.isin(tissues, HEART_CODES)
    assert 300.0 < heart.sum() * voxel_ml < 1200.0  # a heart in its sac: 0.3-1.2 L
    assert not liver[heart].any()


@pytest.mark.parametrize("phase", PHASES)
def test_heart_hu_follows_the_phase(by_phase, phase: str) -> None:
    ct, liver, tissues = by_phase[phase]
    i = PHASES.index(phase)
    for code, name in PARTS.items():
        r = HU_RANGES[name]
        lo, hi = r[i] if isinstance(r[0], tuple) else r
        median = float(np.median(ct[tissues == code]))
        assert lo - 15 <= median <= hi + 15, f"{name} {median} HU outside {lo}-{hi} in {phase}"
    blood = {
        c: float(np.median(ct[tissues == c])) for c in (HEART_LV, HEART_LA, HEART_RV, HEART_RA)
    }
    if phase == "native":
        assert all(25 <= hu <= 60 for hu in blood.values())
    else:  # enhanced: the muscle a little below its blood
        assert float(np.median(ct[tissues == MYOCARDIUM])) < blood[HEART_LV]
    if phase in ("portal", "delayed"):  # the blood pool inside the liver's own range
        assert all(85 <= hu <= 205 for hu in blood.values())
        liver_lo, liver_hi = HU_RANGES["liver"][i]
        assert min(blood.values()) < liver_hi + 20 and max(blood.values()) > liver_lo


@pytest.mark.parametrize("seed", [0, 1, 3, 4, 6])
def test_the_heart_rests_on_the_diaphragm_over_the_left_lobe_and_the_dome(seed: int) -> None:
    p = make_phantom(seed, disease=HEALTHY, **CHEST)
    _, liver, tissues = arrays(p)
    heart = np.isin(tissues, HEART_CODES)
    gaps = column_gaps_mm(heart, liver > 0, spacing_z=3.0)
    # Above the liver everywhere, and in the closest columns only the central tendon and the
    # pericardium between them (plus a voxel each side on a 3 mm grid).
    h = p.params["heart"]
    assert gaps.size > 100
    assert gaps.min() > 0
    assert gaps.min() <= h["tendon_mm"] + h["pericardium_mm"] + 6.0
    # The heart muscle itself a few mm over the dome, as on real scans, where the model must
    # tell the two apart: the tendon, the sac and at most 1.5 mm of fat between.
    muscle = column_gaps_mm(tissues == MYOCARDIUM, liver > 0, spacing_z=3.0)
    assert 0 < muscle.min() <= h["tendon_mm"] + h["pericardium_mm"] + h["inferior_fat_mm"] + 6.0
    # Its footprint lies over the liver on both sides of the midline: the left lobe and the dome.
    over = heart.any(axis=0) & liver.any(axis=0)
    assert over.sum() > 0.3 * heart.any(axis=0).sum()
    x_mm = p.ct.GetOrigin()[0] + 3.0 * np.arange(tissues.shape[2])
    left = x_mm > p.params["geometry"]["body_centre_xy_mm"][0]  # LPS: +x is the patient's left
    assert over[:, left].sum() > 20 and over[:, ~left].sum() > 20
