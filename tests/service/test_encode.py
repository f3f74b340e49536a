"""service.io.encode: NIfTI bytes round-trip data and geometry exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from service.io.encode import image_to_nifti_bytes, mask_to_nifti_bytes

c30, s30, c20, s20 = np.cos(np.radians(30)), np.sin(np.radians(30)), np.cos(np.radians(20)), np.sin(np.radians(20))
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "flipped": np.diag([1.0, -1.0, -1.0]),
    "oblique": np.array([[c30, -s30, 0], [s30, c30, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c20, -s20], [0, s20, c20]]),
    "sagittal": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),
}


def with_geometry(array: np.ndarray, direction: np.ndarray, spacing=(0.8, 0.9, 2.5), origin=(-123.456, 78.9, -1002.25)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    return image


def read_nifti(data: bytes, tmp_path: Path) -> sitk.Image:
    path = tmp_path / "out.nii.gz"
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("orientation", list(DIRECTIONS))
def test_mask_round_trips_byte_exact_with_geometry(tmp_path, orientation):
    rng = np.random.default_rng(1)
    array = (rng.random((9, 11, 13)) > 0.6).astype(np.uint8)
    mask = with_geometry(array, DIRECTIONS[orientation])
    data = mask_to_nifti_bytes(mask)
    assert data[:2] == b"\x1f\x8b"
    back = read_nifti(data, tmp_path)
    assert back.GetPixelID() == sitk.sitkUInt8
    assert back.GetSize() == mask.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), array)
    np.testing.assert_allclose(back.GetDirection(), mask.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), mask.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), mask.GetOrigin(), atol=1e-4)  # NIfTI stores float32


def test_float_map_round_trips_as_float32(tmp_path):
    values = np.random.default_rng(2).random((5, 6, 7))
    image = with_geometry(values, DIRECTIONS["oblique"])  # float64 in
    back = read_nifti(image_to_nifti_bytes(image), tmp_path)
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), values.astype(np.float32))
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)


def test_mask_must_be_uint8():
    with pytest.raises(TypeError, match="uint8"):
        mask_to_nifti_bytes(sitk.Image([4, 4, 4], sitk.sitkInt16))
