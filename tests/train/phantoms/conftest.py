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


# The scanner's noise and blur off, so that a tissue's voxels hold its drawn HU (plus texture,
# cupping and the calibration offset).
NOISELESS = {"noise_sd_hu": 0.0, "blur_sigma_mm": 0.0, "slice_thickness_mm": 0.0}
# A liver with no disease that changes its shape or surroundings.
HEALTHY = {"cirrhosis": False, "hepatomegaly": False, "ascites": False, "tumours": "none"}
HEALTHY |= {"lipiodol": False, "biliary_dilatation": False}


def column_gaps_mm(upper: np.ndarray, lower: np.ndarray, spacing_z: float) -> np.ndarray:
    """In every (y, x) column holding both masks (z, y, x; z up), the distance from the lowest
    voxel of `upper` to the highest of `lower`, mm (negative: `upper` reaches below)."""
    nz = upper.shape[0]
    z = np.arange(nz)[:, None, None]
    bottom = np.where(upper, z, nz).min(axis=0)
    top = np.where(lower, z, -1).max(axis=0)
    both = upper.any(axis=0) & lower.any(axis=0)
    return (bottom - top)[both] * spacing_z
