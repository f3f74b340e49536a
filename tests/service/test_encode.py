"""service.io.encode: NIfTI bytes round-trip data and geometry exactly; the preview PNG has the
documented size and shows the patient's right on the viewer's left, superior at the top."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from service.io.encode import (
    GAP_PX,
    PANEL_PX,
    image_to_nifti_bytes,
    mask_to_nifti_bytes,
    preview_png,
)

c30, s30, c20, s20 = np.cos(np.radians(30)), np.sin(np.radians(30)), np.cos(np.radians(20)), np.sin(np.radians(20))
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "flipped": np.diag([1.0, -1.0, -1.0]),
    "oblique": np.array([[c30, -s30, 0], [s30, c30, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c20, -s20], [0, s20, c20]]),
    "sagittal": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),
}
AMBER = (255, 215, 0)


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


# ---------------------------------------------------------------------------------------------
# Preview


def phantom(size_xyz=(40, 30, 20), spacing=(1.0, 1.0, 2.0)):
    """CT at 60 HU with air around, and a liver blob in the patient's right, superior, anterior part (LPS)."""
    nx, ny, nz = size_xyz
    ct = np.full((nz, ny, nx), -1000, np.int16)
    ct[2:-2, 3:-3, 3:-3] = 60
    mask = np.zeros((nz, ny, nx), np.uint8)
    mask[12:18, 5:15, 4:16] = 1  # low x = patient's right; low y = anterior; high z = superior (LPS)
    ct_image, mask_image = sitk.GetImageFromArray(ct), sitk.GetImageFromArray(mask)
    for image in (ct_image, mask_image):
        image.SetSpacing(spacing)
    return ct_image, mask_image


def decode_png(data: bytes) -> np.ndarray:
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "PNG" and picture.mode == "RGB"
    return np.asarray(picture)


@pytest.mark.parametrize("with_confidence", [False, True])
def test_preview_has_the_documented_size(with_confidence):
    ct, mask = phantom(size_xyz=(40, 30, 20), spacing=(1.0, 1.0, 2.0))  # extents 40 x 30 x 40 mm
    confidence = sitk.Cast(mask, sitk.sitkFloat32) * 0.5 + 0.25 if with_confidence else None
    picture = decode_png(preview_png(ct, mask, confidence))
    scale = PANEL_PX / 40
    axial_h, coronal_h, width = round(30 * scale), round(40 * scale), round(40 * scale)
    row_h = max(axial_h, coronal_h)
    expected_h = row_h * 2 + GAP_PX if with_confidence else row_h
    assert picture.shape == (expected_h, 2 * width + GAP_PX, 3)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIR", "LSA"])
def test_preview_uses_the_radiological_convention_in_any_orientation(orientation):
    """The blob lies in the patient's right, anterior, superior: whatever the volume's axes, it must
    be drawn on the viewer's left, near the top of the axial view and near the top of the coronal."""
    ct, mask = phantom()
    ct, mask = sitk.DICOMOrient(ct, orientation), sitk.DICOMOrient(mask, orientation)
    picture = decode_png(preview_png(ct, mask))
    scale = PANEL_PX / 40
    width, axial_h, coronal_h = round(40 * scale), round(30 * scale), round(40 * scale)
    axial = picture[:axial_h, :width]
    coronal = picture[:coronal_h, width + GAP_PX :]
    for panel in (axial, coronal):
        rows, cols = np.nonzero(np.all(panel == AMBER, axis=2))
        assert rows.size > 50, "the outline must be drawn"
        assert cols.mean() < panel.shape[1] / 2, "patient's right on the viewer's left"
    rows, _ = np.nonzero(np.all(axial == AMBER, axis=2))
    assert rows.mean() < axial.shape[0] / 2, "anterior at the top of the axial view"
    rows, _ = np.nonzero(np.all(coronal == AMBER, axis=2))
    assert rows.mean() < coronal.shape[0] / 2, "superior at the top of the coronal view"


def test_preview_shows_low_confidence_in_red():
    ct, mask = phantom()
    confidence = sitk.Image(ct.GetSize(), sitk.sitkFloat32) + 1.0
    confidence.CopyInformation(ct)
    unsure = sitk.GetArrayFromImage(confidence)
    unsure[:, :, 20:] = 0.0  # patient's left half unsure
    confidence = sitk.GetImageFromArray(unsure)
    confidence.CopyInformation(ct)
    picture = decode_png(preview_png(ct, mask, confidence)).astype(int)
    row_h = round(40 * PANEL_PX / 40)
    axial_conf = picture[row_h + GAP_PX : row_h + GAP_PX + round(30 * PANEL_PX / 40), : PANEL_PX]
    redness = axial_conf[..., 0] - axial_conf[..., 1]
    half = axial_conf.shape[1] // 2
    assert redness[:, half + 20 :].mean() > 150  # unsure: red
    assert abs(redness[:, : half - 20].mean()) < 5  # sure: grey


def test_preview_of_an_empty_mask_still_draws():
    ct, mask = phantom()
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    picture = decode_png(preview_png(ct, empty))
    assert not np.all(picture == AMBER, axis=2).any()
    assert picture.max() > 0


def test_preview_refuses_images_of_different_grids():
    ct, _ = phantom()
    with pytest.raises(ValueError, match="share one grid"):
        preview_png(ct, sitk.Image([3, 3, 3], sitk.sitkUInt8))
