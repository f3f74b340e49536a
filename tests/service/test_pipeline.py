"""The model part of a request, without HTTP: geometry in every orientation, confidence, options."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.card import InputContract, ModelCard
from model_zoo.preprocessing import prepare
from model_zoo.registry import LoadedModel
from service.errors import InvalidOption, TooLarge
from service.options import InferenceOptions
from service.pipeline import postprocess, segment, window_cost
from tests.conftest import ORIENTATIONS, dice, rotation, sphere_ct


class ThresholdNet(nn.Module):
    """Liver wherever the normalised input passes 0.5 (100 HU in a [-100, 300] window).

    A network whose right answer is known, so that where the mask lands tests the pipeline alone.
    Its heads are the main logits average-pooled by 2 and 4, as lower-resolution heads are.
    """

    def liver_logit(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 40

    def forward(self, x: torch.Tensor, deep_supervision: bool = False) -> torch.Tensor | list[torch.Tensor]:
        logit = self.liver_logit(x)
        main = torch.cat([-logit, logit], dim=1)
        return [main, F.avg_pool3d(main, 2), F.avg_pool3d(main, 4)] if deep_supervision else main


def threshold_model(**inference: object) -> LoadedModel:
    card = ModelCard(
        name="unet3d_ds.threshold",
        arch="unet3d_ds",
        input=InputContract(spacing_xyz_mm=(2.0, 2.0, 2.0), hu_window=(-100.0, 300.0), patch_size_dhw=(32, 32, 32)),
        inference=inference,
    )
    return LoadedModel(network=ThresholdNet().eval(), card=card)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_mask_lands_on_the_input_grid_in_every_orientation(orientation: str) -> None:
    ct, sphere = sphere_ct(ORIENTATIONS[orientation])
    result = segment(ct, threshold_model(), InferenceOptions())

    mask = result.mask
    assert mask.GetSize() == ct.GetSize()
    assert mask.GetSpacing() == ct.GetSpacing()
    assert mask.GetOrigin() == ct.GetOrigin()
    assert mask.GetDirection() == ct.GetDirection()
    assert mask.GetPixelID() == sitk.sitkUInt8
    found = sitk.GetArrayFromImage(mask)
    assert dice(found, sphere) >= 0.95
    expected_ml = 4 / 3 * np.pi * 25.0**3 / 1000
    assert result.liver_volume_ml == pytest.approx(expected_ml, rel=0.08)
    assert result.liver_mean_hu == pytest.approx(200, abs=15)


def test_summary_box_and_confidence() -> None:
    ct, sphere = sphere_ct(ORIENTATIONS["LPS"])
    result = segment(ct, threshold_model(), InferenceOptions(confidence_map=True))
    centre = np.array(result.bbox_min_lps_mm) + (np.array(result.bbox_max_lps_mm) - result.bbox_min_lps_mm) / 2
    assert np.allclose(centre, (-20.0, 10.0, 5.0), atol=2.5)
    assert [s for s in result.bbox_size_xyz] == pytest.approx([50 / 1.5, 50 / 1.5, 50 / 2.5], abs=3)
    # The heads agree with the main output except in a rim at the surface (the quarter-resolution
    # head blurs about 4 mm of it, a third of so small a sphere).
    assert result.confidence_summary.mean_in_liver > 0.6
    assert 0.1 < result.confidence_summary.fraction_below_threshold < 0.5
    confidence = sitk.GetArrayFromImage(result.confidence)
    assert result.confidence.GetSize() == ct.GetSize()
    assert confidence.min() >= 0 and confidence.max() <= 1
    # Deep inside the sphere every output is sure; on its surface they are not.
    points_inside = sphere & (sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(sphere.astype(np.uint8)), [4] * 3)) > 0)
    assert confidence[points_inside].mean() > 0.95
    assert result.windows_total > 0 and set(result.timings_s) == {"preprocess", "inference", "postprocess", "restore"}


def test_empty_ct_gives_an_empty_mask_and_asks_for_review() -> None:
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], radius_mm=0.1)
    result = segment(ct, threshold_model(), InferenceOptions())
    assert sitk.GetArrayViewFromImage(result.mask).sum() == 0
    assert result.liver_volume_ml == 0 and result.bbox_start_xyz is None
    assert result.confidence_summary.review_recommended


class AirNet(ThresholdNet):
    """Liver wherever a 21^3 neighbourhood is all air: on an all-body scan, only well beyond its faces."""

    def liver_logit(self, x: torch.Tensor) -> torch.Tensor:
        return (0.05 - F.max_pool3d(x, 21, stride=1, padding=10)) * 40


def test_liver_found_only_beyond_an_oblique_scan_gives_an_empty_mask() -> None:
    # The model grid of a tilted scan is the axis-aligned box around it, so it reaches past the
    # scan; a (wrong) network may put its largest component there, in a wedge beyond one face of
    # the scan. That once asked SimpleITK for a box of negative size (a 500 for the request).
    ct, _ = sphere_ct(rotation("x", 30), size_xyz=(40, 64, 20), radius_mm=0.1)
    ct = sitk.Add(sitk.Multiply(ct, 0), 40)  # soft tissue everywhere: no air inside the scan
    model = replace(threshold_model(), network=AirNet().eval())
    result = segment(ct, model, InferenceOptions(skip_air_hu=None))
    assert result.mask.GetSize() == ct.GetSize() and result.mask.GetDirection() == ct.GetDirection()
    assert sitk.GetArrayViewFromImage(result.mask).sum() == 0
    assert result.liver_volume_ml == 0 and result.bbox_start_xyz is None


def test_postprocess_keeps_the_largest_component_and_fills_holes() -> None:
    p = np.zeros((20, 20, 20), np.float32)
    p[2:12, 2:12, 2:12] = 0.9
    p[6:8, 6:8, 6:8] = 0.1  # a hole
    p[15:17, 15:17, 15:17] = 0.9  # a stray island
    mask = postprocess(p)
    assert mask[2:12, 2:12, 2:12].all() and mask.sum() == 1000


def test_skipping_air_changes_nothing() -> None:
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(200, 200, 24))
    # roi off: the windows the ROI leaves out would count as skipped too
    skipped = segment(ct, threshold_model(), InferenceOptions(skip_air_hu=-500, roi=False))
    full = segment(ct, threshold_model(), InferenceOptions(skip_air_hu=None, roi=False))
    assert skipped.windows_skipped > 0 and full.windows_skipped == 0
    assert dice(sitk.GetArrayFromImage(skipped.mask), sitk.GetArrayFromImage(full.mask)) >= 0.999


def test_depth_is_refused_for_a_network_that_is_not_unetpp() -> None:
    ct, _ = sphere_ct(ORIENTATIONS["LPS"])
    with pytest.raises(InvalidOption, match="UNet\\+\\+"):
        segment(ct, threshold_model(), InferenceOptions(depth=2))


# ---------------------------------------------------------------------------------------------
# What a request may cost, bounded before it is spent (issue 19)


class NeverRun(ThresholdNet):
    """A network that must not be reached."""

    def forward(self, x: torch.Tensor, deep_supervision: bool = False) -> torch.Tensor:
        raise AssertionError("a window ran")


def _never_prepare(*args: object, **kwargs: object) -> None:
    pytest.fail("the scan was resampled onto the model grid")


def test_a_model_grid_beyond_the_limit_is_refused_before_resampling(monkeypatch) -> None:
    # 660 mm a side: inside the decoder's ranges; the 2 mm grid is 330^3, over 32 Mi voxels.
    ct = sitk.Image([150, 150, 150], sitk.sitkInt16)
    ct.SetSpacing((4.4, 4.4, 4.4))
    monkeypatch.setattr("service.pipeline.prepare", _never_prepare)
    with pytest.raises(TooLarge) as caught:
        segment(ct, replace(threshold_model(), network=NeverRun()), InferenceOptions())
    assert caught.value.detail == (
        "The scan spans 660 x 660 x 660 mm, which unet3d_ds.threshold's 2 x 2 x 2 mm grid covers with "
        "330 x 330 x 330 = 35,937,000 voxels; this service resamples at most 33,554,432 "
        "(LIVERSEG_MAX_MODEL_GRID_VOXELS)."
    )


@pytest.mark.parametrize(
    "overlap, ways",
    [
        (0.9, "use overlap 0.5, the model's default (2,352)"),
        (0.75, "leave tta off (1,440) or use overlap 0.5, the model's default (2,352)"),
    ],
)
def test_windows_beyond_the_limit_are_refused_before_any_runs(overlap: float, ways: str) -> None:
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(160, 160, 80))  # 240 x 240 x 200 mm
    model = replace(threshold_model(mirror_axes=[0, 1, 2]), network=NeverRun())
    options = InferenceOptions(overlap=overlap, tta=True, mirror_axes=(0, 1, 2))
    windows = {0.9: 23_064, 0.75: 1_440}[overlap]
    with pytest.raises(InvalidOption) as caught:
        segment(ct, model, options)
    assert caught.value.detail == (
        f"This request would run {windows:,} windows x 8 pass(es) each = {windows * 8:,} network passes "
        f"(overlap {overlap:g}, tta on) on the 100 x 120 x 120 model grid; this service runs at most 10,000 "
        f"per request (LIVERSEG_MAX_WINDOWS): {ways}."
    )


@pytest.mark.parametrize("overlap, tta", [(0.5, False), (0.75, True), (0.0, True), (0.9, False)])
def test_the_window_count_is_the_one_the_engine_runs(overlap: float, tta: bool) -> None:
    ct, _ = sphere_ct(ORIENTATIONS["oblique"], size_xyz=(40, 36, 20))  # a grid smaller than a patch along z
    model = threshold_model(mirror_axes=[0, 2])
    options = InferenceOptions(overlap=overlap, tta=tta, mirror_axes=(0, 2), skip_air_hu=None)
    windows, passes = window_cost(prepare(ct, model.card.input).array.shape, model.card, options)
    result = segment(ct, model, options)
    assert (windows, passes) == (result.windows_total, 4 if tta else 1)


def test_mask_statistics_of_a_region_match_those_of_the_whole_grid() -> None:
    from service.pipeline import _mask_statistics

    rng = np.random.default_rng(3)
    hu = rng.integers(-100, 200, (30, 40, 50)).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-20.0, 10.0, 300.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    whole = np.zeros(hu.shape, bool)
    whole[7:19, 12:30, 5:41] = rng.random((12, 18, 36)) > 0.7
    start_xyz = (3, 10, 6)  # the region (z 6.., y 10.., x 3..) holds the whole mask
    region = whole[6:25, 10:35, 3:45]
    got = _mask_statistics(image, region, start_xyz)
    nz = np.nonzero(whole)
    lo, hi = [int(v.min()) for v in nz][::-1], [int(v.max()) for v in nz][::-1]
    assert got["bbox_start_xyz"] == lo and got["bbox_size_xyz"] == [b - a + 1 for a, b in zip(lo, hi, strict=True)]
    assert got["liver_mean_hu"] == pytest.approx(float(hu[whole].mean()))
    corners = np.array([image.TransformIndexToPhysicalPoint((x, y, z)) for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    assert got["bbox_min_lps_mm"] == [round(float(v), 2) for v in corners.min(0)]
    assert got["bbox_max_lps_mm"] == [round(float(v), 2) for v in corners.max(0)]
