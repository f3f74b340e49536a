"""Decode the DICOM files of one CT series into a 3D image in HU, refusing what would be wrong.

Headers are read first with pydicom (no pixel data), grouped into series by SeriesInstanceUID
and by geometry (an anonymised export may have every UID empty: it is still one series if its
geometry agrees), checked (one series, Modality CT, single-frame, one sample per pixel, no
gantry tilt, no missing slice, a uniform slice step: `service.io.dicom_geometry`, which also
places a series that has no positions at all; within the voxel and slice limits), and
only then are the pixels checked against their headers and decoded (`service.io.dicom_pixels`:
SimpleITK's GDCM, on the files in slice order, rescale slope and intercept applied, so the
image is in HU).

Objects that are not images of a series (segmentations, RT structure sets, structured and dose
reports, key object selections, presentation states, DICOMDIR) are left out with one warning
that names their kinds, so a SEG exported beside its series does not spoil the upload.

Nothing here logs patient data: not names, IDs, UIDs, nor the client's file names.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
import SimpleITK as sitk

from service.errors import InvalidVolume, TooLarge, UnsupportedFormat
from service.io.dicom_geometry import place_slices, unplaced_geometry
from service.io.dicom_pixels import check_native_pixels, find_pixel_data, read_pixels
from service.io.dicom_slice import DicomFile, Slice, parse_slice
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
MAX_LISTED_SERIES = 10
USED_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "SeriesDescription", "Modality", "ImageType",
    "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "GantryDetectorTilt",
    "RescaleSlope", "RescaleIntercept", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "BitsAllocated",
)


@dataclass(slots=True)
class DecodedSeries:
    """The series' image in HU (as SimpleITK read it), its headers in slice order, warnings, and
    whether the slices' positions are their headers' own (False: placed by assumption)."""

    image: sitk.Image
    datasets: list[pydicom.Dataset]
    warnings: list[str]
    positions_known: bool = True


def decode_series(files: Sequence[DicomFile], settings: Settings) -> DecodedSeries:
    """Read the headers of `files`, check they form one usable CT series, decode its pixels.

    Returns:
        the image (x = columns, y = rows, z = slices in increasing position along the normal
        of Image Orientation (Patient), which is the order SimpleITK's own series reader uses;
        by InstanceNumber where no image has a position), in HU, with the headers sorted like
        the slices.

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
        check_native_pixels(s)
    placement = place_slices(group, warnings)
    image = read_pixels(placement.ordered)
    if not placement.positions_known:
        unplaced_geometry(image, placement)
    _check_reader_geometry(image, placement.ordered, placement.step_mm)
    return DecodedSeries(image, [s.ds for s in placement.ordered], warnings, placement.positions_known)


def _read_headers(files: Sequence[DicomFile], warnings: list[str]) -> list[Slice]:
    slices: list[Slice] = []
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
                pixels = None if kind else find_pixel_data(f, ds, syntax)
        except Exception:  # pydicom raises many types on a damaged file; all mean "unreadable"
            unreadable += 1
            continue
        if kind:
            ignored[kind] += 1
            continue
        s = parse_slice(file, ds, pixels)
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



def _drop_localizers(slices: list[Slice], warnings: list[str]) -> list[Slice]:
    """PACS exports often carry the scout (topogram) beside the axial series: leave it out."""
    keep = [s for s in slices if "LOCALIZER" not in _image_type(s.ds)]
    if keep and len(keep) < len(slices):
        warnings.append(f"{len(slices) - len(keep)} localizer (scout) image(s) were ignored.")
        return keep
    return slices


def _image_type(ds: pydicom.Dataset) -> list[str]:
    value = ds.get("ImageType", [])
    return [str(v).upper() for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])]


def _geometry_key(s: Slice) -> tuple:
    """What must agree for images to be slices of one volume (rounded against DS noise)."""
    return (
        None if s.orientation is None else tuple(round(v, 4) for v in s.orientation),
        s.rows,
        s.columns,
        None if s.pixel_spacing is None else tuple(round(v, 4) for v in s.pixel_spacing),
    )


def _one_series(slices: list[Slice], warnings: list[str]) -> list[Slice]:
    """The images of the one series in the upload, or InvalidVolume listing the series found.

    Lone images of other series or geometry (a dose report screen, a scout not marked LOCALIZER)
    are left out, each named in a warning, when exactly one series has several images: they
    cannot be a volume.
    """
    groups: dict[tuple, list[Slice]] = defaultdict(list)
    for s in slices:
        groups[(str(s.ds.get("SeriesInstanceUID", "") or ""), _geometry_key(s))].append(s)
    volumes = [members for members in groups.values() if len(members) > 1]
    if len(groups) == 1:
        return next(iter(groups.values()))
    if len(volumes) == 1:
        series = volumes[0]
        lone = [members[0] for members in groups.values() if members is not series]
        warnings.extend(_left_out(s, series[0]) for s in lone[:MAX_LISTED_SERIES])
        if len(lone) > MAX_LISTED_SERIES:
            warnings.append(f"{len(lone) - MAX_LISTED_SERIES} more lone image(s) were left out likewise.")
        return series
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


def _left_out(lone: Slice, series: Slice) -> str:
    """The warning for a lone image left out beside the series: where it lies and why it is not a
    slice of the series (another series, or this series' UID with another geometry)."""
    at = f" at ({', '.join(f'{v:.1f}' for v in lone.position)}) mm" if lone.position else ""
    uid = str(lone.ds.get("SeriesInstanceUID", "") or "")
    if uid != str(series.ds.get("SeriesInstanceUID", "") or ""):
        desc = str(lone.ds.get("SeriesDescription", "") or "no description")
        return (
            f"1 image{at} of another series ('{desc}', Modality {lone.ds.get('Modality', '') or 'missing'}, "
            f"SeriesInstanceUID {uid or 'empty'}) was left out: a single image is not a volume."
        )
    differs = [
        f"{name} {theirs} where the series has {ours}"
        for name, theirs, ours in zip(
            ("orientation", "rows", "columns", "pixel spacing"), _geometry_key(lone), _geometry_key(series), strict=True
        )
        if theirs != ours
    ]
    return f"1 image{at} of the series was left out: it is not one of its slices ({'; '.join(differs)})."


def _check_series(group: list[Slice], settings: Settings) -> None:
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
    # A series with no position at all is stacked by assumption (`dicom_geometry`), and axial
    # if no image has an orientation either; a tag on some images only is a damaged or mixed series.
    required = {"PixelSpacing": "pixel_spacing"}
    if not all(s.position is None for s in group):
        required |= {"ImagePositionPatient": "position", "ImageOrientationPatient": "orientation"}
    elif not all(s.orientation is None for s in group):
        required |= {"ImageOrientationPatient": "orientation"}
    missing = [keyword for keyword, attribute in required.items() if any(getattr(s, attribute) is None for s in group)]
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


def _check_reader_geometry(image: sitk.Image, ordered: list[Slice], step_mm: float) -> None:
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
