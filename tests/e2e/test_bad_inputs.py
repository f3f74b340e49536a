"""Every bad input gets the right 4xx and a sentence from a real server, which stays healthy."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import ORIENTATIONS, nifti_bytes, sphere_ct
from tests.service.test_decode_limits import nifti
from train.phantoms import make_phantom, write_dicom_series

pytestmark = pytest.mark.slow


def _nifti_header(dims: tuple[int, ...], datatype: int = 4, bitpix: int = 16) -> bytes:
    """A bare NIfTI-1 header (348 bytes + 4 extension bytes) declaring `dims`, with no voxels."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, *([1.0] * 7))
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\x00"
    return bytes(header)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _series(folder: Path, seed: int, modality: str = "CT") -> dict[str, bytes]:
    phantom = make_phantom(seed, spacing_xyz_mm=(8.0, 8.0, 8.0), z_range=(-40, 0))
    paths = write_dicom_series(phantom.ct, folder / f"s{seed}", file_prefix=f"s{seed}_")
    files = {}
    for path in paths:
        if modality != "CT":
            ds = pydicom.dcmread(path)
            ds.Modality = modality
            ds.save_as(path)
        files[f"s{seed}/{path.name}"] = path.read_bytes()
    return files


def _mutated(files: dict[str, bytes], **values: object) -> dict[str, bytes]:
    """Each file of a series with header attributes set to `values`."""
    out = {}
    for name, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        out[name] = buffer.getvalue()
    return out


def _frames(files: dict[str, bytes], text: bytes) -> dict[str, bytes]:
    """NumberOfFrames (IS) holding `text`, patched into the bytes: pydicom will not write it."""
    out = {}
    for name, data in _mutated(files, NumberOfFrames=1).items():
        at = data.index(b"\x28\x00\x08\x00IS")
        old = int.from_bytes(data[at + 6 : at + 8], "little")
        value = text + b" " * (len(text) % 2)
        out[name] = data[: at + 6] + len(value).to_bytes(2, "little") + value + data[at + 8 + old :]
    return out


def _cut_one(files: dict[str, bytes]) -> dict[str, bytes]:
    first = sorted(files)[len(files) // 2]
    return files | {first: files[first][:-100]}


def _sheared_mha() -> bytes:
    return (
        b"ObjectType = Image\nNDims = 3\nDimSize = 16 16 8\nElementType = MET_SHORT\n"
        b"TransformMatrix = 1 0 0 0.3 1 0 0 0 1\nElementSpacing = 1 1 1\nElementDataFile = LOCAL\n"
    ) + bytes(16 * 16 * 8 * 2)


def _seg_object() -> bytes:
    """A DICOM SEG as a PACS exports it beside its series (multi-frame, Modality SEG)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.BitsAllocated, ds.NumberOfFrames = 1, 1, 4
    ds.PixelData = bytes(16 * 16 * 4 // 8)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _cube_3m() -> bytes:
    """3 m along every axis at 20 mm: within the decoder's ranges, a 750^3 grid at the tiny model's 4 mm."""
    cube = sitk.Image([150, 150, 150], sitk.sitkInt16)
    cube.SetSpacing((20.0, 20.0, 20.0))
    return nifti_bytes(cube)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[str, bytes]]:
    folder = tmp_path_factory.mktemp("bad")
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(24, 24, 12))
    good = nifti_bytes(ct)
    nan = sitk.GetImageFromArray(np.full((8, 8, 8), np.nan, np.float32))
    four_d = sitk.GetImageFromArray(np.zeros((3, 8, 8, 8), np.int16), isVector=False)
    return {
        "truncated gzip": ("ct.nii.gz", good[: len(good) // 2]),
        "empty file": ("ct.nii.gz", b""),
        "text": ("ct.nii.gz", b"patient list, not a CT\n" * 20),
        "2D": ("ct.nii.gz", nifti_bytes(sitk.Image([16, 16], sitk.sitkInt16))),
        "4D": ("ct.nii.gz", nifti_bytes(four_d)),
        "NaN voxels": ("ct.nii.gz", nifti_bytes(nan)),
        "30000^3 header": ("ct.nii", _nifti_header((30000, 30000, 30000))),
        "zip bomb": ("series.zip", _zip({"bomb.dcm": bytes(50_000_000)})),
        "zip path traversal": ("series.zip", _zip({"../../etc/evil.dcm": b"x" * 200})),
        "mixed series": ("series.zip", _zip(_series(folder, 1) | _series(folder, 2))),
        "non-CT": ("series.zip", _zip(_series(folder, 3, modality="MR"))),
        # issues 18 and 19: geometry and values no CT has, header fields that disagree with the data
        "8x8x4 at 300 mm (79 bytes)": ("ct.nii.gz", gzip.compress(nifti(spacing=(300.0, 300.0, 300.0)), mtime=0)),
        "spacing 1e30 mm": ("ct.nii", nifti(spacing=(1.0, 1.0, 1e30))),
        "NaN pixdim": ("ct.nii", nifti(spacing=(float("nan"), 1.0, 1.0))),
        "origin 1e20 mm": ("ct.nii", nifti(qform_code=1, qoffset=(1e20, 0.0, 0.0))),
        "qform no rotation": ("ct.nii", nifti(qform_code=1, quatern=(10.0, 10.0, 10.0))),
        "2x2x2999 voxels": ("ct.nii.gz", gzip.compress(nifti((2, 2, 2999)))),
        "5000x2x2 voxels": ("ct.nii.gz", gzip.compress(nifti((5000, 2, 2), (0.5, 0.5, 0.5)))),
        "float32 1e38": ("ct.nii", nifti(datatype=16, data=np.full(256, 1e38, "<f4").tobytes())),
        "scl_slope 1e35": ("ct.nii", nifti(slope=1e35, data=np.full(256, 1000, "<i2").tobytes())),
        "vox_offset 3e8": ("ct.nii.gz", gzip.compress(nifti(offset=3e8))),
        "sheared MetaImage": ("ct.mha", _sheared_mha()),
        "3 m cube at 20 mm": ("ct.nii.gz", _cube_3m()),
        "DICOM Rows disagree": ("series.zip", _zip(_mutated(_series(folder, 4), Rows=8))),
        "DICOM BitsAllocated disagree": ("series.zip", _zip(_mutated(_series(folder, 5), BitsAllocated=8, BitsStored=8, HighBit=7))),
        "DICOM slice truncated": ("series.zip", _zip(_cut_one(_series(folder, 6)))),
        "DICOM NumberOfFrames abc": ("series.zip", _zip(_frames(_series(folder, 7), b"abc"))),
        "DICOM NumberOfFrames two values": ("series.zip", _zip(_frames(_series(folder, 8), b"1\\2"))),
        "DICOM RescaleSlope 1e30": ("series.zip", _zip(_mutated(_series(folder, 9), RescaleSlope=1e30))),
        "DICOM RescaleIntercept 1e38": ("series.zip", _zip(_mutated(_series(folder, 10), RescaleIntercept=1e38))),
    }


EXPECTED = {
    "truncated gzip": (422, "invalid_volume"),
    "empty file": (415, "unsupported_format"),
    "text": (415, "unsupported_format"),
    "2D": (422, "invalid_volume"),
    "4D": (422, "invalid_volume"),
    "NaN voxels": (422, "invalid_volume"),
    "30000^3 header": (413, "too_large"),
    "zip bomb": (413, "too_large"),
    "zip path traversal": (415, "unsupported_format"),
    "mixed series": (422, "invalid_volume"),
    "non-CT": (422, "invalid_volume"),
    "8x8x4 at 300 mm (79 bytes)": (422, "invalid_volume"),
    "spacing 1e30 mm": (422, "invalid_volume"),
    "NaN pixdim": (422, "invalid_volume"),
    "origin 1e20 mm": (422, "invalid_volume"),
    "qform no rotation": (422, "invalid_volume"),
    "2x2x2999 voxels": (422, "invalid_volume"),
    "5000x2x2 voxels": (422, "invalid_volume"),
    "float32 1e38": (422, "invalid_volume"),
    "scl_slope 1e35": (422, "invalid_volume"),
    "vox_offset 3e8": (413, "too_large"),
    "sheared MetaImage": (422, "invalid_volume"),
    "3 m cube at 20 mm": (413, "too_large"),
    "DICOM Rows disagree": (422, "invalid_volume"),
    "DICOM BitsAllocated disagree": (422, "invalid_volume"),
    "DICOM slice truncated": (422, "invalid_volume"),
    "DICOM NumberOfFrames abc": (422, "invalid_volume"),
    "DICOM NumberOfFrames two values": (422, "invalid_volume"),
    "DICOM RescaleSlope 1e30": (422, "invalid_volume"),
    "DICOM RescaleIntercept 1e38": (422, "invalid_volume"),
}


def test_each_bad_input_gets_its_4xx_and_the_server_stays_healthy(server_factory, bad_inputs) -> None:
    server = server_factory(max_decompressed_bytes=10_000_000).start()
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(24, 24, 12))
    with server.client() as client:
        answers = {}
        for case, (filename, data) in bad_inputs.items():
            response = client.post("/segment", files={"file": (filename, data)})
            body = response.json()
            answers[case] = (response.status_code, body["error"])
            assert len(body["detail"]) > 20, (case, body)
        assert answers == EXPECTED
        assert client.get("/healthz").status_code == 200
        good = client.post("/segment", files={"file": ("ct.nii.gz", nifti_bytes(ct))})
        assert good.status_code == 200
    assert server.process.poll() is None


def test_windows_a_request_would_buy_are_refused_and_a_seg_beside_its_series_is_ignored(server_factory, tmp_path) -> None:
    server = server_factory().start()
    # 432 mm a side: the tiny model's 4 mm grid is 108^3; overlap 0.9 steps 3 voxels: 27^3 windows.
    ct = sitk.Image([96, 96, 96], sitk.sitkInt16)
    ct.SetSpacing((4.5, 4.5, 4.5))
    ct = sitk.Add(ct, -1000)
    series = _series(tmp_path, 11)
    with server.client() as client:
        costly = client.post("/segment", params={"overlap": 0.9}, files={"file": ("ct.nii.gz", nifti_bytes(ct))})
        assert costly.status_code == 422, costly.text
        assert costly.json() == {
            "error": "invalid_option",
            "detail": "This request would run 19,683 windows x 1 pass(es) each = 19,683 network passes (overlap 0.9, "
            "tta off) on the 108 x 108 x 108 model grid; this service runs at most 10,000 per request "
            "(LIVERSEG_MAX_WINDOWS): use overlap 0.5, the model's default (216).",
        }
        with_seg = client.post(
            "/segment", params={"output": "json"},
            files={"file": ("series.zip", _zip(series | {"SEG/seg.dcm": _seg_object()}))},
        )
        assert with_seg.status_code == 200, with_seg.text
        summary = with_seg.json()
        assert summary["input"]["size_xyz"][2] == len(series)
        assert "1 DICOM object(s) that are not images of a series were ignored: 1 Segmentation (SEG)." in summary["input"]["warnings"]
    assert server.process.poll() is None
