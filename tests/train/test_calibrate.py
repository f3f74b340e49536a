"""train.calibrate: the temperature fit finds the temperature that made the data, the ECE tells a
calibrated map from an overconfident one, and the CLI writes what it measured into the card."""

from __future__ import annotations

import numpy as np
import pytest

from model_zoo.registry import get_card
from service.io.probability import LEVELS, calibrated
from tests.conftest import TINY, save_tiny_checkpoint
from train.calibrate import expected_calibration_error, fit_temperature, liver_box, main

VALUES = np.arange(LEVELS + 1) / LEVELS


def counts_where_truth_follows(probability: np.ndarray, voxels_per_value: int = 20_000) -> np.ndarray:
    """(2, 256) counts: at each stored value, the liver voxels are `probability` of them (exactly)."""
    liver = np.rint(probability * voxels_per_value).astype(np.int64)
    return np.stack([voxels_per_value - liver, liver])


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.8, 3.0])
def test_the_fit_finds_the_temperature_that_made_the_data(temperature) -> None:
    # The stored values are overconfident by `temperature`: the truth follows them calibrated by it.
    counts = counts_where_truth_follows(calibrated(VALUES, temperature).astype(np.float64))
    assert fit_temperature(counts) == pytest.approx(temperature, rel=0.02)


def test_ece_is_zero_when_the_values_are_the_frequencies_and_grows_with_overconfidence() -> None:
    assert expected_calibration_error(counts_where_truth_follows(VALUES)) < 1e-3
    overconfident = counts_where_truth_follows(calibrated(VALUES, 2.0).astype(np.float64))
    assert expected_calibration_error(overconfident) > 0.05
    # Everything right at 0 and 1: no error; everything wrong: all of it.
    assert expected_calibration_error(np.array([[10] + [0] * LEVELS, [0] * LEVELS + [10]])) == 0.0
    assert expected_calibration_error(np.array([[0] * LEVELS + [10], [10] + [0] * LEVELS])) == pytest.approx(1.0)


def test_the_box_holds_both_masks_and_a_margin() -> None:
    a = np.zeros((30, 30, 30), dtype=bool)
    b = np.zeros_like(a)
    a[10:12, 10:12, 10:12] = True
    b[20, 3, 15] = True
    assert liver_box(a, b) == (slice(5, 26), slice(0, 17), slice(5, 21))


@pytest.mark.slow
def test_the_cli_records_the_temperature_and_both_errors_in_the_card(tmp_path, capsys) -> None:
    folder = save_tiny_checkpoint(tmp_path, TINY, spacing_mm=8.0)
    argv = ["--model", TINY, "--checkpoints", str(folder), "--fit-cases", "1", "--test-cases", "1", "--device", "cpu",
            "--phantom-spacing", "6"]
    assert main(argv) == 0
    calibration = get_card(TINY, folder).calibration
    assert 0.05 <= calibration.temperature <= 20.0
    assert calibration.ece_before is not None and calibration.ece_after is not None
    assert "seeds 200000-200000" in calibration.data and "seeds 200001-200001" in calibration.data
    assert calibration.command == "python -m train.calibrate " + " ".join(argv)
    assert f'"temperature": {calibration.temperature}' in capsys.readouterr().out
