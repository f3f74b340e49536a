"""The seed networks served beside the bundled U-Net (issue 17): each one's card is complete, its
weights load strictly, it finds the liver of an unseen phantom and of the real DICOM sample
through the service's path, and a UNet++ pruned to depth L does less work than at L + 1.

Floors sit a little under the cards' figures, so a worse retrained model fails and float noise
does not.
"""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.utils.flop_counter import FlopCounterMode

from model_zoo import create_network
from model_zoo.registry import get_card, list_cards, load_model
from service.options import InferenceOptions
from service.pipeline import segment
from tests.conftest import dice, dice_on_real_sample
from train.__main__ import build_parser
from train.phantoms import make_phantom

SEED_NETWORKS = ["unetpp3d.phantom_4mm"]  # dsn3d.phantom_4mm joins once one reaches the 0.93
HELD_OUT_SEED = 300_001  # as in test_bundled: neither a training nor a validation seed


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


def test_finds_the_liver_of_an_unseen_phantom(model) -> None:
    phantom = make_phantom(HELD_OUT_SEED, spacing_xyz_mm=(2.0, 2.0, 2.5), anatomy=1)
    result = segment(phantom.ct, model, InferenceOptions(batch_size=2))
    assert result.mask.GetSize() == phantom.ct.GetSize()
    score = dice(sitk.GetArrayViewFromImage(result.mask) > 0, sitk.GetArrayViewFromImage(phantom.liver) > 0)
    assert score >= 0.90, f"{model.card.name}: Dice {score:.3f} on held-out phantom {HELD_OUT_SEED}"


@pytest.mark.realdata
@pytest.mark.slow
def test_finds_the_liver_of_the_real_scan(model, real_sample, tmp_path) -> None:
    score = dice_on_real_sample(model, real_sample, tmp_path)
    assert score >= 0.90, f"{model.card.name}: Dice {score:.3f} on the real DICOM sample"
    assert np.isclose(model.card.metrics["real_sample_dice"], score, atol=0.01)


def flops(network, depth: int | None) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(torch.zeros((1, 1, 32, 32, 32)), depth=depth)
    return counter.get_total_flops()


def test_a_pruned_unetpp_does_less_work() -> None:
    # `depth=L` is served as the faster answer: it must skip the columns beyond L, not compute
    # and drop them (counted, not timed: speed itself is bench/pruning.py's)
    network = create_network("unetpp3d", features=[4, 8, 16, 32, 64], out_channels=9).eval()
    work = [flops(network, depth) for depth in (1, 2, 3, 4)]
    assert work == sorted(set(work)), work  # each depth strictly more than the one below
    assert work[-1] == flops(network, None)  # the full network is depth 4
    assert work[0] < work[-1] / 4, work  # X0,1 alone: 18 % of the full network at these widths
