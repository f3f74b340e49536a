"""Turn uploaded files into one CT `Volume` in HU, refusing anything unsafe or not a CT volume.

Accepted: one NIfTI-1/2 file (.nii or .nii.gz), one MetaImage (.mha, data inside the file), one
NRRD (data inside the file), one .zip holding one DICOM series, or the DICOM files of one series.
The format is recognised from the bytes, never from the name (`service.io.sniff`): a file called
`ct.nii.gz` that is a zip is decoded as a zip. This module dispatches between the kinds; the
work and the checks lie in the modules named below.

Every limit of `Settings` is checked before the pixel memory is allocated:
- max_upload_bytes: the sizes on disk of the uploaded files, summed, before anything is read
  (here);
- max_zip_members: the entries a zip declares in its end record, before Python builds its
  directory, and again on that directory (`service.io.archive`); also the number of files in
  one upload (here);
- max_decompressed_bytes: bytes really inflated, counted while extracting (`service.io.archive`)
  or un-gzipping (`service.io.nifti`); declared sizes are only used to refuse early, never to
  accept. Also the pixel bytes a header declares (`service.io.volume_checks.check_decompressed`),
  a NIfTI's data offset (vox_offset) included: the bytes before the voxels are inflated too;
- max_voxels, max_slices: from the header before pixels are read: NIfTI's parsed from its bytes
  (`service.io.nifti`), MetaImage's and NRRD's through SimpleITK's ReadImageInformation
  (`service.io.volume_file`), both checked by `service.io.volume_checks.check_shape`; DICOM's
  through pydicom without pixels (`service.io.dicom_series`).

Every decoded volume, whatever its format, must also have a geometry and values some CT has:
spacing, extent, origin, orthonormal directions, slice size and aspect, value range, checked in
`service.io.volume_checks.finalise` (which lists the ranges). NIfTI headers are checked first
where SimpleITK would hide the damage (pixdim, qform quaternion, sform: `service.io.nifti`);
MetaImage and NRRD headers whose data lie in another file are refused (`service.io.volume_file`).

Logs never hold patient data nor the client's file names (they often carry a patient's name).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from service.errors import TooLarge, UnsupportedFormat, client_name, format_bytes
from service.io.archive import extract_zip
from service.io.dicom_series import decode_series
from service.io.dicom_slice import DicomFile
from service.io.sniff import OTHER_MAGIC, Kind, sniff
from service.io.volume_checks import finalise
from service.io.volume_file import read_volume_file
from service.settings import Settings
from service.volume import Volume

log = logging.getLogger(__name__)

ACCEPTED = (
    "send one NIfTI (.nii, .nii.gz), MetaImage (.mha) or NRRD (.nrrd) file, one .zip of a DICOM "
    "series, or the DICOM files of one series"
)
VOLUME_KINDS = {Kind.NIFTI, Kind.NIFTI_GZ, Kind.METAIMAGE, Kind.NRRD}


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded file, already spooled to disk by the web layer.

    filename: the name the client gave it (used in messages only, never trusted for the format).
    path: where its bytes lie.
    """

    filename: str
    path: Path


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
            return read_volume_file(name, path, kind, settings, work)
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
    image, more = finalise(series.image, "The DICOM series")
    return Volume(
        image=image, datasets=series.datasets, source="dicom", warnings=warnings + more,
        positions_known=series.positions_known,
    )


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
