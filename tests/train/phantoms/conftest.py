"""Shared by the tests of train/phantoms/: grids, and arrays and positions read off a phantom."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from train.phantoms import Phantom

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# A full abdomen (lung bases to pelvis) at 4 mm: about 0.3 s per phantom on one core.
FULL = {"spacing_xyz_mm": (4.0, 4.0, 4.0), "z_range": (-300.0, 60.0), "direction": IDENTITY}


def arrays(p: Phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        sitk.GetArrayFromImage(p.ct),
        sitk.GetArrayFromImage(p.liver),
        sitk.GetArrayFromImage(p.tissues),
    )


def geometry(img: sitk.Image) -> tuple:
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def centre_of_mass_lps(mask: np.ndarray, img: sitk.Image) -> np.ndarray:
    """Physical (LPS, mm) centre of a (z, y, x) mask on img's grid."""
    idx_zyx = np.array(np.nonzero(mask), float).mean(axis=1)
    return np.array(img.TransformContinuousIndexToPhysicalPoint(tuple(idx_zyx[::-1])))


def body_mask(ct: np.ndarray) -> np.ndarray:
    """Largest connected region above -400 HU (the patient, not the table)."""
    labels, n = ndi.label(ct > -400)
    sizes = ndi.sum_labels(np.ones_like(labels), labels, range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))
