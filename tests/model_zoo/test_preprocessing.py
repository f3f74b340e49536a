"""The input contract and its inverse: geometry in every orientation, crop, labels, intensities."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from model_zoo.card import InputContract
from model_zoo.preprocessing import (
    PreparedVolume,
    area_downsample,
    contract_direction,
    hu_to_input_units,
    input_units_to_hu,
    label_to_model_grid,
    normalise_hu,
    prepare,
    reference_region,
    restore,
)

CENTRE_MM = np.array([4.0, -3.0, 2.0])  # off the grid centre, so a flip or shift would show
RADIUS_MM = 28.0
SPHERE_HU, AIR = 60, -1000
CONTRACT = InputContract(
    spacing_xyz_mm=(3, 3, 3), hu_window=(-200, 250), patch_size_dhw=(32, 32, 32)
)


def rotation_deg(x: float, y: float, z: float) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad([x, y, z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# name: (size_xyz, spacing_xyz_mm, direction); ~250k-390k voxels each.
GEOMETRIES = {
    "LPS": ((72, 72, 48), (1.1, 1.1, 1.7), np.eye(3)),
    "RAS": ((72, 72, 48), (1.1, 1.1, 1.7), np.diag([-1.0, -1.0, 1.0])),
    "flipped_z": ((72, 72, 48), (1.1, 1.1, 1.7), np.diag([1.0, 1.0, -1.0])),
    "oblique_20deg": ((72, 72, 48), (1.1, 1.1, 1.7), rotation_deg(20, 8, 5)),
    "anisotropic": ((110, 110, 32), (0.7, 0.7, 2.5), np.eye(3)),
}


def physical_points(image: sitk.Image) -> np.ndarray:
    """Physical coordinates (mm, LPS) of every voxel centre: (3, D, H, W), x/y/z first."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"))[::-1]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    scaled = index.reshape(3, -1) * np.array(image.GetSpacing())[:, None]
    points = np.array(image.GetOrigin())[:, None] + direction @ scaled
    return points.reshape(3, *size[::-1])


def sphere_ct(name: str) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """A CT (int16 HU) of a sphere in air, its boolean mask (D, H, W) and the voxels' physical points."""
    size, spacing, direction = GEOMETRIES[name]
    image = sitk.Image(size, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(direction.ravel()))
    # Grid centred near (1.3, -2.1, 0.7) mm whatever its direction.
    centre_index = (np.array(size) - 1) / 2 * np.array(spacing)
    image.SetOrigin(tuple(np.array([1.3, -2.1, 0.7]) - direction @ centre_index))
    points = physical_points(image)
    inside = np.linalg.norm(points - CENTRE_MM[:, None, None, None], axis=0) <= RADIUS_MM
    ct = sitk.GetImageFromArray(np.where(inside, SPHERE_HU, AIR).astype(np.int16))
    ct.CopyInformation(image)
    return ct, inside, points


def sphere_label(name: str) -> tuple[sitk.Image, sitk.Image]:
    """`sphere_ct`'s CT and its sphere as a uint8 0/1 mask on the same grid."""
    ct, inside, _ = sphere_ct(name)
    label = sitk.GetImageFromArray(inside.astype(np.uint8))
    label.CopyInformation(ct)
    return ct, label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def sphere_probability(prepared_array: np.ndarray, contract: InputContract) -> np.ndarray:
    """The model-grid sphere as a liver probability: 0 at air, 1 at the sphere's HU, linear between."""
    air, tissue = hu_to_input_units(AIR, contract), hu_to_input_units(SPHERE_HU, contract)
    liver = np.clip((prepared_array - air) / (tissue - air), 0.0, 1.0).astype(np.float32)
    return np.stack([1.0 - liver, liver])


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_prepare_then_restore_lands_on_the_input_grid(name: str) -> None:
    ct, inside, points = sphere_ct(name)
    prepared = prepare(ct, CONTRACT)

    # The model grid: the contract's spacing and axes, covering the whole input.
    assert prepared.image.GetSpacing() == (3.0, 3.0, 3.0)
    assert prepared.image.GetDirection() == contract_direction("LPS")
    assert (
        prepared.array.dtype == np.float32
        and prepared.array.shape == prepared.image.GetSize()[::-1]
    )
    assert 0.0 <= prepared.array.min() and prepared.array.max() <= 1.0

    restored = restore(sphere_probability(prepared.array, CONTRACT), prepared, ct)
    assert restored.dtype == np.float32 and restored.shape == (2, *ct.GetSize()[::-1])
    np.testing.assert_allclose(restored.sum(axis=0), 1.0, atol=1e-6)
    mask = restored[1] > 0.5
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(ct)
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(mask_image, attribute)() == getattr(ct, attribute)()

    assert dice(mask, inside) >= 0.95
    shift = np.linalg.norm(points[:, mask].mean(axis=1) - points[:, inside].mean(axis=1))
    assert shift <= 1.5, f"centre of mass moved {shift:.2f} mm"


def test_the_network_sees_the_same_array_whatever_the_input_axes() -> None:
    arrays = [prepare(sphere_ct(name)[0], CONTRACT).array for name in ("LPS", "RAS", "flipped_z")]
    for other in arrays[1:]:
        np.testing.assert_allclose(other, arrays[0], atol=1e-5)


def test_axis_aligned_input_gets_the_dicomorient_grid() -> None:
    """With the input's own spacing, the model grid is DICOMOrient's lossless permutation/flip."""
    ct, _, _ = sphere_ct("RAS")
    contract = CONTRACT.model_copy(update={"spacing_xyz_mm": ct.GetSpacing()})
    prepared = prepare(ct, contract)
    oriented = sitk.DICOMOrient(ct, "LPS")
    assert prepared.image.GetSize() == oriented.GetSize()
    assert prepared.image.GetDirection() == oriented.GetDirection()
    np.testing.assert_allclose(prepared.image.GetOrigin(), oriented.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(prepared.image), sitk.GetArrayViewFromImage(oriented), atol=1e-3
    )


def test_ras_contract_builds_a_ras_grid() -> None:
    ct, inside, points = sphere_ct("oblique_20deg")
    contract = CONTRACT.model_copy(update={"orientation": "RAS"})
    prepared = prepare(ct, contract)
    assert prepared.image.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    mask = restore(sphere_probability(prepared.array, contract), prepared, ct)[1] > 0.5
    assert dice(mask, inside) >= 0.95


def test_crop_to_body_keeps_the_body_and_restores_background_outside() -> None:
    ct, inside, _ = sphere_ct("anisotropic")
    contract = CONTRACT.model_copy(update={"crop_to_body": True, "body_margin_mm": 6.0})
    full = prepare(ct, CONTRACT)
    prepared = prepare(ct, contract)
    crop = prepared.crop
    assert crop is not None and crop.full_size_xyz == full.image.GetSize()
    # Sphere diameter 56 mm = 18.7 voxels of 3 mm, plus 2 voxels of margin each side.
    assert all(21 <= s <= 25 for s in crop.size_xyz), crop
    assert prepared.array.shape == tuple(crop.size_xyz[::-1])
    x, y, z = crop.index_xyz
    sx, sy, sz = crop.size_xyz
    np.testing.assert_array_equal(prepared.array, full.array[z : z + sz, y : y + sy, x : x + sx])

    restored = restore(sphere_probability(prepared.array, contract), prepared, ct)
    assert dice(restored[1] > 0.5, inside) >= 0.95
    assert (
        restored[0, 0, 0, 0] == 1.0 and restored[1, 0, 0, 0] == 0.0
    )  # beyond the crop: background


def test_crop_to_body_on_pure_air_keeps_the_whole_grid(caplog: pytest.LogCaptureFixture) -> None:
    air = sitk.Image((20, 20, 10), sitk.sitkInt16) - 1000
    contract = CONTRACT.model_copy(update={"crop_to_body": True})
    with caplog.at_level(logging.WARNING):
        prepared = prepare(air, contract)
    assert prepared.crop is None and "nothing above -500.0 HU" in caplog.text
    assert prepared.image.GetSize() == (7, 7, 4)  # 20 x 1 mm -> ceil(6.67) voxels of 3 mm
    assert np.all(prepared.array == 0.0)


def _resample_whole(
    channel: np.ndarray, prepared: PreparedVolume, reference: sitk.Image
) -> np.ndarray:
    moving = sitk.GetImageFromArray(channel)
    moving.CopyInformation(prepared.image)
    resampled = sitk.Resample(
        moving, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(resampled)


@pytest.mark.parametrize("name", ["anisotropic", "oblique_20deg"])
def test_restore_box_shortcut_is_exact_and_tolerance_is_bounded(name: str) -> None:
    ct, _, _ = sphere_ct(name)
    prepared = prepare(ct, CONTRACT)
    rng = np.random.default_rng(0)
    # Exactly 0 outside the sphere: only the sphere's box of the input grid is resampled.
    liver = sphere_probability(prepared.array, CONTRACT)[1] * rng.uniform(
        0.5, 1.0, prepared.array.shape
    )
    liver = liver.astype(np.float32)
    exact = restore(liver[None], prepared, ct)[0]
    np.testing.assert_allclose(exact, _resample_whole(liver, prepared, ct), atol=1e-6)
    # Softmax pairs: restoring the liver alone and taking 1 - it is the same as restoring both.
    both = restore(np.stack([1.0 - liver, liver]), prepared, ct)
    np.testing.assert_allclose(both[0], 1.0 - exact, atol=1e-6)

    # Tiny non-zero values everywhere (as a softmax gives): the tolerance bounds the error.
    noisy = np.where(liver > 0, liver, rng.uniform(0, 1e-4, liver.shape)).astype(np.float32)
    fast = restore(noisy[None], prepared, ct, tolerance=1e-3)[0]
    assert np.abs(fast - _resample_whole(noisy, prepared, ct)).max() <= 1e-3


def test_reference_region_is_clipped_to_the_reference_and_none_beyond_it() -> None:
    reference = sitk.Image([10, 10, 10], sitk.sitkUInt8)  # voxels 0..9 mm on every axis
    model = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    model.SetSpacing((3.0, 3.0, 3.0))
    model.SetOrigin((0.0, 0.0, 6.0))  # z planes at 6, 9, 12, 15 mm
    active = np.zeros((4, 4, 4), bool)  # (z, y, x)
    active[0, 1, 1] = True  # at (3, 3, 6) mm: seen from 0..6 mm in x and y, 3..9 mm in z
    # plus a voxel of margin on each side, clipped to the reference
    assert reference_region(active, model, reference) == ([0, 0, 2], [8, 8, 8])
    active[:] = False
    active[3, 1, 1] = True  # 15 mm: beyond the reference, whose last plane is 9 mm
    assert reference_region(active, model, reference) is None
    assert reference_region(np.zeros_like(active), model, reference) is None


def test_restore_nearest_and_chosen_outside_values() -> None:
    ct, inside, _ = sphere_ct("flipped_z")
    prepared = prepare(
        ct, CONTRACT.model_copy(update={"crop_to_body": True, "body_margin_mm": 0.0})
    )
    binary = (sphere_probability(prepared.array, CONTRACT)[1:] > 0.5).astype(np.float32)
    restored = restore(binary, prepared, ct, outside=[0.25], interpolation="nearest")[0]
    assert set(np.unique(restored)) <= {0.0, 0.25, 1.0}
    assert restored[0, 0, 0] == 0.25  # outside the cropped model grid
    assert dice(restored == 1.0, inside) >= 0.9


@pytest.mark.parametrize(
    ("channels_shape", "outside", "message"),
    [
        ((2, 5, 5, 5), None, "channels must be"),
        ((2,), None, "channels must be"),
        (None, [1.0], "outside has 1 values"),
    ],
)
def test_restore_refuses_mismatched_inputs(
    channels_shape: tuple | None, outside: list | None, message: str
) -> None:
    ct, _, _ = sphere_ct("LPS")
    prepared = prepare(ct, CONTRACT)
    channels = np.zeros(channels_shape or (2, *prepared.array.shape), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        restore(channels, prepared, ct, outside=outside)


def test_prepare_refuses_non_3d_or_vector_images() -> None:
    with pytest.raises(ValueError, match="3D scalar image, got 2D"):
        prepare(sitk.Image((8, 8), sitk.sitkInt16), CONTRACT)
    with pytest.raises(ValueError, match="3 component"):
        prepare(sitk.Image((8, 8, 8), sitk.sitkVectorFloat32, 3), CONTRACT)


@pytest.mark.parametrize("name", ["oblique_20deg", "anisotropic"])
def test_label_to_model_grid_matches_the_model_grid_sphere(name: str) -> None:
    ct, label = sphere_label(name)
    prepared = prepare(ct, CONTRACT)
    on_grid = label_to_model_grid(label, prepared)
    assert on_grid.dtype == np.uint8 and on_grid.shape == prepared.array.shape
    assert set(np.unique(on_grid)) == {0, 1}
    truth = (
        np.linalg.norm(physical_points(prepared.image) - CENTRE_MM[:, None, None, None], axis=0)
        <= RADIUS_MM
    )
    assert dice(on_grid == 1, truth) >= 0.93


ANTIALIAS = CONTRACT.model_copy(update={"antialias": True})


def test_area_downsample_averages_whole_blocks_and_keeps_the_last_partial_one() -> None:
    # 10 x 7 x 5 voxels of 1 x 1.5 x 0.75 mm onto a 3 mm grid: blocks of 3 x 2 x 4 voxels.
    array = np.arange(5 * 7 * 10, dtype=np.float32).reshape(5, 7, 10)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.5, 0.75))
    image.SetOrigin((10.0, 20.0, 30.0))
    shrunk = area_downsample(image, ANTIALIAS)
    assert shrunk.GetSize() == (4, 4, 2)  # ceil(10/3), ceil(7/2), ceil(5/4): nothing dropped
    assert shrunk.GetSpacing() == (3.0, 3.0, 3.0)
    # the first block's centre: origin + (block - 1) / 2 voxels
    assert np.allclose(shrunk.GetOrigin(), (11.0, 20.75, 31.125))
    out = sitk.GetArrayFromImage(shrunk)
    assert out[0, 0, 0] == pytest.approx(array[0:4, 0:2, 0:3].mean())
    # the last x block holds voxel 9 and two repeats of it (edge padding)
    assert out[0, 0, 3] == pytest.approx(array[0:4, 0:2, 9].mean())


def test_area_downsample_leaves_a_finer_or_equal_axis_alone() -> None:
    image = sitk.Image((6, 6, 6), sitk.sitkInt16)
    image.SetSpacing((3.0, 3.2, 5.0))
    assert area_downsample(image, ANTIALIAS) is image


def test_antialiased_prepare_averages_the_noise_away() -> None:
    # White noise (SD 40 HU) at 1 x 1 x 1 mm onto 3 mm: blocks of 27 voxels, SD / sqrt(27) ~ 7.7 HU.
    noise = np.random.default_rng(0).normal(40.0, 40.0, (60, 60, 60)).astype(np.float32)
    image = sitk.GetImageFromArray(noise)
    scale = 450.0  # window01 units -> HU for CONTRACT's (-200, 250) window
    point = prepare(image, CONTRACT).array[2:-2, 2:-2, 2:-2] * scale
    area = prepare(image, ANTIALIAS).array[2:-2, 2:-2, 2:-2] * scale
    assert point.std() > 30.0
    assert 6.0 < area.std() < 9.5


@pytest.mark.parametrize("name", ["oblique_20deg", "anisotropic"])
def test_antialiased_label_is_the_liver_fraction_of_each_model_voxel(name: str) -> None:
    ct, label = sphere_label(name)
    prepared = prepare(ct, ANTIALIAS)
    fraction = label_to_model_grid(label, prepared)
    assert fraction.dtype == np.float32 and fraction.shape == prepared.array.shape
    assert fraction.min() >= 0.0 and fraction.max() == pytest.approx(1.0)
    distance = np.linalg.norm(physical_points(prepared.image) - CENTRE_MM[:, None, None, None], axis=0)
    # a model voxel reads blocks of up to 3 input voxels and linear weights over two blocks
    assert np.all(fraction[distance < RADIUS_MM - 6.0] > 0.99)  # well inside: all liver
    assert np.all(fraction[distance > RADIUS_MM + 6.0] < 0.01)  # well outside: none
    edge = np.abs(distance - RADIUS_MM) < 1.0
    # on the surface: partial voxels, half liver on average
    assert np.all((fraction[edge] > 0.05) & (fraction[edge] < 0.95))
    assert 0.4 < fraction[edge].mean() < 0.6
    # volume is kept: the fractions add up to the sphere's volume (the input mask's, within 3 %)
    input_ml = sitk.GetArrayViewFromImage(label).sum() * np.prod(ct.GetSpacing()) / 1000
    model_ml = fraction.sum() * np.prod(prepared.image.GetSpacing()) / 1000
    assert model_ml == pytest.approx(input_ml, rel=0.03)


ZSCORE = InputContract(
    spacing_xyz_mm=(3, 3, 3),
    hu_window=(-100, 300),
    normalisation="zscore",
    mean=80.0,
    std=50.0,
    patch_size_dhw=(32, 32, 32),
)


@pytest.mark.parametrize(
    ("contract", "hu", "expected"),
    [
        (CONTRACT, [-1000, -200, 25, 250, 3000], [0.0, 0.0, 0.5, 1.0, 1.0]),
        (ZSCORE, [-1000, -100, 80, 130, 300, 2000], [-3.6, -3.6, 0.0, 1.0, 4.4, 4.4]),
    ],
)
def test_normalise_hu_clips_then_scales(contract: InputContract, hu: list, expected: list) -> None:
    array = np.array(hu, dtype=np.int16).reshape(1, 1, -1)
    out = normalise_hu(array, contract)
    assert out.dtype == np.float32 and out.shape == array.shape
    np.testing.assert_allclose(out.ravel(), expected, atol=1e-6)
    np.testing.assert_allclose([hu_to_input_units(h, contract) for h in hu], expected, atol=1e-6)


@pytest.mark.parametrize("contract", [CONTRACT, ZSCORE], ids=["window01", "zscore"])
def test_hu_to_input_units_inverts(contract: InputContract) -> None:
    lo, hi = contract.hu_window
    for hu in np.linspace(lo, hi, 7):
        assert input_units_to_hu(hu_to_input_units(hu, contract), contract) == pytest.approx(
            hu, abs=1e-3
        )
    assert hu_to_input_units(lo - 500, contract) == pytest.approx(hu_to_input_units(lo, contract))


REAL_SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct-dicom-sample"


@pytest.mark.realdata
@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_real_ct_and_its_liver_survive_the_round_trip(orientation: str) -> None:
    if not (REAL_SAMPLE / "dicom").is_dir():
        pytest.skip(f"real CT sample not found at {REAL_SAMPLE.resolve()}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(REAL_SAMPLE / "dicom")))
    ct = sitk.DICOMOrient(reader.Execute(), orientation)  # RAS: the same CT as many tools write it
    liver = sitk.DICOMOrient(sitk.ReadImage(str(REAL_SAMPLE / "liver_mask.nii.gz")), orientation)
    contract = CONTRACT.model_copy(update={"crop_to_body": True})

    prepared = prepare(ct, contract)
    assert prepared.crop is not None
    on_grid = label_to_model_grid(liver, prepared)
    liver_hu = sitk.GetArrayViewFromImage(prepared.image)[on_grid == 1]
    assert (
        60 <= float(np.median(liver_hu)) <= 120
    )  # contrast-enhanced liver (~89 HU): the label sits on it

    restored = restore(on_grid[None].astype(np.float32), prepared, ct)[0]
    truth = sitk.GetArrayViewFromImage(liver) == 1
    assert restored.shape == truth.shape
    assert dice(restored > 0.5, truth) >= 0.97  # 0.993 measured
