"""Encode results for the client: gzip NIfTI of the mask and of float maps (the PNG preview is
`service.io.preview`).

NIfTI files are written by SimpleITK, so they carry the image's exact size, spacing, origin and
direction (qform and sform); reading one back with SimpleITK gives the same geometry (direction
to ~1e-7, NIfTI stores it as float32).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import SimpleITK as sitk

# Masks are mostly zeros: level 1 gives nearly the size of level 6 in a fraction of the time.
MASK_COMPRESSION_LEVEL = 1
MAP_COMPRESSION_LEVEL = 1


def mask_to_nifti_bytes(mask: sitk.Image) -> bytes:
    """A uint8 3D mask as the bytes of a .nii.gz file with the mask's exact geometry.

    Raises:
        TypeError: the mask is not a 3D uint8 image (a programming error, not a client's).
    """
    if mask.GetPixelID() != sitk.sitkUInt8 or mask.GetDimension() != 3:
        raise TypeError(f"mask must be a 3D uint8 image, got {mask.GetDimension()}D {mask.GetPixelIDTypeAsString()}")
    return _nifti_bytes(mask, MASK_COMPRESSION_LEVEL)


def image_to_nifti_bytes(image: sitk.Image) -> bytes:
    """A 3D scalar map (e.g. confidence in [0, 1]) as the bytes of a .nii.gz file.

    Floating-point maps are stored as float32 (NIfTI-1 has no float16; float32 keeps every value
    the pipeline computed); integer images keep their type. The geometry is the image's own.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise TypeError("image must be a 3D scalar image")
    if image.GetPixelID() == sitk.sitkFloat64:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return _nifti_bytes(image, MAP_COMPRESSION_LEVEL)


def _nifti_bytes(image: sitk.Image, level: int) -> bytes:
    # SimpleITK writes files, not buffers; a private temporary folder keeps concurrent jobs apart.
    with tempfile.TemporaryDirectory(prefix="liverseg-encode-") as folder:
        path = Path(folder) / "image.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True, compressionLevel=level)
        return path.read_bytes()
