"""The seed networks served beside the bundled U-Net (issue 17): each one's card is complete, its
weights load strictly, it finds the liver of an unseen phantom and of the real DICOM sample
through the service's path. That `depth=L` is X0,L of the full network and does less work is
test_networks' to check.

Floors sit a little under the cards' figures, so a worse retrained model fails and float noise
does not.
"""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from model_zoo.registry import get_card, list_cards, load_model
from tests.conftest import HELD_OUT_SEED, dice_on_held_out_phantom, dice_on_real_sample
from train.__main__ import build_parser

SEED_NETWORKS = ["dsn3d.phantom_4mm", "unetpp3d.phantom_4mm"]


@pytest.fixture(scope="module", params=SEED_NETWORKS)
def model(request):
    return load_model(request.param)  # strict: every tensor of the card's network, no other


def test_model_zoo_lists_them_with_complete_cards() -> None:
    names = [card.name for card in list_cards()]
    for name in SEED_NETWORKS:
        assert name in names
        card = get_card(name)
        for step in card.training.command.split(" && "):  # the chain as it ran, each step one the trainer takes
            assert step.startswith("python -m train "), step
            assert build_parser().parse_args(shlex.split(step)[3:]).tag == "phantom_4mm"
        assert "synthetic phantoms" in card.training.data and "not a medical device" in card.intended_use
        assert card.training.distillation and "unet3d_ds.phantom_4mm" in card.training.distillation
        assert card.channel_def[str(card.liver_channel)] == "liver"
        # the acceptance, as measured through the service's path (train.evaluate --record)
        assert card.metrics["held_out_phantom_dice"] >= 0.93
        for key in ("real_scans_dice", "held_out_anatomy2_dice", "held_out_phantom_confidence_auroc"):
            assert key in card.metrics, key
        if card.inference.tta:  # served mirrored: the card also says what a tta=false request gets
            assert "held_out_phantom_no_tta_dice" in card.metrics


def test_finds_the_liver_of_an_unseen_phantom(model) -> None:
    score = dice_on_held_out_phantom(model)
    assert score >= 0.90, f"{model.card.name}: Dice {score:.3f} on held-out phantom {HELD_OUT_SEED}"


@pytest.mark.realdata
@pytest.mark.slow
def test_finds_the_liver_of_the_real_scan(model, real_sample, tmp_path) -> None:
    score = dice_on_real_sample(model, real_sample, tmp_path)
    assert score >= 0.90, f"{model.card.name}: Dice {score:.3f} on the real DICOM sample"
    assert np.isclose(model.card.metrics["real_sample_dice"], score, atol=0.01)
