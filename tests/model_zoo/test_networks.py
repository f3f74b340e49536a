"""Every registered architecture: shapes at odd sizes, heads, strict loads, pruning, gradients."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from model_zoo import UnknownNameError, create_network, list_architectures
from model_zoo.blocks import BLOCKS, UPSAMPLES

TINY = [4, 8, 16]  # total stride 4
ARCHS = list_architectures()
# Downsampling factor of each output (main first) for TINY, as the contract promises.
EXPECTED_STRIDES = {"dsn3d": [1, 1, 1], "unet3d_ds": [1, 2], "unetpp3d": [1, 1]}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_network(arch, features=TINY, **kwargs)


def expected_shape(n: int, size: tuple[int, ...], stride: int) -> tuple[int, ...]:
    return (n, 2, *(math.ceil(s / stride) for s in size))


def test_registry_holds_the_three_architectures():
    assert ARCHS == ["dsn3d", "unet3d_ds", "unetpp3d"]


# Pinned so that a change to a default network (the bundled model's shapes) is deliberate; all are
# small enough to serve on a CPU.
DEFAULT_PARAMS = {"dsn3d": 1_119_462, "unet3d_ds": 5_646_856, "unetpp3d": 6_552_856}


@pytest.mark.parametrize("arch", ARCHS)
def test_constructor_kwargs_are_json_and_defaulted(arch):
    params = inspect.signature(type(tiny(arch))).parameters.values()
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params)
    defaults = json.loads(json.dumps({p.name: p.default for p in params}))
    assert {
        "in_channels": 1,
        "out_channels": 2,
        "norm": "instance",
        "act": "leakyrelu",
        "block": "plain",
        "upsample": "transpose",
        "deep_supervision": False,
    }.items() <= defaults.items()
    net = create_network(arch, **defaults)  # a card's JSON round trip builds the default network
    assert sum(p.numel() for p in net.parameters()) == DEFAULT_PARAMS[arch]
    assert net(torch.randn(1, 1, 7, 9, 5)).shape == (1, 2, 7, 9, 5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(17, 20, 23), (16, 16, 16), (5, 3, 9)])
def test_output_shapes_with_and_without_heads(arch, size):
    net = tiny(arch)
    assert net.output_strides == EXPECTED_STRIDES[arch]
    x = torch.randn(2, 1, *size)
    main = net(x)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 2, *size)
    outputs = net(x, deep_supervision=True)
    assert [tuple(o.shape) for o in outputs] == [
        expected_shape(2, size, s) for s in net.output_strides
    ]
    net.eval()
    with torch.no_grad():  # the heads are extra outputs, never a change to the main one
        assert torch.equal(net(x, deep_supervision=True)[0], net(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_deep_supervision_flag_is_the_default_switch(arch):
    net = tiny(arch, deep_supervision=True)
    x = torch.randn(1, 1, 8, 8, 8)
    assert isinstance(net(x), list) and len(net(x)) == len(net.output_strides)
    assert isinstance(net(x, deep_supervision=False), torch.Tensor)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_trained_with_heads_loads_strictly_without(arch):
    trained = tiny(arch, deep_supervision=True).eval()
    torch.manual_seed(1)
    inference = create_network(arch, features=TINY).eval()
    inference.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(1, 1, 9, 10, 11)
    with torch.no_grad():
        assert torch.equal(inference(x), trained(x)[0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("upsample", sorted(UPSAMPLES))
def test_every_block_and_upsample_builds_and_runs(arch, block, upsample):
    net = tiny(arch, block=block, upsample=upsample, norm="group", act="gelu")
    outputs = net(torch.randn(1, 1, 6, 7, 9), deep_supervision=True)
    assert [tuple(o.shape) for o in outputs] == [
        expected_shape(1, (6, 7, 9), s) for s in net.output_strides
    ]
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("norm", "layer", "batch, group, instance, none"),
        ("act", "swish", "gelu, leakyrelu, relu"),
        ("block", "dense", "mbconv, plain, residual"),
        ("upsample", "nearest", "transpose, trilinear"),
    ],
)
def test_unknown_layer_name_raises_with_the_valid_names(arch, key, value, valid):
    with pytest.raises(UnknownNameError, match=f"Unknown .* '{value}'.*Valid: {valid}\\."):
        create_network(arch, features=TINY, **{key: value})


@pytest.mark.parametrize(
    ("arch", "features", "message"),
    [
        (
            "dsn3d",
            [8, 16],
            r"dsn3d: features lists 2 stage widths \[8, 16\], needs at least 3 .*add stages",
        ),
        ("unet3d_ds", [8], "unet3d_ds: features lists 1 stage widths"),
        ("unetpp3d", [8, -16], "unetpp3d: features must be a list of positive ints"),
    ],
)
def test_bad_features_say_the_fix(arch, features, message):
    with pytest.raises(ValueError, match=message):
        create_network(arch, features=features)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_head_when_heads_are_in_the_loss(arch):
    net = tiny(arch).train()
    x, target = torch.randn(2, 1, 9, 8, 11), torch.randint(0, 2, (2, 9, 8, 11))
    outputs = net(x, deep_supervision=True)
    loss = sum(
        F.cross_entropy(o, target[:, ::s, ::s, ::s])
        for o, s in zip(outputs, net.output_strides, strict=True)
    )
    loss.backward()
    silent = [
        name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert silent == []


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_not_asked_for_are_not_computed(arch):
    net = tiny(arch).train()
    F.cross_entropy(
        net(torch.randn(1, 1, 8, 8, 8)), torch.zeros(1, 8, 8, 8, dtype=torch.long)
    ).backward()
    silent = {
        name.split(".")[0] + "." + name.split(".")[1]
        for name, p in net.named_parameters()
        if p.grad is None
    }
    assert (
        silent
        == {
            "dsn3d": {"aux_heads.0", "aux_heads.1"},
            "unet3d_ds": {"heads.1"},
            "unetpp3d": {"heads.0"},
        }[arch]
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_batch_of_one_tiny_volume_trains(arch, norm):
    # The coarsest level would be 1 voxel, which instance norm (and batch norm with N=1) refuses.
    net = tiny(arch, norm=norm).train()
    outputs = net(torch.randn(1, 1, 3, 3, 3), deep_supervision=True)
    assert outputs[0].shape == (1, 2, 3, 3, 3)
    sum(o.mean() for o in outputs).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_pruned_unetpp_equals_the_full_networks_x0_depth(depth):
    torch.manual_seed(0)
    net = create_network("unetpp3d", features=[4, 8, 16, 32]).eval()
    x = torch.randn(2, 1, 17, 20, 23)
    with torch.no_grad():
        full = net(x, deep_supervision=True)  # [X0,3, X0,1, X0,2]
        by_column = {3: full[0], 1: full[1], 2: full[2]}
        pruned = net(x, depth=depth)
        pruned_ds = net(x, depth=depth, deep_supervision=True)
    assert pruned.shape == (2, 2, 17, 20, 23)
    assert torch.allclose(pruned, by_column[depth], atol=1e-6)
    assert len(pruned_ds) == depth  # [X0,L, X0,1 .. X0,L-1]
    for got, column in zip(pruned_ds, [depth, *range(1, depth)], strict=True):
        assert torch.allclose(got, by_column[column], atol=1e-6)


@pytest.mark.parametrize("depth", [0, 3, True, 1.0])
def test_unetpp_depth_outside_its_levels_is_refused(depth):
    net = tiny("unetpp3d")
    with pytest.raises(ValueError, match=r"depth must be an int in 1\.\.2 .*use depth=None"):
        net(torch.randn(1, 1, 4, 4, 4), depth=depth)


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
