"""One DICOM image's header, as the series needs it: the numbers its geometry and its pixel
checks read, parsed once, a malformed value being a damaged header said so (never a 500).

Nothing here logs patient data: not names, IDs, UIDs, nor the client's file names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from service.errors import InvalidVolume


@dataclass(frozen=True, slots=True)
class DicomFile:
    """One uploaded DICOM file: the client's name for it (for messages) and where it lies."""

    name: str
    path: Path


@dataclass(frozen=True, slots=True)
class PixelData:
    """Where an image's Pixel Data element lies in its file (read with the header, not its value)."""

    at: int  # file offset of the value
    length: int | None  # bytes the element declares; None: undefined (encapsulated, compressed)
    file_bytes: int  # the file's size


@dataclass(slots=True)
class Slice:
    """One image's header and the numbers read from it (None where the tag is absent)."""

    file: DicomFile
    ds: pydicom.Dataset
    rows: int
    columns: int
    orientation: tuple[float, ...] | None  # Image Orientation (Patient): row then column cosines
    position: tuple[float, ...] | None  # Image Position (Patient), mm
    pixel_spacing: tuple[float, ...] | None  # (between rows, between columns), mm
    rescale: tuple[float, float]  # (slope, intercept)
    frames: int = 1
    samples: int = 1
    bits_allocated: int = 16
    pixels: PixelData | None = None  # None: no Pixel Data element found after the header


def parse_slice(file: DicomFile, ds: pydicom.Dataset, pixels: PixelData | None = None) -> Slice:
    """Read the numbers the geometry and the pixel size need; a malformed value is a damaged header, said so."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        if rows < 1 or columns < 1:
            raise ValueError(f"Rows x Columns is {rows} x {columns}")
        frames = _integer(ds, "NumberOfFrames", 1)
        samples = _integer(ds, "SamplesPerPixel", 1)
        bits = _integer(ds, "BitsAllocated", 16)
        if bits not in (8, 16, 32):
            raise ValueError(f"BitsAllocated is {bits}, where a CT image allocates 8, 16 or 32 bits per pixel")
        slope = _numbers(ds, "RescaleSlope", 1) or (1.0,)
        intercept = _numbers(ds, "RescaleIntercept", 1) or (0.0,)
        spacing = _numbers(ds, "PixelSpacing", 2)
        if spacing is not None and min(spacing) <= 0:
            raise ValueError(f"Pixel Spacing is {list(spacing)}")
        return Slice(
            file, ds, rows, columns, _numbers(ds, "ImageOrientationPatient", 6),
            _numbers(ds, "ImagePositionPatient", 3), spacing, (slope[0] or 1.0, intercept[0]),
            frames, samples, bits, pixels,
        )
    except Exception as problem:  # pydicom raises many types on malformed values
        raise InvalidVolume(
            f"'{file.name}' has a damaged DICOM header ({str(problem)[:120]}); export the series again."
        ) from None


def _numbers(ds: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    if keyword not in ds or ds.get(keyword) in (None, ""):
        return None
    value = ds.get(keyword)
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{keyword} should hold {count} finite number(s), not {str(value)[:60]!r}")
    return numbers


def _integer(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """A whole, positive number of the header (NumberOfFrames, BitsAllocated...), else ValueError."""
    numbers = _numbers(ds, keyword, 1)
    if numbers is None:
        return default
    if not numbers[0].is_integer() or numbers[0] < 1:
        raise ValueError(f"{keyword} should hold a whole number of at least 1, not {numbers[0]:g}")
    return int(numbers[0])


def optional_number(s: Slice, keyword: str) -> float | None:
    """One number of the image's header that not every series needs (InstanceNumber,
    SliceThickness...), None where absent; a malformed value is a damaged header, said so."""
    try:
        numbers = _numbers(s.ds, keyword, 1)
    except Exception as problem:  # pydicom raises many types on malformed values
        raise InvalidVolume(
            f"'{s.file.name}' has a damaged DICOM header ({str(problem)[:120]}); export the series again."
        ) from None
    return None if numbers is None else numbers[0]
