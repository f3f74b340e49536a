"""Net2WiderNet widening of unet3d_ds: the wide network computes what the narrow one did."""

from __future__ import annotations

import pytest
import torch

from model_zoo.architectures import create_network
from train.widen import widen_unet3d_ds, widening_factors


def _pair(old, new, **kwargs):
    torch.manual_seed(0)
    narrow = create_network("unet3d_ds", features=old, deep_supervision=True, **kwargs).eval()
    wide = create_network("unet3d_ds", features=new, deep_supervision=True, **kwargs).eval()
    wide.load_state_dict(widen_unet3d_ds(narrow, wide, old, new), strict=True)
    return narrow, wide


@pytest.mark.parametrize(("old", "new", "kwargs"), [
    ([2, 4, 8], [4, 8, 16], {}),
    ([2, 4, 8], [4, 12, 8], {}),  # a factor per stage, 1 included
    ([2, 4, 8], [4, 8, 16], {"block": "residual"}),
    ([2, 4, 8], [4, 8, 16], {"block": "mbconv"}),
    ([2, 4, 8], [6, 12, 24], {"upsample": "trilinear", "norm": "batch"}),
])
def test_the_widened_network_gives_the_same_outputs_on_every_head(old, new, kwargs):
    narrow, wide = _pair(old, new, **kwargs)
    x = torch.randn(1, 1, 12, 20, 16)  # not a multiple of the stride: padding and cropping too
    with torch.no_grad():
        expected, got = narrow(x), wide(x)
    assert len(got) == len(expected) == 2
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max())), float((a - b).abs().max())


def test_the_copies_of_a_channel_get_different_weights_and_drift_apart_in_training():
    _, wide = _pair([2, 4, 8], [4, 8, 16])
    reader = wide.state_dict()["encoder.stages.0.1.0.weight"]  # (4, 4, 3, 3, 3): reads copies 0,2 and 1,3
    assert not torch.equal(reader[:, 0], reader[:, 2])
    wide.train()
    optimiser = torch.optim.SGD(wide.parameters(), lr=0.1)
    loss = sum(o.square().mean() for o in wide(torch.randn(2, 1, 16, 16, 16)))
    loss.backward()
    optimiser.step()
    first = wide.state_dict()["encoder.stages.0.0.0.weight"]  # (4, 1, ...): copies 0 and 2 of channel 0
    assert not torch.allclose(first[0], first[2])


def test_the_split_input_weights_sum_to_the_old_weight():
    narrow, wide = _pair([2, 4, 8], [4, 8, 16])
    old = narrow.state_dict()["decoder.blocks.0.0.0.weight"]  # reads cat([skip 4, up 4])
    new = wide.state_dict()["decoder.blocks.0.0.0.weight"]  # reads cat([skip 8, up 8])
    assert new.shape == (8, 16, 3, 3, 3)
    skip, up = new[:4, :8], new[:4, 8:]
    assert torch.allclose(skip[:, :4] + skip[:, 4:], old[:, :4], atol=1e-6)
    assert torch.allclose(up[:, :4] + up[:, 4:], old[:, 4:], atol=1e-6)
    assert not torch.equal(new[4:], new[:4])  # output copies: the same sums, other splits
    assert torch.allclose(new[4:, :4] + new[4:, 4:8], old[:, :4], atol=1e-6)


@pytest.mark.parametrize(("old", "new", "message"), [
    ([4, 8], [8, 12], "whole multiple"),
    ([4, 8], [2, 8], "whole multiple"),
    ([4, 8], [8, 16, 32], "keeps the depth"),
])
def test_widths_that_cannot_be_widened_are_refused_with_the_fix(old, new, message):
    with pytest.raises(ValueError, match=message):
        widening_factors(old, new)


def test_group_norm_is_refused():
    with pytest.raises(ValueError, match="group norm"):
        _pair([2, 4, 8], [4, 8, 16], norm="group")


def test_widening_factors():
    assert widening_factors([8, 16, 32, 64], [16, 32, 64, 128]) == [2, 2, 2, 2]
    assert widening_factors([2, 4], [6, 4]) == [3, 1]
