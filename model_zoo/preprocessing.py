"""A card's input contract and its inverse: the one code path training and serving both use.

`prepare` takes a CT (a SimpleITK image in HU, any orientation, spacing, direction cosines) to the
model grid the card declares: axes in the contract's orientation, the contract's spacing, optionally
cropped to the body, HU clipped and normalised. `restore` takes per-channel arrays on that grid back
onto the input's own grid by resampling in physical space, so the answer lands exactly where the
input was, whatever its orientation (LPS, RAS, flipped, oblique). Arrays are (D, H, W) = (z, y, x)
as `sitk.GetArrayFromImage` gives; SimpleITK's spacing/origin/size are (x, y, z).

Why one resample and not DICOMOrient + resample: the model grid is built directly with the
contract's direction cosines, centred on the input's physical extent. For an axis-aligned input
(any permutation or flip of axes, e.g. RAS or a reversed z) that is exactly the grid
`sitk.DICOMOrient(image, orientation)` followed by a resample to the new spacing would give, with
one interpolation pass and no reoriented full-resolution copy. For an oblique input the grid is
truly axis-aligned in the contract's frame (the rotation happens in the same resample), so the
network always sees canonical anatomy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from model_zoo.card import InputContract

logger = logging.getLogger(__name__)

AIR_HU = -1024.0
# A grid extent that overshoots a whole number of voxels by less than this does not add a voxel.
_EXTENT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CropBox:
    """The body crop, in voxels of the uncropped model grid (x, y, z order, as SimpleITK)."""

    index_xyz: tuple[int, int, int]
    size_xyz: tuple[int, int, int]
    full_size_xyz: tuple[int, int, int]


@dataclass(frozen=True)
class PreparedVolume:
    """A volume on the model grid.

    array: float32 (D, H, W), clipped and normalised (what the network takes).
    image: the same grid as a SimpleITK image holding HU (float32): its spacing, origin and
        direction are the model grid's geometry, used by `restore` and `label_to_model_grid`.
    contract: the contract that made it.
    crop: the body box when the contract crops to the body and a body was found, else None.
    """

    array: np.ndarray
    image: sitk.Image
    contract: InputContract
    crop: CropBox | None = None


def contract_direction(orientation: str) -> tuple[float, ...]:
    """Row-major 3x3 direction cosines of an orientation code ("LPS" -> identity, "RAS" -> diag(-1, -1, 1))."""
    return tuple(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(orientation))


def _check_volume(image: sitk.Image, what: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{what} must be a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )


def model_grid_size(image: sitk.Image, contract: InputContract) -> tuple[int, int, int]:
    """The (x, y, z) size of `model_grid(image, contract)`, computed without allocating it.

    The service checks it against its limit before anything of that size exists: a forged
    header (a few voxels at 300 mm) would otherwise ask for a grid of gigabytes.
    """
    size, _, _ = _grid_geometry(image, contract)
    if not np.isfinite(size).all():
        raise ValueError(f"the image's physical extent is not finite (spacing {image.GetSpacing()})")
    return (int(size[0]), int(size[1]), int(size[2]))  # Python ints: exact, however large


def model_grid(image: sitk.Image, contract: InputContract) -> sitk.Image:
    """The model grid for `image`: a reference image carrying the geometry into sitk.Resample.

    The grid has the contract's direction and spacing, is centred on the input's physical extent
    (voxel edges, not centres) and covers all of it (sizes rounded up). Returns a uint8 image of
    the grid's size, all zeros (small: model grids are coarse).
    """
    new_size, new_origin, direction = _grid_geometry(image, contract)
    grid = sitk.Image([int(n) for n in new_size], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(s) for s in contract.spacing_xyz_mm))
    grid.SetOrigin(tuple(float(o) for o in new_origin))
    grid.SetDirection(tuple(float(d) for d in direction.ravel()))
    return grid


def _grid_geometry(image: sitk.Image, contract: InputContract) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(size_xyz, origin, direction 3x3) of the model grid for `image` (see `model_grid`)."""
    direction = np.array(contract_direction(contract.orientation)).reshape(3, 3)
    source_direction = np.array(image.GetDirection()).reshape(3, 3)
    size = np.array(image.GetSize(), dtype=float)
    spacing = np.array(image.GetSpacing())
    origin = np.array(image.GetOrigin())
    # The 8 corners of the input's voxel-edge box, in physical space, then in the model's frame.
    corners_index = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in size], indexing="ij")).reshape(
        3, -1
    )
    corners = origin[:, None] + source_direction @ (corners_index * spacing[:, None])
    in_frame = direction.T @ corners
    low, high = in_frame.min(axis=1), in_frame.max(axis=1)
    target_spacing = np.array(contract.spacing_xyz_mm)
    # float, not int: a forged spacing must not wrap around int64 before the size is checked
    new_size = np.maximum(1, np.ceil((high - low) / target_spacing - _EXTENT_TOLERANCE))
    centre = direction @ ((low + high) / 2)
    new_origin = centre - direction @ ((new_size - 1) / 2 * target_spacing)
    return new_size, new_origin, direction


def normalise_hu(array_hu: np.ndarray, contract: InputContract) -> np.ndarray:
    """Clip HU to the contract's window and normalise ("window01" -> [0, 1]; "zscore"). float32, same shape."""
    lo, hi = contract.hu_window
    out = np.clip(np.asarray(array_hu, dtype=np.float32), lo, hi)
    if contract.normalisation == "window01":
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
    else:
        out -= np.float32(contract.mean)
        out *= np.float32(1.0 / contract.std)
    return out


def hu_to_input_units(hu: float, contract: InputContract) -> float:
    """An HU value (e.g. an air threshold) in the network's input units: clipped to the window, normalised.

    Thresholds outside the window land on its edge (what the network sees there too).
    """
    return float(normalise_hu(np.array([hu], dtype=np.float32), contract)[0])


def input_units_to_hu(value: float, contract: InputContract) -> float:
    """The inverse of `hu_to_input_units` for values inside the window (HU, float)."""
    if contract.normalisation == "window01":
        lo, hi = contract.hu_window
        return float(lo + value * (hi - lo))
    return float(contract.mean + value * contract.std)


def _body_box(image_hu: sitk.Image, contract: InputContract) -> CropBox | None:
    """Bounding box (+ margin) of the largest component above the body threshold, or None if none."""
    body = sitk.BinaryThreshold(
        image_hu,
        lowerThreshold=contract.body_threshold_hu,
        upperThreshold=1e9,
        insideValue=1,
        outsideValue=0,
    )
    components = sitk.RelabelComponent(sitk.ConnectedComponent(body), sortByObjectSize=True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(components)
    if not stats.HasLabel(1):
        return None
    x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
    full = np.array(image_hu.GetSize())
    margin = np.ceil(contract.body_margin_mm / np.array(image_hu.GetSpacing())).astype(int)
    start = np.maximum(0, np.array([x, y, z]) - margin)
    stop = np.minimum(full, np.array([x + sx, y + sy, z + sz]) + margin)
    return CropBox(
        index_xyz=tuple(int(v) for v in start),
        size_xyz=tuple(int(v) for v in stop - start),
        full_size_xyz=tuple(int(v) for v in full),
    )


def area_downsample(image: sitk.Image, contract: InputContract) -> sitk.Image:
    """`image` with whole blocks of voxels averaged where the model grid is coarser (sitk.BinShrink).

    Linear resampling from 0.8 mm to 4 mm reads a point in every fifth voxel: noise stays at full
    amplitude and an edge lands on one side of a voxel or the other. Averaging blocks first makes
    each coarse voxel the mean of the tissue in it (its partial-volume fraction, for a mask), as
    scikit-image's `anti_aliasing` does with a Gaussian. Per input axis the block is
    floor(model spacing along that axis / input spacing); the last block is padded by repeating
    the edge so that no slice is dropped. The result still needs the linear resample onto the grid.
    """
    direction = np.array(contract_direction(contract.orientation)).reshape(3, 3)
    source_direction = np.array(image.GetDirection()).reshape(3, 3)
    # the model spacing seen along each input axis (exact for axis-aligned inputs)
    along = np.abs(direction.T @ source_direction).T @ np.array(contract.spacing_xyz_mm)
    factors = np.maximum(1, np.floor(along / np.array(image.GetSpacing()) + 1e-6)).astype(int)
    if np.all(factors == 1):
        return image
    size = np.array(image.GetSize())
    pad = (factors - size % factors) % factors
    if pad.any():
        image = sitk.ZeroFluxNeumannPad(image, [0, 0, 0], [int(p) for p in pad])
    return sitk.BinShrink(image, [int(f) for f in factors])


def prepare(image: sitk.Image, contract: InputContract) -> PreparedVolume:
    """Bring a CT (HU, any geometry) onto the model grid the contract declares.

    Reorients to `contract.orientation`, resamples to `contract.spacing_xyz_mm` (linear, in
    physical space, after `area_downsample` if the contract asks for antialiasing; outside the
    input is air, -1024 HU), crops to the body if the contract says so
    (largest component above `body_threshold_hu`, bounding box plus `body_margin_mm`), then clips
    and normalises. Returns a PreparedVolume (array float32 (D, H, W)). Raises ValueError for a
    non-3D or multi-component image.
    """
    _check_volume(image, "the CT image")
    grid = model_grid(image, contract)
    resampled = sitk.Resample(
        area_downsample(image, contract) if contract.antialias else image,
        grid,
        sitk.Transform(),
        sitk.sitkLinear,
        AIR_HU,
        sitk.sitkFloat32,
    )
    crop = None
    if contract.crop_to_body:
        crop = _body_box(resampled, contract)
        if crop is None:
            logger.warning(
                "crop_to_body: nothing above %s HU; keeping the whole grid",
                contract.body_threshold_hu,
            )
        else:
            resampled = sitk.RegionOfInterest(resampled, crop.size_xyz, crop.index_xyz)
    array = normalise_hu(sitk.GetArrayViewFromImage(resampled), contract)
    return PreparedVolume(array=array, image=resampled, contract=contract, crop=crop)


def reference_region(
    active: np.ndarray, model: sitk.Image, reference: sitk.Image
) -> tuple[list[int], list[int]] | None:
    """The reference-grid box (start_xyz, size_xyz) whose linear resampling can see an `active` model voxel.

    A reference point's interpolation reads model voxels floor(c) and floor(c) + 1 of its
    continuous index c, so it can only see an active voxel in [lo, hi] if c lies in
    [lo - 1, hi + 1]: map that box's corners to the reference grid and widen by a voxel, then clip
    to the reference. None when no voxel is active, or when every active one lies beyond the
    reference (the model grid of an oblique scan covers more than the scan).
    """
    bounds = []
    for axis in (2, 1, 0):  # x, y, z
        hit = np.flatnonzero(active.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        bounds.append((hit[0] - 1.0, hit[-1] + 1.0))
    corners = [
        reference.TransformPhysicalPointToContinuousIndex(
            model.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
        )
        for x in bounds[0]
        for y in bounds[1]
        for z in bounds[2]
    ]
    low = np.floor(np.min(corners, axis=0)).astype(int) - 1
    high = np.ceil(np.max(corners, axis=0)).astype(int) + 1
    size = np.array(reference.GetSize())
    start, stop = np.maximum(low, 0), np.minimum(high + 1, size)
    if np.any(stop <= start):
        return None
    return [int(v) for v in start], [int(v) for v in stop - start]


def restore(
    channels: np.ndarray,
    prepared: PreparedVolume,
    reference: sitk.Image,
    *,
    outside: Sequence[float] | None = None,
    interpolation: Literal["linear", "nearest"] = "linear",
    tolerance: float = 0.0,
) -> np.ndarray:
    """Per-channel arrays on the model grid back onto `reference`'s grid (the input), in physical space.

    channels: (C, D, H, W) on `prepared`'s grid (probabilities, confidence...), any real dtype.
    outside: value of each channel where the reference lies beyond the model grid (e.g. outside a
        body crop). Default: 1 for channel 0 and 0 for the others (background), or 0 for a single
        channel (taken as a foreground probability).
    tolerance: model voxels within this of their channel's `outside` value are treated as equal to
        it. Only the reference box that can see the other voxels is resampled, the rest is filled,
        so for a small organ a tolerance of 1e-3 makes this many times faster; the result then
        differs from the exact resampling by at most `tolerance`. 0 (default): exact; the box
        still shrinks where the channel is exactly `outside` (e.g. skipped windows).
    Returns float32 (C, D', H', W') with D', H', W' the reference's (z, y, x) size, so
    `sitk.GetImageFromArray(out[c])` + `CopyInformation(reference)` is exactly the input's geometry.
    For a 2-class softmax, restoring channel 1 alone (outside=(0,)) and taking 1 - it for the
    background is exact (linear weights sum to 1) and halves the time.
    """
    _check_volume(reference, "the reference image")
    if channels.ndim != 4 or channels.shape[1:] != prepared.array.shape:
        raise ValueError(
            f"channels must be (C, D, H, W) with (D, H, W) = {prepared.array.shape} (the model grid), "
            f"got {channels.shape}"
        )
    n_channels = channels.shape[0]
    if outside is None:
        outside = [0.0] * n_channels
        if n_channels > 1:
            outside[0] = 1.0
    if len(outside) != n_channels:
        raise ValueError(f"outside has {len(outside)} values for {n_channels} channels")
    interpolator = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
    out = np.empty((n_channels, *reference.GetSize()[::-1]), dtype=np.float32)
    for c in range(n_channels):
        channel = np.ascontiguousarray(channels[c], dtype=np.float32)
        # Voxels within `tolerance` of `outside` count as outside.
        active = np.abs(channel - np.float32(outside[c])) > tolerance
        region = reference_region(active, prepared.image, reference)
        out[c] = outside[c]
        if region is None:
            continue
        (x0, y0, z0), (sx, sy, sz) = region
        moving = sitk.GetImageFromArray(channel)
        moving.CopyInformation(prepared.image)
        restored = sitk.Resample(
            moving,
            region[1],
            sitk.Transform(),
            interpolator,
            reference.TransformIndexToPhysicalPoint(region[0]),
            reference.GetSpacing(),
            reference.GetDirection(),
            float(outside[c]),
            sitk.sitkFloat32,
        )
        out[c, z0 : z0 + sz, y0 : y0 + sy, x0 : x0 + sx] = sitk.GetArrayViewFromImage(restored)
    return out


def label_to_model_grid(label: sitk.Image, prepared: PreparedVolume) -> np.ndarray:
    """A training mask (0/1, any geometry) on `prepared`'s model grid, (D, H, W).

    With an antialiasing contract: the liver fraction of each model voxel, float32 in [0, 1]
    (blocks averaged as the image's, then linear), so that the network learns where the edge lies
    inside a coarse voxel. Otherwise nearest neighbour, uint8. Voxels of the model grid outside the
    label's extent are 0 (background).
    """
    _check_volume(label, "the label image")
    if prepared.contract.antialias:
        fraction = area_downsample(sitk.Cast(label > 0, sitk.sitkFloat32), prepared.contract)
        resampled = sitk.Resample(
            fraction, prepared.image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
        )
        return np.clip(sitk.GetArrayFromImage(resampled), 0.0, 1.0)
    resampled = sitk.Resample(
        label, prepared.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return sitk.GetArrayFromImage(resampled)
