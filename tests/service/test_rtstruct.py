"""RT Structure Set output (service.io.rtstruct.make_rtstruct, output=rtstruct, GET /jobs/{id}/rtstruct).

Each RTSTRUCT is read back with pydicom and rasterised onto the source grid the way planning
systems fill contours (a pixel is in when its centre is inside, nested contours subtract), with
matplotlib's point-in-polygon test and nothing of the writer's: each contour is placed on its
slice by the image it references, and its points must lie on that image's plane in patient
coordinates, so contours in index space, on the wrong image or mirrored fail here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from matplotlib.path import Path as Polygon
from pydicom.uid import RTStructureSetStorage

from service.app import create_app
from service.errors import UnsupportedOutput
from service.io.rtstruct import make_rtstruct, slice_contours
from service.settings import Settings
from service.volume import Volume
from tests.conftest import ORIENTATIONS, dice, nifti_bytes, read_nifti, wait_for_job
from tests.service.test_seg import CARD, decode, on_grid, phantom_series

PLANE_TOLERANCE_MM = 1e-2


def rasterise(data: bytes, files: list[Path]) -> np.ndarray:
    """The RTSTRUCT's "Liver" ROI filled on the grid of the source `files`: (slices, rows, columns)
    bool, slices in the order of `files` (which need not be the order of the mask's array)."""
    rtstruct = pydicom.dcmread(io.BytesIO(data))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uid_of = [str(h.SOPInstanceUID or h.file_meta.MediaStorageSOPInstanceUID) for h in headers]
    (roi,) = [r for r in rtstruct.StructureSetROISequence if r.ROIName == "Liver"]
    (contours,) = [c for c in rtstruct.ROIContourSequence if c.ReferencedROINumber == roi.ROINumber]
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    out = np.zeros((len(files), rows, columns), dtype=bool)
    centres = np.stack(np.meshgrid(np.arange(columns), np.arange(rows)), axis=-1).reshape(-1, 2)
    for contour in contours.get("ContourSequence", []):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        k = uid_of.index(str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID))
        header = headers[k]
        points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
        assert len(points) == int(contour.NumberOfContourPoints)
        # Patient mm -> (column, row) of this image, and the distance off its plane.
        position = np.array([float(v) for v in header.ImagePositionPatient])
        orientation = np.array([float(v) for v in header.ImageOrientationPatient])
        row_dir, column_dir = orientation[:3], orientation[3:]
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
        offset = points - position
        assert np.abs(offset @ np.cross(row_dir, column_dir)).max() < PLANE_TOLERANCE_MM
        polygon = np.column_stack([offset @ row_dir / column_spacing, offset @ column_dir / row_spacing])
        out[k] ^= Polygon(polygon).contains_points(centres).reshape(rows, columns)
    return out


def mask_by_file(mask: sitk.Image, files: list[Path]) -> np.ndarray:
    """The mask's slices in the order of `files`: slice k is the one whose position the file holds."""
    array = sitk.GetArrayFromImage(mask).astype(bool)
    order = []
    for f in files:
        position = [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient]
        order.append(int(round(mask.TransformPhysicalPointToContinuousIndex(position)[2])))
    return array[order]


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_contours_fill_back_to_the_mask_in_every_orientation(tmp_path, orientation) -> None:
    phantom, files, volume = phantom_series(tmp_path, seed=3, direction=ORIENTATIONS[orientation])
    mask = on_grid(phantom.liver, volume.image)
    expected = mask_by_file(mask, files)
    assert expected.sum() > 1000 and (~expected.any(axis=(1, 2))).any()  # liver, and slices without
    filled = rasterise(make_rtstruct(volume, mask, CARD), files)
    assert dice(filled, expected) >= 0.97
    assert (filled != expected).sum() <= 0.002 * expected.sum()  # marching squares: nearly exact


def test_the_structure_set_references_its_series_and_codes_the_liver(tmp_path) -> None:
    phantom, files, volume = phantom_series(tmp_path, seed=1)
    data = make_rtstruct(volume, on_grid(phantom.liver, volume.image), CARD)
    ds = pydicom.dcmread(io.BytesIO(data))
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert (ds.StudyInstanceUID, ds.PatientID, ds.FrameOfReferenceUID) == (
        source.StudyInstanceUID, source.PatientID, source.FrameOfReferenceUID)
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    (frame,) = ds.ReferencedFrameOfReferenceSequence
    (series,) = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    (roi,) = ds.StructureSetROISequence
    assert (roi.ROIName, roi.ROIGenerationAlgorithm, roi.ReferencedFrameOfReferenceUID) == (
        "Liver", "AUTOMATIC", source.FrameOfReferenceUID)
    assert roi.ROIDerivationAlgorithmIdentificationSequence[0].AlgorithmName == CARD.name
    (observation,) = ds.RTROIObservationsSequence
    assert observation.RTROIInterpretedType == "ORGAN"
    code = observation.RTROIIdentificationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("10200004", "SCT")
    assert ds.ApprovalStatus == "UNAPPROVED"


def test_a_slice_with_a_hole_gets_a_nested_contour_that_subtracts() -> None:
    ring = np.zeros((12, 12), dtype=bool)
    ring[2:10, 2:10] = True
    ring[5:7, 5:7] = False
    ring[0, 0] = True  # a pixel in the corner: the contour of what touches the edge closes too
    loops = slice_contours(ring)
    assert len(loops) == 3
    centres = np.stack(np.meshgrid(np.arange(12), np.arange(12)), axis=-1).reshape(-1, 2)
    filled = np.zeros(144, dtype=bool)
    for loop in loops:
        filled ^= Polygon(loop).contains_points(centres)
    assert np.array_equal(filled.reshape(12, 12), ring)
    # Straight runs keep only their corners (and the staircase corners marching squares cuts).
    assert max(len(loop) for loop in loops) <= 8


def test_an_empty_mask_is_a_structure_set_without_contours(tmp_path) -> None:
    _, files, volume = phantom_series(tmp_path, seed=1)
    empty = sitk.Image(volume.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(volume.image)
    ds = pydicom.dcmread(io.BytesIO(make_rtstruct(volume, empty, CARD)))
    assert "ContourSequence" not in ds.ROIContourSequence[0]
    assert not rasterise(make_rtstruct(volume, empty, CARD), files).any()


def test_a_nifti_volume_is_refused() -> None:
    image = sitk.Image([8, 8, 4], sitk.sitkInt16)
    mask = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    with pytest.raises(UnsupportedOutput, match="needs a DICOM input to reference; this input was nifti"):
        make_rtstruct(Volume(image, None, "nifti", []), mask, CARD)


@pytest.mark.realdata
def test_real_sample_contours_fill_back_to_its_liver(real_sample, tmp_path) -> None:
    files = sorted((real_sample / "dicom").glob("*.dcm"))
    volume = decode(files, tmp_path)
    mask = on_grid(sitk.ReadImage(str(real_sample / "liver_mask.nii.gz")), volume.image)
    data = make_rtstruct(volume, mask, CARD)
    assert any("RT Structure Set must reference" in w for w in volume.warnings)  # its UIDs are empty
    expected = mask_by_file(mask, files)
    assert expected.sum() > 100_000
    filled = rasterise(data, files)
    assert dice(filled, expected) >= 0.97
    assert (filled != expected).sum() <= 0.002 * expected.sum()


# -- through the API: output=rtstruct and GET /jobs/{id}/rtstruct, with the bundled model -----------


@pytest.mark.slow
def test_a_dicom_job_gets_an_rtstruct_of_its_mask_and_nifti_input_a_422(tmp_path) -> None:
    settings = Settings(model=Settings.model_fields["model"].default, data_dir=tmp_path / "var", device="cpu")
    phantom, files, _ = phantom_series(tmp_path, seed=2)
    series = [("files", (f.name, f.read_bytes())) for f in files]
    with TestClient(create_app(settings)) as client:
        refused = client.post("/segment", params={"output": "rtstruct"}, files={"file": ("ct.nii.gz", nifti_bytes(phantom.ct))})
        assert refused.status_code == 422 and refused.json()["error"] == "unsupported_output"
        assert "this input was nifti" in refused.json()["detail"]
        nifti_job = client.post("/jobs", files={"file": ("ct.nii.gz", nifti_bytes(phantom.ct))}).json()["id"]
        dicom_job = client.post("/jobs", files=series).json()["id"]
        done = wait_for_job(client, f"/jobs/{nifti_job}", timeout=300)
        assert "rtstruct" not in done["links"] and "probability" in done["links"]
        no_rtstruct = client.get(f"/jobs/{nifti_job}/rtstruct")
        assert no_rtstruct.status_code == 422 and "this job's input was nifti" in no_rtstruct.json()["detail"]

        job = wait_for_job(client, f"/jobs/{dicom_job}", timeout=300)
        assert job["state"] == "done" and job["links"]["rtstruct"] == f"/jobs/{dicom_job}/rtstruct"
        rtstruct = client.get(job["links"]["rtstruct"])
        assert rtstruct.status_code == 200 and rtstruct.headers["content-type"] == "application/dicom"
        mask = read_nifti(client.get(job["links"]["mask"]).content)
        probability = read_nifti(client.get(job["links"]["probability"]).content)
        direct = client.post("/segment", params={"output": "rtstruct"}, files=series)
        assert direct.status_code == 200 and 'filename="liver_rtstruct.dcm"' in direct.headers["content-disposition"]
    expected = mask_by_file(mask, files)
    assert expected.sum() > 500
    assert dice(rasterise(rtstruct.content, files), expected) >= 0.97
    assert dice(rasterise(direct.content, files), expected) >= 0.97
    assert np.array_equal(sitk.GetArrayFromImage(probability) > 0.5, sitk.GetArrayFromImage(mask) > 0)
