"""Every bad input gets the right 4xx and a sentence from a real server, which stays healthy."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import ORIENTATIONS, nifti_bytes, sphere_ct
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
