"""service.io.decode: every accepted format decodes with exact geometry; every bad input gets the
right domain error and a sentence; limits hold before memory is allocated."""

from __future__ import annotations

import gzip
import random
import stat
import struct
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from service.errors import InvalidVolume, LiversegError, TooLarge, UnsupportedFormat
from service.io.decode import Upload, decode_upload
from service.io.sniff import sniff
from service.settings import Settings

SAMPLE = Path(__file__).parents[2] / ".." / "shared" / "data" / "ct-dicom-sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "dicom").is_dir(), reason=f"real CT sample not found at {SAMPLE} (shared data absent)"
)

c30, s30, c20, s20 = np.cos(np.radians(30)), np.sin(np.radians(30)), np.cos(np.radians(20)), np.sin(np.radians(20))
_rz = np.array([[c30, -s30, 0], [s30, c30, 0], [0, 0, 1]])
_rx = np.array([[1, 0, 0], [0, c20, -s20], [0, s20, c20]])
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "flipped": np.diag([1.0, -1.0, -1.0]),
    "oblique": _rz @ _rx,
    "sagittal": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),
}


def settings(**overrides) -> Settings:
    return Settings(**overrides)


def ct_image(size=(12, 10, 8), spacing=(0.7, 0.8, 2.5), origin=(-10.5, 20.25, -300.0), direction=DIRECTIONS["LPS"], dtype=np.int16):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1500, size=size[::-1]).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return image


def write(image: sitk.Image, path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def upload(path: Path, name: str | None = None) -> list[Upload]:
    return [Upload(name or path.name, path)]


# ---------------------------------------------------------------------------------------------
# NIfTI, MetaImage, NRRD


@pytest.mark.parametrize("orientation", list(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_volume_files_decode_with_exact_geometry(tmp_path, suffix, orientation):
    image = ct_image(direction=DIRECTIONS[orientation])
    path = write(image, tmp_path / f"ct{suffix}", compress=suffix == ".nii.gz")
    volume = decode_upload(upload(path), settings())
    reference = sitk.ReadImage(str(path))  # what the file itself says, read by SimpleITK
    assert volume.source == {".nii": "nifti", ".nii.gz": "nifti", ".mha": "mha", ".nrrd": "nrrd"}[suffix]
    assert volume.datasets is None
    assert volume.image.GetSize() == image.GetSize()
    assert volume.image.GetSpacing() == reference.GetSpacing()
    assert volume.image.GetOrigin() == reference.GetOrigin()
    assert volume.image.GetDirection() == reference.GetDirection()
    np.testing.assert_allclose(volume.image.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(volume.image.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.image.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    assert volume.image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), sitk.GetArrayViewFromImage(image))


@pytest.mark.parametrize(
    "written, claimed",
    [(".nii.gz", "scan.dcm"), (".mha", "ct.nii.gz"), (".nrrd", "volume.zip"), (".nii", "noext")],
)
def test_a_lying_name_is_decoded_by_content(tmp_path, written, claimed):
    image = ct_image()
    path = write(image, tmp_path / f"real{written}", compress=written.endswith(".gz"))
    volume = decode_upload([Upload(claimed, path)], settings())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), sitk.GetArrayViewFromImage(image))


@pytest.mark.parametrize(
    "dtype, expected",
    [(np.uint8, sitk.sitkInt16), (np.uint16, sitk.sitkInt16), (np.int32, sitk.sitkInt16), (np.float64, sitk.sitkInt16)],
)
def test_values_that_fit_are_stored_as_int16(tmp_path, dtype, expected):
    array = np.arange(12 * 10 * 8).reshape(8, 10, 12) % 200
    image = sitk.GetImageFromArray(array.astype(dtype))
    volume = decode_upload(upload(write(image, tmp_path / "ct.nrrd")), settings())
    assert volume.image.GetPixelID() == expected
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), array)


@pytest.mark.parametrize("array", [np.full((4, 5, 6), 40000, np.int32), np.full((4, 5, 6), 12.5, np.float64)])
def test_values_that_do_not_fit_int16_become_float32(tmp_path, array):
    volume = decode_upload(upload(write(sitk.GetImageFromArray(array), tmp_path / "ct.nii.gz", True)), settings())
    assert volume.image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), array.astype(np.float32))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_4d_with_a_trailing_1_is_squeezed(tmp_path, suffix):
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(1, 4, 5, 6)
    image4 = sitk.GetImageFromArray(array, isVector=False)  # size (6, 5, 4, 1)
    volume = decode_upload(upload(write(image4, tmp_path / f"ct{suffix}", True)), settings())
    assert volume.image.GetDimension() == 3 and volume.image.GetSize() == (6, 5, 4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), array[0])


def test_gzip_with_concatenated_members_decodes(tmp_path):
    """bgzip-style files are several gzip members one after another."""
    image = ct_image()
    raw = write(image, tmp_path / "ct.nii").read_bytes()
    path = tmp_path / "ct_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    volume = decode_upload(upload(path), settings())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), sitk.GetArrayViewFromImage(image))


def test_hu_warning_for_a_mask_like_volume(tmp_path):
    mask = sitk.GetImageFromArray(np.eye(8, dtype=np.uint8)[None].repeat(4, axis=0))
    volume = decode_upload(upload(write(mask, tmp_path / "mask.nii.gz", True)), settings())
    assert any("not CT in HU" in w for w in volume.warnings)


# ---------------------------------------------------------------------------------------------
# Bad single files: each gets its class and a sentence


def nifti1_header(dims: tuple[int, ...], datatype: int = 4, bitpix: int = 16) -> bytes:
    """A hand-made single-file NIfTI-1 header (348 bytes + 4 bytes of extension flag)."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    dim = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", header, 40, *dim)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, *([1.0] * 7))
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\x00"
    return bytes(header) + b"\x00" * 4


def _truncated_gzip(tmp_path):
    data = write(ct_image(), tmp_path / "full.nii.gz", True).read_bytes()
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_raw(tmp_path):
    data = write(ct_image(), tmp_path / "full.nii").read_bytes()
    path = tmp_path / "ct.nii"
    path.write_bytes(data[:-100])
    return path


def _corrupt_gzip(tmp_path):
    data = bytearray(write(ct_image(), tmp_path / "full.nii.gz", True).read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the gzip trailer
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(bytes(data))
    return path


def _corrupt_middle_gzip(tmp_path):
    """The gzip trailer is intact (so the fast path is tried), the deflate data in the middle is not."""
    data = bytearray(write(ct_image(), tmp_path / "full.nii.gz", True).read_bytes())
    data[len(data) // 2] ^= 0x55
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(bytes(data))
    return path


def _file(name: str, content: bytes):
    def make(tmp_path):
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return make


def _image(name: str, array: np.ndarray, vector: bool = False):
    def make(tmp_path):
        return write(sitk.GetImageFromArray(array, isVector=vector), tmp_path / name, name.endswith(".gz"))

    return make


def _with_nonfinite(value: float):
    array = np.zeros((4, 5, 6), np.float32)
    array[2, 3, 4] = value
    return array


def _mha_external(tmp_path):
    path = tmp_path / "ct.mha"
    path.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
        b"ElementDataFile = ../../../etc/passwd\n"
    )
    return path


def _mha_hidden_path(case_variant: bytes):
    """LOCAL under another letter case, then the path ITK reads (the probe read a server file so)."""
    def make(tmp_path):
        path = tmp_path / "ct.mha"
        path.write_bytes(
            b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
            + case_variant + b" = LOCAL\nElementDataFile = /etc/hostname\n"
        )
        return path
    return make


def _nrrd_variant(line: bytes):
    def make(tmp_path):
        path = tmp_path / "ct.nrrd"
        path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n" + line + b"\n\n")
        return path
    return make


def _nrrd_detached(tmp_path):
    path = tmp_path / "ct.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: /etc/passwd\n\n")
    return path


BAD_FILES = [
    # (id, maker, settings overrides, error class, words the sentence must hold)
    ("empty", _file("ct.nii.gz", b""), {}, UnsupportedFormat, "is empty"),
    ("text", _file("ct.nii", b"patient notes: none\nthis is not an image\n" * 20), {}, UnsupportedFormat, "text file"),
    ("png", _file("ct.nii", b"\x89PNG\r\n\x1a\n" + bytes(200)), {}, UnsupportedFormat, "PNG picture"),
    ("random bytes", _file("ct.bin", np.random.default_rng(1).bytes(600)), {}, UnsupportedFormat, "not a format"),
    ("gzip of text", _file("ct.nii.gz", gzip.compress(b"hello " * 100)), {}, UnsupportedFormat, "not a NIfTI"),
    ("truncated gzip", _truncated_gzip, {}, InvalidVolume, "ends early"),
    ("corrupt gzip CRC", _corrupt_gzip, {}, InvalidVolume, "damaged"),
    ("corrupt gzip data", _corrupt_middle_gzip, {}, InvalidVolume, "damaged"),
    ("truncated nii", _truncated_raw, {}, InvalidVolume, "truncated"),
    ("nifti pair", _file("ct.hdr", nifti1_header((4, 4, 4))[:344] + b"ni1\x00"), {}, UnsupportedFormat, ".hdr/.img"),
    ("2D", _image("slice.nii.gz", np.zeros((10, 12), np.int16)), {}, InvalidVolume, "2D image"),
    ("one slice", _image("slice.nrrd", np.zeros((1, 10, 12), np.int16)), {}, InvalidVolume, "single slice"),
    ("4D", _image("series.nii.gz", np.zeros((3, 4, 5, 6), np.int16)), {}, InvalidVolume, "4D image"),
    ("NaN", _image("ct.nii.gz", _with_nonfinite(np.nan)), {}, InvalidVolume, "NaN or infinite"),
    ("NaN raw nii", _image("ct.nii", _with_nonfinite(np.nan).astype(np.float64)), {}, InvalidVolume, "NaN or infinite"),
    ("NaN nrrd", _image("ct.nrrd", _with_nonfinite(np.nan)), {}, InvalidVolume, "NaN or infinite"),
    ("inf", _image("ct.mha", _with_nonfinite(np.inf)), {}, InvalidVolume, "NaN or infinite"),
    ("RGB", _image("rgb.mha", np.zeros((4, 5, 6, 3), np.uint8), vector=True), {}, InvalidVolume, "3 values per voxel"),
    ("vector nifti", _image("vec.nii.gz", np.zeros((4, 5, 6, 2), np.float32), vector=True), {}, InvalidVolume, "2 values per voxel"),
    ("complex nifti", _file("c.nii", nifti1_header((4, 4, 4), datatype=32, bitpix=64) + bytes(8 * 64)), {}, InvalidVolume, "complex"),
    ("mha external data", _mha_external, {}, UnsupportedFormat, "another file"),
    ("nrrd detached", _nrrd_detached, {}, UnsupportedFormat, "detached"),
    ("mha LOCAL in lower case, then a path", _mha_hidden_path(b"elementdatafile"), {}, UnsupportedFormat, "2 times"),
    ("mha LOCAL in upper case, then a path", _mha_hidden_path(b"ELEMENTDATAFILE"), {}, UnsupportedFormat, "2 times"),
    ("nrrd datafile", _nrrd_variant(b"datafile: /etc/hostname"), {}, UnsupportedFormat, "detached"),
    ("nrrd data file list", _nrrd_variant(b"data file: LIST"), {}, UnsupportedFormat, "detached"),
    ("nrrd data file pattern", _nrrd_variant(b"Data File: /etc/host%d 0 1 1"), {}, UnsupportedFormat, "detached"),
    ("voxels", _image("ct.nrrd", np.zeros((8, 10, 12), np.int16)), {"max_voxels": 500}, TooLarge, "LIVERSEG_MAX_VOXELS"),
    ("slices", _image("ct.nii.gz", np.zeros((8, 10, 12), np.int16)), {"max_slices": 7}, TooLarge, "LIVERSEG_MAX_SLICES"),
    ("upload bytes", _image("ct.nii", np.zeros((8, 10, 12), np.int16)), {"max_upload_bytes": 1000}, TooLarge, "LIVERSEG_MAX_UPLOAD_BYTES"),
    ("pixel bytes", _image("ct.nii.gz", np.zeros((8, 10, 12), np.int16)), {"max_decompressed_bytes": 1000}, TooLarge, "LIVERSEG_MAX_DECOMPRESSED_BYTES"),
]


@pytest.mark.parametrize("maker, overrides, error, words", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_file_gets_its_error_and_a_sentence(tmp_path, maker, overrides, error, words):
    path = maker(tmp_path)
    with pytest.raises(error) as caught:
        decode_upload(upload(path), settings(**overrides))
    assert words in caught.value.detail
    assert caught.value.detail.endswith(".")
    assert type(caught.value) is error  # not a subclass standing in for another


@pytest.mark.parametrize("compress", [False, True])
def test_huge_declared_volume_fails_fast_without_allocating(tmp_path, compress):
    """30000^3 int16 voxels would be 54 TB: the header alone must be enough to refuse."""
    header = nifti1_header((30000, 30000, 30000)) + bytes(1024)
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(header) if compress else header)
    started = time.perf_counter()
    with pytest.raises(TooLarge, match="30000 x 30000 x 30000"):
        decode_upload(upload(path), settings())
    assert time.perf_counter() - started < 1.0


def test_big_declared_volume_with_little_data_fails_before_allocating(tmp_path):
    """Within the voxel limit, but the gzip holds nothing: refused after inflating a few bytes."""
    path = tmp_path / "liar.nii.gz"
    path.write_bytes(gzip.compress(nifti1_header((700, 700, 700))))  # would be 686 MB of int16
    started = time.perf_counter()
    with pytest.raises(InvalidVolume, match="ends early"):
        decode_upload(upload(path), settings())
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("magic", [b"ObjectType = Image\n", b"NRRD0004\n", b"PK\x03\x04", b"\x1f\x8b\x08\x00"])
def test_truncated_headers_are_refused(tmp_path, magic):
    path = tmp_path / "x"
    path.write_bytes(magic)
    with pytest.raises((UnsupportedFormat, InvalidVolume)):
        decode_upload(upload(path), settings())


def test_no_files():
    with pytest.raises(UnsupportedFormat, match="No file was uploaded"):
        decode_upload([], settings())


# ---------------------------------------------------------------------------------------------
# DICOM series made with pydicom


def dicom_slice(
    path: Path,
    position,
    *,
    orientation=(1, 0, 0, 0, 1, 0),
    rows=8,
    columns=6,
    pixel_spacing=(0.7, 0.5),
    stored: np.ndarray | None = None,
    series_uid="1.2.826.0.1.3680043.10.1",
    description="CT abdomen",
    modality="CT",
    slope=1.0,
    intercept=-1024.0,
    instance=1,
    sop_uid: str | None = None,
    preamble=True,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    frames: int | None = None,
) -> Path:
    """One uncompressed single-frame slice, as a scanner would write it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()  # the real sample: empty in the dataset only
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid if sop_uid is not None else meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-123"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.0"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(pixel_spacing)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if frames:
        ds.NumberOfFrames = frames
    pixels = stored if stored is not None else np.full((rows, columns), 1024 + instance, np.int16)
    ds.PixelData = pixels.astype(np.int16).tobytes() * (frames or 1)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def dicom_series(folder: Path, count=6, step=2.5, tilt_deg=0.0, z0=-100.0, steps=None, **kwargs) -> list[Path]:
    """`count` slices along +z (or the normal of `orientation`), optionally sheared by a gantry tilt."""
    folder.mkdir(parents=True, exist_ok=True)
    orientation = np.array(kwargs.get("orientation", (1, 0, 0, 0, 1, 0)), dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    offsets = np.cumsum([0.0, *(steps or [step] * (count - 1))])
    paths = []
    for k, along in enumerate(offsets):
        position = np.array([5.0, -30.0, 0.0]) + (z0 + along) * normal
        position += along * np.tan(np.radians(tilt_deg)) * orientation[3:]  # the tilt shears along the columns
        paths.append(dicom_slice(folder / f"s{k:03d}.dcm", position, instance=k + 1, **kwargs))
    return paths


def uploads(paths: list[Path]) -> list[Upload]:
    return [Upload(p.name, p) for p in paths]


def zipped(tmp_path: Path, paths: list[Path], name="series.zip", arcnames=None) -> Path:
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i, p in enumerate(paths):
            z.write(p, arcnames[i] if arcnames else f"DICOM/{p.parent.name}/{p.name}")
    return archive


def test_dicom_series_decodes_sorted_in_hu_with_header_geometry(tmp_path):
    paths = dicom_series(tmp_path / "a", count=6, step=2.5)
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    volume = decode_upload(uploads(shuffled), settings())
    image = volume.image
    assert volume.source == "dicom"
    assert image.GetSize() == (6, 8, 6)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.7, 2.5))
    np.testing.assert_allclose(image.GetOrigin(), (5.0, -30.0, -100.0))
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())
    array = sitk.GetArrayViewFromImage(image)
    np.testing.assert_array_equal(array[:, 0, 0], np.arange(1, 7))  # 1024 + k stored, -1024 intercept
    assert [int(ds.InstanceNumber) for ds in volume.datasets] == [1, 2, 3, 4, 5, 6]
    assert "PixelData" not in volume.datasets[0]
    assert image.GetPixelID() == sitk.sitkInt16


def test_dicom_geometry_equals_simpleitk_series_reader_for_oblique_descending_series(tmp_path):
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    orientation = (c, s, 0.0, 0.0, 0.0, -1.0)  # coronal-ish, rotated
    paths = dicom_series(tmp_path / "a", count=5, step=3.0, orientation=orientation)
    volume = decode_upload(uploads(paths[::-1]), settings())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "a")))
    reference = reader.Execute()
    assert volume.image.GetOrigin() == reference.GetOrigin()
    assert volume.image.GetDirection() == reference.GetDirection()
    np.testing.assert_allclose(volume.image.GetSpacing(), reference.GetSpacing(), rtol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), sitk.GetArrayViewFromImage(reference))


def test_dicom_with_empty_uids_is_one_series(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4, series_uid="", sop_uid="")
    volume = decode_upload(uploads(paths), settings())
    assert volume.image.GetSize()[2] == 4


def test_dicom_without_preamble_is_recognised(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4, preamble=False)
    assert paths[0].read_bytes()[128:132] != b"DICM"
    assert sniff(paths[0]).value == "DICOM"
    volume = decode_upload([Upload(f"file{i}", p) for i, p in enumerate(paths)], settings())
    assert volume.image.GetSize() == (6, 8, 4)


def test_varying_fractional_rescale_keeps_exact_hu(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    stored = np.full((8, 6), 1001, np.int16)
    slopes = [1.0, 0.5, 2.0, 1.0]
    paths = [
        dicom_slice(folder / f"s{k}.dcm", (0, 0, 2.0 * k), stored=stored, slope=slopes[k], instance=k + 1)
        for k in range(4)
    ]
    volume = decode_upload(uploads(paths), settings())
    values = sitk.GetArrayViewFromImage(volume.image)[:, 0, 0]
    np.testing.assert_array_equal(values, [1001 * m - 1024 for m in slopes])  # -23, -523.5, 978, -23
    assert volume.image.GetPixelID() == sitk.sitkFloat32


def test_zip_with_junk_and_localizer_decodes_with_warnings(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4)
    scout = dicom_slice(tmp_path / "scout.dcm", (0, 0, 0), orientation=(1, 0, 0, 0, 0, -1), rows=10, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    readme = tmp_path / "README.txt"
    readme.write_text("exported by PACS\n")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in paths:
            z.write(p, f"IMAGES/{p.name}")
        z.write(scout, "IMAGES/scout")
        z.write(readme, "README.txt")
        z.writestr("__MACOSX/IMAGES/._s000.dcm", b"\x00\x05\x16\x07junk")
        z.writestr("IMAGES/", b"")
    volume = decode_upload(upload(archive), settings())
    assert volume.image.GetSize() == (6, 8, 4)
    assert any("localizer" in w for w in volume.warnings)
    assert any("not DICOM were ignored" in w for w in volume.warnings)


def test_patient_data_never_reaches_the_log(tmp_path, caplog):
    paths = dicom_series(tmp_path / "a", count=3)
    caplog.set_level("DEBUG")
    decode_upload([Upload("Doe_Jane_CT.dcm", p) for p in paths], settings())
    assert caplog.records
    text = caplog.text
    assert "Doe" not in text and "SECRET-ID" not in text and "1.2.826.0.1.3680043" not in text


def _two_series(tmp_path):
    a = dicom_series(tmp_path / "a", count=4, description="CT venous", series_uid="1.2.3.1")
    b = dicom_series(tmp_path / "b", count=3, description="CT arterial", series_uid="1.2.3.2")
    return [zipped(tmp_path, a + b)]


def _same_uid_other_geometry(tmp_path):
    a = dicom_series(tmp_path / "a", count=4)
    b = dicom_series(tmp_path / "b", count=3, rows=10)
    return a + b


def _gapped(tmp_path):
    return dicom_series(tmp_path / "a", count=6, steps=[2.0, 2.0, 6.0, 2.0, 2.0])


def _uneven(tmp_path):
    return dicom_series(tmp_path / "a", count=6, steps=[2.0, 2.0, 3.1, 2.0, 2.0])


def _duplicates(tmp_path):
    a = dicom_series(tmp_path / "a", count=4)
    return [*a, dicom_slice(tmp_path / "other.dcm", (5.0, -30.0, -100.0), instance=9)]


def _damaged_position(tmp_path):
    paths = dicom_series(tmp_path / "a", count=3)
    return [*paths, dicom_slice(tmp_path / "bad.dcm", (1.0, 2.0), instance=7)]


def _without(paths: list[Path], *keywords: str, only: slice = slice(None)) -> list[Path]:
    """`paths` with the header tags `keywords` deleted from the files `only` selects."""
    for path in paths[only]:
        ds = pydicom.dcmread(path)
        for keyword in keywords:
            delattr(ds, keyword)
        ds.save_as(path)
    return paths


def _some_positions_missing(tmp_path):
    return _without(dicom_series(tmp_path / "a", count=3), "ImagePositionPatient", only=slice(1, 2))


def _no_position_nor_step(tmp_path):
    return _without(dicom_series(tmp_path / "a", count=3), "ImagePositionPatient")


def _no_position_two_images_one_number(tmp_path):
    paths = _without(dicom_series(tmp_path / "a", count=3), "ImagePositionPatient")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SliceThickness, ds.InstanceNumber = 2.5, 1
        ds.save_as(path)
    return paths


def _moved_off_the_step(tmp_path):
    return dicom_series(tmp_path / "a", count=6, steps=[2.5, 2.5, 3.7, 1.3, 2.5])  # slice 4 moved: a gap behind it


def _multiframe(tmp_path):
    return [dicom_slice(tmp_path / "enhanced.dcm", (0, 0, 0), frames=5)]


def _mixed(tmp_path):
    return [*dicom_series(tmp_path / "a", count=3), write(ct_image(), tmp_path / "ct.nii.gz", True)]


def _only_text(tmp_path):
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for p in paths:
        p.write_text("nothing here\n")
    return paths


BAD_SERIES = [
    ("two series in a zip", _two_series, {}, InvalidVolume, ["2 DICOM series", "'CT venous' (4 files", "'CT arterial' (3 files", "1.2.3.2"]),
    ("same UID, other geometry", _same_uid_other_geometry, {}, InvalidVolume, ["2 DICOM series", "6 x 10 pixels"]),
    ("MR", lambda t: dicom_series(t / "a", count=4, modality="MR", description="T1 axial"), {}, InvalidVolume, ["is MR", "CT only"]),
    ("gantry tilt", lambda t: dicom_series(t / "a", count=6, tilt_deg=15.0), {}, InvalidVolume, ["tilted", "about 15.0 degrees", "gantry tilt"]),
    ("missing slices", _gapped, {}, InvalidVolume, ["missing 2 slice(s)", "gap of 6 mm"]),
    ("uneven spacing", _uneven, {}, InvalidVolume, ["not uniform", "from 2 to 3.1 mm"]),
    ("two images at one position", _duplicates, {}, InvalidVolume, ["same position"]),
    ("one DICOM file", lambda t: [dicom_slice(t / "one.dcm", (0, 0, 0))], {}, InvalidVolume, ["single slice"]),
    ("damaged position", _damaged_position, {}, InvalidVolume, ["'bad.dcm' has a damaged DICOM header", "ImagePositionPatient should hold 3"]),
    ("some positions missing", _some_positions_missing, {}, InvalidVolume, ["lack ImagePositionPatient", "cannot be placed in space"]),
    ("no position nor step", _no_position_nor_step, {}, InvalidVolume, ["nor SpacingBetweenSlices or SliceThickness"]),
    ("no position, one number twice", _no_position_two_images_one_number, {}, InvalidVolume, ["have InstanceNumber 1"]),
    ("a slice moved off the step", _moved_off_the_step, {}, InvalidVolume, ["not uniform", "from 1.3 to 3.7 mm"]),
    ("multi-frame", _multiframe, {}, UnsupportedFormat, ["multi-frame", "Enhanced CT"]),
    ("too many slices", lambda t: dicom_series(t / "a", count=6), {"max_slices": 5}, TooLarge, ["6 slices", "LIVERSEG_MAX_SLICES"]),
    ("too many voxels", lambda t: dicom_series(t / "a", count=6), {"max_voxels": 200}, TooLarge, ["288 voxels", "LIVERSEG_MAX_VOXELS"]),
    ("too many files", lambda t: dicom_series(t / "a", count=6), {"max_zip_members": 5}, TooLarge, ["6 files", "LIVERSEG_MAX_ZIP_MEMBERS"]),
    ("volume file among others", _mixed, {}, UnsupportedFormat, ["'ct.nii.gz' (gzip-compressed NIfTI)", "must come alone"]),
    ("no DICOM at all", _only_text, {}, UnsupportedFormat, ["holds no DICOM file", "2 text"]),
]


@pytest.mark.parametrize("maker, overrides, error, words", [c[1:] for c in BAD_SERIES], ids=[c[0] for c in BAD_SERIES])
def test_bad_series_gets_its_error_and_a_sentence(tmp_path, maker, overrides, error, words):
    paths = maker(tmp_path)
    with pytest.raises(error) as caught:
        decode_upload(uploads(paths), settings(**overrides))
    for word in words:
        assert word in caught.value.detail
    assert type(caught.value) is error


def test_lone_image_of_another_series_is_dropped_and_named(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4)
    dose = dicom_slice(tmp_path / "dose.dcm", (0, 0, 0), rows=12, columns=12, series_uid="1.2.3.99", description="Dose Report")
    volume = decode_upload(uploads([*paths, dose]), settings())
    assert volume.image.GetSize() == (6, 8, 4)
    assert volume.warnings == [
        "1 image at (0.0, 0.0, 0.0) mm of another series ('Dose Report', Modality CT, SeriesInstanceUID 1.2.3.99) "
        "was left out: a single image is not a volume."
    ]


def test_lone_image_of_the_series_in_another_geometry_is_dropped_with_what_differs(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4)
    screen = dicom_slice(tmp_path / "screen.dcm", (5.0, -30.0, -92.5), rows=12, instance=5)
    volume = decode_upload(uploads([*paths, screen]), settings())
    assert volume.image.GetSize() == (6, 8, 4)
    assert volume.warnings == [
        "1 image at (5.0, -30.0, -92.5) mm of the series was left out: it is not one of its slices "
        "(rows 12 where the series has 8)."
    ]


def test_an_image_off_the_regular_step_is_left_out_and_said_where(tmp_path):
    paths = dicom_series(tmp_path / "a", count=6)  # -100 to -87.5 mm, 2.5 mm apart
    stray = dicom_slice(tmp_path / "stray.dcm", (5.0, -30.0, -96.3), instance=99)
    volume = decode_upload(uploads([stray, *paths]), settings())
    assert volume.image.GetSize() == (6, 8, 6)
    np.testing.assert_allclose(volume.image.GetSpacing(), (0.5, 0.7, 2.5))
    assert [int(ds.InstanceNumber) for ds in volume.datasets] == [1, 2, 3, 4, 5, 6]
    assert volume.warnings == [
        "1 image of the series (instance 99) at -96.30 mm along the slice normal lies off the series' "
        "regular 2.5 mm step and was left out."
    ]


def test_duplicate_file_of_one_slice_is_dropped(tmp_path):
    paths = dicom_series(tmp_path / "a", count=4)
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(paths[1].read_bytes())
    volume = decode_upload(uploads([*paths, copy]), settings())
    assert volume.image.GetSize()[2] == 4
    assert any("duplicate" in w for w in volume.warnings)


# ---------------------------------------------------------------------------------------------
# Zip archives


def _members(tmp_path, names: list[str]) -> Path:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in names:
            z.writestr(name, b"\x00" * 10)
    return archive


def _bomb(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\x00" * (8 << 20))  # 8 MiB of zeros: ~8 kB compressed
    return archive


def _lying_bomb(tmp_path):
    """Sizes patched down to 100 bytes in both headers: the real inflated bytes must be what counts."""
    data = bytearray(_bomb(tmp_path).read_bytes())
    real = struct.pack("<I", 8 << 20)
    for at in [i for i in range(len(data) - 4) if data[i : i + 4] == real]:
        data[at : at + 4] = struct.pack("<I", 100)
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(data))
    return archive


def _symlink_member(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("series/s000.dcm")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    return archive


def _encrypted_member(tmp_path):
    """zipfile cannot encrypt: set the 'encrypted' flag bit in both headers by hand."""
    data = bytearray(_members(tmp_path, ["s.dcm"]).read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + flag_at] |= 0x1
    archive = tmp_path / "enc.zip"
    archive.write_bytes(bytes(data))
    return archive


def _nested(tmp_path):
    inner = zipped(tmp_path, dicom_series(tmp_path / "a", count=3), name="inner.zip")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.write(inner, "inner.zip")
    return outer


def _truncated_zip(tmp_path):
    data = zipped(tmp_path, dicom_series(tmp_path / "a", count=3)).read_bytes()
    path = tmp_path / "cut.zip"
    path.write_bytes(data[: len(data) - 300])
    return path


BAD_ZIPS = [
    ("bomb", _bomb, {"max_decompressed_bytes": 1 << 20}, TooLarge, "inflates to more than 1.0 MB"),
    ("lying bomb", _lying_bomb, {"max_decompressed_bytes": 1 << 20}, (TooLarge, UnsupportedFormat), ""),
    ("dot-dot", lambda t: _members(t, ["ok.dcm", "../../evil.dcm"]), {}, UnsupportedFormat, "points outside the archive"),
    ("nested dot-dot", lambda t: _members(t, ["a/b/../../../evil.dcm"]), {}, UnsupportedFormat, "points outside the archive"),
    ("absolute", lambda t: _members(t, ["/etc/cron.d/evil"]), {}, UnsupportedFormat, "points outside the archive"),
    ("drive letter", lambda t: _members(t, ["C:/Windows/evil.dcm"]), {}, UnsupportedFormat, "points outside the archive"),
    ("backslashes", lambda t: _members(t, ["..\\..\\evil.dcm"]), {}, UnsupportedFormat, "points outside the archive"),
    ("symlink", _symlink_member, {}, UnsupportedFormat, "symbolic link"),
    ("encrypted", _encrypted_member, {}, UnsupportedFormat, "encrypted"),
    ("too many members", lambda t: _members(t, [f"s{i}.dcm" for i in range(5)]), {"max_zip_members": 3}, TooLarge, "5 entries"),
    ("nested zip", _nested, {}, UnsupportedFormat, "nested archives are not read"),
    ("truncated", _truncated_zip, {}, UnsupportedFormat, "not a readable zip"),
    ("empty zip", lambda t: _members(t, []), {}, UnsupportedFormat, "holds no files"),
]


@pytest.mark.parametrize("maker, overrides, error, words", [c[1:] for c in BAD_ZIPS], ids=[c[0] for c in BAD_ZIPS])
def test_bad_zip_gets_its_error_and_nothing_escapes(tmp_path, maker, overrides, error, words, monkeypatch):
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    archive = maker(tmp_path)
    with pytest.raises(error) as caught:
        decode_upload(upload(archive), settings(**overrides))
    assert words in caught.value.detail
    assert not (tmp_path.parent / "evil.dcm").exists()
    assert list(work.iterdir()) == []  # the extraction folder is gone, whatever happened


# ---------------------------------------------------------------------------------------------
# The real CT sample (JPEG 2000 lossless, UIDs emptied by anonymisation)


def _sample_reference() -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SAMPLE / "dicom")))
    return reader.Execute()


@needs_sample
@pytest.mark.realdata
@pytest.mark.parametrize("packaging", ["files", "zip"])
def test_real_sample_decodes_like_simpleitk(tmp_path, packaging):
    paths = sorted((SAMPLE / "dicom").glob("*.dcm"))
    files = uploads(paths) if packaging == "files" else upload(zipped(tmp_path, paths, arcnames=[f"CT/{p.name}" for p in paths]))
    volume = decode_upload(files, settings())
    image, reference = volume.image, _sample_reference()
    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-3)
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetDirection() == reference.GetDirection()
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference))
    assert len(volume.datasets) == 20
    positions = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert positions == sorted(positions) and positions[0] == image.GetOrigin()[2]
    assert volume.warnings == []


@needs_sample
@pytest.mark.realdata
def test_real_sample_liver_is_in_hu(tmp_path):
    volume = decode_upload(uploads(sorted((SAMPLE / "dicom").glob("*.dcm"))), settings())
    liver = sitk.GetArrayViewFromImage(sitk.ReadImage(str(SAMPLE / "liver_mask.nii.gz"))) > 0
    median = float(np.median(sitk.GetArrayViewFromImage(volume.image)[liver]))
    assert 70 <= median <= 110, median


# ---------------------------------------------------------------------------------------------
# Robustness: damaged files of every format give a domain error, never another exception


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about each mangled value
def test_mutated_files_never_escape_the_domain_errors(tmp_path):
    """300 random byte flips and truncations of valid files (a fixed seed): each decodes or gets
    a LiversegError; any other exception would be a 5xx for the client."""
    image = ct_image(size=(8, 7, 6))
    seeds = {suffix: write(image, tmp_path / f"seed{suffix}", suffix.endswith(".gz")).read_bytes() for suffix in (".nii", ".nii.gz", ".mha", ".nrrd")}
    series = dicom_series(tmp_path / "d", count=3)
    seeds["dcm"] = series[0].read_bytes()
    seeds["zip"] = zipped(tmp_path, series).read_bytes()
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    for i in range(300):
        key = rng.choice(sorted(seeds))
        data = bytearray(seeds[key])
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randrange(1, 12)):
                data[rng.randrange(min(len(data), 700))] = rng.randrange(256)
        path = tmp_path / f"mutant{i}"
        path.write_bytes(bytes(data))
        files = uploads(series[1:]) + [Upload("x.dcm", path)] if key == "dcm" else [Upload("x", path)]
        try:
            decode_upload(files, settings(max_voxels=10**6, max_decompressed_bytes=10**7))
            outcome = "decoded"
        except LiversegError as error:
            outcome = error.code
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("unsupported_format", 0) > 0 and outcomes.get("invalid_volume", 0) > 0
