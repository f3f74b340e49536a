"""The liver mask as a DICOM RT Structure Set (RTSTRUCT), what radiotherapy planning systems read.

`make_rtstruct` writes one ROI, "Liver" (SNOMED CT 10200004, interpreted type ORGAN, generated
AUTOMATIC by the model its derivation algorithm names: name, card version, weights SHA-256),
UNAPPROVED, referencing every image of the source series (study, series, SOP instance and frame
of reference UIDs, repaired as for the SEG where the series lacks them). Each slice's mask
becomes closed planar polygons in patient coordinates (LPS, mm) on that image's plane; a hole in
a slice is a contour nested in its outline, which planning systems subtract (even-odd rule).

Why pydicom and not a library: highdicom writes no RTSTRUCT, and rt-utils (the one others use)
has had no release since 2023, reads the series only from a folder of files, needs OpenCV's GUI
build, and writes files without attributes the IOD requires (Referring Physician's Name,
Accession Number, Operators' Name) and with an invalid ROI Generation Algorithm; its contours
run through the boundary pixels' centres, half a pixel inside the mask.

Contours are traced by contourpy (matplotlib's contouring engine) at level 0.5 of the 0/1 slice:
marching squares, so each polygon runs halfway between the centres of a pixel inside and one
outside, and a reader that fills the pixels whose centre lies inside gives back the mask. Points
on a straight run (an edge, or a 45-degree staircase) are dropped: they add nothing to the shape.
The file is Implicit VR Little Endian, DICOM's default transfer syntax: explicit VR gives Contour
Data a 16-bit length, too short for the contour of a large liver at fine in-plane spacing.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time

import contourpy
import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ImplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from client.seg_identity import MANUFACTURER
from model_zoo.card import ModelCard
from service.errors import UnsupportedOutput
from service.io.seg import (
    SEGMENT_LABEL,
    TYPE2_DEFAULTS,
    algorithm_identification,
    frames_to_sources,
    liverseg_version,
    source_headers,
)
from service.volume import Volume, require_same_grid

log = logging.getLogger(__name__)

ROI_NUMBER = 1
ROI_COLOUR_RGB = [221, 130, 101]  # 3D Slicer's liver colour
SERIES_DESCRIPTION = "Liver contours (liverseg)"
SERIES_NUMBER_OFFSET = 2000  # the source's + 2000 (its SEG takes + 1000)
# The Study's Referenced SOP Class in RT Referenced Study Sequence: the value PS3.3 C.8.8.5 names.
STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"
STUDY_KEYWORDS = ("StudyDescription", "PatientAge", "PatientSize", "PatientWeight", "SpecificCharacterSet")
COLLINEAR_TOLERANCE = 1e-6  # in pixels^2 (the cross product of two steps)


def make_rtstruct(volume: Volume, mask: sitk.Image, card: ModelCard) -> bytes:
    """An RT Structure Set of `mask` referencing the DICOM series `volume` was decoded from.

    Args:
        volume: a DICOM-decoded volume (`volume.datasets` holds its headers); UIDs minted for a
            series that lacks them are said in `volume.warnings`.
        mask: uint8 0/1 liver mask on the volume's grid, array (D, H, W) = (slice, row, column).
        card: the model's card, for the ROI's derivation algorithm.

    Returns:
        the RTSTRUCT as a DICOM Part 10 file (implicit VR little endian).

    Raises:
        UnsupportedOutput: the volume is not DICOM, or its headers do not describe the mask's grid.
    """
    started = time.perf_counter()
    if volume.source != "dicom" or not volume.datasets:
        raise UnsupportedOutput(
            f"An RT Structure Set needs a DICOM input to reference; this input was {volume.source}. "
            "Ask for output=nifti instead."
        )
    require_same_grid(mask, volume.image, "make_rtstruct")
    sources, repairs = source_headers(frames_to_sources(volume.datasets, mask))
    if repairs:
        volume.warnings.append(
            "The DICOM series lacks UIDs an RT Structure Set must reference: " + "; ".join(repairs)
            + ". The RT Structure Set references these UIDs, which the uploaded files lack."
        )
    pixels = sitk.GetArrayViewFromImage(mask) != 0
    contours = []  # (slice index, (N, 3) points in patient mm)
    for k in np.flatnonzero(pixels.any(axis=(1, 2))):
        contours += [(int(k), patient_points(mask, int(k), loop)) for loop in slice_contours(pixels[k])]
    ds = _structure_set(sources, contours, card)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    log.info(
        "RTSTRUCT: %d contours on %d of %d images, %d bytes, in %.2f s",
        len(contours), len({k for k, _ in contours}), len(sources), len(data), time.perf_counter() - started,
    )
    return data


def slice_contours(inside: np.ndarray) -> list[np.ndarray]:
    """Closed polygons around a (rows, columns) bool slice: (N, 2) (column, row) vertices each, no
    point repeated, outlines and holes alike (a hole is the polygon nested inside its outline)."""
    padded = np.pad(inside.astype(np.float32), 1)  # a border of outside, so that every loop closes
    loops = []
    for line in contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5):
        points = np.asarray(line, dtype=np.float64)[:-1] - 1.0  # the last point repeats the first
        points = _without_collinear(points)
        if len(points) >= 3:
            loops.append(points)
    return loops


def _without_collinear(points: np.ndarray) -> np.ndarray:
    """The closed polygon's vertices where it turns (a point on the line of its neighbours adds nothing)."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return points[np.abs(turn) > COLLINEAR_TOLERANCE]


def patient_points(mask: sitk.Image, k: int, loop: np.ndarray) -> np.ndarray:
    """(N, 2) (column, row) positions on slice k of `mask`'s grid -> (N, 3) patient (LPS) mm."""
    index = np.column_stack([loop, np.full(len(loop), float(k))])  # (x, y, z) continuous index
    direction = np.array(mask.GetDirection(), dtype=np.float64).reshape(3, 3)
    return np.array(mask.GetOrigin()) + (index * np.array(mask.GetSpacing())) @ direction.T


def _structure_set(
    sources: list[pydicom.Dataset], contours: list[tuple[int, np.ndarray]], card: ModelCard
) -> pydicom.Dataset:
    """The RT Structure Set IOD (PS3.3 A.19): patient, study, frame of reference, RT series,
    equipment, structure set, ROI contour, RT ROI observations, approval and SOP common modules."""
    first = sources[0]
    now = dt.datetime.now()
    ds = pydicom.Dataset()
    for keyword, default in TYPE2_DEFAULTS.items():  # Patient and General Study, type 2 included
        setattr(ds, keyword, first.get(keyword, default))
    ds.StudyInstanceUID = first.StudyInstanceUID
    for keyword in STUDY_KEYWORDS:
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    # Frame of Reference: the source's (the contours are in its patient coordinates)
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    # RT Series, General Equipment
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = _series_number(first)
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = card.name[:64]
    ds.SoftwareVersions = f"liverseg {liverseg_version()}"
    ds.DeviceSerialNumber = (card.weights_sha256 or "unknown")[:64]  # which weights drew it
    # Structure Set
    ds.StructureSetLabel = "LIVER"
    ds.StructureSetName = f"Liver, automatic, {card.name}"[:64]
    ds.StructureSetDate, ds.StructureSetTime = ds.SeriesDate, ds.SeriesTime
    ds.ReferencedFrameOfReferenceSequence = [_frame_of_reference(sources)]
    roi = pydicom.Dataset()
    roi.ROINumber = ROI_NUMBER
    roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
    roi.ROIName = SEGMENT_LABEL
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"Liver, automatic, model {card.name} version {card.version}"[:64]
    roi.ROIDerivationAlgorithmIdentificationSequence = algorithm_identification(card)
    ds.StructureSetROISequence = [roi]
    # ROI Contour
    roi_contour = pydicom.Dataset()
    roi_contour.ReferencedROINumber = ROI_NUMBER
    roi_contour.ROIDisplayColor = ROI_COLOUR_RGB
    if contours:
        roi_contour.ContourSequence = [
            _contour(number, sources[k], points) for number, (k, points) in enumerate(contours, start=1)
        ]
    ds.ROIContourSequence = [roi_contour]
    # RT ROI Observations
    observation = pydicom.Dataset()
    observation.ObservationNumber = ROI_NUMBER
    observation.ReferencedROINumber = ROI_NUMBER
    observation.RTROIIdentificationCodeSequence = [hd.sr.CodedConcept.from_code(codes.SCT.Liver)]
    observation.RTROIInterpretedType = "ORGAN"
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence = [observation]
    # Approval, SOP Common: an automatic contour waits for a person's approval.
    ds.ApprovalStatus = "UNAPPROVED"
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.SeriesDate, ds.SeriesTime
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _image_reference(source: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _frame_of_reference(sources: list[pydicom.Dataset]) -> pydicom.Dataset:
    """The frame of reference, its study, the series and every image the contours may lie on."""
    series = pydicom.Dataset()
    series.SeriesInstanceUID = sources[0].SeriesInstanceUID
    series.ContourImageSequence = [_image_reference(s) for s in sources]
    study = pydicom.Dataset()
    study.ReferencedSOPClassUID = STUDY_REFERENCE_CLASS
    study.ReferencedSOPInstanceUID = sources[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _contour(number: int, source: pydicom.Dataset, points: np.ndarray) -> pydicom.Dataset:
    contour = pydicom.Dataset()
    contour.ContourNumber = number
    contour.ContourImageSequence = [_image_reference(source)]
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = len(points)
    contour.ContourData = [f"{v:.3f}" for v in points.ravel()]  # 1 micrometre; a DS holds 16 characters
    return contour


def _series_number(source: pydicom.Dataset) -> int:
    try:
        return int(source.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):
        return SERIES_NUMBER_OFFSET
