"""The multi-class scheme: organ classes from tissue maps, soft targets, grown heads, a run served."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model_zoo.architectures import create_network
from model_zoo.registry import load_model
from service.options import resolve_options
from service.pipeline import segment
from tests.train.conftest import TINY, tiny_config
from train.classes import (
    add_classes,
    channel_def,
    class_names,
    dice_class_weights,
    organ_classes,
    soft_targets,
)
from train.data import PatchSampler
from train.losses import DeepSupervisionLoss, soft_dice
from train.organ_leaks import PHANTOM_GROUPS, TOTALSEGMENTATOR_CLASSES, TOTALSEGMENTATOR_GROUPS
from train.phantoms import AORTA, GAS, HEART_LV, LIVER, MYOCARDIUM, SPLEEN
from train.trainer import Trainer

NAMES = class_names("organs")


def test_organ_classes_name_the_neighbours_and_leave_the_liver_to_its_fraction():
    tissues = np.array([0, LIVER, HEART_LV, MYOCARDIUM, SPLEEN, GAS, AORTA], dtype=np.uint8)
    classes = organ_classes(tissues, PHANTOM_GROUPS)
    assert [NAMES[c] for c in classes] == [
        "background", "background", "heart", "heart", "spleen", "stomach_bowel", "vessels"
    ]
    # TotalSegmentator's label map reads through the same group names
    code = {name: TOTALSEGMENTATOR_CLASSES.index(name) + 1 for name in TOTALSEGMENTATOR_CLASSES}
    ts = organ_classes(np.array([code["liver"], code["heart"], code["spleen"], code["stomach"],
                                 code["kidney_left"]]), TOTALSEGMENTATOR_GROUPS)
    assert [NAMES[c] for c in ts] == ["background", "heart", "spleen", "stomach_bowel", "kidneys"]
    assert channel_def("organs")["1"] == "liver" and len(channel_def("organs")) == 9


def test_soft_targets_give_the_liver_its_fraction_and_the_rest_to_the_organ():
    liver = torch.tensor([[[[0.0, 0.25, 1.0]]]])
    organs = torch.tensor([[[[2, 2, 0]]]])  # heart, heart, none
    target = soft_targets(liver, organs, len(NAMES))
    assert target.shape == (1, 9, 1, 1, 3)
    np.testing.assert_allclose(target.sum(1).flatten(), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(target[0, 1].flatten(), [0.0, 0.25, 1.0])
    np.testing.assert_allclose(target[0, 2].flatten(), [1.0, 0.75, 0.0])


def test_the_loss_reads_per_class_targets_and_is_lowest_for_the_right_answer():
    liver = torch.zeros(1, 8, 8, 8)
    liver[:, :4] = 1.0
    organs = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    organs[:, 4:6] = 2
    target = soft_targets(liver, organs, 9)
    right = target * 20 - 10
    wrong = torch.roll(right, 1, dims=1)
    loss = DeepSupervisionLoss([1.0])
    # (absent classes predicted absent score a smoothed Dice just under 1, as nnU-Net's)
    assert float(loss([right], target)) < 0.1 < 1.0 < float(loss([wrong], target))
    # a head at half resolution gets the targets block-averaged
    assert float(DeepSupervisionLoss([0.5, 0.5])([right, right[:, :, ::2, ::2, ::2]], target)) < 0.15


def test_grown_heads_predict_the_liver_as_before():
    two = create_network("unet3d_ds", features=[4, 8, 16]).eval()
    nine = create_network("unet3d_ds", features=[4, 8, 16], out_channels=9).eval()
    nine.load_state_dict(add_classes(two.state_dict(), "heads.", 9), strict=True)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        p2, p9 = two(x).softmax(1)[:, 1], nine(x).softmax(1)[:, 1]
    # the seven new classes take exp(-6) of the background's share each: the liver moves little
    assert float((p2 - p9).abs().max()) < 0.005
    with pytest.raises(ValueError, match="only a two-class network's heads grow"):
        add_classes(nine.state_dict(), "heads.", 12)


def test_a_sampler_for_organs_needs_organ_maps(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, synthetic=3, n_val=1, phantom_spacing_mm=6.0, classes="organs",
                                  phantom_anatomy=2, data_workers=1))
    trainer.load_data()
    assert all(c.organs is not None and c.organs.shape == c.image.shape for c in trainer.train_cases)
    case = trainer.train_cases[2]  # seed 10002: chest to pelvis
    present = {NAMES[c] for c in np.unique(case.organs)}
    assert {"heart", "spleen", "vessels"} <= present, present  # drawn, named, on the model grid
    sampler = PatchSampler([case], (32, 32, 32), 2, trainer.contract, n_classes=9)
    _, target = sampler.sample(torch.Generator().manual_seed(0))
    assert target.shape == (2, 9, 32, 32, 32) and target.dtype == torch.float32
    np.testing.assert_allclose(target.sum(1).numpy(), 1.0, atol=1e-6)
    bare = type(case)(case.name, case.image, case.label, case.foreground, None)
    with pytest.raises(ValueError, match="needs an organ map for every case"):
        PatchSampler([bare], (32, 32, 32), 2, trainer.contract, n_classes=9)


def test_a_multi_class_run_grown_from_a_liver_model_is_served_as_a_liver_model(tmp_path):
    fast = dict(synthetic=2, n_val=1, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=2, final_evaluation=False)
    Trainer(tiny_config(tmp_path, **fast, tag="two")).fit()
    result = Trainer(tiny_config(tmp_path, **fast, tag="organs", classes="organs", init_from="unet3d_ds.two")).fit()
    card = result.card
    assert card.channel_def == channel_def("organs") and card.arch_kwargs == {**TINY, "out_channels": 9}
    assert card.liver_channel == 1 and "classes liver, heart, spleen" in card.training.data
    model = load_model("unet3d_ds.organs", tmp_path / "zoo")
    image = sitk.Image([40, 40, 30], sitk.sitkFloat32) + 60.0
    image.SetSpacing((6.0, 6.0, 6.0))
    result = segment(image, model, resolve_options(model.card))
    assert result.mask.GetSize() == image.GetSize()  # the liver channel, on the input grid


def test_under_organs_the_liver_weighs_as_much_as_its_neighbours_in_the_dice():
    weights = dice_class_weights("organs")
    assert weights == [7.0, 1, 1, 1, 1, 1, 1, 1] and dice_class_weights("liver") is None
    liver = torch.zeros(1, 8, 8, 8)
    liver[:, :4] = 1.0
    organs = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    organs[:, 4:6] = 2
    target = soft_targets(liver, organs, 9)
    # right everywhere but the heart: the weighted Dice misses it by 1/14, the plain mean by 1/8
    guess = target.clone()
    guess[:, 0] += guess[:, 2]
    guess[:, 2] = 0
    plain = float(soft_dice(guess, target))
    weighted = float(soft_dice(guess, target, class_weights=weights))
    assert weighted == pytest.approx(1 - 1 / 14, abs=1e-3) and plain == pytest.approx(1 - 1 / 8, abs=1e-3)
    with pytest.raises(ValueError, match="2 class weights for 8 classes"):
        soft_dice(guess, target, class_weights=[1.0, 1.0])
