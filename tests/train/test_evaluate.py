"""train.evaluate: the confidence AUROC, a case scored with a given prediction, the grid ceiling."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from torch import nn

from model_zoo.card import InputContract, ModelCard
from model_zoo.registry import LoadedModel
from tests.conftest import ORIENTATIONS, TINY, dice, sphere_ct
from train.evaluate import (
    confidence_auroc,
    evaluate_case,
    format_table,
    mean_metrics,
    reference_through_grid,
)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    reference = np.zeros((10, 10, 10), bool)
    reference[2:8, 2:8, 2:8] = True
    prediction = reference.copy()
    prediction[2, 2:8, 2:8] = False  # one wrong slab of 36 voxels
    return prediction, reference


def test_auroc_is_one_when_only_the_wrong_voxels_are_unsure() -> None:
    prediction, reference = _masks()
    confidence = np.where(prediction != reference, 0.2, 0.9)
    assert confidence_auroc(confidence, prediction, reference) == pytest.approx(1.0)
    assert confidence_auroc(1 - confidence, prediction, reference) == pytest.approx(0.0)
    assert confidence_auroc(np.full(prediction.shape, 0.7), prediction, reference) == pytest.approx(0.5)


def test_auroc_by_hand() -> None:
    prediction, reference = _masks()
    confidence = np.ones(prediction.shape)
    wrong = np.argwhere(prediction != reference)
    confidence[tuple(wrong[:18].T)] = 0.1  # half the wrong voxels are flagged
    # flagged wrong voxels beat every right one (1), the rest tie with them (1/2): AUROC 3/4
    assert confidence_auroc(confidence, prediction, reference) == pytest.approx(0.75)


def test_auroc_undefined_without_errors() -> None:
    _, reference = _masks()
    assert confidence_auroc(np.ones(reference.shape), reference, reference) is None


def test_case_with_a_given_prediction() -> None:
    prediction, reference = _masks()
    image = sitk.GetImageFromArray(np.zeros(reference.shape, np.int16))
    image.SetSpacing((2.0, 2.0, 2.0))
    as_image = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in (prediction, reference)]
    for mask in as_image:
        mask.CopyInformation(image)
    result = evaluate_case(image, as_image[1], prediction=as_image[0], tiles=2)
    assert result.metrics.dice == pytest.approx(2 * 180 / (180 + 216))
    assert result.metrics.rvd_pct == pytest.approx(100 * (180 - 216) / 216)
    assert len(result.tiles) == 2
    assert mean_metrics([result], "real")["real_dice"] == pytest.approx(round(result.metrics.dice, 4))
    assert "mean" in format_table([result])
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_case(image, as_image[1])


def _model_on(spacing_mm: float, antialias: bool = False) -> LoadedModel:
    contract = InputContract(spacing_xyz_mm=(spacing_mm,) * 3, hu_window=(-200.0, 300.0),
                             patch_size_dhw=(32, 32, 32), antialias=antialias)
    return LoadedModel(network=nn.Identity(), card=ModelCard(name="unet3d_ds.grid", arch="unet3d_ds", input=contract))


def test_the_grid_ceiling_is_the_reference_blurred_by_the_grid_alone() -> None:
    ct, sphere = sphere_ct(ORIENTATIONS["oblique"], radius_mm=20.0)
    reference = sitk.GetImageFromArray(sphere.astype(np.uint8))
    reference.CopyInformation(ct)
    scores = {}
    for spacing in (2.0, 4.0, 8.0):
        ceiling = reference_through_grid(ct, reference, _model_on(spacing))
        assert ceiling.GetSize() == ct.GetSize() and ceiling.GetDirection() == ct.GetDirection()
        scores[spacing] = dice(sitk.GetArrayFromImage(ceiling), sphere)
    # A 40 mm sphere survives a 2 mm grid almost whole; coarser grids cost more of its surface.
    assert scores[2.0] > 0.97
    assert scores[2.0] > scores[4.0] > scores[8.0] > 0.8, scores


def test_liver_fractions_raise_the_grid_ceiling_at_4_mm() -> None:
    # A model that learns each coarse voxel's liver fraction can place the edge inside the voxel;
    # one trained on point samples cannot. On this 40 mm sphere (1.5 x 1.5 x 2.5 mm, oblique) the
    # ceiling at 4 mm measured 0.977 with fractions against 0.973 with point samples (on the
    # phantoms' livers 0.980-0.995 against 0.970-0.988). At 8 mm the block average and the linear
    # resample blur the sphere enough to shrink it (0.862 against 0.922): fractions suit a grid
    # fine for the organ, not one as coarse as the organ is small.
    ct, sphere = sphere_ct(ORIENTATIONS["oblique"], radius_mm=20.0)
    reference = sitk.GetImageFromArray(sphere.astype(np.uint8))
    reference.CopyInformation(ct)
    point, fractions = (
        dice(sitk.GetArrayFromImage(reference_through_grid(ct, reference, _model_on(4.0, aa))), sphere)
        for aa in (False, True)
    )
    assert point == pytest.approx(0.973, abs=0.002)
    assert fractions == pytest.approx(0.977, abs=0.002)


def test_cli_passes_the_request_options_to_the_service_path(tiny_checkpoint_dir, tmp_path, monkeypatch, capsys):
    import service.pipeline
    from tests.conftest import TINY
    from train.evaluate import main

    seen = []
    real_segment = service.pipeline.segment

    def spy(image, model, options, *args, **kwargs):
        seen.append(options)
        return real_segment(image, model, options, *args, **kwargs)

    monkeypatch.setattr(service.pipeline, "segment", spy)
    code = main(["--model", TINY, "--checkpoints", str(tiny_checkpoint_dir), "--synthetic", "1",
                 "--device", "cpu", "--tta", "--overlap", "0.25", "--out", str(tmp_path)])
    assert code == 0
    assert [(o.tta, o.overlap) for o in seen] == [(True, 0.25)]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice") and rows[1].startswith("phantom-100000,")
    assert "phantom-100000" in capsys.readouterr().out


def test_a_case_with_an_organ_map_reports_its_false_positives_by_organ(tmp_path) -> None:
    from train.evaluate import evaluate_case, format_table, mean_metrics, write_csv
    from train.organ_leaks import TOTALSEGMENTATOR_GROUPS

    ct = sitk.GetImageFromArray(np.zeros((20, 20, 20), np.int16))
    ct.SetSpacing((2.0, 2.0, 2.0))  # 8 uL voxels: 1000 voxels = 8 mL
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:8, 2:8, 2:8] = 1
    organs = np.zeros((20, 20, 20), np.uint8)
    organs[10:20, :, :] = TOTALSEGMENTATOR_GROUPS["heart"][0]
    predicted = truth.copy()
    predicted[10:20, 0:10, 0:10] = 1  # 1000 voxels of heart taken for liver
    predicted[2:8, 12:14, 12:14] = 1  # 24 voxels in unlabelled tissue
    images = [sitk.GetImageFromArray(a) for a in (truth, organs, predicted)]
    for image in images:
        image.CopyInformation(ct)
    reference, organ_map, prediction = images
    result = evaluate_case(ct, reference, prediction=prediction, organs=organ_map, organ_groups=TOTALSEGMENTATOR_GROUPS)
    assert result.leaks_ml["heart"] == pytest.approx(8.0) and result.leaks_ml["unlabelled"] == pytest.approx(0.192)
    assert result.worst_neighbour() == ("heart", pytest.approx(8.0))
    assert "heart 8.0" in format_table([result])
    assert mean_metrics([result], "x")["x_max_neighbour_fp_ml"] == 8.0
    # No model: near is within one of the reference's voxels. The heart block and the strip lie 3
    # and 5 voxels clear of the reference, so all 8.192 mL are far.
    assert result.errors.near_mm == 2.0 and result.errors.far_ml == pytest.approx(8.192)
    write_csv([result], tmp_path / "metrics.csv")
    header, row = (tmp_path / "metrics.csv").read_text().splitlines()
    assert "fp_heart_ml" in header
    assert header.endswith("near_mm,extra_near_ml,extra_far_ml,missed_near_ml,missed_far_ml,review_reasons")
    assert row.endswith("2.00,0.00,8.19,0.00,0.00,")  # a given prediction has no summary to ask


def test_a_case_through_the_service_carries_its_review_reasons_and_a_miss_is_named(tmp_path) -> None:
    from dataclasses import replace

    from tests.service.test_pipeline import threshold_model
    from train.evaluate import missed_reviews, review_line, write_csv

    # The threshold network paints the 200 HU sphere exactly: a 65 mL liver, wholly in view, whose
    # volume is under the plausible 0.7 L, so the service's summary recommends review for it.
    ct, sphere = sphere_ct(ORIENTATIONS["oblique"])
    reference = sitk.GetImageFromArray(sphere.astype(np.uint8))
    reference.CopyInformation(ct)
    flagged = evaluate_case(ct, reference, model=threshold_model(), name="small")
    assert flagged.metrics.dice > 0.95
    assert flagged.review_reasons == ("volume_low",)
    # The same case had it been under Dice 0.90 without the flag: a missed review, by name.
    missed = replace(flagged, name="missed", metrics=replace(flagged.metrics, dice=0.85), review_reasons=())
    unflagged_good = replace(flagged, name="fine", review_reasons=())
    given = evaluate_case(ct, reference, prediction=reference, name="given")  # no summary: not judged
    cases = [flagged, missed, unflagged_good, given]
    assert missed_reviews(cases) == [missed]
    assert review_line(cases) == ("review recommended on 1 of 3 cases; 1 under Dice 0.90, "
                                  "not flagged: missed (0.850)")
    assert review_line([flagged]) == "review recommended on 1 of 1 cases; 0 under Dice 0.90"
    assert review_line([given]) == ""
    table = format_table(cases).splitlines()
    assert table[-1] == review_line(cases) and table[2].split()[-1] == "yes" and table[3].split()[-1] == "no"
    recorded = mean_metrics(cases, "x")
    assert recorded["x_review_cases"] == 1.0 and recorded["x_missed_reviews"] == 1.0
    write_csv(cases, tmp_path / "metrics.csv")
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [row.rsplit(",", 1)[1] for row in rows] == ["review_reasons", "volume_low", "", "", ""]


def _first_case(monkeypatch, argv: list[str]):
    """The first case `python -m train.evaluate argv` loads (stopped there: nothing runs)."""
    import train.evaluate

    class Stop(Exception):
        pass

    seen = []

    def record(case):
        seen.append(case)
        raise Stop

    monkeypatch.setattr(train.evaluate, "load_case_with_organs", record)
    with pytest.raises(Stop):
        train.evaluate.main(argv)
    return seen[0]


def test_sick_evaluates_cirrhotic_hcc_phantoms_and_needs_anatomy_2(monkeypatch, tiny_checkpoint_dir, tmp_path) -> None:
    import train.evaluate
    from train.data import SICK_LIVER

    base = ["--model", TINY, "--checkpoints", str(tiny_checkpoint_dir), "--synthetic", "3", "--device", "cpu",
            "--out", str(tmp_path)]
    case = _first_case(monkeypatch, [*base, "--anatomy", "2", "--sick"])
    assert case.phantom_disease == SICK_LIVER and case.phantom_anatomy == 2
    with pytest.raises(SystemExit):
        train.evaluate.main([*base, "--sick"])


def test_sick_ascites_evaluates_sick_livers_inside_heavy_ascites(monkeypatch, tiny_checkpoint_dir, tmp_path) -> None:
    import train.evaluate
    from train.data import SICK_LIVER

    base = ["--model", TINY, "--checkpoints", str(tiny_checkpoint_dir), "--synthetic", "3", "--anatomy", "2",
            "--device", "cpu", "--out", str(tmp_path)]
    case = _first_case(monkeypatch, [*base, "--sick", "--ascites"])
    disease = dict(case.phantom_disease)
    assert case.phantom_disease[:2] == SICK_LIVER and disease["ascites"] and disease["ascites_mm"] == 20.0
    with pytest.raises(SystemExit):
        train.evaluate.main([*base, "--ascites"])


def test_native_evaluates_phantoms_scanned_without_contrast_and_needs_synthetic(
    monkeypatch, tiny_checkpoint_dir, tmp_path
) -> None:
    import train.evaluate

    base = ["--model", TINY, "--checkpoints", str(tiny_checkpoint_dir), "--device", "cpu", "--out", str(tmp_path)]
    case = _first_case(monkeypatch, [*base, "--synthetic", "3", "--anatomy", "2", "--native"])
    assert case.phantom_phase == "native" and case.phantom_anatomy == 2 and case.name.endswith("-native")
    assert _first_case(monkeypatch, [*base, "--synthetic", "3"]).phantom_phase is None
    with pytest.raises(SystemExit):
        train.evaluate.main([*base, "--data", str(tmp_path), "--native"])
