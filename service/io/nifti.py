"""Read a NIfTI-1 or -2 header as it is, and make a NIfTI file SimpleITK may safely read whole.

SimpleITK's NIfTI reader hides damage: it reads a truncated .nii or .nii.gz without complaint,
filling the missing voxels with zeros, turns NaN and infinite voxels into 0, replaces a NaN,
infinite or zero pixdim by 1 and renormalises a quaternion that is no rotation. So the header
is parsed here from its bytes first, and refused where it holds:
- a NaN, infinite or zero pixdim of a spatial axis;
- a qform quaternion that is no rotation (|(b, c, d)| > 1, or not finite);
- a non-finite sform (where its code says it is used);
- sizes beyond max_voxels or max_slices, and data (the vox_offset bytes before the voxels
  included: they are inflated too) beyond max_decompressed_bytes, before anything is inflated.
A .nii.gz is inflated by a checked gunzip (bytes counted, the CRC checked, stopping shortly
after the voxels) unless its trailer vouches for its length and its voxels are integers; float
voxels are scanned for NaN/inf in the file. Where the qform and the sform disagree, a warning
says which one was used (ITK's rule).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.errors import InvalidVolume, UnsupportedFormat, format_bytes
from service.io.sniff import HEAD_BYTES, Kind, nifti_kind
from service.io.volume_checks import ORTHONORMAL_TOLERANCE, check_decompressed, check_shape
from service.settings import Settings

CHUNK = 1 << 20
INFLATE_CHUNK = 4 << 20  # bytes inflated per step: bounds memory whatever the compression ratio
# NIfTI datatype code -> (bytes per voxel, readable) ; unreadable ones are not one real value per voxel
NIFTI_TYPES = {
    2: (1, True), 4: (2, True), 8: (4, True), 16: (4, True), 64: (8, True), 256: (1, True),
    512: (2, True), 768: (4, True), 1024: (8, True), 1280: (8, True),
    32: (8, False), 128: (3, False), 1536: (16, False), 1792: (16, False), 2048: (32, False),
    2304: (4, False),
}
# A qform and an sform closer than this describe the same grid (float32 storage, DS rounding).
SAME_ORIGIN_MM, SAME_DIRECTION = 0.01, 1e-3
NIFTI_XFORM_NAMES = {1: "scanner anatomy", 2: "aligned anatomy", 3: "Talairach", 4: "MNI 152", 5: "template"}


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


def prepare_nifti(
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
    check_shape(name, sizes, settings)
    data_bytes = math.prod(sizes) * header.voxel_bytes
    # The bytes before the voxels are inflated (and written) too: a 3e8 vox_offset costs 300 MB.
    check_decompressed(name, data_bytes, settings, offset=offset)
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
    kind = nifti_kind(head)
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


def transform_warnings(header: NiftiHeader, image: sitk.Image) -> list[str]:
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
