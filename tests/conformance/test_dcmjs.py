"""dcmjs, the library OHIF reads DICOM SEG with, loads our SEG and finds the Liver segment on the
frames of exactly the source images that hold liver, with each image's number of liver pixels."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from service.io.seg import make_seg
from tests.conformance.conftest import phantom_case, real_case
from tests.conftest import ORIENTATIONS
from tests.service.test_seg import CARD


def read_with_dcmjs(reader: list[str], data: bytes, folder: Path) -> dict:
    path = folder / "seg.dcm"
    path.write_bytes(data)
    done = subprocess.run([*reader, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def liver_pixels_by_instance(files: list[Path], mask: sitk.Image) -> dict[str, int]:
    """SOP Instance UID (the file meta's where the dataset has none) -> liver pixels on that image."""
    array = sitk.GetArrayFromImage(mask)
    out = {}
    for f in files:
        header = pydicom.dcmread(f, stop_before_pixels=True)
        k = int(round(mask.TransformPhysicalPointToContinuousIndex([float(v) for v in header.ImagePositionPatient])[2]))
        uid = str(header.get("SOPInstanceUID") or header.file_meta.MediaStorageSOPInstanceUID)
        out[uid] = int(array[k].sum())
    return out


def check(found: dict, expected: dict[str, int]) -> None:
    assert found["modality"] == "SEG"
    assert found["segments"] == [{"number": 1, "label": "Liver", "category": "91723000", "type": "10200004"}]
    assert all(frame["segment"] == 1 for frame in found["frames"])
    by_image = {frame["sop"]: frame["pixels"] for frame in found["frames"]}
    assert by_image == {uid: n for uid, n in expected.items() if n > 0}
    assert len(by_image) < len(expected)  # the slices without liver have no frame


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "flipped_z", "oblique"])
def test_dcmjs_finds_the_liver_on_the_right_frames(dcmjs_reader, tmp_path, orientation) -> None:
    files, volume, mask = phantom_case(tmp_path, seed=3, direction=ORIENTATIONS[orientation])
    found = read_with_dcmjs(dcmjs_reader, make_seg(volume, mask, CARD), tmp_path)
    check(found, liver_pixels_by_instance(files, mask))


@pytest.mark.realdata
def test_dcmjs_reads_the_real_samples_seg(dcmjs_reader, real_sample, tmp_path) -> None:
    files, volume, mask = real_case(real_sample, tmp_path)
    expected = liver_pixels_by_instance(files, mask)
    assert sum(expected.values()) == int(np.asarray(sitk.GetArrayViewFromImage(mask)).sum()) > 0
    found = read_with_dcmjs(dcmjs_reader, make_seg(volume, mask, CARD), tmp_path)
    assert found["segments"][0]["label"] == "Liver"
    assert {f["sop"]: f["pixels"] for f in found["frames"]} == {u: n for u, n in expected.items() if n > 0}
