"""Tests for train/phantoms/scanner.py: lipiodol's streak artefact."""

from __future__ import annotations

import numpy as np

from tests.train.phantoms.conftest import HEALTHY, IDENTITY, NOISELESS, arrays
from train.phantoms import LIPIODOL, MUSCLE, make_phantom

KW = {"spacing_xyz_mm": (3.0, 3.0, 3.0), "z_range": (-250.0, 40.0), "direction": IDENTITY}


def test_lipiodol_streaks_cross_the_slices_through_the_deposit() -> None:
    """Noise off: the body wall's muscle, one HU everywhere else, is streaked bright and dark in
    the slices through the deposit, and only there."""
    p = make_phantom(5, disease=HEALTHY | {"tumours": "hcc", "lipiodol": True}, **NOISELESS, **KW)
    ct, _, tissues = arrays(p)
    through = np.flatnonzero((tissues == LIPIODOL).any(axis=(1, 2)))
    assert through.size > 3
    drawn = p.params["hu"]["muscle"]

    def spread(z: int) -> float:
        hu = ct[z][tissues[z] == MUSCLE]
        return float(np.percentile(hu, 95) - np.percentile(hu, 5))

    far = [z for z in range(ct.shape[0]) if np.abs(through - z).min() * 3.0 > 45.0]
    assert max(spread(z) for z in far) < 10.0
    assert np.median([spread(z) for z in through]) > 15.0
    z = int(through[len(through) // 2])
    hu = ct[z][tissues[z] == MUSCLE]
    assert hu.min() < drawn - 10 < drawn + 10 < hu.max()  # dark rays and bright rays


def test_no_deposit_no_streaks() -> None:
    p = make_phantom(5, disease=HEALTHY | {"tumours": "hcc"}, **NOISELESS, **KW)
    ct, _, tissues = arrays(p)
    spreads = [
        np.ptp(ct[z][tissues[z] == MUSCLE])
        for z in range(ct.shape[0])
        if (tissues[z] == MUSCLE).sum() > 50
    ]
    assert max(spreads) < 20.0  # texture-free muscle: cupping and the calibration offset only
