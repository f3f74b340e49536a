"""The scanner: tissue codes to HU (means, texture, cupping), noise and blur, the reconstruction
circle; and the image grid and axes the phantom is rendered on."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from train.phantoms.canvas import Canvas
from train.phantoms.tissues import AIR, LIPIODOL, TEXTURE_HU, TISSUE_OF_CODE

if TYPE_CHECKING:
    from train.phantoms.anatomy import Anatomy


def kernel_energy(sigma_vox: float) -> float:
    """Sum of squared weights of scipy's 1D Gaussian kernel: how much it shrinks white-noise variance."""
    if sigma_vox < 1e-3:
        return 1.0
    radius = int(3.0 * sigma_vox + 0.5)  # as scipy's gaussian_filter with truncate=3
    x = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    k /= k.sum()
    return float((k**2).sum())


def intensities(
    anat: Anatomy,
    c: Canvas,
    hu: dict[str, float],
    scan: dict,
    tex: dict[str, float],
    rng: np.random.Generator,
    n_lesions: int,
    streaks: dict | None = None,
) -> np.ndarray:
    """HU image (D, H, W) float32: tissue means + texture + cupping (+ lipiodol's streaks), then
    scanner noise and blur."""
    lut = np.zeros(256, np.float32)
    for code, name in TISSUE_OF_CODE.items():
        if name in hu:  # anatomy 1 draws no HU for anatomy 2's tissues, nor paints them
            lut[code] = hu[name]
    for i in range(n_lesions):
        lut[anat.lesion_base + i] = hu[f"lesion_{i}"]
    t = c.tissue
    img = lut[t]
    for box, codes, name in anat.texture_boxes:
        amp = np.zeros(256, np.float32)
        amp[list(codes)] = TEXTURE_HU[name] * tex[name]
        field = c.smooth_eval(box, lambda b: anat.f_texture(b.xr, b.yr, b.w[:, 0, 0]), 5.0)
        img[box.sl] += amp[t[box.sl]] * field
    rho = anat.maps["body"]
    img -= (scan["cupping_hu"] * np.clip(1.0 - rho**2, 0.0, 1.0))[None]
    if streaks is not None:
        add_streaks(img, c, streaks)
    sigma_mm = np.array(
        [
            scan["blur_sigma_mm"],
            scan["blur_sigma_mm"],
            max(scan["slice_thickness_mm"] / 2.355, scan["blur_sigma_mm"]),
        ]
    )
    sigma_vox = sigma_mm / c.spacing
    energy = float(np.prod([kernel_energy(s) for s in sigma_vox]))
    noise = rng.standard_normal(t.shape, dtype=np.float32)
    sd = np.full(256, scan["noise_sd_hu"] / math.sqrt(energy), np.float32)
    sd[AIR] *= 0.25  # reconstructed air is far less noisy than tissue
    noise *= sd[t]
    img += noise
    del noise
    img = ndi.gaussian_filter(
        img, sigma=tuple(sigma_vox[::-1]), output=np.float32, mode="nearest", truncate=3.0
    )
    if scan["fov_circle"]:
        xc = c.xr + (scan["body_centre_xy_mm"][0] - scan["fov_centre_xy_mm"][0])
        yc = c.yr + (scan["body_centre_xy_mm"][1] - scan["fov_centre_xy_mm"][1])
        outside = (xc[None, :] ** 2 + yc[:, None] ** 2) > (0.5 * scan["fov_mm"]) ** 2
        img[:, outside] = scan["fov_fill_hu"]
    return img


def add_streaks(img: np.ndarray, c: Canvas, streaks: dict) -> None:
    """Lipiodol's streak artefact, in place: in every slice through a deposit, bright and dark rays
    through its centre (angular harmonics), stronger for a larger deposit, fading with distance;
    on tissue only (air outside the body keeps its value)."""
    deposit = c.tissue == LIPIODOL
    n, weights = np.asarray(streaks["harmonics"]), np.asarray(streaks["weights"])
    phases = np.asarray(streaks["phases"])
    pixel_mm2 = float(c.spacing[0] * c.spacing[1])
    for k in np.flatnonzero(deposit.any(axis=(1, 2))):
        ys, xs = np.nonzero(deposit[k])
        dx = c.xr[None, :] - float(c.xr[xs].mean())
        dy = c.yr[:, None] - float(c.yr[ys].mean())
        area = len(xs) * pixel_mm2
        edge = math.sqrt(area / math.pi)  # the deposit's equivalent radius
        theta = np.arctan2(dy, dx)[..., None]
        rays = (weights * np.cos(n * theta + phases)).sum(-1) / weights.sum()
        fade = 1.0 + np.maximum(np.hypot(dx, dy) - edge, 0.0) / streaks["falloff_mm"]
        amp = streaks["strength_hu"] * min(1.5, math.sqrt(area / 200.0))
        img[k] += np.where(c.tissue[k] != AIR, amp * rays / fade, 0.0).astype(np.float32)


def as_direction(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    """A 3x3 direction matrix from 9 row-major cosines; ValueError unless orthonormal."""
    d = np.asarray(direction, float).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        raise ValueError(
            f"direction must be an orthonormal 3x3 matrix (row-major, 9 values), got {d.ravel().tolist()}"
        )
    return d


def signed_permutation(d: np.ndarray) -> tuple[list[int], list[int]] | None:
    """(perm, signs) with d[:, j] = signs[j] * e[perm[j]], or None for an oblique direction."""
    perm, signs = [], []
    for j in range(3):
        col = d[:, j]
        p = int(np.argmax(np.abs(col)))
        if not math.isclose(abs(col[p]), 1.0, abs_tol=1e-9):
            return None
        perm.append(p)
        signs.append(1 if col[p] > 0 else -1)
    return perm, signs


def axis_grid(
    extent_lo: float,
    extent_hi: float,
    spacing: float | None,
    size: int | None,
    default_size: int | None,
    default_spacing: float | None,
) -> tuple[float, int]:
    """Spacing and size for one axis covering [lo, hi]: what is given wins, the rest follows the extent."""
    extent = extent_hi - extent_lo
    if spacing is None and size is None:
        if default_size is not None:
            size = default_size
        else:
            spacing = default_spacing
    if spacing is None:
        spacing = extent / size
    if size is None:
        size = max(1, int(round(extent / spacing)))
    return float(spacing), int(size)


def to_image_axes(arr: np.ndarray, perm: list[int], signs: list[int]) -> np.ndarray:
    """Re-index a canonical (z, y, x) array onto image axes whose axis j is signs[j] * physical perm[j]."""
    for j in range(3):
        if signs[j] < 0:
            arr = np.flip(arr, axis=2 - perm[j])
    return np.ascontiguousarray(np.transpose(arr, [2 - perm[2 - i] for i in range(3)]))


def image(arr: np.ndarray, origin, spacing, direction: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a (z, y, x) array with the given geometry."""
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    return img
