"""Tests for train/phantoms/tissues.py: the code table, the HU ranges, and the ranges against the
real sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import train.phantoms.tissues as tissues
from train.phantoms import (
    BILE_DUCT,
    HEART_CODES,
    HU_RANGES,
    LESION_BASE,
    LIPIODOL,
    LIVER,
    LIVER_CODES,
    MAX_LESIONS,
    NECROSIS,
    PHASES,
)

SAMPLE = Path(__file__).parents[3] / ".." / "shared" / "data" / "ct-dicom-sample"


@pytest.mark.realdata
def test_hu_ranges_cover_the_real_sample() -> None:
    """The portal-venous ranges the phantoms draw from hold the real sample's liver."""
    if not (SAMPLE / "liver_mask.nii.gz").exists():
        pytest.skip(f"real CT sample not found at {SAMPLE.resolve()}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SAMPLE / "dicom")))
    ct = sitk.GetArrayFromImage(reader.Execute())
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "liver_mask.nii.gz"))) > 0
    lo, hi = HU_RANGES["liver"][PHASES.index("portal")]
    assert lo <= np.median(ct[liver]) <= hi
    fat = ct[(ct > -200) & (ct < -30)]
    peak = np.bincount((fat + 200).astype(int)).argmax() - 200
    assert HU_RANGES["fat"][0] <= peak <= HU_RANGES["fat"][1]


def test_every_code_is_one_uint8_with_a_tissue_and_an_hu_range() -> None:
    codes = {
        name: value
        for name, value in vars(tissues).items()
        if name.isupper() and type(value) is int and "LESION" not in name
    }
    assert len(set(codes.values())) == len(codes), "two tissues share a code"
    assert all(
        0 <= c < tissues.CLASSIC_LESION_BASE or 48 <= c < LESION_BASE for c in codes.values()
    )
    assert LESION_BASE + MAX_LESIONS <= 256
    for code in codes.values():
        assert tissues.TISSUE_OF_CODE[code] in HU_RANGES
    assert set(tissues.CLASSIC_TISSUES) | set(tissues.ANATOMY2_TISSUES) | set(tissues.ANATOMY3_TISSUES) == set(HU_RANGES)
    assert not set(tissues.ANATOMY3_TISSUES) & (set(tissues.CLASSIC_TISSUES) | set(tissues.ANATOMY2_TISSUES))


def test_liver_codes_hold_what_the_label_calls_liver() -> None:
    assert {LIVER, NECROSIS, LIPIODOL, BILE_DUCT} <= set(LIVER_CODES)
    assert {LESION_BASE + i for i in range(MAX_LESIONS)} <= set(LIVER_CODES)
    assert {tissues.CLASSIC_LESION_BASE + i for i in range(tissues.CLASSIC_MAX_LESIONS)} <= set(
        LIVER_CODES
    )
    assert not set(HEART_CODES) & set(LIVER_CODES)
    assert tissues.ASCITES not in LIVER_CODES


@pytest.mark.parametrize("phase", ["portal", "delayed"])
def test_the_blood_pool_overlaps_the_liver_in_the_late_phases(phase: str) -> None:
    """Why the network must learn the heart: its blood is liver-bright in these phases."""
    i = PHASES.index(phase)
    liver_lo, liver_hi = HU_RANGES["liver"][i]
    for chamber in ("lv_blood", "rv_blood", "la_blood", "ra_blood"):
        lo, hi = HU_RANGES[chamber][i]
        assert lo < liver_hi and hi > liver_lo
    assert HU_RANGES["lv_blood"][i] == ((120.0, 200.0), (90.0, 150.0))[i - 2]
