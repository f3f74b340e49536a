"""The one volume type that travels from decoding to encoding.

A `Volume` is a SimpleITK image in Hounsfield units (int16 where the values fit, else float32)
with its physical geometry (spacing, origin and direction, x-y-z, LPS, mm), plus the DICOM
headers it came from, when it came from DICOM, and the warnings decoding raised for the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:
    import pydicom

Source = Literal["nifti", "mha", "nrrd", "dicom"]


@dataclass(slots=True)
class Volume:
    """A decoded CT volume.

    Attributes:
        image: 3D scalar image in HU; array layout (D, H, W) = (z, y, x) via GetArrayFromImage.
        datasets: for DICOM input, the headers (no pixel data) sorted like the image's slices
            (datasets[k] describes array[k]); None for NIfTI, MetaImage and NRRD input.
        source: the format the volume was decoded from.
        warnings: sentences for the client about what decoding noticed or changed.
        positions_known: False for a DICOM series whose images carry no position, placed at
            origin 0 by assumption: nothing that places the mask by slice position (DICOM SEG)
            can be made for it.
    """

    image: sitk.Image
    datasets: list[pydicom.Dataset] | None = None
    source: Source = "nifti"
    warnings: list[str] = field(default_factory=list)
    positions_known: bool = True

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Voxels along x, y, z (SimpleITK order)."""
        return tuple(self.image.GetSize())  # type: ignore[return-value]

    @property
    def spacing_xyz_mm(self) -> tuple[float, float, float]:
        """Voxel spacing along x, y, z in mm."""
        return tuple(self.image.GetSpacing())  # type: ignore[return-value]


def require_same_grid(mask: sitk.Image, image: sitk.Image, what: str) -> None:
    """ValueError (a programming error) unless `mask` lies on `image`'s grid: size, spacing,
    origin and direction, to the rounding of DICOM decimal strings."""
    same = (
        mask.GetSize() == image.GetSize()
        and np.allclose(mask.GetSpacing(), image.GetSpacing(), rtol=1e-6, atol=1e-6)
        and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
        and np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    )
    if not same:
        raise ValueError(
            f"{what}: the mask ({mask.GetSize()}, spacing {mask.GetSpacing()}, origin {mask.GetOrigin()}) and "
            f"the image ({image.GetSize()}, spacing {image.GetSpacing()}, origin {image.GetOrigin()}) must share one grid"
        )
