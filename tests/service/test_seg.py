"""DICOM SEG output (service.io.seg.make_seg, output=dicom-seg, GET /jobs/{id}/seg).

Each SEG is decoded back with highdicom and compared, source instance by source instance, with the
mask it was made from: a frame on the wrong image (the mirrored SEGs of TotalSegmentator PR #598)
fails the comparison, whatever the orientation of the series.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from pydicom.uid import SegmentationStorage

from client.seg_identity import MANUFACTURER, SERIES_DESCRIPTION
from model_zoo.card import InputContract, ModelCard
from service.app import create_app
from service.errors import UnsupportedOutput
from service.io.decode import Upload, decode_upload
from service.io.seg import make_seg
from service.settings import Settings
from service.volume import Volume
from tests.conftest import ORIENTATIONS, nifti_bytes, read_nifti, wait_for_job
from train.phantoms import make_phantom, write_dicom_series

CARD = ModelCard(
    name="unet3d_ds.tiny",
    version="7",
    arch="unet3d_ds",
    input=InputContract(spacing_xyz_mm=(4.0, 4.0, 4.0), hu_window=(-200.0, 300.0), patch_size_dhw=(32, 32, 32)),
    weights_sha256="0123456789abcdef" * 4,
    intended_use="Tests only.",
)
# 4 mm phantoms, a slab from above the liver dome into the liver: some slices hold no liver, so
# the SEG omits their frames and the decoder must still give those images an empty mask.
SPACING = (4.0, 4.0, 4.0)
SLAB_MM = (-40.0, 16.0)


def phantom_series(folder: Path, seed: int, direction: np.ndarray | None = None):
    """(phantom, its DICOM files in phantom slice order, the Volume the service decodes from them)."""
    extra = {} if direction is None else {"direction": direction.ravel().tolist()}
    phantom = make_phantom(seed, spacing_xyz_mm=SPACING, z_range=SLAB_MM, **extra)
    files = write_dicom_series(phantom.ct, folder / "dicom")
    return phantom, files, decode(files, folder)


def decode(files: list[Path], folder: Path) -> Volume:
    return decode_upload([Upload(f.name, f) for f in files], Settings(data_dir=folder / "var"))


def on_grid(label: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """`label` resampled (nearest) onto `reference`'s grid: exact where the voxel centres coincide."""
    return sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def seg_by_instance(data: bytes, sop_uids: list[str]) -> np.ndarray:
    """The SEG's liver pixels for each source instance, in the order given: (N, rows, columns) uint8."""
    seg = hd.seg.segread(io.BytesIO(data))
    return seg.get_pixels_by_source_instance(sop_uids, segment_numbers=[1])[..., 0]


def sop_uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def test_a_mask_that_jpeg_2000_garbles_comes_back_exactly(tmp_path) -> None:
    # A random network's mask on the seed-1 slab: pylibjpeg-openjpeg 2.6 encoded three of its
    # 1-bit frames wrongly when SEGs were JPEG 2000 (and highdicom decoded them as written).
    packed = np.load(Path(__file__).parent / "data" / "openjpeg_1bit_mask.npy")
    _, files, volume = phantom_series(tmp_path, seed=1)
    size_xyz = volume.image.GetSize()
    expected = np.unpackbits(packed)[: int(np.prod(size_xyz))].reshape(size_xyz[::-1])
    mask = sitk.GetImageFromArray(expected)
    mask.CopyInformation(volume.image)
    assert np.array_equal(seg_by_instance(make_seg(volume, mask, CARD), sop_uids(files)), expected)


def test_seg_references_its_source_and_codes_the_liver(tmp_path) -> None:
    phantom, files, volume = phantom_series(tmp_path, seed=1)
    seg = hd.seg.segread(io.BytesIO(make_seg(volume, on_grid(phantom.liver, volume.image), CARD)))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    source = headers[0]

    assert seg.SOPClassUID == SegmentationStorage and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.PatientID == source.PatientID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert sorted(r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence) == sorted(
        h.SOPInstanceUID for h in headers
    )
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Liver"
    (kind,) = segment.SegmentedPropertyTypeCodeSequence
    (category,) = segment.SegmentedPropertyCategoryCodeSequence
    assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("SCT", "10200004")
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "91723000")
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (CARD.name, CARD.version)
    assert CARD.weights_sha256 in algorithm.AlgorithmParameters
    assert (seg.Manufacturer, seg.SeriesDescription) == (MANUFACTURER, SERIES_DESCRIPTION)
    assert seg.DeviceSerialNumber == CARD.weights_sha256
    assert volume.warnings == []  # full UIDs: nothing minted, nothing to say


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_each_frame_lands_on_its_source_image(tmp_path, orientation) -> None:
    phantom, files, volume = phantom_series(tmp_path, seed=2, direction=ORIENTATIONS[orientation])
    liver = sitk.GetArrayFromImage(phantom.liver)  # slice k is what file k shows
    assert 0 < liver.sum() and (liver.reshape(len(files), -1).max(axis=1) == 0).any(), "the slab must hold empty slices"
    # The service's mask lies on the decoded grid (flipped along z for a left-handed series).
    data = make_seg(volume, on_grid(phantom.liver, volume.image), CARD)
    seg = hd.seg.segread(io.BytesIO(data))
    assert seg.NumberOfFrames == int((liver.reshape(len(files), -1).max(axis=1) > 0).sum())  # empty frames omitted
    assert np.array_equal(seg_by_instance(data, sop_uids(files)), liver)
    # Each frame sits where its source image is: the same Image Position (Patient).
    position = {h.SOPInstanceUID: [float(v) for v in h.ImagePositionPatient] for h in map(pydicom.dcmread, files)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        frame_position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(frame_position, position[source.ReferencedSOPInstanceUID], atol=1e-3)


def test_an_empty_mask_is_a_valid_seg_of_empty_frames(tmp_path) -> None:
    _, files, volume = phantom_series(tmp_path, seed=1)
    empty = sitk.Image(volume.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(volume.image)
    pixels = seg_by_instance(make_seg(volume, empty, CARD), sop_uids(files))
    assert pixels.shape == (len(files), *sitk.GetArrayViewFromImage(volume.image).shape[1:])
    assert pixels.max() == 0


def test_missing_uids_are_minted_the_same_way_every_time_and_said(tmp_path) -> None:
    phantom, files, _ = phantom_series(tmp_path, seed=1)
    meta_uids = sop_uids(files)
    for f in files:  # anonymised as hard as the real sample: empty study, series and instance UIDs
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ""
        ds.save_as(f)
    volume = decode(files, tmp_path)
    mask = on_grid(phantom.liver, volume.image)
    first = hd.seg.segread(io.BytesIO(make_seg(volume, mask, CARD)))
    (warning,) = volume.warnings
    assert "Study Instance UID empty, minted" in warning and "Series Instance UID empty, minted" in warning
    assert "taken from their file meta header" in warning
    assert first.StudyInstanceUID in warning
    assert pydicom.uid.UID(first.StudyInstanceUID).is_valid
    (series,) = first.ReferencedSeriesSequence
    assert pydicom.uid.UID(series.SeriesInstanceUID).is_valid and series.SeriesInstanceUID in warning
    # SOP Instance UIDs come from the file meta header, so each frame still names its file.
    assert sorted(r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence) == sorted(meta_uids)
    again = hd.seg.segread(io.BytesIO(make_seg(decode(files, tmp_path), mask, CARD)))
    assert (again.StudyInstanceUID, again.ReferencedSeriesSequence[0].SeriesInstanceUID) == (
        first.StudyInstanceUID, series.SeriesInstanceUID,
    )


def _shift_position(headers: list[pydicom.Dataset]) -> None:
    x, y, z = (float(v) for v in headers[3].ImagePositionPatient)
    headers[3].ImagePositionPatient = [x, y, z + SPACING[2] / 2]  # half a slice: between two grid slices


def _tilt_orientation(headers: list[pydicom.Dataset]) -> None:
    headers[3].ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]


def _duplicate_slice(headers: list[pydicom.Dataset]) -> None:
    headers[3].ImagePositionPatient = headers[0].ImagePositionPatient


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_shift_position, "does not fall on a slice of the decoded grid"),
        (_tilt_orientation, "is not the decoded grid's row and column directions"),
        (_duplicate_slice, "Two DICOM images lie on slice 0"),
    ],
)
def test_headers_off_the_grid_are_refused_with_the_reason(tmp_path, damage, message) -> None:
    phantom, _, volume = phantom_series(tmp_path, seed=1)
    headers = copy.deepcopy(volume.datasets)
    damage(headers)
    with pytest.raises(UnsupportedOutput, match=message) as refused:
        make_seg(Volume(volume.image, headers, "dicom", []), on_grid(phantom.liver, volume.image), CARD)
    assert refused.value.code == "unsupported_output"


def test_a_nifti_volume_is_refused() -> None:
    image = sitk.Image([8, 8, 4], sitk.sitkInt16)
    mask = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    with pytest.raises(UnsupportedOutput, match="needs a DICOM input to reference; this input was nifti"):
        make_seg(Volume(image, None, "nifti", []), mask, CARD)


@pytest.mark.realdata
def test_real_sample_gets_minted_uids_and_exact_frames(real_sample, tmp_path) -> None:
    files = sorted((real_sample / "dicom").glob("*.dcm"))
    volume = decode(files, tmp_path)
    liver = sitk.ReadImage(str(real_sample / "liver_mask.nii.gz"))
    data = make_seg(volume, on_grid(liver, volume.image), CARD)
    (warning,) = volume.warnings
    assert "Study Instance UID empty, minted" in warning and "SOP Instance UID empty in 20 image(s)" in warning
    seg = hd.seg.segread(io.BytesIO(data))
    assert pydicom.uid.UID(seg.StudyInstanceUID).is_valid
    # The sample's instances have UIDs only in their file meta header: the SEG references those.
    meta = [str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID) for f in files]
    pixels = seg_by_instance(data, meta)
    by_position = sorted(
        range(len(files)), key=lambda i: float(pydicom.dcmread(files[i], stop_before_pixels=True).ImagePositionPatient[2])
    )
    expected = sitk.GetArrayFromImage(on_grid(liver, volume.image))  # z ascending: identity direction
    assert np.array_equal(pixels[by_position], expected)
    assert expected.sum() > 0


# -- through the API: output=dicom-seg and GET /jobs/{id}/seg ----------------------------------


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.slow
def test_nifti_input_gets_422_for_a_seg_and_dicom_input_gets_its_seg(client, tmp_path) -> None:
    phantom, files, _ = phantom_series(tmp_path, seed=1)
    refused = client.post("/segment", params={"output": "dicom-seg"}, files={"file": ("ct.nii.gz", nifti_bytes(phantom.ct))})
    assert refused.status_code == 422
    assert refused.json()["error"] == "unsupported_output"
    assert "needs a DICOM input to reference; this input was nifti" in refused.json()["detail"]

    nifti_job = client.post("/jobs", files={"file": ("ct.nii.gz", nifti_bytes(phantom.ct))}).json()["id"]
    dicom_job = client.post("/jobs", files=[("files", (f.name, f.read_bytes())) for f in files]).json()["id"]
    assert "seg" not in wait_for_job(client, f"/jobs/{nifti_job}", timeout=120)["links"]
    no_seg = client.get(f"/jobs/{nifti_job}/seg")
    assert no_seg.status_code == 422 and "this job's input was nifti" in no_seg.json()["detail"]

    job = wait_for_job(client, f"/jobs/{dicom_job}", timeout=120)
    assert job["state"] == "done" and job["links"]["seg"] == f"/jobs/{dicom_job}/seg"
    seg = client.get(job["links"]["seg"])
    assert seg.status_code == 200 and seg.headers["content-type"] == "application/dicom"
    mask = client.get(job["links"]["mask"])
    expected = sitk.GetArrayFromImage(read_nifti(mask.content))  # decoded grid = file order (LPS)
    assert np.array_equal(seg_by_instance(seg.content, sop_uids(files)), expected)

