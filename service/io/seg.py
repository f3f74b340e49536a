"""The liver mask as a DICOM Segmentation (SEG) object that a PACS stores beside its source series.

`make_seg` builds a binary SEG with highdicom: one segment, "Liver" (SNOMED CT 10200004, category
"Anatomical Structure" 91723000), marked AUTOMATIC and identified by the model's name, card
version and weights SHA-256; it references every source instance (study, series, SOP instance
and frame of reference UIDs) and lies on the source's own geometry, one frame per source slice
that holds liver (empty frames are omitted).

Frames are matched to source instances by geometry, not by list order: each header's Image
Position (Patient) is mapped onto the mask's grid and must land on a slice index, and its Image
Orientation (Patient) must be the grid's row and column directions. So a series listed in
reverse, or one whose direction cosines are negated, still gets each frame on the instance it
was computed for (TotalSegmentator PR #598 fixed SEGs mirrored by a negated cosine).

Anonymised series may lack the UIDs a SEG must reference. Missing or malformed Study, Series and
Frame of Reference UIDs are minted (deterministically from the headers, so the same upload gets
the same UIDs), SOP Instance UIDs are taken from the file meta header where it has them, else
minted; each such repair is said in `volume.warnings`, which the API returns to the client.
"""

from __future__ import annotations

import copy
import io
import logging
import time
from importlib import metadata

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from client.seg_identity import MANUFACTURER, SERIES_DESCRIPTION
from model_zoo.card import ModelCard
from service.errors import UnsupportedOutput
from service.volume import Volume, require_same_grid

log = logging.getLogger(__name__)

SEGMENT_LABEL = "Liver"
SERIES_NUMBER_OFFSET = 1000  # the SEG's series number: the source's + 1000, a common convention
# How far (in voxels) a header's position may sit off the grid: DS values carry ~1e-5 mm rounding.
POSITION_TOLERANCE_VOXELS = 0.1
ORIENTATION_TOLERANCE = 1e-3
# Attributes highdicom reads from every source header; the first header is copied whole.
REFERENCE_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "InstanceNumber",
)
TYPE2_DEFAULTS = {  # patient and study attributes highdicom reads as attributes; absent -> empty
    "PatientID": "", "PatientName": "", "PatientBirthDate": "", "PatientSex": "",
    "AccessionNumber": "", "StudyID": "", "StudyDate": "", "StudyTime": "", "ReferringPhysicianName": "",
}
_BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UN"}  # values no error message quotes


def make_seg(volume: Volume, mask: sitk.Image, card: ModelCard) -> bytes:
    """A binary DICOM SEG of `mask` referencing the DICOM series `volume` was decoded from.

    Args:
        volume: a DICOM-decoded volume (`volume.datasets` holds its headers); warnings about
            UIDs this function had to mint or borrow are appended to `volume.warnings`.
        mask: uint8 0/1 liver mask on the volume's grid (same size, spacing, origin, direction);
            array layout (D, H, W) = (slice, row, column) of the source images.
        card: the model's card, for the algorithm identification.

    Returns:
        the SEG as a DICOM Part 10 file (bit-packed 1-bit frames, explicit VR little endian).

    Raises:
        UnsupportedOutput: the volume is not DICOM, or its headers do not describe the grid
            the mask is on (so no frame could be placed on a source instance with certainty).
    """
    started = time.perf_counter()
    if volume.source != "dicom" or not volume.datasets:
        raise UnsupportedOutput(
            f"DICOM SEG output needs a DICOM input to reference; this input was {volume.source}. "
            "Ask for output=nifti instead."
        )
    require_same_grid(mask, volume.image, "make_seg")
    ordered = frames_to_sources(volume.datasets, mask)
    sources, repairs = source_headers(ordered)
    if repairs:
        volume.warnings.append(
            "The DICOM series lacks UIDs a SEG must reference: " + "; ".join(repairs) + ". The SEG "
            "references these UIDs, which the uploaded files lack: a PACS will not link it to its "
            "copy of the series."
        )
    pixels = (sitk.GetArrayViewFromImage(mask) != 0).astype(np.uint8)  # (D, H, W), frame k = source k
    try:
        seg = _segmentation(sources, pixels, card)
    except (ValueError, TypeError, AttributeError, KeyError) as problem:
        # highdicom checks the source headers as it copies them; a header it refuses is the
        # client's data, not our failure: tell the client what it said, and offer the NIfTI mask.
        # The log gets the error's class and the attribute, never the value (a birth date, a name).
        log.warning(
            "DICOM SEG refused by highdicom: %s about %s",
            type(problem).__name__, ", ".join(_attributes_in(problem, sources[0])) or "an attribute it did not name",
        )
        raise UnsupportedOutput(
            f"A DICOM SEG cannot be made from this series' headers ({str(problem)[:200]}). "
            "Ask for output=nifti instead."
        ) from None
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    log.info(
        "DICOM SEG: %d of %d frames with liver, %d bytes, in %.2f s",
        int(seg.NumberOfFrames), len(sources), len(data), time.perf_counter() - started,
    )
    return data


def _attributes_in(problem: Exception, source: pydicom.Dataset) -> list[str]:
    """Keywords of `source`'s attributes that an error message is about: named in it (as a keyword,
    or as highdicom's enum, e.g. PatientSexValues), or whose value it quotes."""
    text = str(problem)
    found = []
    for element in source:
        keyword = element.keyword
        if not keyword or element.VR in _BULK_VRS:
            continue
        value = str(element.value or "")
        if keyword in text or (value and (f"'{value}'" in text or f'"{value}"' in text)):
            found.append(keyword)
    return found


def frames_to_sources(datasets: list[pydicom.Dataset], mask: sitk.Image) -> list[pydicom.Dataset]:
    """The headers reordered so that item k describes slice k of `mask`'s array (mask[k] in (D, H, W)).

    Each header's Image Position (Patient) must fall on the first voxel of one slice of the
    grid, and its Image Orientation (Patient) must equal the grid's row and column directions.

    Raises:
        UnsupportedOutput: a header off the grid, two headers on one slice, a slice without one.
    """
    depth = mask.GetSize()[2]
    direction = np.array(mask.GetDirection(), dtype=np.float64).reshape(3, 3)
    by_slice: dict[int, pydicom.Dataset] = {}
    for ds in datasets:
        try:
            position = [float(v) for v in ds.ImagePositionPatient]
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        except (AttributeError, TypeError, ValueError):
            raise UnsupportedOutput(
                "A DICOM header lacks Image Position or Orientation (Patient): the SEG's frames cannot "
                "be placed on the source images. Ask for output=nifti instead."
            ) from None
        if not (
            np.allclose(orientation[:3], direction[:, 0], atol=ORIENTATION_TOLERANCE)
            and np.allclose(orientation[3:], direction[:, 1], atol=ORIENTATION_TOLERANCE)
        ):
            raise UnsupportedOutput(
                f"A DICOM image's orientation {orientation.round(4).tolist()} is not the decoded grid's "
                "row and column directions: the SEG's frames cannot be placed on the source images."
            )
        index = np.array(mask.TransformPhysicalPointToContinuousIndex(position))
        k = int(round(index[2]))
        if np.abs(index[:2]).max() > POSITION_TOLERANCE_VOXELS or abs(index[2] - k) > POSITION_TOLERANCE_VOXELS or not 0 <= k < depth:
            raise UnsupportedOutput(
                f"A DICOM image's position {position} does not fall on a slice of the decoded grid "
                f"(index {index.round(3).tolist()}): the SEG's frames cannot be placed on the source images."
            )
        if k in by_slice:
            raise UnsupportedOutput(f"Two DICOM images lie on slice {k}: the SEG needs one image per slice.")
        by_slice[k] = ds
    if len(by_slice) != depth:
        raise UnsupportedOutput(
            f"{depth - len(by_slice)} of the {depth} slices have no DICOM header: the SEG cannot reference them."
        )
    return [by_slice[k] for k in range(depth)]


def source_headers(ordered: list[pydicom.Dataset]) -> tuple[list[pydicom.Dataset], list[str]]:
    """Copies of the headers highdicom can build a SEG from, and the UID repairs made, in words.

    The volume's own headers are never modified. The first copy is whole (highdicom copies its
    patient and study modules), the others hold only what the references and geometry need.
    """
    sources = [copy.deepcopy(ordered[0])] + [_lean_copy(ds) for ds in ordered[1:]]
    for ds in sources:
        for keyword, value in TYPE2_DEFAULTS.items():
            if keyword not in ds:
                setattr(ds, keyword, value)
    repairs = []
    # Deterministic minting: the same series (same files) gets the same UIDs on every upload.
    fingerprint = [
        str(getattr(ds.get("file_meta", None), "MediaStorageSOPInstanceUID", "") or "")
        + "|" + "\\".join(str(v) for v in ds.get("ImagePositionPatient", []))
        for ds in ordered
    ]
    for keyword, what in (
        ("StudyInstanceUID", "Study Instance UID"),
        ("SeriesInstanceUID", "Series Instance UID"),
        ("FrameOfReferenceUID", "Frame of Reference UID"),
    ):
        values = {str(ds.get(keyword, "") or "") for ds in ordered}
        if len(values) == 1 and _valid_uid(next(iter(values))):
            continue
        minted = generate_uid(entropy_srcs=[keyword, *fingerprint])
        for ds in sources:
            setattr(ds, keyword, minted)
        problem = "empty" if values == {""} else "invalid or not shared by every image"
        repairs.append(f"{what} {problem}, minted {minted}")

    borrowed = minted_sop = 0
    for ds, original, print_ in zip(sources, ordered, fingerprint, strict=True):
        meta = original.get("file_meta", None)
        if not _valid_uid(str(ds.get("SOPInstanceUID", "") or "")):
            from_meta = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
            if _valid_uid(from_meta):
                ds.SOPInstanceUID = from_meta
                borrowed += 1
            else:
                ds.SOPInstanceUID = generate_uid(entropy_srcs=["SOPInstanceUID", print_])
                minted_sop += 1
        if not _valid_uid(str(ds.get("SOPClassUID", "") or "")):
            from_meta = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
            ds.SOPClassUID = from_meta if _valid_uid(from_meta) else CTImageStorage
    if len({str(ds.SOPInstanceUID) for ds in sources}) != len(sources):
        raise UnsupportedOutput(
            "Several DICOM images of the series share one SOP Instance UID: the SEG cannot tell them apart."
        )
    if borrowed:
        repairs.append(f"SOP Instance UID empty in {borrowed} image(s), taken from their file meta header")
    if minted_sop:
        repairs.append(f"SOP Instance UID empty in {minted_sop} image(s), minted")
    return sources, repairs


def _lean_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    lean = pydicom.Dataset()
    for keyword in REFERENCE_KEYWORDS:
        if keyword in ds:
            lean[keyword] = copy.deepcopy(ds[keyword])
    return lean


def _valid_uid(value: str) -> bool:
    return bool(value) and UID(value).is_valid


def _segmentation(sources: list[pydicom.Dataset], pixels: np.ndarray, card: ModelCard) -> hd.seg.Segmentation:
    """highdicom's SEG of `pixels` (D, H, W) 0/1, frame k on `sources[k]`."""
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_liver_segment(card)],
        series_instance_uid=generate_uid(),
        series_number=_series_number(sources[0]),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=card.name[:64],
        software_versions=f"liverseg {liverseg_version()}",
        # The weights are the "device": their hash says exactly which model drew the mask.
        device_serial_number=(card.weights_sha256 or "unknown")[:64],
        series_description=SERIES_DESCRIPTION,
        content_description=f"Liver, automatic, model {card.name}"[:64],
        content_label="LIVER",
        # Bit-packed, not JPEG 2000: pylibjpeg-openjpeg 2.6 encodes some 1-bit frames wrongly
        # (tests/service/data/openjpeg_1bit_mask.npy), and bit-packed is what every PACS takes.
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=True,
    )


def algorithm_identification(card: ModelCard) -> hd.AlgorithmIdentificationSequence:
    """The model as DICOM's Algorithm Identification: name, card version, weights SHA-256 (SEG and RTSTRUCT)."""
    parameters = {"weights_sha256": card.weights_sha256 or "unknown", "architecture": card.arch}
    return hd.AlgorithmIdentificationSequence(
        name=card.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=card.version[:64],
        source=MANUFACTURER,
        parameters=parameters,
    )


def _liver_segment(card: ModelCard) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(card),
        display_color=hd.color.CIELabColor(61.0, 20.0, 40.0),  # a liver brown, as 3D Slicer draws it
    )


def _series_number(source: pydicom.Dataset) -> int:
    try:
        return int(source.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        return SERIES_NUMBER_OFFSET


def liverseg_version() -> str:
    """The installed liverseg version, for the Software Versions of the DICOM objects it writes."""
    try:
        return metadata.version("liverseg")
    except metadata.PackageNotFoundError:
        return "unknown"
