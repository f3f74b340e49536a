"""Place the slices of one DICOM series in space: their order and slice step, refusing what would
misplace them (gantry tilt, two images at one position, missing slices, uneven steps).

Slices are sorted by their Image Position (Patient) along the normal of Image Orientation
(Patient), the order SimpleITK's own series reader uses. An image that lies off the series'
regular step while the others form a complete, regular grid (a stray reconstruction) is left out
and said so, naming where it lies.

A series whose images all lack Image Position (Patient) (research exports such as 3D-IRCADb's)
is still a volume, placed by assumption and said so in the warnings: slices stacked by
InstanceNumber (the upload's file order where numbers are missing), at origin 0, their step
SpacingBetweenSlices (else SliceThickness), axial where Image Orientation (Patient) is absent
too. `Placement.positions_known` is then False: outputs that place a mask by the slices'
positions (DICOM SEG) cannot be made for it.

Nothing here logs patient data: not names, IDs, UIDs, nor the client's file names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from service.errors import InvalidVolume
from service.io.dicom_slice import Slice, optional_number

# An in-plane drift of slice positions beyond this fraction of a pixel is gantry tilt (or a
# sheared stack): SimpleITK would build a grid that misplaces the far slices. Real tilts are
# degrees; DS rounding noise is ~1e-5 mm, far below.
TILT_TOLERANCE_PIXELS = 0.1
# A slice step may differ from the median step by this fraction (DS rounding, table jitter).
STEP_TOLERANCE = 0.01
# At most this many images off the regular step are left out; more is not one regular series.
MAX_OFF_STEP_IMAGES = 2
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True, slots=True)
class Placement:
    """The slices in volume order, the step between them (mm), and whether their positions are
    the headers' own (False: placed by assumption, see the module docstring)."""

    ordered: list[Slice]
    step_mm: float
    positions_known: bool = True


def place_slices(group: list[Slice], warnings: list[str]) -> Placement:
    """Order the slices of one series and find its step; InvalidVolume where they do not form a
    regular, untilted stack."""
    if all(s.position is None for s in group):
        return _stack_without_positions(group, warnings)
    return _sort_along_normal(group, warnings)


def unplaced_geometry(image: sitk.Image, placement: Placement) -> None:
    """Give an image read from a series without positions the geometry `placement` assumed:
    origin 0, the headers' pixel spacing and step, the orientation's direction (axial if none)."""
    first = placement.ordered[0]
    row_mm, column_mm = first.pixel_spacing
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetSpacing((column_mm, row_mm, placement.step_mm))
    image.SetDirection(tuple(_direction(first.orientation or AXIAL).T.ravel()))


def _direction(orientation: tuple[float, ...]) -> np.ndarray:
    """Rows: the row cosine, the column cosine and the slice normal; InvalidVolume if damaged."""
    iop = np.array(orientation, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InvalidVolume(
            f"The series' Image Orientation (Patient) {iop.tolist()} is not two perpendicular unit "
            "vectors; the file headers are damaged."
        )
    normal = np.cross(row, col)
    return np.stack([row, col, normal / np.linalg.norm(normal)])


def _sort_along_normal(group: list[Slice], warnings: list[str]) -> Placement:
    normal = _direction(group[0].orientation)[2]
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
    if not uneven.any():
        return Placement(ordered, step)
    off = _off_step(along, step)
    if off is not None:
        for i in np.flatnonzero(off):
            number = optional_number(ordered[i], "InstanceNumber")
            warnings.append(
                f"1 image of the series{f' (instance {number:g})' if number is not None else ''} at "
                f"{along[i]:.2f} mm along the slice normal lies off the series' regular {step:.3g} mm "
                "step and was left out."
            )
        return Placement([s for s, out in zip(ordered, off, strict=True) if not out], step)
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


def _off_step(along: np.ndarray, step: float) -> np.ndarray | None:
    """Which slices (sorted `along`, mm) lie off a regular grid of `step` that all the others fill
    without a gap, when they are at most MAX_OFF_STEP_IMAGES and at least 2 slices remain; else None.

    A slice moved off the grid leaves a gap behind it, so it is never dropped: only images extra
    to a complete series are.
    """
    # With at most MAX_OFF_STEP_IMAGES strays, one of the first MAX_OFF_STEP_IMAGES + 1 slices is on the grid.
    for anchor in along[: MAX_OFF_STEP_IMAGES + 1]:
        index = (along - anchor) / step
        on = np.abs(index - np.round(index)) < STEP_TOLERANCE
        off = ~on
        kept = np.round(index[on])
        regular = on.sum() >= 2 and np.array_equal(np.diff(kept), np.ones(len(kept) - 1))
        if regular and 1 <= off.sum() <= MAX_OFF_STEP_IMAGES:
            return off
    return None


def _drop_duplicates(
    ordered: list[Slice], positions: np.ndarray, along: np.ndarray, warnings: list[str]
) -> tuple[list[Slice], np.ndarray, np.ndarray]:
    """The same file sent twice is dropped; two different images at one position are refused."""
    keep = [0]
    for i in range(1, len(ordered)):
        if along[i] - along[keep[-1]] > 1e-3:
            keep.append(i)
            continue
        if not _same_image(ordered[keep[-1]], ordered[i]):
            raise InvalidVolume(
                f"Two different images of the series lie at the same position ({along[i]:.2f} mm along "
                "the slice normal): the upload holds more than one volume (several phases, echoes or "
                "reconstructions). Send one."
            )
    if len(keep) < len(ordered):
        warnings.append(f"{len(ordered) - len(keep)} duplicate file(s) of the same slice were ignored.")
    return [ordered[i] for i in keep], positions[keep], along[keep]


def _same_image(a: Slice, b: Slice) -> bool:
    return (
        str(a.ds.get("SOPInstanceUID", "")) == str(b.ds.get("SOPInstanceUID", ""))
        and str(a.ds.get("InstanceNumber", "")) == str(b.ds.get("InstanceNumber", ""))
    )


def _stack_without_positions(group: list[Slice], warnings: list[str]) -> Placement:
    """Stack images that carry no position by InstanceNumber (file order where numbers are
    missing), at the step their headers give; the warning says every assumption made."""
    numbers = [optional_number(s, "InstanceNumber") for s in group]
    if None in numbers:
        ordered, order_by = list(group), "in the order the files were uploaded (not every image has an InstanceNumber)"
    else:
        ranked = sorted(zip(numbers, range(len(group)), strict=True))
        ordered = [group[ranked[0][1]]]
        for (number, i), (previous, _) in zip(ranked[1:], ranked, strict=False):
            if number != previous:
                ordered.append(group[i])
            elif not _same_image(ordered[-1], group[i]):
                raise InvalidVolume(
                    f"Two different images of the series have InstanceNumber {number:g}, and no Image "
                    "Position (Patient) to tell where each lies: the upload holds more than one volume, "
                    "or its slices cannot be ordered. Send one series with its positions."
                )
        if len(ordered) < len(group):
            warnings.append(f"{len(group) - len(ordered)} duplicate file(s) of the same slice were ignored.")
        order_by = "by InstanceNumber"
    if len(ordered) < 2:
        raise InvalidVolume("The series holds a single distinct slice; a 3D CT volume needs several.")
    step, step_from = _header_step(ordered)
    orientation = "" if ordered[0].orientation else (
        "; they carry no Image Orientation (Patient) either, so axial slices (rows along x, columns "
        "along y) were assumed"
    )
    _direction(ordered[0].orientation or AXIAL)  # a damaged orientation is refused here, not when read
    warnings.append(
        f"The series' images carry no Image Position (Patient): the volume was placed at origin "
        f"(0, 0, 0) mm with its {len(ordered)} slices stacked {order_by}, {step:.4g} mm apart "
        f"({step_from}){orientation}. Where it lies in the patient, and whether its slices run "
        "head to feet or feet to head, are not known; no DICOM SEG can be made for it."
    )
    return Placement(ordered, step, positions_known=False)


def _header_step(ordered: list[Slice]) -> tuple[float, str]:
    """The slice step a series without positions states: SpacingBetweenSlices, else SliceThickness
    (which equals the step unless the reconstruction overlaps), the same on every image."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        values = {optional_number(s, keyword) for s in ordered}
        if values == {None}:
            continue
        if len(values) > 1:
            shown = ", ".join(f"{v:g}" if v is not None else "missing" for v in sorted(values, key=lambda v: (v is None, v)))
            raise InvalidVolume(
                f"The series' images carry no Image Position (Patient) and their {keyword} differs "
                f"({shown} mm): the slice step is not known. Send the series with its positions."
            )
        (value,) = values
        if not value > 0:
            raise InvalidVolume(
                f"The series' images carry no Image Position (Patient) and their {keyword} is {value:g} mm: "
                "the slice step is not known. Send the series with its positions."
            )
        return value, keyword
    raise InvalidVolume(
        "The series' images carry no Image Position (Patient), nor SpacingBetweenSlices or "
        "SliceThickness: neither where the slices lie nor how far apart is known. Send the series "
        "with its positions."
    )
