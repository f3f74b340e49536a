"""A DICOM series whose images carry no Image Position (Patient) (3D-IRCADb's exports): decoded
by assumption (stacked by InstanceNumber, else file order; origin 0; step from
SpacingBetweenSlices, else SliceThickness), every assumption said in the warnings, and no DICOM
SEG made for it, since a SEG places its frames by the slices' positions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from service.app import create_app
from service.io.decode import Upload, decode_upload
from service.settings import Settings
from tests.conftest import wait_for_job
from train.phantoms import make_phantom, write_dicom_series

SPACING = (4.0, 4.0, 4.0)
SLICES = 14  # the slab below, at 4 mm
STACKED = (
    "The series' images carry no Image Position (Patient): the volume was placed at origin (0, 0, 0) mm "
    f"with its {SLICES} slices stacked {{order}}, {{step}} mm apart ({{source}}){{orientation}}. Where it lies "
    "in the patient, and whether its slices run head to feet or feet to head, are not known; no DICOM "
    "SEG can be made for it."
)
BY_NUMBER = "by InstanceNumber"
BY_FILE = "in the order the files were uploaded (not every image has an InstanceNumber)"
AXIAL = "; they carry no Image Orientation (Patient) either, so axial slices (rows along x, columns along y) were assumed"


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(1, spacing_xyz_mm=SPACING, z_range=(-40.0, 16.0))


def series_without_positions(phantom, folder: Path, *removed: str, thickness_mm: float = 5.0) -> list[Path]:
    """The phantom as a DICOM series (files in slice order), Image Position (Patient) and the
    tags `removed` deleted from every file; SliceThickness `thickness_mm` (an overlapping
    reconstruction: thicker than the 4 mm step)."""
    files = write_dicom_series(phantom.ct, folder, slice_thickness_mm=thickness_mm)
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword in ("ImagePositionPatient", *removed):
            delattr(ds, keyword)
        ds.save_as(f)
    assert len(files) == SLICES
    return files


def decode(files: list[Path], folder: Path):
    return decode_upload([Upload(f.name, f) for f in files], Settings(data_dir=folder / "var"))


CASES = [
    # (what the headers lack besides the position, upload order, expected warning parts, step)
    ("only the position", (), "shuffled", dict(order=BY_NUMBER, step="4", source="SpacingBetweenSlices", orientation=""), 4.0),
    ("no SpacingBetweenSlices", ("SpacingBetweenSlices",), "shuffled", dict(order=BY_NUMBER, step="5", source="SliceThickness", orientation=""), 5.0),
    ("no orientation", ("ImageOrientationPatient",), "shuffled", dict(order=BY_NUMBER, step="4", source="SpacingBetweenSlices", orientation=AXIAL), 4.0),
    ("no InstanceNumber", ("InstanceNumber",), "in order", dict(order=BY_FILE, step="4", source="SpacingBetweenSlices", orientation=""), 4.0),
]


@pytest.mark.parametrize("removed, upload_order, words, step", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_series_without_positions_is_stacked_at_origin_zero_and_said(phantom, tmp_path, removed, upload_order, words, step):
    files = series_without_positions(phantom, tmp_path / "dicom", *removed)
    sent = files[:]
    if upload_order == "shuffled":
        random.Random(4).shuffle(sent)
    volume = decode(sent, tmp_path)

    assert volume.source == "dicom" and volume.positions_known is False
    assert volume.warnings == [STACKED.format(**words)]
    image = volume.image
    assert image.GetSize() == phantom.ct.GetSize()
    assert image.GetOrigin() == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(image.GetSpacing(), (*SPACING[:2], step))
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())
    # Slice k is the phantom's slice k: InstanceNumber (or the file order) is the phantom's z order.
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), np.rint(sitk.GetArrayViewFromImage(phantom.ct)))


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        yield client


SEG_REFUSED = (
    "DICOM SEG output places the mask by each slice's Image Position (Patient), which the images of "
    "{whose} lack (the volume was placed at origin 0 by assumption)."
)


def test_a_seg_or_rtstruct_is_refused_for_a_series_without_positions(client, phantom, tmp_path) -> None:
    files = series_without_positions(phantom, tmp_path / "dicom")
    upload = [("files", (f.name, f.read_bytes())) for f in files]
    refused = client.post("/segment", params={"output": "dicom-seg"}, files=upload)
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "unsupported_output",
        "detail": SEG_REFUSED.format(whose="this input") + " Ask for output=nifti instead.",
    }
    refused = client.post("/segment", params={"output": "rtstruct"}, files=upload)
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "unsupported_output",
        "detail": "An RT Structure Set, like a DICOM SEG, references its source series: "
        + SEG_REFUSED.format(whose="this input") + " Ask for output=nifti instead.",
    }


@pytest.mark.slow
def test_a_job_on_a_series_without_positions_has_a_mask_no_seg_and_says_why(client, phantom, tmp_path) -> None:
    files = series_without_positions(phantom, tmp_path / "dicom")
    job_id = client.post("/jobs", files=[("files", (f.name, f.read_bytes())) for f in files]).json()["id"]
    job = wait_for_job(client, f"/jobs/{job_id}", timeout=120)
    assert job["state"] == "done"
    assert "mask" in job["links"] and "seg" not in job["links"] and "rtstruct" not in job["links"]
    warnings = job["summary"]["input"]["warnings"]
    assert STACKED.format(order=BY_NUMBER, step="4", source="SpacingBetweenSlices", orientation="") in warnings
    no_seg = client.get(f"/jobs/{job_id}/seg")
    assert no_seg.status_code == 422
    assert no_seg.json() == {
        "error": "unsupported_output",
        "detail": SEG_REFUSED.format(whose="this job's input") + " Fetch the mask (/mask) instead.",
    }
