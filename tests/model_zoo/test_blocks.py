"""The shared blocks: every named layer builds and runs, unknown names fail helpfully, padding/cropping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model_zoo.blocks import (
    ACTS,
    BLOCKS,
    NORMS,
    UPSAMPLES,
    ConvNormAct,
    Encoder,
    act_layer,
    check_config,
    crop_outputs,
    init_weights,
    make_block,
    make_upsample,
    norm_layer,
    pad_to_stride,
)
from model_zoo.lookup import UnknownNameError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_names_are_the_documented_ones():
    assert sorted(NORMS) == ["batch", "group", "instance", "none"]
    assert sorted(ACTS) == ["gelu", "leakyrelu", "relu"]
    assert sorted(BLOCKS) == ["mbconv", "plain", "residual"]
    assert sorted(UPSAMPLES) == ["transpose", "trilinear"]


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize(("c_in", "c_out"), [(3, 8), (8, 8)])  # width changed, width kept
def test_block_maps_channels_and_keeps_size(block, c_in, c_out):
    torch.manual_seed(0)
    net = make_block(block, c_in, c_out, norm="instance", act="leakyrelu")
    x = torch.randn(2, c_in, 5, 6, 7)
    y = net(x)
    assert y.shape == (2, c_out, 5, 6, 7)
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("act", sorted(ACTS))
def test_conv_norm_act_every_norm_and_act(norm, act):
    layer = ConvNormAct(2, 12, norm=norm, act=act)
    assert layer(torch.randn(2, 2, 4, 4, 4)).shape == (2, 12, 4, 4, 4)
    # A bias only where no norm follows (a norm cancels it).
    assert (layer[0].bias is not None) == (norm == "none")


def test_group_norm_accepts_any_width():
    assert norm_layer("group", 12).num_groups == 4
    assert norm_layer("group", 16).num_groups == 8
    assert norm_layer("group", 5).num_groups == 1


@pytest.mark.parametrize("kind", sorted(UPSAMPLES))
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_upsample_scales_and_maps_channels(kind, scale):
    up = make_upsample(kind, 6, 3, scale)
    assert up(torch.randn(2, 6, 3, 4, 5)).shape == (2, 3, 3 * scale, 4 * scale, 5 * scale)


@pytest.mark.parametrize(
    ("call", "what", "valid"),
    [
        (lambda: norm_layer("layer", 4), "norm", "batch, group, instance, none"),
        (lambda: act_layer("swish"), "activation", "gelu, leakyrelu, relu"),
        (
            lambda: make_block("resnet", 1, 4, norm="instance", act="relu"),
            "block",
            "mbconv, plain, residual",
        ),
        (lambda: make_upsample("nearest", 4, 2), "upsample", "transpose, trilinear"),
        (lambda: ConvNormAct(1, 4, norm="layer"), "norm", "batch, group, instance, none"),
    ],
)
def test_unknown_names_list_the_valid_ones(call, what, valid):
    with pytest.raises(UnknownNameError, match=f"Unknown {what} .*Valid: {valid}\\."):
        call()


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(UnknownNameError, match="Did you mean 'instance'"):
        norm_layer("instnace", 4)


def test_init_weights_is_he_normal_with_zero_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(64, 64, 3), nn.ConvTranspose3d(64, 32, 2, stride=2))
    init_weights(net, "leakyrelu")
    fan_in = 64 * 27
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / (1 + 1e-4) / fan_in), rel=0.03)
    assert net[0].bias.abs().sum() == 0 and net[1].bias.abs().sum() == 0


def test_pad_to_stride_replicates_the_edge_at_the_far_end():
    x = torch.arange(17 * 20 * 23, dtype=torch.float32).reshape(1, 1, 17, 20, 23)
    y = pad_to_stride(x, 4)
    assert y.shape == (1, 1, 20, 20, 24)
    assert torch.equal(y[..., :17, :, :23], x)
    assert torch.equal(y[..., 19, :, :23], x[..., 16, :, :])
    assert pad_to_stride(y, 4) is y  # already a multiple: untouched


def test_pad_to_stride_keeps_more_than_one_voxel_at_the_coarsest_level():
    assert pad_to_stride(torch.zeros(1, 1, 3, 3, 3), 4).shape == (1, 1, 4, 4, 8)
    assert pad_to_stride(torch.zeros(1, 1, 3, 5, 3), 4).shape == (1, 1, 4, 8, 4)


def test_crop_outputs_keeps_ceil_of_size_over_stride():
    outs = [
        torch.zeros(1, 2, 20, 20, 24),
        torch.zeros(1, 2, 10, 10, 12),
        torch.zeros(1, 2, 5, 5, 6),
    ]
    shapes = [tuple(o.shape[2:]) for o in crop_outputs(outs, (17, 20, 23), [1, 2, 4])]
    assert shapes == [(17, 20, 23), (9, 10, 12), (5, 5, 6)]


def test_encoder_depth_returns_the_first_stages():
    enc = Encoder(1, [4, 8, 16], block="plain", norm="instance", act="relu")
    x = torch.randn(1, 1, 8, 8, 8)
    assert [tuple(f.shape[1:]) for f in enc(x)] == [(4, 8, 8, 8), (8, 4, 4, 4), (16, 2, 2, 2)]
    assert [tuple(f.shape[1:]) for f in enc(x, depth=1)] == [(4, 8, 8, 8), (8, 4, 4, 4)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"features": [16, 32]},
            r"needs at least 3 \(why\); add stages, e.g. features=\[16, 32, 64\]",
        ),
        ({"features": [16, 0, 64]}, "features must be a list of positive ints"),
        ({"features": "16,32,64"}, "features must be a list of positive ints"),
        ({"out_channels": 0}, "out_channels must be a positive int"),
        ({"in_channels": 1.5}, "in_channels must be a positive int"),
    ],
)
def test_check_config_says_the_fix(kwargs, message):
    config = {"in_channels": 1, "out_channels": 2, "features": [16, 32, 64], **kwargs}
    with pytest.raises(ValueError, match=message):
        check_config("arch", **config, min_stages=3, why="why")
