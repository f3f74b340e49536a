"""The checks a volume passes: the limits on what its header declares, then, once decoded, a
geometry and values some CT has.

From the header, before the pixel memory is allocated (`check_shape`, `check_decompressed`):
3 spatial dimensions within max_voxels and max_slices, and the pixel bytes it declares (after a
NIfTI's vox_offset) within max_decompressed_bytes.

Every decoded volume, whatever its format, then passes `finalise`; beyond its ranges lies a
damaged or forged header, whose model grid may be enormous (8 x 8 x 4 voxels at 300 mm
resample to 600 x 600 x 300 voxels at 4 mm):
- spacing 0.01-20 mm along every axis: micro-CT-like 0.05 mm pixels and the 10 mm slices of old
  scanners pass with room;
- at most 3,000 mm along every axis (voxels x spacing): a 2 m whole-body scan passes;
- origin within 100 m (1e5 mm) of the scanner's origin in every coordinate: patient coordinates
  lie within metres of it, and beyond 1e5 mm a NIfTI's float32 offsets can no longer place a
  voxel to 0.01 mm;
- orthonormal direction cosines (D^T D = I within 1e-3; DICOM's rounding is ~1e-6): a sheared or
  scaled grid (a MetaImage TransformMatrix may hold one) is no scanner's, and the mask could not
  be returned on it;
- slices (x by y) of at least 4 x 4 voxels, and no axis more than 512 times as long as another in
  voxels: 512 x 512 x 2 passes, 2 x 2 x 2999 and 5000 x 2 x 2 do not;
- values within [-100,000, 100,000] after the rescale: CT holds -1024 to 3071 HU, about 30,000
  on an extended scale, and 65,535 as raw unsigned values without their intercept.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from service.errors import InvalidVolume, TooLarge, format_bytes
from service.io.sniff import HEAD_BYTES
from service.settings import Settings

INT16_MIN, INT16_MAX = -32768, 32767
# The physical ranges of the module docstring: the geometry and values some CT has.
SPACING_RANGE_MM = (0.01, 20.0)
MAX_EXTENT_MM = 3000.0
MAX_ORIGIN_MM = 1e5
ORTHONORMAL_TOLERANCE = 1e-3
MIN_SLICE_VOXELS = 4
MAX_ASPECT = 512
VALUE_RANGE = (-1e5, 1e5)
SLACK = 1e-6  # relative: headers store float32, so 0.01 mm arrives as 0.0099999998 mm


def check_shape(name: str, sizes: list[int], settings: Settings) -> None:
    """3 spatial dims (trailing size-1 dims are squeezed later), within the voxel and slice limits."""
    shape = list(sizes)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    text = " x ".join(map(str, sizes))
    if len(shape) < 3:
        raise InvalidVolume(f"'{name}' is a {len(shape)}D image ({text}); a 3D CT volume is needed.")
    if len(shape) > 3:
        raise InvalidVolume(
            f"'{name}' is a {len(shape)}D image ({text}): a time series or several volumes; this service "
            "segments one 3D CT volume: upload a single one."
        )
    if min(shape) < 2:
        raise InvalidVolume(f"'{name}' is a single slice ({text}); a 3D CT volume needs several slices.")
    voxels = math.prod(shape)
    if voxels > settings.max_voxels:
        raise TooLarge(
            f"'{name}' declares {text} = {voxels:,} voxels; this service accepts at most "
            f"{settings.max_voxels:,} (LIVERSEG_MAX_VOXELS)."
        )
    if shape[2] > settings.max_slices:
        raise TooLarge(
            f"'{name}' has {shape[2]} slices; this service accepts at most {settings.max_slices} "
            "(LIVERSEG_MAX_SLICES)."
        )


def check_decompressed(name: str, pixel_bytes: int, settings: Settings, offset: int = 0) -> None:
    """TooLarge if the pixel bytes, after `offset` bytes of header (a NIfTI's vox_offset), pass the limit."""
    if offset + pixel_bytes > settings.max_decompressed_bytes:
        declared = (
            f"{format_bytes(offset + pixel_bytes)} ({format_bytes(pixel_bytes)} of pixel data after a "
            f"data offset (vox_offset) of {offset:,} bytes)"
            if offset > HEAD_BYTES
            else f"{format_bytes(offset + pixel_bytes)} of pixel data"
        )
        raise TooLarge(
            f"'{name}' declares {declared}; this service inflates at most "
            f"{format_bytes(settings.max_decompressed_bytes)} (LIVERSEG_MAX_DECOMPRESSED_BYTES)."
        )


def finalise(image: sitk.Image, what: str) -> tuple[sitk.Image, list[str]]:
    """Squeeze to 3D, check geometry and values, store as int16 where lossless, else float32."""
    warnings: list[str] = []
    if image.GetDimension() > 3:
        size = list(image.GetSize())
        image = sitk.Extract(
            image, size[:3] + [0] * (len(size) - 3), [0] * len(size),
            sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX,
        )
    _check_geometry(image, what)

    view = sitk.GetArrayViewFromImage(image)
    low, high, nonfinite, integral = _value_range(view)
    if nonfinite:
        raise InvalidVolume(
            f"{what} holds {nonfinite:,} NaN or infinite voxel value(s); a CT volume must hold finite HU values."
        )
    if low < VALUE_RANGE[0] or high > VALUE_RANGE[1]:
        raise InvalidVolume(
            f"{what} holds values from {low:g} to {high:g}; CT values lie within [{VALUE_RANGE[0]:,.0f}, "
            f"{VALUE_RANGE[1]:,.0f}] (HU, even on an extended scale, or raw stored values): its rescale "
            "slope and intercept (scl_slope, RescaleSlope, RescaleIntercept) or its data are damaged."
        )
    if integral and INT16_MIN <= low and high <= INT16_MAX:
        target = sitk.sitkInt16
    else:
        target = sitk.sitkFloat32
    if image.GetPixelID() != target:
        image = sitk.Cast(image, target)  # exact: integral values in range, or float to float32
    if high <= 1.0 and low >= 0.0:
        warnings.append(
            f"The values lie within [{low:g}, {high:g}]: this looks like a mask or a normalised image, "
            "not CT in HU; the segmentation will be meaningless."
        )
    elif low >= 0 and high > 1500:
        warnings.append(
            f"The values run from {low:g} to {high:g}, none negative: they look like raw scanner values "
            "without the rescale intercept (e.g. -1024), not HU; the segmentation may be wrong."
        )
    return image, warnings


def _check_geometry(image: sitk.Image, what: str) -> None:
    """InvalidVolume unless spacing, extent, origin, direction and shape are some CT's (module docstring)."""
    size = np.array(image.GetSize())
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InvalidVolume(f"{what} has voxel spacing {spacing.tolist()} mm; spacing must be positive.")
    if not (np.isfinite(origin).all() and np.isfinite(direction).all()):
        raise InvalidVolume(f"{what} has a damaged geometry (origin or direction not finite).")
    low, high = SPACING_RANGE_MM
    for axis, value in zip("xyz", spacing, strict=True):
        if not low * (1 - SLACK) <= value <= high * (1 + SLACK):
            raise InvalidVolume(
                f"{what} has voxel spacing {_mm(spacing)} mm: {value:g} mm along {axis} lies outside "
                f"{low:g}-{high:g} mm, the range any CT lies in; the header is damaged (or not in mm)."
            )
    for axis, n, value in zip("xyz", size, spacing, strict=True):
        if n * value > MAX_EXTENT_MM * (1 + SLACK):
            raise InvalidVolume(
                f"{what} spans {n * value:,.0f} mm along {axis} ({n} voxels of {value:g} mm); a CT spans "
                f"at most {MAX_EXTENT_MM:,.0f} mm along any axis: the header's size or spacing is damaged."
            )
    for axis, value in zip("xyz", origin, strict=True):
        if abs(value) > MAX_ORIGIN_MM * (1 + SLACK):
            raise InvalidVolume(
                f"{what} has its origin at {_mm(origin)} mm: {value:g} mm along {axis} lies beyond "
                f"{MAX_ORIGIN_MM:g} mm of the scanner's origin, where no patient is; the header is damaged."
            )
    deviation = float(np.abs(direction.T @ direction - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOLERANCE:
        raise InvalidVolume(
            f"{what} has direction cosines {np.round(direction, 4).tolist()} that are not orthonormal "
            f"(D^T D differs from the identity by {deviation:.3g}, more than {ORTHONORMAL_TOLERANCE:g}): "
            "a sheared or scaled grid, which no scanner makes and the mask could not be returned on. "
            "Resample the volume onto an orthogonal grid."
        )
    text = " x ".join(map(str, size))
    if min(size[:2]) < MIN_SLICE_VOXELS:
        raise InvalidVolume(
            f"{what} is {text} voxels: its slices (x by y) are {size[0]} x {size[1]}, and a CT slice "
            f"holds at least {MIN_SLICE_VOXELS} x {MIN_SLICE_VOXELS} (usually 512 x 512)."
        )
    if size.max() > MAX_ASPECT * size.min():
        raise InvalidVolume(
            f"{what} is {text} voxels: its longest axis is {size.max() / size.min():.0f} times its "
            f"shortest, where a CT's is at most {MAX_ASPECT} times: the header's size is damaged."
        )


def _mm(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _value_range(view: np.ndarray) -> tuple[float, float, int, bool]:
    """(min, max, count of NaN/inf, all integral?) over a (D, H, W) array, a slab at a time."""
    if view.dtype.kind in "iu":
        return float(view.min()), float(view.max()), 0, True
    low, high, nonfinite, integral = math.inf, -math.inf, 0, True
    step = max(1, (16 << 20) // max(view[0].size, 1))
    for z in range(0, view.shape[0], step):
        slab = view[z : z + step]
        finite = np.isfinite(slab)
        bad = int(slab.size - np.count_nonzero(finite))
        nonfinite += bad
        values = slab[finite] if bad else slab
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
            integral = integral and bool(np.all(values == np.round(values)))
    return low, high, nonfinite, integral
