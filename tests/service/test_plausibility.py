"""Tests for service/plausibility.py: each check flags a constructed mask with its reason, in every
orientation, and none that recommends review fires on the real references or on phantom livers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from model_zoo.card import InputContract, ModelCard
from model_zoo.registry import LoadedModel
from service.options import InferenceOptions
from service.pipeline import postprocess, segment
from service.plausibility import (
    MAX_LIVER_ML,
    MIN_LIVER_ML,
    SECOND_COMPONENT_ML,
    THORAX_MARGIN_MM,
    THORAX_ML,
    Finding,
    ThoraxCut,
    body_midline_x,
    component_volumes_ml,
    components_findings,
    cut_mask_in_thorax,
    liver_component,
    plausibility_findings,
)
from tests.conftest import ORIENTATIONS, physical_points
from tests.service.test_pipeline import ThresholdNet
from train.phantoms import HEART_CODES, make_phantom

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SPACING_MM = 4.0
# The scene, in LPS mm: a right lobe whose top (the dome) is at z = 0 and a heart above it, left of
# the midline (x = 0) on which the body is centred.
LIVER = ((-60.0, 0.0, -60.0), (90.0, 80.0, 60.0))  # centre, radii: 1.81 L
HEART_BLOB = ((30.0, -40.0, 50.0), (55.0, 45.0, 50.0))  # z from 0 to 100, x from -25 to 85
# A pelvic pool wholly below the liver (z from -340 to -180), larger than it: 3.32 L.
POOL = ((0.0, 0.0, -260.0), (110.0, 90.0, 80.0))
POOL_Z_MM = (-400.0, 150.0)


def _ct(
    direction: np.ndarray,
    *,
    z_mm: tuple[float, float] = (-150.0, 150.0),
    half_width_mm: float = 200.0,
    circle_mm: float | None = None,
) -> sitk.Image:
    """A CT (HU, int16) of a box of physical space centred on x = y = 0, rasterised along `direction`.

    An elliptic soft-tissue body (40 HU) with lungs (-850 HU) above z = 0 either side of the
    mediastinum, air (-1000) around; with `circle_mm`, -2048 outside that in-plane radius, as a
    scanner fills outside its reconstruction circle.
    """
    extent = np.array([2 * half_width_mm, 2 * (half_width_mm - 30.0), z_mm[1] - z_mm[0]])
    size = (extent // SPACING_MM).astype(int) + 1
    image = sitk.Image([int(n) for n in size], sitk.sitkInt16)
    image.SetSpacing((SPACING_MM,) * 3)
    image.SetDirection(direction.ravel().tolist())
    centre = np.array([0.0, 0.0, (z_mm[0] + z_mm[1]) / 2])
    image.SetOrigin((centre - direction @ ((size - 1) / 2 * SPACING_MM)).tolist())
    p = physical_points(image)
    body = (p[..., 0] / 170.0) ** 2 + (p[..., 1] / 130.0) ** 2 <= 1.0
    lungs = body & (p[..., 2] > 0) & (np.abs(p[..., 0]) > 40.0)
    hu = np.full(p.shape[:3], -1000, np.int16)
    hu[body], hu[lungs] = 40, -850
    if circle_mm is not None:
        hu[np.hypot(p[..., 0], p[..., 1]) > circle_mm] = -2048
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(image)
    return ct


def _ellipsoid(centre: tuple[float, ...], radii: tuple[float, ...], scale: float = 1.0) -> Callable:
    return lambda p: (((p - np.array(centre)) / (np.array(radii) * scale)) ** 2).sum(-1) <= 1.0


def _mask(ct: sitk.Image, *shapes: Callable) -> sitk.Image:
    """A uint8 mask on the CT's grid: the union of shapes, each a predicate on (..., 3) LPS points."""
    p = physical_points(ct)
    inside = np.zeros(p.shape[:3], bool)
    for shape in shapes:
        inside |= shape(p)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(ct)
    return mask


def _codes(findings: list[Finding], *, review: bool | None = None) -> list[str]:
    return [f.code for f in findings if review is None or f.recommends_review == review]


def _volume_ml(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).sum()) * SPACING_MM**3 / 1000.0


def _cut(mask: sitk.Image, ct: sitk.Image) -> tuple[sitk.Image, ThoraxCut | None]:
    """The mask after `cut_mask_in_thorax`, as the pipeline cuts it, and what was cut."""
    liver = sitk.GetArrayFromImage(mask) > 0
    cut = cut_mask_in_thorax(liver, mask, body_midline_x(sitk.GetArrayViewFromImage(ct), ct))
    out = sitk.GetImageFromArray(liver.astype(np.uint8))
    out.CopyInformation(mask)
    return out, cut


def _cap_ml(centre: tuple[float, ...], radii: tuple[float, ...], x_above: float, z_above: float) -> float:
    """By hand: the mL of an ellipsoid with x > x_above and z > z_above, on a 1 mm lattice."""
    axes = [np.arange(c - r, c + r, 1.0) + 0.5 for c, r in zip(centre, radii, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    p = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    return float(((p <= 1) & (x > x_above) & (z > z_above)).sum()) / 1000.0


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_a_whole_normal_liver_has_no_finding(orientation):
    ct = _ct(ORIENTATIONS[orientation])
    mask = _mask(ct, _ellipsoid(*LIVER))
    assert 1700 < _volume_ml(mask) < 1900
    assert plausibility_findings(mask, ct, [_volume_ml(mask), 3.0]) == []


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_a_heart_blob_above_the_dome_is_cut_off_and_flagged(orientation):
    ct = _ct(ORIENTATIONS[orientation])
    liver = _mask(ct, _ellipsoid(*LIVER))
    cut_mask, cut = _cut(_mask(ct, _ellipsoid(*LIVER), _ellipsoid(*HEART_BLOB)), ct)
    # By hand: the right lobe's top is the dome, z = 0 (less a voxel on this grid); the cut takes
    # the blob's part left of the midline and over 20 mm above it, and no liver.
    assert cut is not None
    expected = _cap_ml(*HEART_BLOB, x_above=0.0, z_above=THORAX_MARGIN_MM)
    assert 350 < expected < 450
    assert cut.removed_ml == pytest.approx(expected, rel=0.12)
    assert 75 <= cut.highest_mm <= 105  # the blob's top, z = 100
    kept, truth = sitk.GetArrayFromImage(cut_mask) > 0, sitk.GetArrayFromImage(liver) > 0
    assert (kept & truth).sum() == truth.sum()
    p = physical_points(ct)  # within a voxel of the line, the midline and the dome are the grid's
    assert not (kept & (p[..., 0] > SPACING_MM) & (p[..., 2] > THORAX_MARGIN_MM + SPACING_MM)).any()

    findings = plausibility_findings(cut_mask, ct, thorax_cut=cut)
    assert _codes(findings) == ["mask_in_thorax"] and findings[0].recommends_review
    assert findings[0].sentence == (
        f"{cut.removed_ml:.0f} mL of mask left of the midline and more than 20 mm above the top of "
        f"the right lobe (up to {cut.highest_mm:.0f} mm) was removed: it lies above the diaphragm, "
        "where the heart is; the rest of the mask may still hold part of the heart."
    )


def test_a_little_mask_cut_above_the_dome_is_a_note():
    ct = _ct(ORIENTATIONS["LPS"])
    little = ThoraxCut(removed_ml=THORAX_ML, highest_mm=24.0)
    findings = plausibility_findings(_mask(ct, _ellipsoid(*LIVER)), ct, thorax_cut=little)
    assert [(f.code, f.recommends_review) for f in findings] == [("mask_in_thorax", False)]


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_a_blob_as_high_on_the_right_side_is_not_cut(orientation):
    # The same blob mirrored to the patient's right is higher than the liver but not on the
    # heart's side; it raises the right side's top instead.
    (x, y, z), radii = HEART_BLOB
    ct = _ct(ORIENTATIONS[orientation])
    mask = _mask(ct, _ellipsoid(*LIVER), _ellipsoid((-x - 60.0, y, z), radii))
    cut_mask, cut = _cut(mask, ct)
    assert cut is None
    assert np.array_equal(sitk.GetArrayFromImage(cut_mask), sitk.GetArrayFromImage(mask))


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_segment_cuts_a_heart_the_network_paints_off_the_liver(orientation):
    # A network that paints everything over 100 HU, on a liver and a heart both at 200 HU and
    # joined across the dome: the pipeline returns the liver with the heart's top cut off.
    ct = _ct(ORIENTATIONS[orientation])
    liver_truth = _mask(ct, _ellipsoid(*LIVER))
    heart_blob = ((0.0, -20.0, 30.0), (50.0, 45.0, 50.0))  # its bottom 20 mm into the dome
    painted = sitk.GetArrayFromImage(_mask(ct, _ellipsoid(*LIVER), _ellipsoid(*heart_blob))) > 0
    hu = sitk.GetArrayFromImage(ct)
    hu[painted] = 200
    bright = sitk.GetImageFromArray(hu)
    bright.CopyInformation(ct)
    card = ModelCard(
        name="unet3d_ds.threshold",
        arch="unet3d_ds",
        input=InputContract(spacing_xyz_mm=(4.0, 4.0, 4.0), hu_window=(-100.0, 300.0), patch_size_dhw=(32, 32, 32)),
    )
    result = segment(bright, LoadedModel(network=ThresholdNet().eval(), card=card), InferenceOptions())

    mask = sitk.GetArrayFromImage(result.mask) > 0
    truth = sitk.GetArrayFromImage(liver_truth) > 0
    assert (mask & truth).sum() >= 0.99 * truth.sum()
    removed = (painted & ~mask).sum() * SPACING_MM**3 / 1000.0
    assert removed == pytest.approx(_cap_ml(*heart_blob, x_above=0.0, z_above=THORAX_MARGIN_MM), rel=0.15)
    assert [(f.code, f.recommends_review) for f in result.findings] == [("mask_in_thorax", True)]
    assert result.liver_volume_ml == pytest.approx(float(mask.sum()) * SPACING_MM**3 / 1000.0)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("end, z_mm", [("top", (-150.0, -85.0)), ("bottom", (-40.0, 150.0))])
def test_a_liver_cut_by_the_field_of_view_is_a_note_and_its_volume_is_not_checked(orientation, end, z_mm):
    ct = _ct(ORIENTATIONS[orientation], z_mm=z_mm)
    mask = _mask(ct, _ellipsoid(*LIVER))
    assert _volume_ml(mask) < MIN_LIVER_ML  # a whole liver this small would be flagged
    findings = plausibility_findings(mask, ct)
    assert findings == [
        Finding(
            "liver_cut_by_fov",
            f"Liver cut off by the field of view at the {end}: its volume is not checked.",
            recommends_review=False,
        )
    ]


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_a_liver_cut_in_plane_by_the_grid_or_the_reconstruction_circle_is_cut_at_the_side(orientation):
    narrow = _ct(ORIENTATIONS[orientation], half_width_mm=130.0)  # the liver reaches x = -150
    assert _codes(plausibility_findings(_mask(narrow, _ellipsoid(*LIVER)), narrow)) == ["liver_cut_by_fov"]
    circle = _ct(ORIENTATIONS[orientation], circle_mm=130.0)
    inside = lambda p: np.hypot(p[..., 0], p[..., 1]) <= 130.0  # noqa: E731
    mask = _mask(circle, lambda p: _ellipsoid(*LIVER)(p) & inside(p))
    findings = plausibility_findings(mask, circle)
    assert [f.sentence for f in findings] == [
        "Liver cut off by the field of view at the side: its volume is not checked."
    ]
    # The same liver clear of the circle is whole.
    wide = _ct(ORIENTATIONS[orientation], circle_mm=180.0)
    assert plausibility_findings(_mask(wide, _ellipsoid(*LIVER)), wide) == []


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("scale, code", [(0.6, "volume_low"), (1.35, "volume_high")])
def test_a_whole_liver_too_small_or_too_large_is_flagged_with_its_volume(orientation, scale, code):
    ct = _ct(ORIENTATIONS[orientation])
    mask = _mask(ct, _ellipsoid(*LIVER, scale=scale))
    volume = _volume_ml(mask)
    assert volume < 450 if scale < 1 else volume > MAX_LIVER_ML  # 0.39 L and 4.4 L by hand
    findings = plausibility_findings(mask, ct)
    assert _codes(findings) == [code]
    assert findings[0].recommends_review
    assert f"Liver volume {volume:.0f} mL" in findings[0].sentence


def test_an_empty_mask_is_a_liver_too_small():
    ct = _ct(ORIENTATIONS["LPS"])
    assert _codes(plausibility_findings(_mask(ct), ct)) == ["volume_low"]


def test_two_large_components_are_flagged_and_small_specks_are_not():
    assert components_findings([1400.0, SECOND_COMPONENT_ML + 1.0, 0.5]) == [
        Finding(
            "several_components",
            "The liver probability had 2 regions over 30 mL (the second 31 mL beside 1400 mL); "
            "only the largest was kept, so a lobe may be lost or another organ taken for the liver.",
            recommends_review=True,
        )
    ]
    assert components_findings([1400.0, 800.0], kept_ml=800.0)[0].sentence == (
        "The liver probability had 2 regions over 30 mL (the second 800 mL beside 1400 mL); "
        "only the 800 mL one, above the largest on the right, was kept, so a lobe may be lost or "
        "another organ taken for the liver."
    )
    assert components_findings([1400.0, SECOND_COMPONENT_ML, 3.0]) == []
    assert components_findings([1400.0]) == components_findings([]) == []
    ct = _ct(ORIENTATIONS["RAS"])
    liver = _mask(ct, _ellipsoid(*LIVER))
    assert _codes(plausibility_findings(liver, ct, [1800.0, 240.0])) == ["several_components"]
    assert plausibility_findings(liver, ct, None) == []


def _kept(mask: sitk.Image, ct: sitk.Image) -> np.ndarray:
    """The component `postprocess` keeps of a 0/1 mask, on the CT's grid."""
    midline_x = body_midline_x(sitk.GetArrayViewFromImage(ct), ct)
    return postprocess(sitk.GetArrayFromImage(mask).astype(np.float32), ct, midline_x)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_the_liver_above_a_larger_pool_is_kept(orientation):
    ct = _ct(ORIENTATIONS[orientation], z_mm=POOL_Z_MM)
    liver, pool = _mask(ct, _ellipsoid(*LIVER)), _mask(ct, _ellipsoid(*POOL))
    both = _mask(ct, _ellipsoid(*LIVER), _ellipsoid(*POOL))
    assert _volume_ml(pool) > 1.5 * _volume_ml(liver)
    assert np.array_equal(_kept(both, ct), sitk.GetArrayFromImage(liver) > 0)
    # Without the geometry the largest is kept, as before.
    largest = postprocess(sitk.GetArrayFromImage(both).astype(np.float32))
    assert np.array_equal(largest, sitk.GetArrayFromImage(pool) > 0)


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
@pytest.mark.parametrize(
    "upper",
    [
        ((60.0, 0.0, -60.0), (90.0, 80.0, 60.0)),  # the liver mirrored to the left: a heart's side
        ((-60.0, 0.0, -60.0), (18.0, 18.0, 18.0)),  # on the right but 24 mL: a speck
        ((-60.0, 0.0, -60.0), (50.0, 50.0, 50.0)),  # on the right, 524 mL: under a quarter of the pool
        ((-130.0, 0.0, -170.0), (30.0, 30.0, 40.0)),  # on the right, 151 mL, its bottom below the pool's top
    ],
    ids=["left", "speck", "under_a_quarter", "overlapping"],
)
def test_the_largest_is_kept_unless_the_other_lies_wholly_above_on_the_right(orientation, upper):
    ct = _ct(ORIENTATIONS[orientation], z_mm=POOL_Z_MM)
    pool = _mask(ct, _ellipsoid(*POOL))
    both = _mask(ct, _ellipsoid(*upper), _ellipsoid(*POOL))
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(both))
    assert labels.max() == 2  # two components, not one joined
    assert np.array_equal(_kept(both, ct), sitk.GetArrayFromImage(pool) > 0)
    sizes = np.bincount(labels.ravel())
    midline_x = body_midline_x(sitk.GetArrayViewFromImage(ct), ct)
    assert liver_component(labels, sizes, ct, midline_x) == int(np.argmax(sizes[1:])) + 1


def test_segment_keeps_the_liver_above_a_larger_pool_and_says_so():
    # A network that paints everything over 100 HU, on a liver and a larger pool below it.
    ct = _ct(ORIENTATIONS["RAS"], z_mm=POOL_Z_MM)
    liver_truth = sitk.GetArrayFromImage(_mask(ct, _ellipsoid(*LIVER))) > 0
    painted = sitk.GetArrayFromImage(_mask(ct, _ellipsoid(*LIVER), _ellipsoid(*POOL))) > 0
    hu = sitk.GetArrayFromImage(ct)
    hu[painted] = 200
    bright = sitk.GetImageFromArray(hu)
    bright.CopyInformation(ct)
    card = ModelCard(
        name="unet3d_ds.threshold",
        arch="unet3d_ds",
        input=InputContract(spacing_xyz_mm=(4.0, 4.0, 4.0), hu_window=(-100.0, 300.0), patch_size_dhw=(32, 32, 32)),
    )
    result = segment(bright, LoadedModel(network=ThresholdNet().eval(), card=card), InferenceOptions())

    mask = sitk.GetArrayFromImage(result.mask) > 0
    assert (mask & liver_truth).sum() >= 0.99 * liver_truth.sum()
    assert (mask & ~liver_truth).sum() <= 0.01 * liver_truth.sum()
    assert _codes(result.findings) == ["several_components"]
    assert "one, above the largest on the right, was kept" in result.findings[0].sentence


def test_component_volumes_are_counted_largest_first():
    mask = np.zeros((30, 30, 30), bool)
    mask[1:6, 1:6, 1:6] = True  # 125 voxels
    mask[10:20, 10:20, 10:20] = True  # 1000 voxels
    mask[25, 25, 25] = mask[25, 25, 26] = True  # 2 voxels, face-connected
    mask[28, 28, 28] = mask[29, 29, 29] = True  # 2 voxels touching by a corner only: 2 components
    assert component_volumes_ml(mask, 0.064) == pytest.approx([64.0, 8.0, 0.128, 0.064, 0.064])
    assert component_volumes_ml(np.zeros((3, 3, 3), bool), 1.0) == []


def test_a_mask_off_the_cts_grid_is_refused():
    ct = _ct(ORIENTATIONS["LPS"])
    mask = _mask(_ct(ORIENTATIONS["RAS"]), _ellipsoid(*LIVER))
    with pytest.raises(ValueError, match="one grid"):
        plausibility_findings(mask, ct)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_a_phantoms_heart_added_to_its_liver_loses_its_top_and_is_flagged(orientation):
    phantom = make_phantom(
        3,
        spacing_xyz_mm=(6.0, 6.0, 6.0),
        z_range=(-150.0, 150.0),
        phase="portal",
        direction=ORIENTATIONS[orientation].ravel().tolist(),
    )
    liver = sitk.GetArrayFromImage(phantom.liver).astype(bool)
    heart = np.isin(sitk.GetArrayFromImage(phantom.tissues), HEART_CODES)
    assert heart.sum() * 0.216 > 300  # mL: the whole heart is in view
    with_heart = sitk.GetImageFromArray((liver | heart).astype(np.uint8))
    with_heart.CopyInformation(phantom.liver)

    assert _cut(phantom.liver, phantom.ct)[1] is None
    cut_mask, cut = _cut(with_heart, phantom.ct)
    assert cut is not None and cut.removed_ml > 100  # most of what lies over the dome
    assert np.array_equal((sitk.GetArrayFromImage(cut_mask) > 0) & liver, liver)  # no liver lost
    assert _codes(plausibility_findings(cut_mask, phantom.ct, thorax_cut=cut), review=True) == ["mask_in_thorax"]


@pytest.mark.parametrize("seed", range(6))
def test_phantom_livers_raise_no_review(seed):
    # The scan the seed draws (often a slab or a cut liver) and the whole liver, on the 4 mm grid
    # of the bundled model, where the pipeline counts components.
    for z_range in (None, (-400.0, 150.0)):
        phantom = make_phantom(seed, spacing_xyz_mm=(4.0, 4.0, 4.0), z_range=z_range)
        liver = sitk.GetArrayFromImage(phantom.liver).astype(bool)
        components = component_volumes_ml(liver, 0.064)
        assert _cut(phantom.liver, phantom.ct)[1] is None, z_range
        findings = plausibility_findings(phantom.liver, phantom.ct, components)
        assert _codes(findings, review=True) == [], (z_range, findings)


def _real(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT sample not found at {path} (it lives in ../shared/data beside the repo)")
    return path


def _dicom_sample() -> tuple[sitk.Image, sitk.Image]:
    folder = _real(DATA / "ct-dicom-sample")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "dicom")))
    return reader.Execute(), sitk.ReadImage(str(folder / "liver_mask.nii.gz"))


def _ts_example() -> tuple[sitk.Image, sitk.Image]:
    folder = _real(DATA / "ts-example-ct")
    return sitk.ReadImage(str(folder / "ct.nii.gz")), sitk.ReadImage(str(folder / "liver_mask.nii.gz"))


def _flipped(image: sitk.Image) -> sitk.Image:
    """The same physical image with its x and y array axes reversed (RAS <-> LPS storage)."""
    return sitk.Flip(image, [True, True, False])


@pytest.mark.realdata
@pytest.mark.parametrize(
    "sample, flip, note",
    [
        ("ct-dicom-sample", False, "at the top and at the bottom"),
        ("ts-example-ct", False, "at the top"),
        ("ts-example-ct", True, "at the top"),
    ],
)
def test_the_real_reference_masks_raise_no_review_and_are_noted_as_cut(sample, flip, note):
    ct, reference = _dicom_sample() if sample == "ct-dicom-sample" else _ts_example()
    if flip:
        ct, reference = _flipped(ct), _flipped(reference)
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    components = component_volumes_ml(sitk.GetArrayFromImage(reference) > 0, voxel_ml)
    assert _cut(reference, ct)[1] is None  # nothing of a real liver lies where the cut is
    findings = plausibility_findings(reference, ct, components)
    assert findings == [
        Finding(
            "liver_cut_by_fov",
            f"Liver cut off by the field of view {note}: its volume is not checked.",
            recommends_review=False,
        )
    ]
