"""The liver probability map (service.io.probability, output=probability): calibrated with the
card's temperature, stored as uint8 with scl_slope 1/255, and equal to the mask at 0.5."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from model_zoo.card import Calibration
from model_zoo.registry import load_model
from service.app import create_app
from service.io.probability import calibrated, probability_levels, probability_to_nifti_bytes
from service.options import resolve_options
from service.pipeline import segment
from service.settings import Settings
from tests.conftest import nifti_bytes, read_nifti
from train.phantoms import make_phantom

BUNDLED = Settings.model_fields["model"].default
SEED = 200_003  # a held-out phantom (train.calibrate fits on 200000 and up; training never sees them)


def test_temperature_scales_the_log_odds_and_keeps_one_half() -> None:
    p = np.array([0.0, 0.01, 0.3, 0.5, 0.7, 0.99, 1.0], dtype=np.float32)
    assert np.array_equal(calibrated(p, 1.0), p)
    softer, sharper = calibrated(p, 2.0), calibrated(p, 0.5)
    assert softer[3] == pytest.approx(0.5) and sharper[3] == pytest.approx(0.5)
    assert np.all(np.diff(softer) >= 0) and np.all(np.diff(sharper) >= 0)  # monotone: the ranking stays
    assert softer[1] == pytest.approx(1 / (1 + np.sqrt(99)), rel=1e-4)  # odds 1:99 -> 1:sqrt(99)
    assert sharper[4] == pytest.approx(0.49 / (0.49 + 0.09), rel=1e-4)  # odds 7:3 -> 49:9
    assert np.all(np.abs(softer - 0.5) <= np.abs(p - 0.5) + 1e-6)


def _grid(shape_dhw: tuple[int, int, int]) -> sitk.Image:
    image = sitk.Image(list(shape_dhw[::-1]), sitk.sitkUInt8)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-30.0, 12.0, 7.5))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def test_post_processing_decisions_move_just_across_one_half() -> None:
    rng = np.random.default_rng(0)
    box = rng.uniform(0.0, 1.0, size=(4, 5, 6)).astype(np.float32)
    mask_array = np.zeros((6, 8, 10), dtype=np.uint8)
    start = [2, 1, 1]  # x, y, z of the box on the grid
    inside = box > 0.5
    inside[0, 0, 0], inside[1, 2, 3] = True, False  # a hole filled, a small component dropped
    box[0, 0, 0], box[1, 2, 3] = 0.2, 0.9
    mask_array[1:5, 1:6, 2:8] = inside
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(_grid(mask_array.shape))
    levels = probability_levels(mask, (start, box), temperature=1.0)
    assert np.array_equal(levels / 255.0 > 0.5, mask_array.astype(bool))
    assert (levels[1, 1, 2], levels[2, 3, 5]) == (128, 127)
    kept = np.ones(box.shape, dtype=bool)
    kept[0, 0, 0] = kept[1, 2, 3] = False
    assert np.abs(levels[1:5, 1:6, 2:8][kept] / 255.0 - box[kept]).max() <= 0.5 / 255 + 1e-6
    assert (levels == 0).sum() == levels.size - box.size  # nothing outside the box


def test_the_file_says_its_scale_and_reads_back_as_probabilities() -> None:
    mask_array = np.zeros((3, 4, 5), dtype=np.uint8)
    mask_array[1, 1:3, 1:4] = 1
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(_grid(mask_array.shape))
    box = np.where(mask_array > 0, 0.9, 0.1).astype(np.float32)
    data = probability_to_nifti_bytes(mask, ([0, 0, 0], box), temperature=1.7)
    header = gzip.decompress(data)[:348]
    assert struct.unpack_from("<h", header, 70)[0] == 2  # datatype uint8
    assert struct.unpack_from("<ff", header, 112) == pytest.approx((1 / 255, 0.0))
    assert b"stored/255" in header[148:228] and b"temperature 1.7" in header[148:228]
    image = read_nifti(data)  # SimpleITK applies the slope
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == mask.GetSize() and np.allclose(image.GetOrigin(), mask.GetOrigin())
    assert np.allclose(image.GetSpacing(), mask.GetSpacing()) and np.allclose(image.GetDirection(), mask.GetDirection())
    values = sitk.GetArrayFromImage(image)
    expected = np.rint(calibrated(box, 1.7) * 255) / 255
    assert np.allclose(values, expected, atol=1e-6)
    assert np.array_equal(values > 0.5, mask_array > 0)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SEED, spacing_xyz_mm=(3.0, 3.0, 4.0), anatomy=1)


@pytest.mark.slow
def test_the_bundled_models_map_at_one_half_is_its_mask(phantom) -> None:
    model = load_model(BUNDLED)
    result = segment(phantom.ct, model, resolve_options(model.card))
    mask = sitk.GetArrayFromImage(result.mask).astype(bool)
    assert mask.sum() > 5000
    for temperature in (1.0, model.card.calibration.temperature, 2.5):
        levels = probability_levels(result.mask, result.liver_probability, temperature)
        assert np.array_equal(levels / 255.0 > 0.5, mask)
    levels = probability_levels(result.mask, result.liver_probability, 1.0)
    # A probability, not a mask drawn in two levels: the liver's edge holds the values in between.
    assert ((levels > 12) & (levels < 243)).sum() > 0.02 * mask.sum()


@pytest.mark.slow
def test_output_probability_through_the_api(phantom, tmp_path) -> None:
    settings = Settings(model=BUNDLED, data_dir=tmp_path / "var", device="cpu")
    upload = {"file": ("ct.nii.gz", nifti_bytes(phantom.ct), "application/gzip")}
    with TestClient(create_app(settings)) as client:
        answer = client.post("/segment", params={"output": "probability"}, files=upload)
        assert answer.status_code == 200, answer.text
        assert 'filename="liver_probability.nii.gz"' in answer.headers["content-disposition"]
        mask = client.post("/segment", params={"output": "nifti"}, files=upload)
    probability = sitk.GetArrayFromImage(read_nifti(answer.content))
    expected = sitk.GetArrayFromImage(read_nifti(mask.content)).astype(bool)
    assert expected.sum() > 5000
    assert np.array_equal(probability > 0.5, expected)
    temperature = load_model(BUNDLED).card.calibration.temperature
    assert f"temperature {temperature:.4g}".encode() in gzip.decompress(answer.content)[148:228]


def test_a_card_without_calibration_serves_the_network_as_it_is() -> None:
    assert Calibration().temperature == 1.0
    with pytest.raises(ValueError):
        Calibration(temperature=0.0)
