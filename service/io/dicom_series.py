"""Decode the DICOM files of one CT series into a 3D image in HU, refusing what would be wrong.

Headers are read first with pydicom (no pixel data), grouped into series by SeriesInstanceUID
and by geometry (an anonymised export may have every UID empty: it is still one series if its
geometry agrees), checked (one series, Modality CT, single-frame, one sample per pixel, no
gantry tilt, no missing slice, a uniform slice step, within the voxel and slice limits), and
only then are the pixels decoded, by SimpleITK's ImageSeriesReader (GDCM, which reads JPEG,
JPEG-LS and JPEG 2000 transfer syntaxes) on the files in slice order. Rescale slope and
intercept are applied by GDCM, so the image is in HU.

Objects that are not images of a series (segmentations, RT structure sets, structured and dose
reports, key object selections, presentation states, DICOMDIR) are left out with one warning
that names their kinds, so a SEG exported beside its series does not spoil the upload.

GDCM reads pixel data that disagree with their header without complaint (a short Pixel Data
element is read past its end, 8 bits allocated over 16-bit data give garbage), and OpenJPEG
decodes a damaged JPEG 2000 codestream into noise. So, before decoding, an uncompressed image's
Pixel Data must hold exactly Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames
bytes (plus DICOM's one padding byte where that is odd), all present in the file; an
encapsulated one must have its items whole up to the sequence delimiter, and a JPEG, JPEG-LS or
JPEG 2000 frame must be a whole codestream (its markers from start to end; for JPEG 2000 the
image size in SIZ and every tile-part length). A slice that then fails to decode, or decodes to
another size, is refused naming its file. JPEG 2000 carries no checksum: a byte changed inside
the entropy-coded data, markers intact, decodes without any sign and cannot be detected.

Nothing here logs patient data: not names, IDs, UIDs, nor the client's file names.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.filereader import data_element_generator

from service.errors import InvalidVolume, TooLarge, UnsupportedFormat
from service.settings import Settings

log = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Objects that may travel with a series but are not its images (PS3.4 SOP classes; modalities of
# PS3.3 C.7.3.1.1.1): left out, by SOP class or by modality, whatever else they hold.
NON_IMAGE_SOP_CLASSES = (
    DICOMDIR_SOP_CLASS,
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, and .1-.6: registrations, fiducials, segmentations
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports, key object selections, dose reports
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated PDF, CDA
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose (a dose grid, not the patient)
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
)
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "KO", "PR", "REG", "FID", "DOC", "PLAN"}
PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS: the same SOI ... EOI frame
}
JPEG2000_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
# Syntaxes GDCM decodes: a failure there is a damaged file, not a format we cannot read.
DECODABLE_SYNTAXES = JPEG_SYNTAXES | JPEG2000_SYNTAXES | {"1.2.840.10008.1.2.5"}  # + RLE
# An in-plane drift of slice positions beyond this fraction of a pixel is gantry tilt (or a
# sheared stack): SimpleITK would build a grid that misplaces the far slices. Real tilts are
# degrees; DS rounding noise is ~1e-5 mm, far below.
TILT_TOLERANCE_PIXELS = 0.1
# A slice step may differ from the median step by this fraction (DS rounding, table jitter).
STEP_TOLERANCE = 0.01
# Slices decoded at once: JPEG 2000 decoding is CPU-bound and GDCM releases the GIL.
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
MAX_LISTED_SERIES = 10
USED_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "SeriesDescription", "Modality", "ImageType",
    "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "GantryDetectorTilt",
    "RescaleSlope", "RescaleIntercept", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "BitsAllocated",
)
UNCOMPRESSED_SYNTAXES = {
    pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian,
}


@dataclass(frozen=True, slots=True)
class DicomFile:
    """One uploaded DICOM file: the client's name for it (for messages) and where it lies."""

    name: str
    path: Path


@dataclass(slots=True)
class DecodedSeries:
    """The series' image in HU (as SimpleITK read it), its headers in slice order, and warnings."""

    image: sitk.Image
    datasets: list[pydicom.Dataset]
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class _PixelData:
    """Where an image's Pixel Data element lies in its file (read with the header, not its value)."""

    at: int  # file offset of the value
    length: int | None  # bytes the element declares; None: undefined (encapsulated, compressed)
    file_bytes: int  # the file's size


@dataclass(slots=True)
class _Slice:
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
    pixels: _PixelData | None = None  # None: no Pixel Data element found after the header


def _parse_slice(file: DicomFile, ds: pydicom.Dataset, pixels: _PixelData | None = None) -> _Slice:
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
        return _Slice(
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


def decode_series(files: Sequence[DicomFile], settings: Settings) -> DecodedSeries:
    """Read the headers of `files`, check they form one usable CT series, decode its pixels.

    Returns:
        the image (x = columns, y = rows, z = slices in increasing position along the normal
        of Image Orientation (Patient), which is the order SimpleITK's own series reader uses),
        in HU, with the headers sorted like the slices.

    Raises:
        InvalidVolume: several series, not CT, one slice, gantry tilt, missing slices,
            non-uniform spacing, missing geometry tags.
        UnsupportedFormat: multi-frame objects, no image among the files, undecodable pixels.
        TooLarge: more slices than `settings.max_slices`, more voxels than `settings.max_voxels`.
    """
    warnings: list[str] = []
    slices = _read_headers(files, warnings)
    slices = _drop_localizers(slices, warnings)
    group = _one_series(slices, warnings)
    _check_series(group, settings)
    for s in group:
        _check_native_pixels(s)
    ordered, step_mm = _sort_and_check_geometry(group, warnings)
    image = _read_pixels(ordered)
    _check_reader_geometry(image, ordered, step_mm)
    return DecodedSeries(image, [s.ds for s in ordered], warnings)


def _read_headers(files: Sequence[DicomFile], warnings: list[str]) -> list[_Slice]:
    slices: list[_Slice] = []
    unreadable = 0
    ignored: Counter[str] = Counter()  # kinds of objects that are not images of a series
    for file in files:
        try:
            with file.path.open("rb") as f:
                # force: files without the 128-byte preamble are still DICOM (the caller sniffed them).
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                # pydicom converts values when first read: read every one we use now, so that a
                # malformed value makes the file unreadable here rather than an error later.
                for keyword in USED_KEYWORDS:
                    ds.get(keyword)
                meta = ds.get("file_meta", None) or {}
                sop_class = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")
                syntax = str(meta.get("TransferSyntaxUID", "") or "")
                modality = str(ds.get("Modality", "") or "").strip().upper()
                kind = _non_image_kind(ds, sop_class, modality)
                # pydicom stops just before Pixel Data: its element header comes next in the file.
                pixels = None if kind else _pixel_data(f, ds, syntax)
        except Exception:  # pydicom raises many types on a damaged file; all mean "unreadable"
            unreadable += 1
            continue
        if kind:
            ignored[kind] += 1
            continue
        s = _parse_slice(file, ds, pixels)
        if s.frames > 1:
            raise UnsupportedFormat(
                f"'{file.name}' is a multi-frame DICOM object ({s.frames} frames, e.g. "
                "Enhanced CT); this service reads classic single-frame CT images: export the series "
                "as one file per slice."
            )
        slices.append(s)
    if unreadable:
        warnings.append(f"{unreadable} file(s) that looked like DICOM could not be read and were ignored.")
    if ignored:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(ignored.items(), key=lambda item: (-item[1], item[0])))
        warnings.append(f"{ignored.total()} DICOM object(s) that are not images of a series were ignored: {kinds}.")
    if not slices:
        found = [f"{unreadable} unreadable"] if unreadable else []
        if ignored:
            found.append(f"{ignored.total()} that are not images: {kinds}")
        raise UnsupportedFormat(
            "No DICOM image was found among the uploaded files"
            + (f" ({'; '.join(found)})" if found else "")
            + ": send the image files of one CT series."
        )
    return slices


def _non_image_kind(ds: pydicom.Dataset, sop_class: str, modality: str) -> str | None:
    """What a non-image object is, for the warning ("Segmentation (SEG)"); None for an image.

    Only the SOP class's standard name and a modality from our own list are said: no value the
    file holds otherwise reaches a message.
    """
    listed = any(sop_class == uid or sop_class.startswith(uid + ".") for uid in NON_IMAGE_SOP_CLASSES)
    if not (listed or modality in NON_IMAGE_MODALITIES or "Rows" not in ds or "Columns" not in ds):
        return None
    if sop_class == DICOMDIR_SOP_CLASS:
        return "DICOMDIR"
    name = pydicom.uid.UID(sop_class).name if sop_class else ""
    name = name.removesuffix(" Storage") if name and name != sop_class else "object without image data"
    return f"{name} ({modality})" if modality in NON_IMAGE_MODALITIES else name


def _pixel_data(f: BinaryIO, ds: pydicom.Dataset, syntax: str) -> _PixelData | None:
    """The Pixel Data element whose header is next in `f` (where pydicom stopped), without its value."""
    implicit, little = ds.original_encoding
    if implicit is None or (syntax and syntax not in UNCOMPRESSED_SYNTAXES and syntax not in DECODABLE_SYNTAXES):
        return None  # e.g. a deflated dataset: the file position is not the stream's
    size = os.fstat(f.fileno()).st_size
    if implicit:  # pydicom's own element reader, the value skipped (never encapsulated here)
        element = next(data_element_generator(f, True, little, defer_size=0), None)
        if element is None or element.tag != PIXEL_DATA_TAG:
            return None
        return _PixelData(element.value_tell, element.length, size)
    # Explicit VR, read by hand: pydicom would scan an encapsulated value to its end for its length.
    at, head = f.tell(), f.read(12)
    endian = "<" if little else ">"
    if len(head) < 8:
        return None
    group, element_number = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element_number) != PIXEL_DATA_TAG:
        return None
    if head[4:6] in (b"OB", b"OW", b"UN") and len(head) == 12:
        (length,) = struct.unpack(endian + "I", head[8:12])
        return _PixelData(at + 12, None if length == UNDEFINED_LENGTH else length, size)
    (length,) = struct.unpack(endian + "H", head[6:8])
    return _PixelData(at + 8, length, size)


def _drop_localizers(slices: list[_Slice], warnings: list[str]) -> list[_Slice]:
    """PACS exports often carry the scout (topogram) beside the axial series: leave it out."""
    keep = [s for s in slices if "LOCALIZER" not in _image_type(s.ds)]
    if keep and len(keep) < len(slices):
        warnings.append(f"{len(slices) - len(keep)} localizer (scout) image(s) were ignored.")
        return keep
    return slices


def _image_type(ds: pydicom.Dataset) -> list[str]:
    value = ds.get("ImageType", [])
    return [str(v).upper() for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])]


def _geometry_key(s: _Slice) -> tuple:
    """What must agree for images to be slices of one volume (rounded against DS noise)."""
    return (
        None if s.orientation is None else tuple(round(v, 4) for v in s.orientation),
        s.rows,
        s.columns,
        None if s.pixel_spacing is None else tuple(round(v, 4) for v in s.pixel_spacing),
    )


def _one_series(slices: list[_Slice], warnings: list[str]) -> list[_Slice]:
    """The images of the one series in the upload, or InvalidVolume listing the series found.

    Lone images of other series (a dose report screen, a scout not marked LOCALIZER) are left
    out with a warning when exactly one series has several images: they cannot be a volume.
    """
    groups: dict[tuple, list[_Slice]] = defaultdict(list)
    for s in slices:
        groups[(str(s.ds.get("SeriesInstanceUID", "") or ""), _geometry_key(s))].append(s)
    volumes = [members for members in groups.values() if len(members) > 1]
    if len(groups) == 1:
        return next(iter(groups.values()))
    if len(volumes) == 1:
        warnings.append(
            f"{len(groups) - 1} single image(s) of other series (dose reports, screenshots, scouts) were ignored."
        )
        return volumes[0]
    uids = {uid for uid, _ in groups}
    described = []
    ranked = sorted(groups.items(), key=lambda item: -len(item[1]))
    for (uid, key), members in ranked[:MAX_LISTED_SERIES]:
        ds = members[0].ds
        desc = str(ds.get("SeriesDescription", "") or "no description")
        text = (
            f"'{desc}' ({len(members)} file{'s' if len(members) > 1 else ''}, "
            f"Modality {ds.get('Modality', '') or 'missing'}, SeriesInstanceUID {uid or 'empty'}"
        )
        if len(uids) < len(groups):  # same UID, different geometry: say which geometry
            iop, rows, cols, _ = key
            text += f", {cols} x {rows} pixels, orientation {list(iop) if iop else 'missing'}"
        described.append(text + ")")
    if len(ranked) > MAX_LISTED_SERIES:
        described.append(f"and {len(ranked) - MAX_LISTED_SERIES} more")
    raise InvalidVolume(
        f"The upload holds {len(groups)} DICOM series (or images of different geometry); "
        f"send exactly one CT series. Found: {'; '.join(described)}."
    )


def _check_series(group: list[_Slice], settings: Settings) -> None:
    ds = group[0].ds
    modality = str(ds.get("Modality", "") or "")
    if modality != "CT":
        desc = str(ds.get("SeriesDescription", "") or "no description")
        raise InvalidVolume(
            f"The series '{desc}' is {modality or 'of unknown modality'} (DICOM Modality "
            f"'{modality}'); this service segments CT only."
        )
    samples = str(ds.get("SamplesPerPixel", 1) or 1)
    if samples != "1":
        raise InvalidVolume(
            f"The series has {samples} samples per pixel (a colour image); a CT series has one "
            "value (HU) per pixel."
        )
    missing = [
        keyword
        for keyword, attribute in (
            ("ImagePositionPatient", "position"), ("ImageOrientationPatient", "orientation"), ("PixelSpacing", "pixel_spacing")
        )
        if any(getattr(s, attribute) is None for s in group)
    ]
    if missing:
        raise InvalidVolume(
            f"The series' images lack {', '.join(missing)}: without them the slices cannot be "
            "placed in space (is it a secondary capture or a screenshot?)."
        )
    count = len(group)
    if count < 2:
        raise InvalidVolume(
            "Only one DICOM image was uploaded: a single slice is 2D; send every slice of the series."
        )
    if count > settings.max_slices:
        raise TooLarge(
            f"The series has {count} slices; this service accepts at most {settings.max_slices} "
            "(LIVERSEG_MAX_SLICES)."
        )
    voxels = count * group[0].rows * group[0].columns
    if voxels > settings.max_voxels:
        raise TooLarge(
            f"The series has {group[0].columns} x {group[0].rows} x {count} = {voxels:,} voxels; this "
            f"service accepts at most {settings.max_voxels:,} (LIVERSEG_MAX_VOXELS)."
        )


def _sort_and_check_geometry(group: list[_Slice], warnings: list[str]) -> tuple[list[_Slice], float]:
    """Sort along the slice normal; refuse tilt, duplicates, gaps and uneven steps. Returns the step."""
    iop = np.array(group[0].orientation, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InvalidVolume(
            f"The series' Image Orientation (Patient) {iop.tolist()} is not two perpendicular unit "
            "vectors; the file headers are damaged."
        )
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array([s.position for s in group], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered = [group[i] for i in order]
    positions, along = positions[order], along[order]

    ordered, positions, along = _drop_duplicates(ordered, positions, along, warnings)
    if len(ordered) < 2:
        raise InvalidVolume("The series holds a single distinct slice; a 3D CT volume needs several.")

    pixel = min(ordered[0].pixel_spacing)
    drift = positions - positions[0] - np.outer(along - along[0], normal)
    worst = float(np.linalg.norm(drift, axis=1).max())
    if worst > TILT_TOLERANCE_PIXELS * pixel:
        extent = float(along[-1] - along[0])
        angle = float(np.degrees(np.arctan2(float(np.linalg.norm(drift[-1])), extent)))
        tilt_tag = str(ordered[0].ds.get("GantryDetectorTilt", "") or "")
        raise InvalidVolume(
            f"The series is tilted: slice positions drift {worst:.2f} mm sideways over "
            f"{extent:.1f} mm (about {angle:.1f} degrees) instead of lying along the normal of "
            "Image Orientation (Patient)"
            + (f"; its Gantry/Detector Tilt tag says {tilt_tag} degrees" if tilt_tag else "")
            + ". This service does not correct gantry tilt: send a series reconstructed without "
            "tilt (or resampled to an orthogonal grid)."
        )

    steps = np.diff(along)
    step = float(np.median(steps))
    uneven = np.abs(steps - step) > STEP_TOLERANCE * step
    if uneven.any():
        ratios = steps / step
        gaps = uneven & (np.abs(ratios - np.round(ratios)) < STEP_TOLERANCE * np.round(ratios)) & (ratios > 1.5)
        if gaps[uneven].all():  # every odd step is a whole number of steps: slices are missing
            missing = int(np.round(ratios[gaps]).sum() - gaps.sum())
            first = int(np.flatnonzero(gaps)[0])
            raise InvalidVolume(
                f"The series is missing {missing} slice(s): the slice step is {step:.3g} mm but there "
                f"is a gap of {steps[first]:.3g} mm after the slice at {along[first]:.2f} mm along the "
                f"normal ({gaps.sum()} gap(s) in all). Send the complete series."
            )
        raise InvalidVolume(
            f"The series' slice spacing is not uniform: steps run from {steps.min():.3g} to "
            f"{steps.max():.3g} mm (median {step:.3g} mm). This service needs a constant slice step; "
            "send a series reconstructed at constant spacing."
        )
    return ordered, step


def _drop_duplicates(
    ordered: list[_Slice], positions: np.ndarray, along: np.ndarray, warnings: list[str]
) -> tuple[list[_Slice], np.ndarray, np.ndarray]:
    """The same file sent twice is dropped; two different images at one position are refused."""
    keep = [0]
    for i in range(1, len(ordered)):
        if along[i] - along[keep[-1]] > 1e-3:
            keep.append(i)
            continue
        a, b = ordered[keep[-1]].ds, ordered[i].ds
        same = (
            str(a.get("SOPInstanceUID", "")) == str(b.get("SOPInstanceUID", ""))
            and str(a.get("InstanceNumber", "")) == str(b.get("InstanceNumber", ""))
        )
        if not same:
            raise InvalidVolume(
                f"Two different images of the series lie at the same position ({along[i]:.2f} mm along "
                "the slice normal): the upload holds more than one volume (several phases, echoes or "
                "reconstructions). Send one."
            )
    if len(keep) < len(ordered):
        warnings.append(f"{len(ordered) - len(keep)} duplicate file(s) of the same slice were ignored.")
    return [ordered[i] for i in keep], positions[keep], along[keep]


def _check_native_pixels(s: _Slice) -> None:
    """InvalidVolume unless an uncompressed image's Pixel Data holds exactly what its header announces."""
    if _syntax(s) not in UNCOMPRESSED_SYNTAXES:
        return  # encapsulated: checked frame by frame when decoded
    pixels = s.pixels
    if pixels is None:
        raise InvalidVolume(f"'{s.file.name}' has no Pixel Data: an image header without its image.")
    bits = s.rows * s.columns * s.samples * s.bits_allocated * s.frames
    expected = (bits + 7) // 8
    if pixels.length is None or pixels.length not in (expected, expected + expected % 2):
        raise InvalidVolume(
            f"'{s.file.name}' holds {pixels.length or 0:,} bytes of pixel data where its header (Rows {s.rows} x "
            f"Columns {s.columns} x SamplesPerPixel {s.samples} x BitsAllocated {s.bits_allocated}/8 x "
            f"NumberOfFrames {s.frames}) announces {expected:,}: the header does not describe its pixels "
            "(or they are cut short). Export the series again."
        )
    available = pixels.file_bytes - pixels.at
    if available < pixels.length:
        raise InvalidVolume(
            f"'{s.file.name}' ends early: its pixel data should hold {pixels.length:,} bytes, the file holds "
            f"{max(available, 0):,} of them. Upload it again and check that the transfer completed."
        )


def _check_encapsulated(s: _Slice) -> None:
    """InvalidVolume unless a compressed slice's Pixel Data is whole: its items up to the sequence
    delimiter, and its one frame a whole JPEG (JPEG-LS) or JPEG 2000 codestream of the header's size."""
    pixels = s.pixels
    if pixels is None or pixels.length is not None:
        return  # not found (GDCM will say), or not encapsulated
    with s.file.path.open("rb") as f:
        f.seek(pixels.at)
        value = f.read(pixels.file_bytes - pixels.at)
    frame, problem = _frame(value)
    syntax = _syntax(s)
    if problem is None and syntax in JPEG_SYNTAXES:
        if frame[:2] != b"\xff\xd8" or b"\xff\xd9" not in frame[-4:]:
            problem = "its JPEG frame lacks its start or end marker (SOI, EOI): it is cut short or damaged"
    elif problem is None and syntax in JPEG2000_SYNTAXES:
        problem = _jpeg2000_problem(frame, s)
    if problem is not None:
        raise InvalidVolume(
            f"'{s.file.name}' holds damaged compressed pixel data ({_syntax_name(syntax)}): {problem}. "
            "Export the series again."
        )


def _frame(value: bytes) -> tuple[bytes, str | None]:
    """The one frame of an encapsulated Pixel Data value (Basic Offset Table item, fragments,
    delimiter, PS3.5 A.4), or a reason why the items are not whole."""
    pos, fragments, first = 0, [], True
    while True:
        if pos + 8 > len(value):
            return b"", "the file ends before the end of its pixel data (no sequence delimiter)"
        group, element, length = struct.unpack("<HHI", value[pos : pos + 8])
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM or length == UNDEFINED_LENGTH:
            return b"", f"its pixel data items are damaged (tag ({group:04X},{element:04X}) at byte {pos:,})"
        if pos + 8 + length > len(value):
            return b"", f"a fragment of {length:,} bytes runs past the end of the file"
        if not first:  # the first item is the Basic Offset Table
            fragments.append(value[pos + 8 : pos + 8 + length])
        first, pos = False, pos + 8 + length
    if not fragments:
        return b"", "its pixel data hold no fragment"
    return b"".join(fragments), None


def _jpeg2000_problem(code: bytes, s: _Slice) -> str | None:
    """Why a JPEG 2000 codestream cannot be whole (ISO 15444-1 Annex A), or None.

    Its image size (SIZ) must be the header's, and its tile-parts, whose SOT segments give their
    lengths, must lead exactly to the end-of-codestream marker: a cut or overwritten stretch of
    the codestream breaks that chain.
    """
    if code[4:8] == b"jP  ":  # a JP2 file around the codestream: not DICOM's rule, but GDCM reads it
        at = code.find(b"jp2c")
        code = code[at + 4 :] if at >= 0 else b""
    if len(code) < 42 or code[:4] != b"\xff\x4f\xff\x51":
        return "it does not start with a JPEG 2000 codestream (SOC, SIZ markers)"
    lsiz, _, xsiz, ysiz, x0, y0 = struct.unpack(">HHIIII", code[4:24])
    (components,) = struct.unpack(">H", code[40:42])
    if xsiz <= x0 or ysiz <= y0:
        return "its image size marker (SIZ) is damaged"
    if (xsiz - x0, ysiz - y0, components) != (s.columns, s.rows, s.samples):
        return (
            f"its codestream holds {xsiz - x0} x {ysiz - y0} pixels of {components} component(s), where "
            f"its header says {s.columns} x {s.rows} (Columns x Rows) of {s.samples}"
        )
    pos = 4 + lsiz
    while pos + 4 <= len(code) and code[pos : pos + 2] != b"\xff\x90":  # main header, up to the first SOT
        marker, length = struct.unpack(">HH", code[pos : pos + 4])
        if marker >> 8 != 0xFF or length < 2:
            return f"its main header is damaged at byte {pos:,}"
        pos += 2 + length
    while True:
        if pos + 2 > len(code):
            return "it ends inside a tile (cut short)"
        marker = code[pos : pos + 2]
        if marker == b"\xff\xd9":
            return None
        if marker != b"\xff\x90" or pos + 10 > len(code):
            return f"a tile-part does not start where the previous one ends (byte {pos:,})"
        (length,) = struct.unpack(">I", code[pos + 6 : pos + 10])
        if length == 0:  # the last tile-part runs to the end-of-codestream marker
            return None if b"\xff\xd9" in code[-4:] else "it lacks its end-of-codestream marker (cut short)"
        if length < 14:
            return f"a tile-part declares {length} bytes, fewer than its own header"
        pos += length


def _syntax_name(syntax: str) -> str:
    name = pydicom.uid.UID(syntax).name if syntax else ""
    return name if name and name != syntax else (syntax or "no transfer syntax")


def _read_pixels(ordered: list[_Slice]) -> sitk.Image:
    """Decode the slices with SimpleITK (GDCM) into one image, in slice order.

    Uncompressed series go through SimpleITK's ImageSeriesReader (one pass, no copy). Compressed
    ones (JPEG, JPEG-LS, JPEG 2000) are decoded a slice per thread, GDCM releasing the GIL, into
    one array; their geometry is built exactly as ImageSeriesReader builds it (origin and
    direction of the first file, slice spacing = distance from the first to the last origin over
    n - 1), so both paths give the series reader's result.
    """
    paths = [str(s.file.path) for s in ordered]
    rescales = {s.rescale for s in ordered}
    # GDCM rescales each slice with its own slope and intercept, in an integer type when they are
    # integers: with slopes that differ (or are fractional) the slices are read as float32.
    as_float = len(rescales) > 1 or any(not float(v).is_integer() for pair in rescales for v in pair)
    compressed = any(_syntax(s) not in UNCOMPRESSED_SYNTAXES for s in ordered)
    try:
        if not compressed:
            reader = sitk.ImageSeriesReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileNames(paths)
            if as_float:
                reader.SetOutputPixelType(sitk.sitkFloat32)
            return reader.Execute()
        try:
            return _read_slices(paths, as_float, ordered)
        except _PixelTypeChanged:
            return _read_slices(paths, True, ordered)
    except RuntimeError:
        # SimpleITK's message names the file, and file names may carry a patient's name: not logged.
        log.warning("DICOM pixel decoding failed (transfer syntax %s)", _syntaxes(ordered))
        if all(_syntax(s) in UNCOMPRESSED_SYNTAXES | DECODABLE_SYNTAXES for s in ordered):
            # A syntax GDCM reads: the files are damaged, not in a format we lack.
            raise InvalidVolume(
                f"The series' pixel data could not be decoded (transfer syntax {_syntaxes(ordered)}), "
                "which this service reads: the files are damaged. Export the series again."
            ) from None
        raise UnsupportedFormat(
            f"The series' pixel data could not be decoded (transfer syntax {_syntaxes(ordered)}): the "
            "files are damaged or use a compression this service cannot read; send them uncompressed "
            "(Explicit VR Little Endian)."
        ) from None


def _syntax(s: _Slice) -> str:
    return str(getattr(s.ds.get("file_meta", {}), "TransferSyntaxUID", "") or "")


class _PixelTypeChanged(Exception):
    """A slice decoded to another pixel type than the first (e.g. other BitsStored)."""


def _slice_reader(path: str, as_float: bool) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    if as_float:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader


def _read_slices(paths: list[str], as_float: bool, ordered: list[_Slice]) -> sitk.Image:
    first, last = _slice_reader(paths[0], as_float), _slice_reader(paths[-1], as_float)
    first.ReadImageInformation()  # also initialises GDCM's globals before the threads start
    last.ReadImageInformation()
    size = (ordered[0].columns, ordered[0].rows)
    if tuple(first.GetSize()[:2]) != size or first.GetNumberOfComponents() != 1:
        raise InvalidVolume(
            f"'{ordered[0].file.name}', the series' first image, decodes to {first.GetSize()[:2]} pixels with "
            f"{first.GetNumberOfComponents()} value(s) each, where its header says {size[0]} x {size[1]} "
            "single values: the file is damaged."
        )
    pixel_id = sitk.sitkFloat32 if as_float else first.GetPixelID()
    dtype = sitk.GetArrayFromImage(sitk.Image([1, 1], pixel_id)).dtype  # a copy: a view would outlive its image
    volume = np.empty((len(paths), size[1], size[0]), dtype=dtype)

    def load(k: int) -> None:
        s = ordered[k]
        _check_encapsulated(s)
        try:
            image = _slice_reader(paths[k], as_float).Execute()
        except RuntimeError:
            if _syntax(s) not in DECODABLE_SYNTAXES:
                raise  # a compression GDCM may lack: said for the whole series
            raise InvalidVolume(
                f"'{s.file.name}' (image {k + 1} of the series) could not be decoded "
                f"({_syntax_name(_syntax(s))}, which this service reads): its pixel data are damaged. "
                "Export the series again."
            ) from None
        if image.GetPixelID() != pixel_id:
            raise _PixelTypeChanged
        if tuple(image.GetSize()) not in ((*size, 1), size) or image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidVolume(
                f"'{s.file.name}' (image {k + 1} of the series) decodes to {image.GetSize()} pixels where "
                f"the series has {size[0]} x {size[1]}: the files disagree with one another."
            )
        volume[k] = sitk.GetArrayViewFromImage(image).reshape(size[1], size[0])

    with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, len(paths))) as pool:
        list(pool.map(load, range(len(paths))))  # list(): re-raise the first slice's error here

    image = sitk.GetImageFromArray(volume)
    origin = np.array(first.GetOrigin()[:3], dtype=np.float64)
    spacing = list(first.GetSpacing()[:3])
    spacing[2] = float(np.linalg.norm(np.array(last.GetOrigin()[:3]) - origin)) / (len(paths) - 1)
    image.SetOrigin(tuple(origin))
    image.SetSpacing(spacing)
    image.SetDirection(first.GetDirection())
    return image


def _syntaxes(ordered: list[_Slice]) -> str:
    names = set()
    for s in ordered:
        uid = getattr(s.ds.get("file_meta", {}), "TransferSyntaxUID", None)
        names.add(uid.name if isinstance(uid, pydicom.uid.UID) else "unknown")
    return ", ".join(sorted(names))


def _check_reader_geometry(image: sitk.Image, ordered: list[_Slice], step_mm: float) -> None:
    """The decoded grid must be the one the headers describe (guards against reader surprises)."""
    expected_size = (ordered[0].columns, ordered[0].rows, len(ordered))
    if tuple(image.GetSize()) != expected_size or image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidVolume(
            f"The decoded series has {image.GetSize()} voxels, {image.GetNumberOfComponentsPerPixel()} "
            f"component(s), where its headers describe {expected_size} single values: the files disagree "
            "with one another."
        )
    if abs(image.GetSpacing()[2] - step_mm) > 1e-3 * max(step_mm, 1.0):
        log.warning("series reader slice spacing %.6f differs from the header step %.6f", image.GetSpacing()[2], step_mm)
