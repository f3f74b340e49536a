"""DICOM output, so that phantoms can exercise the service's DICOM path end to end."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

logger = logging.getLogger(__name__)

_RESCALE_INTERCEPT = -1024.0


def write_dicom_series(
    ct: sitk.Image,
    folder: str | Path,
    *,
    patient_id: str = "PHANTOM",
    patient_name: str = "PHANTOM^LIVERSEG",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "liverseg phantom",
    series_number: int = 1,
    slice_thickness_mm: float | None = None,
    contrast_agent: str | None = None,
    file_prefix: str = "CT",
) -> list[Path]:
    """Write a 3D CT (HU; float values are rounded) as a single-frame CT Image Storage series.

    One file per slice (index z of the image), named `{file_prefix}{n:04d}.dcm` in `folder`
    (created if missing), explicit VR little endian, signed 16-bit stored values with
    RescaleIntercept -1024 and slope 1. UIDs not given are minted with pydicom's
    generate_uid; all slices share study, series and frame of reference. ImageOrientationPatient
    holds the image's first two direction columns and ImagePositionPatient each slice's origin, so
    SimpleITK's ImageSeriesReader reads back the same geometry when the direction is right-handed
    (det +1, e.g. LPS or RAS); DICOM stores no third axis, so a left-handed image comes back with
    its slices in the other order (same voxels in space, z axis flipped). Returns the paths in
    slice order. Raises ValueError for a non-3D image, a slice axis not normal to the rows and
    columns, or HU outside what 16 bits can hold.
    """
    if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"write_dicom_series needs a 3D scalar image, got {ct.GetDimension()}D "
            f"with {ct.GetNumberOfComponentsPerPixel()} components"
        )
    d = np.asarray(ct.GetDirection(), float).reshape(3, 3)
    row, col, axis = d[:, 0], d[:, 1], d[:, 2]
    normal = np.cross(row, col)
    if not np.allclose(np.abs(normal @ axis), 1.0, atol=1e-6):
        raise ValueError(
            "write_dicom_series: the slice axis must be normal to rows and columns "
            f"(direction {d.ravel().tolist()})"
        )
    hu = np.rint(sitk.GetArrayViewFromImage(ct).astype(np.float64))
    stored = hu - _RESCALE_INTERCEPT
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(
            f"write_dicom_series: HU range [{hu.min():.0f}, {hu.max():.0f}] does not fit "
            "16-bit stored values with intercept -1024"
        )
    stored = stored.astype("<i2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    sx, sy, sz = ct.GetSpacing()
    origin = np.asarray(ct.GetOrigin(), float)
    now = _dt.datetime.now()
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    thickness = float(slice_thickness_mm) if slice_thickness_mm is not None else float(sz)

    def fmt(x: float) -> str:
        # DS values are at most 16 characters; repr of a float can be longer.
        text = f"{x:.10g}"
        return text if len(text) <= 16 else f"{x:.6e}"

    paths = []
    for k in range(stored.shape[0]):
        position = origin + axis * sz * k
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "liverseg"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time_
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        ds.KVP = "120"
        if contrast_agent:
            ds.ContrastBolusAgent = contrast_agent
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [fmt(v) for v in position]
        ds.ImageOrientationPatient = [fmt(v) for v in np.concatenate([row, col])]
        ds.SliceLocation = fmt(float(position @ normal))
        ds.SliceThickness = fmt(thickness)
        ds.SpacingBetweenSlices = fmt(float(sz))
        ds.PixelSpacing = [fmt(sy), fmt(sx)]  # DICOM order: between rows, then between columns
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = fmt(_RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = stored[k].tobytes()
        path = folder / f"{file_prefix}{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d CT slices to %s (series %s)", len(paths), folder, series_uid)
    return paths
