"""Read a one-file volume (NIfTI, MetaImage, NRRD) with SimpleITK, its header before its pixels.

The header is read first (SimpleITK's ReadImageInformation; a NIfTI's is also parsed from its
bytes by `service.io.nifti`) and checked against max_voxels, max_slices and the pixel bytes
against max_decompressed_bytes; only then are the pixels read. MetaImage and NRRD headers may
point at another file, any path on the server: such detached data are refused.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import SimpleITK as sitk

from service.errors import InvalidVolume, UnsupportedFormat
from service.io.nifti import NiftiHeader, prepare_nifti, transform_warnings
from service.io.sniff import HEAD_BYTES, Kind
from service.io.volume_checks import check_decompressed, check_shape, finalise
from service.settings import Settings
from service.volume import Source, Volume

PIXEL_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8,
    sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
}


def read_volume_file(name: str, path: Path, kind: Kind, settings: Settings, work: Path) -> Volume:
    """Decode one NIfTI, MetaImage or NRRD file into a finalised `Volume` (scratch files in `work`).

    Raises:
        UnsupportedFormat (415): a damaged header, MetaImage or NRRD data in another file.
        InvalidVolume (422): not one 3D CT volume, truncated or damaged pixel data.
        TooLarge (413): a limit of `settings` is exceeded.
    """
    work.mkdir(parents=True, exist_ok=True)
    source: Source
    header: NiftiHeader | None = None
    if kind in (Kind.NIFTI, Kind.NIFTI_GZ):
        source, io_name = "nifti", "NiftiImageIO"
        header, local, checked_copy = prepare_nifti(name, path, kind, settings, work)
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
    image, warnings = finalise(image, f"'{name}'")
    if header is not None:
        warnings = transform_warnings(header, image) + warnings
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
    check_shape(name, sizes, settings)
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
    check_decompressed(name, math.prod(sizes) * pixel_bytes, settings)
    try:
        return reader.Execute()
    except RuntimeError:
        raise InvalidVolume(
            f"'{name}' ({kind.value}) ends early or its pixel data is damaged: the header announces "
            f"{' x '.join(map(str, sizes))} voxels that could not all be read. Upload it again and check "
            "that the transfer completed."
        ) from None


def _refuse_detached_data(name: str, path: Path, kind: Kind) -> None:
    """MetaImage and NRRD headers may point at another file (any path on the server): refuse."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if kind is Kind.METAIMAGE:
        # Every ElementDataFile key, in any letter case, up to the one that ends ITK's header (the
        # exact key; its pixels follow): one other spelling before it once hid a path behind LOCAL.
        named = []
        for line in head.split(b"\n"):
            key, equals, value = line.partition(b"=")
            if equals and key.strip().lower() == b"elementdatafile":
                named.append(value.strip())
                if key.strip() == b"ElementDataFile":
                    break
        if not named:
            raise UnsupportedFormat(f"'{name}' is a MetaImage header without ElementDataFile: the file is damaged.")
        if len(named) > 1:
            raise UnsupportedFormat(
                f"'{name}' is a MetaImage header that names ElementDataFile {len(named)} times; upload a "
                "single-file .mha with one ElementDataFile = LOCAL."
            )
        if named[0].upper() != b"LOCAL":
            raise UnsupportedFormat(
                f"'{name}' is a MetaImage header whose pixels are in another file "
                f"(ElementDataFile = {named[0][:80].decode('latin-1')}); upload a single-file .mha "
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
