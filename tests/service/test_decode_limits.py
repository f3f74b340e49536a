"""service.io.decode: geometry and values no CT has, NIfTI headers read as they are (issues 18 and 19)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from service.errors import InvalidVolume, TooLarge
from service.io.decode import Upload, decode_upload
from tests.conftest import REPO
from tests.service.test_decode import (
    ct_image,
    settings,
    upload,
    write,
)


def nifti(
    dims: tuple[int, ...] = (8, 8, 4),
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    *,
    data: bytes | None = None,
    datatype: int = 4,
    offset: float = 352.0,
    slope: float = 0.0,
    qform_code: int = 0,
    sform_code: int = 0,
    quatern: tuple[float, float, float] = (0.0, 0.0, 0.0),
    qoffset: tuple[float, float, float] = (0.0, 0.0, 0.0),
    srow: list[list[float]] | None = None,
) -> bytes:
    """A NIfTI-1 file written byte by byte, so that any header field can hold what a probe sends."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", header, 70, datatype, {4: 16, 16: 32}[datatype])
    struct.pack_into("<8f", header, 76, 1.0, *spacing, *([1.0] * (7 - len(spacing))))
    struct.pack_into("<f", header, 108, offset)
    struct.pack_into("<ff", header, 112, slope, 0.0)
    struct.pack_into("<hh", header, 252, qform_code, sform_code)
    struct.pack_into("<6f", header, 256, *quatern, *qoffset)
    if srow is not None:
        struct.pack_into("<12f", header, 280, *np.ravel(srow))
    header[344:348] = b"n+1\x00"
    if data is None:
        data = bytes(int(np.prod(dims)) * {4: 2, 16: 4}[datatype])
    return bytes(header) + bytes(max(int(offset) - 352, 0)) + data


def nifti_file(tmp_path: Path, content: bytes, name: str = "ct.nii") -> list[Upload]:
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    return upload(path)


def decode_nifti(tmp_path: Path, content: bytes, name: str = "ct.nii", **overrides):
    return decode_upload(nifti_file(tmp_path, content, name), settings(**overrides))


def mha(tmp_path: Path, header: str, array: np.ndarray) -> list[Upload]:
    """A MetaImage whose header is written by hand (int16 voxels after it)."""
    path = tmp_path / "ct.mha"
    size = " ".join(map(str, array.shape[::-1]))
    path.write_bytes(
        f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = MET_SHORT\n{header}"
        "ElementDataFile = LOCAL\n".encode() + array.astype("<i2").tobytes()
    )
    return upload(path)


# ---------------------------------------------------------------------------------------------
# Physical ranges (every format: checked in _finalise)

# (case, size, spacing, origin) that a real CT has, and the same just past the range.
ACCEPTED_AND_REFUSED = [
    ("fine spacing", (16, 16, 4), (0.01, 0.01, 10.0), (0, 0, 0), (16, 16, 4), (0.009, 0.01, 10.0), (0, 0, 0), "0.009 mm along x lies outside 0.01-20 mm"),
    ("coarse slices", (16, 16, 4), (0.8, 0.8, 20.0), (0, 0, 0), (16, 16, 4), (0.8, 0.8, 21.0), (0, 0, 0), "21 mm along z lies outside 0.01-20 mm"),
    ("whole body", (64, 64, 500), (8.0, 8.0, 4.0), (0, 0, 0), (64, 64, 751), (8.0, 8.0, 4.0), (0, 0, 0), "spans 3,004 mm along z (751 voxels of 4 mm)"),
    ("far origin", (8, 8, 4), (1.0, 1.0, 1.0), (-1e5, 0, 9e4), (8, 8, 4), (1.0, 1.0, 1.0), (0, 2e5, 0), "200000 mm along y lies beyond 100000 mm"),
    ("thin slab", (512, 512, 2), (0.5, 0.5, 1.0), (0, 0, 0), (4, 4, 2999), (1.0, 1.0, 0.5), (0, 0, 0), "longest axis is 750 times its shortest"),
    ("small slices", (4, 4, 8), (1.0, 1.0, 1.0), (0, 0, 0), (2, 2, 2999), (1.0, 1.0, 1.0), (0, 0, 0), "its slices (x by y) are 2 x 2"),
    ("lines", (4, 4, 8), (1.0, 1.0, 1.0), (0, 0, 0), (5000, 2, 2), (0.5, 0.5, 0.5), (0, 0, 0), "its slices (x by y) are 5000 x 2"),
]


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize(
    "good_size, good_spacing, good_origin, bad_size, bad_spacing, bad_origin, words",
    [case[1:] for case in ACCEPTED_AND_REFUSED], ids=[case[0] for case in ACCEPTED_AND_REFUSED],
)
def test_physical_ranges_pass_any_ct_and_refuse_what_lies_beyond(
    tmp_path, suffix, good_size, good_spacing, good_origin, bad_size, bad_spacing, bad_origin, words
):
    good = write(ct_image(size=good_size, spacing=good_spacing, origin=good_origin), tmp_path / f"good{suffix}", True)
    volume = decode_upload(upload(good), settings())
    assert volume.image.GetSize() == good_size
    np.testing.assert_allclose(volume.image.GetSpacing(), good_spacing, rtol=1e-6)
    bad = write(ct_image(size=bad_size, spacing=bad_spacing, origin=bad_origin), tmp_path / f"bad{suffix}", True)
    with pytest.raises(InvalidVolume) as caught:
        decode_upload(upload(bad), settings())
    assert words in caught.value.detail
    assert caught.value.detail.startswith(f"'bad{suffix}' ")


@pytest.mark.parametrize(
    "spacing, words",
    [
        ((300.0, 300.0, 300.0), "300 mm along x lies outside 0.01-20 mm"),  # the probe's 79-byte file
        ((1000.0, 1.0, 1.0), "1000 mm along x lies outside 0.01-20 mm"),
        ((1.0, 1.0, 1e30), "1e+30 mm along z lies outside 0.01-20 mm"),
    ],
)
def test_the_probes_tiny_file_with_huge_spacing_is_refused(tmp_path, spacing, words):
    content = gzip.compress(nifti(spacing=spacing), mtime=0)
    assert len(content) < 100
    with pytest.raises(InvalidVolume) as caught:
        decode_upload(nifti_file(tmp_path, content), settings())
    assert caught.value.detail == (
        f"'ct.nii' has voxel spacing [{', '.join(f'{s:g}' for s in np.float32(spacing).astype(float))}] mm: "
        f"{words}, the range any CT lies in; the header is damaged (or not in mm)."
    )


@pytest.mark.parametrize("origin, words", [((1e20, 0.0, 0.0), "-1e+20 mm along x"), ((0.0, 0.0, 1e15), "1e+15 mm along z")])
def test_origins_far_beyond_any_scanner_are_refused(tmp_path, origin, words):
    content = nifti(qform_code=1, qoffset=origin)
    with pytest.raises(InvalidVolume) as caught:
        decode_nifti(tmp_path, content)
    assert words in caught.value.detail and "beyond 100000 mm of the scanner's origin" in caught.value.detail


def test_a_sheared_metaimage_transform_is_refused(tmp_path):
    # det = 1, so the old check passed it; the mask came back on another grid.
    files = mha(tmp_path, "TransformMatrix = 1 0 0 0.3 1 0 0 0 1\nElementSpacing = 1 1 1\n", np.zeros((4, 8, 8)))
    with pytest.raises(InvalidVolume) as caught:
        decode_upload(files, settings())
    assert "'ct.mha' has direction cosines" in caught.value.detail
    assert "not orthonormal (D^T D differs from the identity by 0.3" in caught.value.detail


def test_a_rotation_written_to_six_digits_is_orthonormal_enough(tmp_path):
    c, s = 0.866025, 0.5  # cos and sin of 30 degrees, rounded as DICOM DS values are
    files = mha(tmp_path, f"TransformMatrix = {c} {s} 0 {-s} {c} 0 0 0 1\n", np.zeros((4, 8, 8)))
    assert decode_upload(files, settings()).image.GetSize() == (8, 8, 4)
    sheared = mha(tmp_path, f"TransformMatrix = {c} {s} 0 {-s + 0.01} {c} 0 0 0 1\n", np.zeros((4, 8, 8)))
    with pytest.raises(InvalidVolume, match="not orthonormal"):
        decode_upload(sheared, settings())


@pytest.mark.parametrize(
    "content, words",
    [
        (nifti(datatype=16, data=np.full(256, 1e38, "<f4").tobytes()), "holds values from 1e+38 to 1e+38"),
        (nifti(slope=1e35, data=np.full(256, 1000, "<i2").tobytes()), "holds values from 1e+38 to 1e+38"),
        (nifti(datatype=16, data=np.full(256, -2e5, "<f4").tobytes()), "holds values from -200000 to -200000"),
    ],
    ids=["float 1e38", "scl_slope 1e35", "float -2e5"],
)
def test_values_beyond_any_hu_are_refused(tmp_path, content, words):
    with pytest.raises(InvalidVolume) as caught:
        decode_nifti(tmp_path, content, "ct.nii.gz")
    assert words in caught.value.detail and "CT values lie within [-100,000, 100,000]" in caught.value.detail


def test_raw_unsigned_values_and_an_extended_scale_still_pass(tmp_path):
    # 65,535 raw (no intercept) and -10,240..30,710 (an extended CT scale) are real; 100,001 is not.
    for high in (65535.0, 30710.0):
        array = np.array([-1024.0, high] * 128, "<f4")
        assert decode_nifti(tmp_path, nifti(datatype=16, data=array.tobytes()), "ct.nii.gz").image.GetSize() == (8, 8, 4)
    with pytest.raises(InvalidVolume, match="holds values from -1024 to 100001"):
        decode_nifti(tmp_path, nifti(datatype=16, data=np.array([-1024.0, 100001.0] * 128, "<f4").tobytes()), "ct.nii.gz")


# ---------------------------------------------------------------------------------------------
# NIfTI headers: what NiftiImageIO would repair or choose silently


@pytest.mark.parametrize("pixdim", [(float("nan"), 1.0, 1.0), (1.0, float("inf"), 1.0), (1.0, 1.0, 0.0)])
def test_a_nan_infinite_or_zero_pixdim_is_refused_not_replaced_by_1(tmp_path, pixdim):
    with pytest.raises(InvalidVolume) as caught:
        decode_nifti(tmp_path, nifti(spacing=pixdim))
    assert caught.value.detail == (
        f"'ct.nii' has voxel spacing (pixdim) {list(pixdim)} mm in its NIfTI header: a spacing must be a "
        "finite, non-zero number (NIfTI readers silently replace it by 1 mm)."
    )


@pytest.mark.parametrize(
    "quatern, words",
    [((10.0, 10.0, 10.0), "(10, 10, 10) is no rotation (b^2 + c^2 + d^2 = 300"), ((float("nan"), 0.0, 0.0), "(nan, 0, 0)")],
)
def test_a_qform_quaternion_that_is_no_rotation_is_refused(tmp_path, quatern, words):
    with pytest.raises(InvalidVolume) as caught:
        decode_nifti(tmp_path, nifti(qform_code=1, quatern=quatern))
    assert "'ct.nii' has a NIfTI qform (code 1) whose quaternion (b, c, d) = " in caught.value.detail
    assert words in caught.value.detail


def test_a_quaternion_of_an_unused_qform_is_not_read(tmp_path):
    unused = nifti(qform_code=0, quatern=(10.0, 10.0, 10.0), sform_code=1, srow=[[1, 0, 0, 5], [0, 1, 0, 6], [0, 0, 1, 7]])
    assert decode_nifti(tmp_path, unused).image.GetOrigin() == (-5.0, -6.0, 7.0)
    with pytest.raises(InvalidVolume, match="NIfTI sform \\(code 1\\) holding values that are not finite"):
        decode_nifti(tmp_path, nifti(sform_code=1, srow=[[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0]]))


@pytest.mark.parametrize(
    "sform_code, used, origin",
    [(1, "the sform (code 1, scanner anatomy) was used, not the qform (code 1, scanner anatomy)", (-50.0, -60.0, 70.0)),
     (2, "the qform (code 1, scanner anatomy) was used, not the sform (code 2, aligned anatomy)", (-1.0, -2.0, 3.0))],
)
def test_a_qform_and_sform_that_disagree_are_reported_with_the_one_used(tmp_path, sform_code, used, origin):
    content = nifti(
        qform_code=1, qoffset=(1.0, 2.0, 3.0), sform_code=sform_code, srow=[[1, 0, 0, 50], [0, 1, 0, 60], [0, 0, 1, 70]]
    )
    volume = decode_nifti(tmp_path, content)
    assert volume.image.GetOrigin() == origin  # ITK's choice, which the warning reports
    assert volume.warnings[0] == (
        "The NIfTI header's qform and sform place the volume differently (their origins 101.26 mm apart, "
        f"their axes 0.0 degrees apart); {used}, as ITK reads NIfTI: check that the mask's geometry is the one "
        "you expect."
    )


def test_a_qform_and_sform_that_agree_give_no_warning(tmp_path):
    path = write(ct_image(), tmp_path / "ct.nii.gz", True)  # SimpleITK writes both, equal
    with pytest.raises(InvalidVolume, match="quaternion"):  # and a broken qform beside them is still refused
        decode_nifti(tmp_path, nifti(qform_code=1, sform_code=1, quatern=(1.0, 1.0, 0.0), srow=np.eye(3, 4).tolist()))
    assert decode_upload(upload(path), settings()).warnings == []


# ---------------------------------------------------------------------------------------------
# vox_offset counts toward the bytes inflated


def test_a_huge_vox_offset_is_refused_before_inflating(tmp_path, monkeypatch):
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(work))
    content = nifti(offset=3e8)  # 286 MB of zeros ahead of 512 bytes of voxels: a 0.3 MB .nii.gz
    files = nifti_file(tmp_path, content, "ct.nii.gz")
    assert files[0].path.stat().st_size < 400_000
    with pytest.raises(TooLarge) as caught:
        decode_upload(files, settings(max_decompressed_bytes=10_000_000))
    assert caught.value.detail == (
        "'ct.nii.gz' declares 286.1 MB (512 bytes of pixel data after a data offset (vox_offset) of "
        "300,000,000 bytes); this service inflates at most 9.5 MB (LIVERSEG_MAX_DECOMPRESSED_BYTES)."
    )
    assert list(work.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Memory stays bounded: the probe's cases in a process with a limited address space

CHILD = """
import json, resource, sys
from pathlib import Path
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
from tests.conftest import TINY
folder = Path(sys.argv[2])
settings = Settings(model=TINY, model_dir=folder / "checkpoints", data_dir=folder / "var", device="cpu")
answers = {}
with TestClient(create_app(settings), raise_server_exceptions=False) as client:  # a 500 is an answer too
    for path in sorted((folder / "uploads").iterdir()):
        response = client.post("/segment", files={"file": (path.name, path.read_bytes())})
        answers[path.name] = [response.status_code, response.json().get("error") if response.status_code != 200 else None]
print(json.dumps(answers))
"""
# What a normal request takes here: ~1.7 GB of address space (torch's libraries, threads' stacks
# and malloc arenas), ~0.5 GB resident. The probe's 8 x 8 x 4 voxels at 300 mm grew to 6.5 GB.
ADDRESS_SPACE = 3 * 1024**3


@pytest.mark.slow
def test_the_probes_inputs_stay_within_a_bounded_address_space(tmp_path, tiny_checkpoint_dir):
    from tests.conftest import ORIENTATIONS, nifti_bytes, sphere_ct

    (tmp_path / "uploads").mkdir()
    shutil.copytree(tiny_checkpoint_dir, tmp_path / "checkpoints")
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(40, 36, 20))
    (tmp_path / "uploads" / "a_normal.nii.gz").write_bytes(nifti_bytes(ct))
    (tmp_path / "uploads" / "b_300mm.nii.gz").write_bytes(gzip.compress(nifti(spacing=(300.0, 300.0, 300.0)), mtime=0))
    # 3 m along every axis at 20 mm passes the decoder's ranges; its 4 mm grid is 750^3 voxels.
    cube = write(ct_image(size=(150, 150, 150), spacing=(20.0, 20.0, 20.0), origin=(0, 0, 0)), tmp_path / "c.nii.gz", True)
    shutil.move(cube, tmp_path / "uploads" / "c_3m_cube.nii.gz")
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    with warnings.catch_warnings():
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(ADDRESS_SPACE), str(tmp_path)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "a_normal.nii.gz": [200, None],
        "b_300mm.nii.gz": [422, "invalid_volume"],
        "c_3m_cube.nii.gz": [413, "too_large"],
    }
