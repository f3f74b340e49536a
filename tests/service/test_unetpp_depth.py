"""A UNet++ served at every depth L through the pipeline: depth=1, whose only head is X0,1, included."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model_zoo.architectures import create_network
from model_zoo.card import InputContract, ModelCard
from model_zoo.preprocessing import prepare
from model_zoo.registry import LoadedModel
from service.options import SegmentParams, resolve_options
from service.pipeline import predict_probabilities, segment
from tests.conftest import sphere_ct


@pytest.fixture(scope="module")
def unetpp() -> LoadedModel:
    torch.manual_seed(0)
    network = create_network("unetpp3d", features=[2, 4, 4, 8]).eval()
    card = ModelCard(name="unetpp3d.tiny", arch="unetpp3d", arch_kwargs={"features": [2, 4, 4, 8]},
                     input=InputContract(spacing_xyz_mm=(4.0, 4.0, 4.0), hu_window=(-200.0, 300.0),
                                         patch_size_dhw=(16, 16, 16)))
    return LoadedModel(network=network, card=card)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_every_depth_segments_with_a_confidence_from_the_heads_it_has(unetpp, depth):
    ct, _ = sphere_ct(np.eye(3))
    options = resolve_options(unetpp.card, SegmentParams(depth=depth, confidence=True))
    result = segment(ct, unetpp, options)
    assert result.mask.GetSize() == ct.GetSize() and result.options.depth == depth
    confidence = sitk.GetArrayViewFromImage(result.confidence)
    assert confidence.min() >= 0.0 and confidence.max() <= 1.0
    # main (the head on X0,depth) and the heads on X0,1 .. X0,depth-1: depth outputs in all
    outputs, _, _ = predict_probabilities(unetpp, prepare(ct, unetpp.card.input), options)
    assert len(outputs) == depth
