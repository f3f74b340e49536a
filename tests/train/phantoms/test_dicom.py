"""Tests for train/phantoms/dicom.py: the series reads back as the phantom, in every orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage

from tests.train.phantoms.conftest import IDENTITY
from train.phantoms import make_phantom, write_dicom_series


@pytest.mark.parametrize(
    "direction",
    [
        IDENTITY,
        (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
        (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    ],
)
def test_dicom_round_trip(tmp_path: Path, direction: tuple[float, ...]) -> None:
    p = make_phantom(6, spacing_xyz_mm=(3.5, 3.5, 2.5), z_range=(-60.0, -30.0), direction=direction)
    paths = write_dicom_series(
        p.ct, tmp_path / "series", study_uid="1.2.826.0.1.3680043.8.498.1234"
    )
    assert len(paths) == p.ct.GetSize()[2]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    back = reader.Execute()
    assert back.GetSize() == p.ct.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), p.ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), p.ct.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), p.ct.GetDirection(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(p.ct))

    datasets = [pydicom.dcmread(path) for path in paths]
    ct = sitk.GetArrayFromImage(p.ct)
    for k, ds in enumerate(datasets):
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert ds.InstanceNumber == k + 1
        assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1234"
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, ct[k])
        position = p.ct.TransformIndexToPhysicalPoint((0, 0, k))
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-4)
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert (
        len({(ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.PatientID) for ds in datasets}) == 1
    )
    assert datasets[0].SeriesInstanceUID and datasets[0].FrameOfReferenceUID
    assert datasets[0].PatientID == "PHANTOM"


def test_dicom_left_handed_reads_back_flipped(tmp_path: Path) -> None:
    """DICOM keeps no third axis: a left-handed image comes back as the same voxels, z reversed."""
    flip_z = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    p = make_phantom(6, spacing_xyz_mm=(4.0, 4.0, 4.0), z_range=(-40.0, -20.0), direction=flip_z)
    write_dicom_series(p.ct, tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    back = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(p.ct)[::-1])
    last = p.ct.TransformIndexToPhysicalPoint((0, 0, p.ct.GetSize()[2] - 1))
    np.testing.assert_allclose(back.GetOrigin(), last, atol=1e-4)


def test_dicom_refuses_what_it_cannot_store(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.full((2, 4, 4), 40000.0, np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        write_dicom_series(img, tmp_path)
    with pytest.raises(ValueError, match="3D"):
        write_dicom_series(sitk.Image(4, 4, sitk.sitkInt16), tmp_path)
