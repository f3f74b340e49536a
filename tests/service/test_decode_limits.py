"""service.io.decode: geometry and values no CT has, NIfTI headers read as they are, DICOM pixel
data that disagree with their header, and objects beside a series (issues 18 and 19)."""

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
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.errors import InvalidVolume, TooLarge
from service.io.decode import Upload, decode_upload
from tests.conftest import REPO
from tests.service.test_decode import (
    SAMPLE,
    ct_image,
    dicom_series,
    dicom_slice,
    needs_sample,
    settings,
    upload,
    uploads,
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
# DICOM pixel data that disagree with their header


def _rewrite(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _short_element(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4)
    ds = pydicom.dcmread(paths[2])
    ds.PixelData = ds.PixelData[:-10]
    ds.save_as(paths[2])
    return paths


def _cut_file(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4)
    paths[1].write_bytes(paths[1].read_bytes()[:-20])
    return paths


def _every(tmp_path, **values):
    paths = dicom_series(tmp_path / "a", count=4)
    for path in paths:
        _rewrite(path, **values)
    return paths


def _frames_value(tmp_path, text: bytes):
    """NumberOfFrames (IS) holding `text`, written into the bytes (pydicom refuses to write it)."""
    paths = dicom_series(tmp_path / "a", count=4, frames=1)
    for path in paths:
        raw = path.read_bytes()
        at = raw.index(b"\x28\x00\x08\x00IS")
        old = int.from_bytes(raw[at + 6 : at + 8], "little")
        value = text + b" " * (len(text) % 2)
        path.write_bytes(raw[: at + 6] + len(value).to_bytes(2, "little") + value + raw[at + 8 + old :])
    return paths


BAD_PIXELS = [
    ("pixel data short in one slice", _short_element, "'s002.dcm' holds 86 bytes of pixel data where its header (Rows 8 x Columns 6 x SamplesPerPixel 1 x BitsAllocated 16/8 x NumberOfFrames 1) announces 96"),
    ("file cut in one slice", _cut_file, "'s001.dcm' ends early: its pixel data should hold 96 bytes, the file holds 76 of them."),
    ("every file cut", lambda t: [p.write_bytes(p.read_bytes()[:-50]) and p for p in dicom_series(t / "a", count=4)], "'s000.dcm' ends early"),
    ("Rows disagree", lambda t: _every(t, Rows=4), "'s000.dcm' holds 96 bytes of pixel data where its header (Rows 4 x Columns 6"),
    ("BitsAllocated disagree", lambda t: _every(t, BitsAllocated=8, BitsStored=8, HighBit=7), "BitsAllocated 8/8 x NumberOfFrames 1) announces 48"),
    ("BitsAllocated 12", lambda t: _every(t, BitsAllocated=12), "'s000.dcm' has a damaged DICOM header (BitsAllocated is 12"),
    ("NumberOfFrames abc", lambda t: _frames_value(t, b"abc"), "'s000.dcm' has a damaged DICOM header (NumberOfFrames should hold 1 finite number(s), not 'abc')"),
    ("NumberOfFrames NaN", lambda t: _frames_value(t, b"NaN"), "(NumberOfFrames should hold 1 finite number(s), not 'NaN')"),
    ("NumberOfFrames two values", lambda t: _frames_value(t, b"1\\2"), "(NumberOfFrames should hold 1 finite number(s), not '[1, 2]')"),
    ("RescaleSlope 1e30", lambda t: dicom_series(t / "a", count=4, slope=1e30), "The DICOM series holds values from 1.025e+33 to 1.028e+33; CT values lie within [-100,000, 100,000]"),
    ("RescaleIntercept 1e38", lambda t: dicom_series(t / "a", count=4, intercept=1e38), "The DICOM series holds values from 1e+38 to 1e+38"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the values it cannot convert
@pytest.mark.parametrize("maker, words", [case[1:] for case in BAD_PIXELS], ids=[case[0] for case in BAD_PIXELS])
def test_dicom_pixels_that_disagree_with_their_header_are_refused(tmp_path, maker, words):
    paths = maker(tmp_path)
    with pytest.raises(InvalidVolume) as caught:
        decode_upload(uploads(paths), settings())
    assert words in caught.value.detail
    assert type(caught.value) is InvalidVolume


def test_odd_pixel_data_may_carry_the_one_padding_byte_and_no_more(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    paths = []
    for k in range(3):
        path = dicom_slice(folder / f"s{k}.dcm", (0, 0, 2.0 * k), rows=5, columns=5, instance=k + 1)
        ds = pydicom.dcmread(path)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(range(25)) + b"\x00"  # 25 bytes and DICOM's pad to an even length
        ds.save_as(path)
        paths.append(path)
    volume = decode_upload(uploads(paths), settings())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image)[1].ravel(), np.arange(25) - 1024)
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = bytes(28)
    ds.save_as(paths[1])
    with pytest.raises(InvalidVolume, match="'s1.dcm' holds 28 bytes of pixel data .* announces 25"):
        decode_upload(uploads(paths), settings())


# ---------------------------------------------------------------------------------------------
# The real JPEG 2000 sample, damaged in one slice


def _sample_with(tmp_path: Path, damage) -> list[Path]:
    paths = []
    for i, source in enumerate(sorted((SAMPLE / "dicom").glob("*.dcm"))):
        target = tmp_path / f"slice{i:02d}.dcm"
        shutil.copy(source, target)
        if i == 7:
            target.write_bytes(damage(target.read_bytes()))
        paths.append(target)
    return paths


def _codestream(raw: bytes) -> int:
    return raw.index(b"\xff\x4f\xff\x51")


def _set(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value) :]


JPEG2000_DAMAGE = [
    ("end overwritten", lambda raw: _set(raw, len(raw) - 60, bytes(52)), "a tile-part does not start where the previous one ends"),
    ("file cut", lambda raw: raw[:-5000], "bytes runs past the end of the file"),
    ("tile-part length", lambda raw: _set(raw, raw.index(b"\xff\x90", _codestream(raw)) + 6, struct.pack(">I", 5000)), "a tile-part does not start where the previous one ends"),
    ("SIZ damaged", lambda raw: _set(raw, _codestream(raw) + 8, bytes(4)), "its image size marker (SIZ) is damaged"),
    ("components", lambda raw: _set(raw, _codestream(raw) + 40, struct.pack(">H", 3)), "its codestream holds 512 x 512 pixels of 3 component(s), where its header says 512 x 512 (Columns x Rows) of 1"),
    ("progression order", lambda raw: _set(raw, raw.index(b"\xff\x52", _codestream(raw)) + 5, b"\x40"), "could not be decoded (JPEG 2000 Image Compression (Lossless Only), which this service reads): its pixel data are damaged"),
]


@needs_sample
@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("damage, words", [case[1:] for case in JPEG2000_DAMAGE], ids=[case[0] for case in JPEG2000_DAMAGE])
def test_a_damaged_jpeg2000_slice_is_refused_naming_its_file(tmp_path, damage, words):
    with pytest.raises(InvalidVolume) as caught:
        decode_upload(uploads(_sample_with(tmp_path, damage)), settings())
    assert "'slice07.dcm'" in caught.value.detail
    assert words in caught.value.detail


# ---------------------------------------------------------------------------------------------
# Objects beside the series that are not its images


def _object(path: Path, sop_class: str, modality: str, frames: int | None = None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    ds.PatientName, ds.SeriesInstanceUID = "Doe^Jane", generate_uid()
    if frames:  # a segmentation: a multi-frame image of its own
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.BitsAllocated, ds.NumberOfFrames = 1, 1, frames
        ds.PixelData = bytes(8 * frames)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_objects_that_are_not_images_are_ignored_with_one_warning(tmp_path):
    series = dicom_series(tmp_path / "a", count=4)
    others = [
        _object(tmp_path / "seg.dcm", "1.2.840.10008.5.1.4.1.1.66.4", "SEG", frames=4),
        _object(tmp_path / "rt.dcm", "1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT"),
        _object(tmp_path / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.33", "SR"),
        _object(tmp_path / "dose.dcm", "1.2.840.10008.5.1.4.1.1.88.67", "SR"),
        _object(tmp_path / "ko.dcm", "1.2.840.10008.5.1.4.1.1.88.59", "KO"),
        _object(tmp_path / "pr.dcm", "1.2.840.10008.5.1.4.1.1.11.1", "PR"),
        _object(tmp_path / "DICOMDIR", "1.2.840.10008.1.3.10", ""),
    ]
    volume = decode_upload(uploads(series + others), settings())
    assert volume.image.GetSize() == (6, 8, 4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image)[:, 0, 0], [1, 2, 3, 4])
    assert volume.warnings == [
        "7 DICOM object(s) that are not images of a series were ignored: 1 Comprehensive SR (SR), 1 DICOMDIR, "
        "1 Grayscale Softcopy Presentation State (PR), 1 Key Object Selection Document (KO), "
        "1 RT Structure Set (RTSTRUCT), 1 Segmentation (SEG), 1 X-Ray Radiation Dose SR (SR)."
    ]


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
