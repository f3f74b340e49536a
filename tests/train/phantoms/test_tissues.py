"""Tests for train/phantoms/tissues.py: the HU ranges against the real sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from train.phantoms import HU_RANGES, PHASES

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
