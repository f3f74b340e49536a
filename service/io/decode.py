"""Turn uploaded files into one CT `Volume` in HU, refusing anything unsafe or not a CT volume.

Accepted: one NIfTI-1/2 file (.nii or .nii.gz), one MetaImage (.mha, data inside the file), one
NRRD (data inside the file), one .zip holding one DICOM series, or the DICOM files of one series.
The format is recognised from the bytes, never from the name: a file called `ct.nii.gz` that
is a zip is decoded as a zip.

Every limit of `Settings` is checked before the pixel memory is allocated:
- max_upload_bytes: the sizes on disk of the uploaded files, summed, before anything is read;
- max_zip_members: the entries a zip declares in its end record, before Python builds its
  directory (and again on that directory); also the number of files in one upload;
- max_decompressed_bytes: bytes really inflated, counted while extracting or un-gzipping
  (declared sizes are only used to refuse early, never to accept); also the pixel bytes a
  header declares;
- max_voxels, max_slices: from the header (NIfTI header parsed here, MetaImage/NRRD through
  SimpleITK's ReadImageInformation, DICOM through pydicom without pixels) before pixels are read.
  A NIfTI's data offset (vox_offset) counts toward max_decompressed_bytes: the bytes before the
  voxels are inflated too.

Every decoded volume, whatever its format, must also have a geometry and values some CT has
(checked in `_finalise`); beyond them lies a damaged or forged header, whose model grid may be
enormous (8 x 8 x 4 voxels at 300 mm resample to 600 x 600 x 300 voxels at 4 mm):
- spacing 0.01-20 mm along every axis: micro-CT-like 0.05 mm pixels and the 10 mm slices of old
  scanners pass with room;
- at most 3,000 mm along every axis (voxels x spacing): a 2 m whole-body scan passes;
- origin within 100 m (1e5 mm) of the scanner's origin in every coordinate: patient coordinates
  lie within metres of it, and beyond 1e5 mm a NIfTI's float32 offsets can no longer place a
  voxel to 0.01 mm;
- orthonormal direction cosines (D^T D = I within 1e-3; DICOM's rounding is ~1e-6): a sheared or
  scaled grid (a MetaImage TransformMatrix may hold one) is no scanner's, and the mask could not
  be returned on it;
- slices (x by y) of at least 4 x 4 voxels, and no axis more than 512 times as long as another in
  voxels: 512 x 512 x 2 passes, 2 x 2 x 2999 and 5000 x 2 x 2 do not;
- values within [-100,000, 100,000] after the rescale: CT holds -1024 to 3071 HU, about 30,000
  on an extended scale, and 65,535 as raw unsigned values without their intercept.
NIfTI headers are checked first where SimpleITK would hide the damage: a NaN, infinite or zero
pixdim (NIfTI's reader replaces it by 1), a qform quaternion that is no rotation, a non-finite
sform. Where the qform and the sform disagree, a warning says which one was used (ITK's rule).

Logs never hold patient data nor the client's file names (they often carry a patient's name).
"""

from __future__ import annotations

import logging
import math
import re
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.errors import InvalidVolume, TooLarge, UnsupportedFormat, client_name, format_bytes
from service.io.archive import extract_zip
from service.io.dicom_series import DicomFile, decode_series
from service.settings import Settings
from service.volume import Source, Volume

log = logging.getLogger(__name__)

HEAD_BYTES = 64 * 1024  # enough for any NIfTI, MetaImage or NRRD header we accept
CHUNK = 1 << 20
INFLATE_CHUNK = 4 << 20  # bytes inflated per step: bounds memory whatever the compression ratio
INT16_MIN, INT16_MAX = -32768, 32767
ACCEPTED = (
    "send one NIfTI (.nii, .nii.gz), MetaImage (.mha) or NRRD (.nrrd) file, one .zip of a DICOM "
    "series, or the DICOM files of one series"
)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one of a NIfTI header's transforms puts the grid, in LPS as SimpleITK reports it."""

    origin: np.ndarray  # (3,) mm
    direction: np.ndarray  # (3, 3), columns: the directions of the voxel axes


@dataclass(frozen=True, slots=True)
class NiftiHeader:
    """What the decoder needs from a NIfTI-1 or -2 header, read from its raw bytes."""

    sizes: list[int]
    voxel_bytes: int
    offset: int  # vox_offset: where the voxels start
    float_dtype: str | None  # numpy dtype of floating-point voxels, else None
    qform_code: int
    sform_code: int
    qform: Placement | None  # None where qform_code is 0 (unknown)
    sform: Placement | None  # None where sform_code is 0 or the sform is degenerate


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file, already spooled to disk by the web layer.

    filename: the name the client gave it (used in messages only, never trusted for the format).
    path: where its bytes lie.
    """

    filename: str
    path: Path


class Kind(StrEnum):
    """What a file's first bytes say it is."""

    EMPTY = "empty"
    NIFTI = "NIfTI"
    NIFTI_GZ = "gzip-compressed NIfTI"
    NIFTI_PAIR = "NIfTI header of a .hdr/.img pair"
    ANALYZE = "Analyze 7.5 header"
    GZIP_OTHER = "gzip-compressed file that is not NIfTI"
    METAIMAGE = "MetaImage"
    NRRD = "NRRD"
    ZIP = "zip archive"
    DICOM = "DICOM"
    TEXT = "text"
    OTHER = "file of unknown format"


VOLUME_KINDS = {Kind.NIFTI, Kind.NIFTI_GZ, Kind.METAIMAGE, Kind.NRRD}
OTHER_MAGIC = {  # formats people upload by mistake, named so the message helps
    b"\x89PNG": "a PNG picture",
    b"\xff\xd8\xff": "a JPEG picture",
    b"%PDF": "a PDF document",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ": "an xz archive",
    b"7z\xbc\xaf": "a 7-Zip archive",
    b"Rar!": "a RAR archive",
    b"II*\x00": "a TIFF picture",
    b"MM\x00*": "a TIFF picture",
}
DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}
# NIfTI datatype code -> (bytes per voxel, readable) ; unreadable ones are not one real value per voxel
NIFTI_TYPES = {
    2: (1, True), 4: (2, True), 8: (4, True), 16: (4, True), 64: (8, True), 256: (1, True),
    512: (2, True), 768: (4, True), 1024: (8, True), 1280: (8, True),
    32: (8, False), 128: (3, False), 1536: (16, False), 1792: (16, False), 2048: (32, False),
    2304: (4, False),
}
# The physical ranges of the module docstring: the geometry and values some CT has.
SPACING_RANGE_MM = (0.01, 20.0)
MAX_EXTENT_MM = 3000.0
MAX_ORIGIN_MM = 1e5
ORTHONORMAL_TOLERANCE = 1e-3
MIN_SLICE_VOXELS = 4
MAX_ASPECT = 512
VALUE_RANGE = (-1e5, 1e5)
SLACK = 1e-6  # relative: headers store float32, so 0.01 mm arrives as 0.0099999998 mm
# A qform and an sform closer than this describe the same grid (float32 storage, DS rounding).
SAME_ORIGIN_MM, SAME_DIRECTION = 0.01, 1e-3
NIFTI_XFORM_NAMES = {1: "scanner anatomy", 2: "aligned anatomy", 3: "Talairach", 4: "MNI 152", 5: "template"}
PIXEL_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8,
    sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}


def decode_upload(files: list[Upload], settings: Settings) -> Volume:
    """Decode uploaded files into one CT volume in HU (int16 where the values fit, else float32).

    Returns:
        a `Volume` whose image keeps the input's exact size, spacing, origin and direction.

    Raises:
        UnsupportedFormat (415): nothing we read, a damaged archive, an unsafe zip, a mix of files.
        InvalidVolume (422): not a 3D CT volume (2D, 4D, NaN, colour, tilted, gaps, several
            series, not CT, truncated pixel data).
        TooLarge (413): a limit of `settings` is exceeded.
    """
    started = time.perf_counter()
    if not files:
        raise UnsupportedFormat(f"No file was uploaded: {ACCEPTED}.")
    if len(files) > settings.max_zip_members:
        raise TooLarge(
            f"{len(files)} files were uploaded; this service accepts at most "
            f"{settings.max_zip_members} in one upload (LIVERSEG_MAX_ZIP_MEMBERS): zip the series."
        )
    total = sum(upload.path.stat().st_size for upload in files)
    if total > settings.max_upload_bytes:
        raise TooLarge(
            f"The upload is {format_bytes(total)}; this service accepts at most "
            f"{format_bytes(settings.max_upload_bytes)} (LIVERSEG_MAX_UPLOAD_BYTES)."
        )
    with tempfile.TemporaryDirectory(prefix="liverseg-decode-") as work:
        entries = [(client_name(upload.filename), upload.path) for upload in files]
        volume = _decode_entries(entries, settings, Path(work), inside_zip=False)
    image = volume.image
    log.info(
        "decoded %s volume: %s voxels, spacing %s mm, %s, %d warning(s), in %.2f s",
        volume.source, "x".join(map(str, image.GetSize())),
        "x".join(f"{s:.3g}" for s in image.GetSpacing()), image.GetPixelIDTypeAsString(),
        len(volume.warnings), time.perf_counter() - started,
    )
    return volume


def _decode_entries(
    entries: list[tuple[str, Path]], settings: Settings, work: Path, *, inside_zip: bool
) -> Volume:
    kinds = [(name, path, sniff(path)) for name, path in entries]
    if len(kinds) == 1:
        name, path, kind = kinds[0]
        if kind in VOLUME_KINDS:
            return _read_volume_file(name, path, kind, settings, work)
        if kind is Kind.ZIP and not inside_zip:
            members = extract_zip(name, path, settings, work / "zip")
            if not members:
                raise UnsupportedFormat(f"The zip '{name}' holds no files: {ACCEPTED}.")
            return _decode_entries(members, settings, work, inside_zip=True)
        if kind is Kind.ZIP:
            raise UnsupportedFormat(
                f"The zip holds another zip ('{name}'); nested archives are not read: zip the DICOM files themselves."
            )
        if kind is not Kind.DICOM:
            raise UnsupportedFormat(_not_readable(name, path, kind))
    where = "The zip" if inside_zip else "The upload"
    containers = [(name, kind) for name, _, kind in kinds if kind in VOLUME_KINDS or kind is Kind.ZIP]
    if containers:
        found = ", ".join(f"'{name}' ({kind.value})" for name, kind in containers[:5])
        raise UnsupportedFormat(
            f"{where} holds {len(kinds)} files, among them {found}: a volume file or zip must come "
            f"alone. {ACCEPTED[0].upper()}{ACCEPTED[1:]}."
        )
    dicoms = [DicomFile(name, path) for name, path, kind in kinds if kind is Kind.DICOM]
    skipped = len(kinds) - len(dicoms)
    if not dicoms:
        counts: dict[str, int] = {}
        for _, _, kind in kinds:
            counts[kind.value] = counts.get(kind.value, 0) + 1
        found = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        raise UnsupportedFormat(f"{where} holds no DICOM file ({len(kinds)} files: {found}): {ACCEPTED}.")
    series = decode_series(dicoms, settings)
    warnings = list(series.warnings)
    if skipped:
        warnings.insert(0, f"{skipped} file(s) that are not DICOM were ignored.")
    image, more = _finalise(series.image, "The DICOM series")
    return Volume(image=image, datasets=series.datasets, source="dicom", warnings=warnings + more)


# ---------------------------------------------------------------------------------------------
# Recognising a format from its bytes


def sniff(path: Path) -> Kind:
    """The format of a file, from its first bytes (and, for gzip, from what it inflates to)."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        return Kind.EMPTY
    if head[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(wbits=31).decompress(head, 1024)
        except zlib.error:
            return Kind.GZIP_OTHER
        return Kind.NIFTI_GZ if _nifti_kind(inner) is Kind.NIFTI else Kind.GZIP_OTHER
    nifti = _nifti_kind(head)
    if nifti is not None:
        return nifti
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":  # the latter: an empty zip
        return Kind.ZIP
    if head[128:132] == b"DICM":
        return Kind.DICOM
    if _dicom_without_preamble(head):
        return Kind.DICOM
    if head[:7] == b"NRRD000":
        return Kind.NRRD
    if re.match(rb"\s*(ObjectType|NDims)\s*=", head[:64]):
        return Kind.METAIMAGE
    if _looks_like_text(head[:1024]):
        return Kind.TEXT
    return Kind.OTHER


def _nifti_kind(head: bytes) -> Kind | None:
    if len(head) < 348:
        return None
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", head[:4])
        if size == 348:
            magic = head[344:348]
            return {b"n+1\x00": Kind.NIFTI, b"ni1\x00": Kind.NIFTI_PAIR}.get(magic, Kind.ANALYZE)
        if size == 540 and len(head) >= 540:
            magic = head[4:12]
            return {b"n+2\x00\r\n\x1a\n": Kind.NIFTI, b"ni2\x00\r\n\x1a\n": Kind.NIFTI_PAIR}.get(magic)
    return None


def _dicom_without_preamble(head: bytes) -> bool:
    """A DICOM stream that starts at its first element (group 0002 or 0008, little endian)."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if head[4:6] in DICOM_VRS:  # explicit VR
        return True
    (length,) = struct.unpack("<I", head[4:8])  # implicit VR: a plausible first value length
    return head[:2] == b"\x08\x00" and length < 256


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    text = head.decode("utf-8", errors="ignore")
    if len(text.encode("utf-8")) < 0.9 * len(head):  # much of it is not UTF-8: binary
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def _not_readable(name: str, path: Path, kind: Kind) -> str:
    if kind is Kind.EMPTY:
        return f"'{name}' is empty (0 bytes): the upload did not carry the file's content."
    if kind in (Kind.NIFTI_PAIR, Kind.ANALYZE):
        return (
            f"'{name}' is a {kind.value}: its pixels live in a separate .img file; convert it to a "
            "single .nii or .nii.gz file."
        )
    if kind is Kind.GZIP_OTHER:
        return (
            f"'{name}' is gzip-compressed, but not a NIfTI image (or its compressed data is damaged); "
            "only NIfTI is read gzip-compressed (.nii.gz)."
        )
    if kind is Kind.TEXT:
        return f"'{name}' is a text file, not an image: {ACCEPTED}."
    with path.open("rb") as f:
        head = f.read(16)
    what = next((label for magic, label in OTHER_MAGIC.items() if head.startswith(magic)), "not a format this service reads")
    return f"'{name}' is {what}: {ACCEPTED}."


# ---------------------------------------------------------------------------------------------
# Single-file volumes: NIfTI, MetaImage, NRRD


def _read_volume_file(name: str, path: Path, kind: Kind, settings: Settings, work: Path) -> Volume:
    work.mkdir(parents=True, exist_ok=True)
    source: Source
    header: NiftiHeader | None = None
    if kind in (Kind.NIFTI, Kind.NIFTI_GZ):
        source, io_name = "nifti", "NiftiImageIO"
        header, local, checked_copy = _prepare_nifti(name, path, kind, settings, work)
        try:
            image = _itk_read(name, local, io_name, kind, settings)
        except (UnsupportedFormat, InvalidVolume):
            if checked_copy is None:
                raise
            # The fast path failed: inflate it ourselves, which says precisely what is wrong.
            image = _itk_read(name, checked_copy(), io_name, kind, settings)
    else:
        source, suffix, io_name = (
            ("mha", ".mha", "MetaImageIO") if kind is Kind.METAIMAGE else ("nrrd", ".nrrd", "NrrdImageIO")
        )
        _refuse_detached_data(name, path, kind)
        # SimpleITK picks its reader by extension too: give it the right one, whatever the client's name.
        local = work / f"volume{suffix}"
        local.symlink_to(path.resolve())
        image = _itk_read(name, local, io_name, kind, settings)
    image, warnings = _finalise(image, f"'{name}'")
    if header is not None:
        warnings = _transform_warnings(header, image) + warnings
    return Volume(image=image, datasets=None, source=source, warnings=warnings)


def _itk_read(name: str, local: Path, io_name: str, kind: Kind, settings: Settings) -> sitk.Image:
    """Read the header with SimpleITK, check it against the limits, then read the pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(local))
    reader.SetImageIO(io_name)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise UnsupportedFormat(
            f"'{name}' looks like {kind.value} but its header cannot be read: the file is damaged."
        ) from None
    sizes = list(reader.GetSize())
    _check_shape(name, sizes, settings)
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise InvalidVolume(
            f"'{name}' has {components} values per voxel (a colour or vector image); a CT volume has one (HU)."
        )
    pixel_bytes = PIXEL_BYTES.get(reader.GetPixelID())
    if pixel_bytes is None:
        raise InvalidVolume(
            f"'{name}' stores {reader.GetPixelIDTypeAsString()} voxels; a CT volume holds one real value (HU) per voxel."
        )
    _check_decompressed(name, math.prod(sizes) * pixel_bytes, settings)
    try:
        return reader.Execute()
    except RuntimeError:
        raise InvalidVolume(
            f"'{name}' ({kind.value}) ends early or its pixel data is damaged: the header announces "
            f"{' x '.join(map(str, sizes))} voxels that could not all be read. Upload it again and check "
            "that the transfer completed."
        ) from None


def _prepare_nifti(
    name: str, path: Path, kind: Kind, settings: Settings, work: Path
) -> tuple[NiftiHeader, Path, Callable[[], Path] | None]:
    """Check a NIfTI header against the limits; return it, a file SimpleITK may read whole, and,
    when that file is the unchecked .nii.gz itself, a function making a checked plain .nii.

    SimpleITK reads a truncated .nii or .nii.gz without complaint, filling the missing voxels
    with zeros, and its NIfTI reader turns NaN and infinite voxels into 0. So a raw .nii must be
    long enough, and float data are scanned for NaN/inf in the file. A .nii.gz is read by
    SimpleITK directly (its zlib is ~2x faster than Python's) when its gzip trailer records the
    length the header announces, which a truncated file's does not, and its voxels are integers;
    otherwise, or if SimpleITK fails on it, we inflate it ourselves into the work folder
    (counting bytes, checking the gzip CRC) and read that.
    """
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if kind is Kind.NIFTI_GZ:
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 1024)
        except zlib.error:
            head = b""
    header = _parse_nifti_header(name, head)
    sizes, offset, float_dtype = header.sizes, header.offset, header.float_dtype
    _check_shape(name, sizes, settings)
    data_bytes = math.prod(sizes) * header.voxel_bytes
    # The bytes before the voxels are inflated (and written) too: a 3e8 vox_offset costs 300 MB.
    _check_decompressed(name, data_bytes, settings, offset=offset)
    needed = offset + data_bytes
    plain = work / "volume.nii"

    def checked_copy() -> Path:
        _gunzip(name, path, plain, needed)
        if float_dtype is not None:
            _refuse_nonfinite(name, plain, float_dtype, offset, math.prod(sizes))
        return plain

    if kind is Kind.NIFTI_GZ:
        if float_dtype is None and _gzip_length_mod_4g(path) == needed % (1 << 32):
            direct = work / "volume.nii.gz"
            direct.symlink_to(path.resolve())
            return header, direct, checked_copy
        return header, checked_copy(), None
    if path.stat().st_size < needed:
        raise InvalidVolume(
            f"'{name}' is truncated: its NIfTI header announces {' x '.join(map(str, sizes))} voxels "
            f"({format_bytes(needed)}) but the file holds {format_bytes(path.stat().st_size)}. Upload it again "
            "and check that the transfer completed."
        )
    plain.symlink_to(path.resolve())
    if float_dtype is not None:
        _refuse_nonfinite(name, plain, float_dtype, offset, math.prod(sizes))
    return header, plain, None


def _gzip_length_mod_4g(path: Path) -> int:
    """The uncompressed length (mod 2^32) a gzip file's trailer records (ISIZE, its last 4 bytes)."""
    with path.open("rb") as f:
        f.seek(-4, 2)
        return struct.unpack("<I", f.read(4))[0]


def _refuse_nonfinite(name: str, plain: Path, dtype: str, offset: int, count: int) -> None:
    voxels = np.memmap(plain, dtype=dtype, mode="r", offset=offset, shape=(count,))
    step = 16 << 20
    nonfinite = sum(
        int(voxels[i : i + step].size - np.count_nonzero(np.isfinite(voxels[i : i + step])))
        for i in range(0, count, step)
    )
    del voxels
    if nonfinite:
        raise InvalidVolume(
            f"'{name}' holds {nonfinite:,} NaN or infinite voxel value(s); a CT volume must hold "
            "finite HU values."
        )


def _parse_nifti_header(name: str, head: bytes) -> NiftiHeader:
    """The sizes, voxel type, data offset and transforms of a NIfTI-1 or -2 header, from its bytes.

    Refuses what NIfTI's reader would quietly repair: a NaN, infinite or zero pixdim of a spatial
    axis (replaced by 1), a qform quaternion that is no rotation (|(b, c, d)| > 1 is renormalised;
    NaN gives some other grid) or a non-finite sform, where their codes say they are used.
    """
    kind = _nifti_kind(head)
    if kind is not Kind.NIFTI:
        raise UnsupportedFormat(f"'{name}' has a damaged NIfTI header.")
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    if struct.unpack(endian + "i", head[:4])[0] == 348:
        dim = struct.unpack(endian + "8h", head[40:56])
        (datatype,) = struct.unpack(endian + "h", head[70:72])
        pixdim = struct.unpack(endian + "8f", head[76:108])
        (offset_f,) = struct.unpack(endian + "f", head[108:112])
        offset, minimum_offset = int(offset_f) if math.isfinite(offset_f) else -1, 352
        qform_code, sform_code = struct.unpack(endian + "2h", head[252:256])
        quatern = struct.unpack(endian + "6f", head[256:280])
        srow = struct.unpack(endian + "12f", head[280:328])
    else:
        (datatype,) = struct.unpack(endian + "h", head[12:14])
        dim = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        (offset,) = struct.unpack(endian + "q", head[168:176])
        minimum_offset = 544
        qform_code, sform_code = struct.unpack(endian + "2i", head[344:352])
        quatern = struct.unpack(endian + "6d", head[352:400])
        srow = struct.unpack(endian + "12d", head[400:496])
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1 : ndim + 1]) or offset < minimum_offset:
        raise UnsupportedFormat(
            f"'{name}' has a damaged NIfTI header (dimensions {list(dim[: ndim + 1]) if 0 <= ndim <= 7 else dim[0]}, "
            f"data offset {offset})."
        )
    if datatype not in NIFTI_TYPES:
        raise UnsupportedFormat(f"'{name}' has a damaged NIfTI header (unknown datatype code {datatype}).")
    if ndim >= 5 and dim[5] > 1:  # NIfTI keeps vector components in its 5th dimension
        raise InvalidVolume(
            f"'{name}' has {dim[5]} values per voxel (a vector or multi-channel image); a CT volume has one (HU)."
        )
    voxel_bytes, readable = NIFTI_TYPES[datatype]
    if not readable:
        raise InvalidVolume(
            f"'{name}' stores complex or colour voxels (NIfTI datatype {datatype}); a CT volume holds "
            "one real value (HU) per voxel."
        )
    spatial = pixdim[1 : min(ndim, 3) + 1]
    if not all(math.isfinite(v) and v != 0 for v in spatial):
        raise InvalidVolume(
            f"'{name}' has voxel spacing (pixdim) {[float(v) for v in spatial]} mm in its NIfTI header: "
            "a spacing must be a finite, non-zero number (NIfTI readers silently replace it by 1 mm)."
        )
    float_dtype = {16: endian + "f4", 64: endian + "f8"}.get(datatype)
    return NiftiHeader(
        sizes=list(dim[1 : ndim + 1]), voxel_bytes=voxel_bytes, offset=offset, float_dtype=float_dtype,
        qform_code=qform_code, sform_code=sform_code,
        qform=_qform_placement(name, qform_code, quatern, pixdim[0]),
        sform=_sform_placement(name, sform_code, srow),
    )


def _qform_placement(name: str, code: int, quatern: tuple[float, ...], qfac: float) -> Placement | None:
    """The grid a qform describes (NIfTI's method 2, as nifti_quatern_to_mat44 builds it), in LPS."""
    if code <= 0:
        return None
    b, c, d, *offset = quatern
    squares = b * b + c * c + d * d
    if not all(math.isfinite(v) for v in quatern) or squares > 1 + ORTHONORMAL_TOLERANCE:
        raise InvalidVolume(
            f"'{name}' has a NIfTI qform (code {code}) whose quaternion (b, c, d) = "
            f"({b:g}, {c:g}, {d:g}) is no rotation (b^2 + c^2 + d^2 = {squares:g}; a rotation has at "
            "most 1, and finite values): the header is damaged."
        )
    a = math.sqrt(max(1.0 - squares, 0.0))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    if qfac < 0:  # pixdim[0] = -1 mirrors the third axis
        rotation[:, 2] *= -1
    return _placement(rotation, np.array(offset, dtype=np.float64))


def _sform_placement(name: str, code: int, srow: tuple[float, ...]) -> Placement | None:
    """The grid an sform describes (its scales divided out), in LPS; None if unused or degenerate."""
    if code <= 0:
        return None
    matrix = np.array(srow, dtype=np.float64).reshape(3, 4)
    if not np.isfinite(matrix).all():
        raise InvalidVolume(
            f"'{name}' has a NIfTI sform (code {code}) holding values that are not finite numbers: "
            "the header is damaged."
        )
    norms = np.linalg.norm(matrix[:, :3], axis=0)
    if (norms == 0).any():
        return None  # no grid; NIfTI's reader falls back to the qform
    return _placement(matrix[:, :3] / norms, matrix[:, 3])


def _placement(rotation_ras: np.ndarray, offset_ras: np.ndarray) -> Placement:
    """NIfTI's RAS+ matrix and offset as SimpleITK reports them: LPS, x and y negated."""
    flip = np.array([-1.0, -1.0, 1.0])
    return Placement(origin=offset_ras * flip, direction=rotation_ras * flip[:, None])


def _transform_warnings(header: NiftiHeader, image: sitk.Image) -> list[str]:
    """A warning where the qform and the sform both claim the grid and disagree, saying which was used.

    ITK (SimpleITK's NIfTI reader) takes the sform where it has no shear and its code is 1
    (scanner anatomy) or it agrees with the qform, else the qform: which one it took is read off
    the image, not guessed again here.
    """
    q, s = header.qform, header.sform
    if q is None or s is None:
        return []
    apart = float(np.linalg.norm(q.origin - s.origin))
    turned = float(np.abs(q.direction - s.direction).max())
    if apart <= SAME_ORIGIN_MM and turned <= SAME_DIRECTION:
        return []
    origin = np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)

    def distance(p: Placement) -> float:
        return float(np.linalg.norm(p.origin - origin)) + 1e3 * float(np.abs(p.direction - direction).max())

    used, other = ("sform", "qform") if distance(s) <= distance(q) else ("qform", "sform")
    codes = {"qform": header.qform_code, "sform": header.sform_code}
    relative = q.direction.T @ s.direction
    if np.linalg.det(relative) < 0:
        axes = "one mirrors the other"
    else:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(relative)) - 1) / 2))))
        axes = f"their axes {angle:.1f} degrees apart"

    def code_name(form: str) -> str:
        return NIFTI_XFORM_NAMES.get(codes[form], "unknown")

    return [
        f"The NIfTI header's qform and sform place the volume differently (their origins {apart:.2f} mm "
        f"apart, {axes}); the {used} (code {codes[used]}, {code_name(used)}) was used, not the "
        f"{other} (code {codes[other]}, {code_name(other)}), as ITK reads NIfTI: check that the mask's "
        "geometry is the one you expect."
    ]


def _gunzip(name: str, source: Path, target: Path, needed: int) -> None:
    """Inflate a gzip file into `target`, keeping its first `needed` bytes; refuse if it is shorter.

    Memory stays at a few MiB whatever the ratio, and inflation stops shortly after `needed`
    bytes, so a gzip bomb behind a small header costs nothing. The gzip CRC is checked when the
    stream ends with the volume; concatenated gzip members (bgzip) are followed.
    """
    written = beyond = 0
    complete = False
    decompressor = zlib.decompressobj(wbits=31)
    try:
        with source.open("rb") as fin, target.open("wb") as fout:
            data = fin.read(CHUNK)
            while data:
                out = decompressor.decompress(data, INFLATE_CHUNK)
                data = decompressor.unconsumed_tail
                keep = out[: max(needed - written, 0)]
                fout.write(keep)
                written += len(keep)
                beyond += len(out) - len(keep)
                if decompressor.eof:  # a gzip member ended and its CRC matched
                    if written >= needed:
                        complete = True
                        break
                    data = decompressor.unused_data
                    if len(data) < 2:
                        data += fin.read(CHUNK)
                    if not data.startswith(b"\x1f\x8b"):
                        break
                    decompressor = zlib.decompressobj(wbits=31)
                    continue
                if beyond > CHUNK:  # the volume is complete; what trails it is not ours to inflate
                    complete = True
                    break
                if not data:
                    data = fin.read(CHUNK)
    except zlib.error:
        raise InvalidVolume(
            f"'{name}' is a gzip-compressed NIfTI whose compressed data is damaged (the gzip check "
            "failed). Upload it again and check that the transfer completed."
        ) from None
    if written < needed or not complete:
        raise InvalidVolume(
            f"'{name}' is a gzip-compressed NIfTI that ends early: it inflates to "
            f"{format_bytes(written)} of the {format_bytes(needed)} its header announces"
            + ("" if written < needed else ", and its gzip trailer is missing")
            + ". Upload it again and check that the transfer completed."
        )


def _refuse_detached_data(name: str, path: Path, kind: Kind) -> None:
    """MetaImage and NRRD headers may point at another file (any path on the server): refuse."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if kind is Kind.METAIMAGE:
        match = re.search(rb"^\s*ElementDataFile\s*=\s*(.*?)\s*$", head, re.MULTILINE | re.IGNORECASE)
        if match is None:
            raise UnsupportedFormat(f"'{name}' is a MetaImage header without ElementDataFile: the file is damaged.")
        if match.group(1).upper() != b"LOCAL":
            raise UnsupportedFormat(
                f"'{name}' is a MetaImage header whose pixels are in another file "
                f"(ElementDataFile = {match.group(1)[:80].decode('latin-1')}); upload a single-file .mha "
                "(ElementDataFile = LOCAL)."
            )
        return
    end = re.search(rb"\r?\n\r?\n", head)
    if end is None:
        raise UnsupportedFormat(f"'{name}' is an NRRD file whose header does not end: the file is damaged.")
    if re.search(rb"^\s*data ?file\s*:", head[: end.start()], re.MULTILINE | re.IGNORECASE):
        raise UnsupportedFormat(
            f"'{name}' is a detached NRRD header whose pixels are in another file; upload a single-file "
            ".nrrd with the data attached."
        )


# ---------------------------------------------------------------------------------------------
# Limits and the final checks every decoded image passes


def _check_shape(name: str, sizes: list[int], settings: Settings) -> None:
    """3 spatial dims (trailing size-1 dims are squeezed later), within the voxel and slice limits."""
    shape = list(sizes)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    text = " x ".join(map(str, sizes))
    if len(shape) < 3:
        raise InvalidVolume(f"'{name}' is a {len(shape)}D image ({text}); a 3D CT volume is needed.")
    if len(shape) > 3:
        raise InvalidVolume(
            f"'{name}' is a {len(shape)}D image ({text}): a time series or several volumes; this service "
            "segments one 3D CT volume: upload a single one."
        )
    if min(shape) < 2:
        raise InvalidVolume(f"'{name}' is a single slice ({text}); a 3D CT volume needs several slices.")
    voxels = math.prod(shape)
    if voxels > settings.max_voxels:
        raise TooLarge(
            f"'{name}' declares {text} = {voxels:,} voxels; this service accepts at most "
            f"{settings.max_voxels:,} (LIVERSEG_MAX_VOXELS)."
        )
    if shape[2] > settings.max_slices:
        raise TooLarge(
            f"'{name}' has {shape[2]} slices; this service accepts at most {settings.max_slices} "
            "(LIVERSEG_MAX_SLICES)."
        )


def _check_decompressed(name: str, pixel_bytes: int, settings: Settings, offset: int = 0) -> None:
    """TooLarge if the pixel bytes, after `offset` bytes of header (a NIfTI's vox_offset), pass the limit."""
    if offset + pixel_bytes > settings.max_decompressed_bytes:
        declared = (
            f"{format_bytes(offset + pixel_bytes)} ({format_bytes(pixel_bytes)} of pixel data after a "
            f"data offset (vox_offset) of {offset:,} bytes)"
            if offset > HEAD_BYTES
            else f"{format_bytes(offset + pixel_bytes)} of pixel data"
        )
        raise TooLarge(
            f"'{name}' declares {declared}; this service inflates at most "
            f"{format_bytes(settings.max_decompressed_bytes)} (LIVERSEG_MAX_DECOMPRESSED_BYTES)."
        )


def _finalise(image: sitk.Image, what: str) -> tuple[sitk.Image, list[str]]:
    """Squeeze to 3D, check geometry and values, store as int16 where lossless, else float32."""
    warnings: list[str] = []
    if image.GetDimension() > 3:
        size = list(image.GetSize())
        image = sitk.Extract(
            image, size[:3] + [0] * (len(size) - 3), [0] * len(size),
            sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX,
        )
    _check_geometry(image, what)

    view = sitk.GetArrayViewFromImage(image)
    low, high, nonfinite, integral = _value_range(view)
    if nonfinite:
        raise InvalidVolume(
            f"{what} holds {nonfinite:,} NaN or infinite voxel value(s); a CT volume must hold finite HU values."
        )
    if low < VALUE_RANGE[0] or high > VALUE_RANGE[1]:
        raise InvalidVolume(
            f"{what} holds values from {low:g} to {high:g}; CT values lie within [{VALUE_RANGE[0]:,.0f}, "
            f"{VALUE_RANGE[1]:,.0f}] (HU, even on an extended scale, or raw stored values): its rescale "
            "slope and intercept (scl_slope, RescaleSlope, RescaleIntercept) or its data are damaged."
        )
    if integral and INT16_MIN <= low and high <= INT16_MAX:
        target = sitk.sitkInt16
    else:
        target = sitk.sitkFloat32
    if image.GetPixelID() != target:
        image = sitk.Cast(image, target)  # exact: integral values in range, or float to float32
    if high <= 1.0 and low >= 0.0:
        warnings.append(
            f"The values lie within [{low:g}, {high:g}]: this looks like a mask or a normalised image, "
            "not CT in HU; the segmentation will be meaningless."
        )
    elif low >= 0 and high > 1500:
        warnings.append(
            f"The values run from {low:g} to {high:g}, none negative: they look like raw scanner values "
            "without the rescale intercept (e.g. -1024), not HU; the segmentation may be wrong."
        )
    return image, warnings


def _check_geometry(image: sitk.Image, what: str) -> None:
    """InvalidVolume unless spacing, extent, origin, direction and shape are some CT's (module docstring)."""
    size = np.array(image.GetSize())
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InvalidVolume(f"{what} has voxel spacing {spacing.tolist()} mm; spacing must be positive.")
    if not (np.isfinite(origin).all() and np.isfinite(direction).all()):
        raise InvalidVolume(f"{what} has a damaged geometry (origin or direction not finite).")
    low, high = SPACING_RANGE_MM
    for axis, value in zip("xyz", spacing, strict=True):
        if not low * (1 - SLACK) <= value <= high * (1 + SLACK):
            raise InvalidVolume(
                f"{what} has voxel spacing {_mm(spacing)} mm: {value:g} mm along {axis} lies outside "
                f"{low:g}-{high:g} mm, the range any CT lies in; the header is damaged (or not in mm)."
            )
    for axis, n, value in zip("xyz", size, spacing, strict=True):
        if n * value > MAX_EXTENT_MM * (1 + SLACK):
            raise InvalidVolume(
                f"{what} spans {n * value:,.0f} mm along {axis} ({n} voxels of {value:g} mm); a CT spans "
                f"at most {MAX_EXTENT_MM:,.0f} mm along any axis: the header's size or spacing is damaged."
            )
    for axis, value in zip("xyz", origin, strict=True):
        if abs(value) > MAX_ORIGIN_MM * (1 + SLACK):
            raise InvalidVolume(
                f"{what} has its origin at {_mm(origin)} mm: {value:g} mm along {axis} lies beyond "
                f"{MAX_ORIGIN_MM:g} mm of the scanner's origin, where no patient is; the header is damaged."
            )
    deviation = float(np.abs(direction.T @ direction - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOLERANCE:
        raise InvalidVolume(
            f"{what} has direction cosines {np.round(direction, 4).tolist()} that are not orthonormal "
            f"(D^T D differs from the identity by {deviation:.3g}, more than {ORTHONORMAL_TOLERANCE:g}): "
            "a sheared or scaled grid, which no scanner makes and the mask could not be returned on. "
            "Resample the volume onto an orthogonal grid."
        )
    text = " x ".join(map(str, size))
    if min(size[:2]) < MIN_SLICE_VOXELS:
        raise InvalidVolume(
            f"{what} is {text} voxels: its slices (x by y) are {size[0]} x {size[1]}, and a CT slice "
            f"holds at least {MIN_SLICE_VOXELS} x {MIN_SLICE_VOXELS} (usually 512 x 512)."
        )
    if size.max() > MAX_ASPECT * size.min():
        raise InvalidVolume(
            f"{what} is {text} voxels: its longest axis is {size.max() / size.min():.0f} times its "
            f"shortest, where a CT's is at most {MAX_ASPECT} times: the header's size is damaged."
        )


def _mm(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _value_range(view: np.ndarray) -> tuple[float, float, int, bool]:
    """(min, max, count of NaN/inf, all integral?) over a (D, H, W) array, a slab at a time."""
    if view.dtype.kind in "iu":
        return float(view.min()), float(view.max()), 0, True
    low, high, nonfinite, integral = math.inf, -math.inf, 0, True
    step = max(1, (16 << 20) // max(view[0].size, 1))
    for z in range(0, view.shape[0], step):
        slab = view[z : z + step]
        finite = np.isfinite(slab)
        bad = int(slab.size - np.count_nonzero(finite))
        nonfinite += bad
        values = slab[finite] if bad else slab
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
            integral = integral and bool(np.all(values == np.round(values)))
    return low, high, nonfinite, integral
