"""Anatomical plausibility of a liver mask: the failures the deep-supervision heads cannot see.

The heads agree with each other on a confident mistake (the heart's blood pool painted as liver,
half of a small cirrhotic liver missed), so these checks look at the mask's anatomy instead:

- `liver_cut_by_fov` (a note): the mask reaches the top or bottom of the field of view along the
  patient's cranio-caudal axis, or its in-plane edge or reconstruction circle. It does not by
  itself recommend review: partial scans are common and often meant (both real samples in
  ../shared/data cut their liver), but a partial liver's volume says nothing, so the volume
  check is skipped.
- `volume_low` / `volume_high`: a whole liver outside MIN_LIVER_ML..MAX_LIVER_ML.
- `mask_in_thorax`: mask on the patient's left of the body's midline, higher than the top of the
  right lobe by THORAX_MARGIN_MM. The heart sits on the central tendon, left of the midline
  and lower than the right dome's top, and rises 8-12 cm above it; the left lobe stays below
  the right dome. Heights and sides come from the direction cosines (LPS physical space),
  never from the array axes, so every orientation (LPS, RAS, flipped, oblique) reads alike.
  Since no liver lies there, the pipeline removes that part of the mask (`cut_mask_in_thorax`)
  and the finding says how much it removed: a note under THORAX_ML, review over it (the heart
  below the line may still be in the mask).
- `several_components`: before the pipeline keeps one connected component, a second one over
  SECOND_COMPONENT_ML: either a lobe the mask lost or an organ taken for liver. The one kept
  (`liver_component`) is the largest, unless a large one lies wholly above it on the patient's
  right: the liver is the highest organ of the abdomen, and a small cirrhotic liver can be
  outweighed by a pelvic fluid pool the network also took for liver.

Each check returns a `Finding`: a stable code, a sentence for people, and whether it
recommends review. Arrays are numpy (D, H, W) = SimpleITK's (z, y, x) index order; geometry is
the SimpleITK image's; volumes in mL, distances in mm.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.volume import require_same_grid

# A cirrhotic liver is 0.8-1 L; under 0.7 L a whole liver is more likely half missed (the
# issue's 0.9 L cirrhotic liver came back as 0.4 L).
MIN_LIVER_ML = 700.0
# Hepatomegaly reaches 3-4 L; past 3.5 L a leak into the neighbours is the likelier story.
MAX_LIVER_ML = 3500.0
# The mask is resampled from a coarser model grid, so its edge may stop a little short of the
# field of view's last slice: within this distance of it counts as touching.
CUT_MARGIN_MM = 3.0
# Below air and its noise (-1000 HU, noise under 40 HU): the fill scanners put outside the
# reconstruction circle (-2048, -3024). A -1024 fill cannot be told from air and is not seen.
PADDING_HU = -1500.0
# Soft tissue, fat and bone, not lung or air: the body whose median gives the midline.
BODY_HU = -300.0
# Mask this far right of the midline is the right lobe under the dome, beyond the heart's right
# border (the right atrium reaches 3-5 cm right of the midline).
RIGHT_LOBE_MM = 60.0
# The left lobe stays below the right dome (the left hemidiaphragm is lower, rarely higher by
# more than a centimetre); the heart rises 8-12 cm above the tendon it sits on.
THORAX_MARGIN_MM = 20.0
# Mask volume that high on the left that makes a finding: a heart leak is tens of mL or more.
THORAX_ML = 10.0
# Specks under this are what the largest-component step is for (the largest seen, ~21 mL: a
# muscle the bundled model took on a real scan, a phantom lobe tip joined by a bridge finer than
# 4 mm); a dropped region over it is a lost lobe or an organ taken for liver (the spleen, 230 mL).
SECOND_COMPONENT_ML = 30.0


@dataclass(frozen=True)
class Finding:
    """One anatomical reason to look at a mask: a stable code, a sentence, whether to review."""

    code: str
    sentence: str
    recommends_review: bool


def plausibility_findings(
    mask: sitk.Image,
    ct: sitk.Image,
    components_ml: Sequence[float] | None = None,
    thorax_cut: ThoraxCut | None = None,
    kept_ml: float | None = None,
) -> list[Finding]:
    """Every anatomical finding on a final liver mask, review-recommending or not.

    Args:
        mask: the final liver mask (non-zero = liver), on the CT's grid.
        ct: the CT in HU that the mask was drawn on, in any orientation.
        components_ml: connected components of the thresholded probability before one was
            kept, in mL (e.g. `component_volumes_ml`); None skips that check.
        thorax_cut: what `cut_mask_in_thorax` removed from the mask before it came here (the
            pipeline cuts every mask); None when it removed nothing.
        kept_ml: the component `liver_component` kept, in mL (None: the largest).

    Raises:
        ValueError: mask and CT are not on one grid.
    """
    require_same_grid(mask, ct, "plausibility_findings")
    view = sitk.GetArrayViewFromImage(mask)
    # The pipeline's 0/1 uint8 mask is read as bool in place: a copy of a 512x512x800 one is 200 MB.
    liver = view.view(bool) if view.dtype == np.uint8 and view.max() <= 1 else view != 0
    hu = sitk.GetArrayViewFromImage(ct)
    findings = []
    sides = fov_cut_sides(liver, hu, mask)
    if sides:
        findings.append(cut_finding(sides))
    else:
        findings.extend(volume_findings(float(liver.sum(dtype=np.int64)) * voxel_ml(mask)))
    findings.extend(thorax_findings(thorax_cut))
    if components_ml is not None:
        findings.extend(components_findings(components_ml, kept_ml))
    return findings


def fov_cut_sides(liver: np.ndarray, hu: np.ndarray, geometry: sitk.Image) -> list[str]:
    """Where the field of view cuts the liver: any of "top", "bottom", "side"; [] when whole.

    A face of the grid is "top" or "bottom" when its outward normal points mostly superior or
    inferior in LPS space (whatever the array axes), otherwise "side"; so is the reconstruction
    circle (voxels under PADDING_HU).

    Args:
        liver: (D, H, W) bool mask.
        hu: (D, H, W) CT in HU on the same grid.
        geometry: the grid's spacing, origin and direction.
    """
    box = _bounding_box(liver)
    if box is None:
        return []
    spacing = np.array(geometry.GetSpacing())[::-1]  # (D, H, W) order, mm
    direction = np.array(geometry.GetDirection()).reshape(3, 3)[:, ::-1]  # columns in (D, H, W)
    margin = (CUT_MARGIN_MM // spacing).astype(int) + 1  # voxels within CUT_MARGIN_MM of a face
    sides = set()
    for axis, (edge, n) in enumerate(zip(box, margin, strict=True)):
        for reaches, outward in ((edge.start < n, -1.0), (edge.stop > liver.shape[axis] - n, 1.0)):
            if reaches:
                normal = outward * direction[:, axis]
                dominant = int(np.argmax(np.abs(normal)))
                sides.add(("top" if normal[2] > 0 else "bottom") if dominant == 2 else "side")
    if "side" not in sides and _touches_padding(liver, hu, box, margin):
        sides.add("side")
    return [side for side in ("top", "bottom", "side") if side in sides]


def _bounding_box(liver: np.ndarray) -> tuple[slice, ...] | None:
    """The mask's bounding box as (D, H, W) slices, None when it is empty."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(liver.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _touches_padding(liver: np.ndarray, hu: np.ndarray, box: tuple[slice, ...], margin: np.ndarray) -> bool:
    """Whether the mask comes within `margin` voxels, in its slice, of the fill outside the circle.

    The reconstruction circle lies in the acquired slices, the array's (H, W) planes.
    """
    grown = tuple(
        slice(max(0, s.start - n), min(size, s.stop + n))
        for s, n, size in zip(box, margin, liver.shape, strict=True)
    )
    padding = (hu[grown] < PADDING_HU).view(np.uint8)
    if not padding.any():
        return False
    for axis in (1, 2):  # a square neighbourhood, one pass per axis whatever the margin
        padding = ndimage.maximum_filter1d(padding, 2 * int(margin[axis]) + 1, axis=axis)
    return bool((padding.view(bool) & liver[grown]).any())


def cut_finding(sides: Sequence[str]) -> Finding:
    """The note that the field of view cuts the liver (no review by itself)."""
    where = " and ".join(f"at the {side}" for side in sides)
    return Finding(
        "liver_cut_by_fov",
        f"Liver cut off by the field of view {where}: its volume is not checked.",
        recommends_review=False,
    )


def volume_findings(volume_ml: float) -> list[Finding]:
    """A finding when a whole liver's volume (mL) lies outside MIN_LIVER_ML..MAX_LIVER_ML."""
    if volume_ml < MIN_LIVER_ML:
        return [
            Finding(
                "volume_low",
                f"Liver volume {volume_ml:.0f} mL is below {MIN_LIVER_ML:.0f} mL, smaller than "
                "even a cirrhotic liver: part of it may be missed.",
                recommends_review=True,
            )
        ]
    if volume_ml > MAX_LIVER_ML:
        return [
            Finding(
                "volume_high",
                f"Liver volume {volume_ml:.0f} mL is above {MAX_LIVER_ML:.0f} mL, larger than "
                "most enlarged livers: the mask may have leaked into a neighbour.",
                recommends_review=True,
            )
        ]
    return []


@dataclass(frozen=True)
class ThoraxCut:
    """What `cut_mask_in_thorax` removed: mL, and how far above the right lobe's top it reached."""

    removed_ml: float
    highest_mm: float


def cut_mask_in_thorax(liver: np.ndarray, geometry: sitk.Image, midline_x: float) -> ThoraxCut | None:
    """Clear, in place, the mask left of the midline more than THORAX_MARGIN_MM above the right lobe's top.

    No liver lies there (the left lobe stays below the right dome; every phantom and real
    reference is at least 20 mm below), the heart does: a heart the network painted as liver
    loses the part above that line. The right lobe's top is the highest mask voxel more than
    RIGHT_LOBE_MM right of `midline_x` (LPS mm, `body_midline_x`). Returns None when nothing was
    cleared or the mask has no voxel there. Arrays (D, H, W) bool on the grid of `geometry`.
    """
    box = _bounding_box(liver)
    if box is None:
        return None
    right_top = -np.inf
    for _, x, z in _mask_points(liver, box, geometry):
        right = x < midline_x - RIGHT_LOBE_MM  # LPS: +x is the patient's left
        if right.any():
            right_top = max(right_top, float(z[right].max()))
    if right_top == -np.inf:
        return None
    count, highest = 0, -np.inf
    for index, x, z in _mask_points(liver, box, geometry):
        high = (x > midline_x) & (z > right_top + THORAX_MARGIN_MM)
        if high.any():
            liver[tuple(i[high] for i in index)] = False
            count += int(high.sum())
            highest = max(highest, float(z[high].max()))
    if count == 0:
        return None
    return ThoraxCut(removed_ml=count * voxel_ml(geometry), highest_mm=highest - right_top)


def thorax_findings(cut: ThoraxCut | None) -> list[Finding]:
    """The finding of a `cut_mask_in_thorax`: a note when it removed little, review over THORAX_ML."""
    if cut is None:
        return []
    return [
        Finding(
            "mask_in_thorax",
            f"{cut.removed_ml:.0f} mL of mask left of the midline and more than "
            f"{THORAX_MARGIN_MM:.0f} mm above the top of the right lobe (up to "
            f"{cut.highest_mm:.0f} mm) was removed: it lies above the diaphragm, where the heart "
            "is; the rest of the mask may still hold part of the heart.",
            recommends_review=cut.removed_ml > THORAX_ML,
        )
    ]


def liver_component(labels: np.ndarray, sizes: np.ndarray, geometry: sitk.Image, midline_x: float) -> int:
    """Which labelled component is the liver: the largest, or the largest of those over
    SECOND_COMPONENT_ML and a quarter of the largest that lie wholly above it (their lowest voxel
    higher than its highest) with their centre right of `midline_x` (LPS mm, `body_midline_x`).

    Nothing in the abdomen lies above the liver on the right, so a large region wholly below
    another is not the liver (a pelvic pool of ascites that outweighs a small cirrhotic liver);
    a heart painted apart lies above but left of the midline. The quarter keeps a smaller patch
    painted above a whole liver (a consolidated right lung base) from taking its place.
    labels: (D, H, W) of `ndimage.label`; sizes: voxels per label (`np.bincount(labels.ravel())`,
    label 0 ignored).
    """
    sizes = sizes.copy()
    sizes[0] = 0
    largest = int(sizes.argmax())
    large = np.flatnonzero((sizes * voxel_ml(geometry) > SECOND_COMPONENT_ML) & (4 * sizes >= sizes[largest]))
    if large.size < 2:
        return largest
    extent = {}  # label -> (lowest z, highest z, mean x), LPS mm
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if label in large:
            index = np.nonzero(labels[box] == label)
            x, _, z = _physical(geometry, tuple(i + b.start for i, b in zip(index, box, strict=True)))
            extent[label] = (float(z.min()), float(z.max()), float(x.mean()))
    above = [label for label in extent
             if extent[label][0] > extent[largest][1] and extent[label][2] < midline_x]  # LPS: -x is right
    return max(above, key=lambda label: sizes[label]) if above else largest


def component_volumes_ml(mask: np.ndarray, voxel_ml: float) -> list[float]:
    """Volumes (mL, largest first) of a (D, H, W) bool mask's connected components.

    Face connectivity, as the pipeline's largest-component step uses.
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    return [float(n) * voxel_ml for n in np.sort(sizes)[::-1]]


def components_findings(components_ml: Sequence[float], kept_ml: float | None = None) -> list[Finding]:
    """A finding when the second largest component (mL) exceeds SECOND_COMPONENT_ML; `kept_ml`,
    the one the pipeline kept (None: the largest)."""
    ordered = sorted(components_ml, reverse=True)
    if len(ordered) < 2 or ordered[1] <= SECOND_COMPONENT_ML:
        return []
    large = sum(1 for v in ordered if v > SECOND_COMPONENT_ML)
    kept = ("the largest was kept" if kept_ml is None or kept_ml >= ordered[0]
            else f"the {kept_ml:.0f} mL one, above the largest on the right, was kept")
    return [
        Finding(
            "several_components",
            f"The liver probability had {large} regions over {SECOND_COMPONENT_ML:.0f} mL "
            f"(the second {ordered[1]:.0f} mL beside {ordered[0]:.0f} mL); only {kept}, so a "
            "lobe may be lost or another organ taken for the liver.",
            recommends_review=True,
        )
    ]


def voxel_ml(image: sitk.Image) -> float:
    """One voxel's volume in mL (every volume the service reports is counted in these)."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def _physical(image: sitk.Image, index: tuple[np.ndarray, ...]) -> np.ndarray:
    """(3, N) LPS coordinates (mm) of voxels given by numpy (D, H, W) indices."""
    ijk = np.stack(index[::-1]).astype(np.float64)  # SimpleITK's (x, y, z) index order
    direction = np.array(image.GetDirection()).reshape(3, 3)
    scaled = ijk * np.array(image.GetSpacing())[:, None]
    return np.array(image.GetOrigin())[:, None] + direction @ scaled


def _mask_points(
    liver: np.ndarray, box: tuple[slice, ...], geometry: sitk.Image, slices: int = 16
) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
    """(D, H, W) indices and LPS x and z (mm) of the mask's voxels, a few array slices at a time
    (small buffers)."""
    for start in range(box[0].start, box[0].stop, slices):
        block = (slice(start, min(start + slices, box[0].stop)), box[1], box[2])
        index = np.nonzero(liver[block])
        if index[0].size:
            offset = [b.start for b in block]
            index = tuple(i + o for i, o in zip(index, offset, strict=True))
            x, _, z = _physical(geometry, index)
            yield index, x, z


def body_midline_x(hu: np.ndarray, geometry: sitk.Image, max_voxels: int = 2_000_000) -> float:
    """Median LPS x (mm) of the body's voxels (HU over BODY_HU), on a subsampled grid."""
    step = max(1, int(np.ceil((hu.size / max_voxels) ** (1 / 3))))
    body = np.nonzero(hu[::step, ::step, ::step] > BODY_HU)
    if body[0].size == 0:  # no body in view: the grid's centre
        return float(_physical(geometry, tuple(np.array([(n - 1) / 2]) for n in hu.shape))[0, 0])
    x = _physical(geometry, tuple(i * step for i in body))[0]
    return float(np.median(x))


