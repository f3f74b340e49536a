"""Tests of the sliding-window engine: MONAI's grid and weights, skipping, heads, TTA, buffers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from service.sliding_window import (
    NonFiniteLogitsError,
    importance_map,
    sliding_window_inference,
    window_starts,
)

monai_utils = pytest.importorskip("monai.inferers.utils", reason="MONAI is a dev dependency")
monai_data = pytest.importorskip("monai.data.utils", reason="MONAI is a dev dependency")


class TinyNet(nn.Module):
    """Two 3D convs with instance norm (a window's output depends on all of it) and a coarse head."""

    def __init__(self, out_channels: int = 2, with_heads: bool = False):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm3d(4, affine=True)
        self.conv2 = nn.Conv3d(4, out_channels, 3, padding=1)
        self.head = nn.Conv3d(4, out_channels, 1)
        self.with_heads = with_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        features = F.leaky_relu(self.norm(self.conv1(x)))
        main = self.conv2(features)
        if not self.with_heads:
            return main
        return [main, self.head(F.avg_pool3d(features, 2)), self.head(F.avg_pool3d(features, 4))]


def make_net(seed: int = 0, **kwargs: object) -> TinyNet:
    torch.manual_seed(seed)
    with torch.no_grad():
        net = TinyNet(**kwargs).eval()
        net.norm.bias.add_(0.3)  # a non-trivial output for constant (air) input
    return net


def body_volume(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """(1, 1, D, H, W) in [0, 1]: an elliptic 'body' with texture, air clipped to exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    d, h, w = shape
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    inside = (((yy - h / 2) / (h * 0.22)) ** 2 + ((xx - w / 2) / (w * 0.22)) ** 2) <= 1
    inside &= (zz > d * 0.15) & (zz < d * 0.85)
    values = 0.5 + 0.2 * torch.rand(shape, generator=gen)
    return torch.where(inside, values, torch.zeros(())).float()[None, None]


def monai(image: torch.Tensor, patch: tuple[int, int, int], net: nn.Module, **kwargs: object) -> torch.Tensor:
    with torch.inference_mode():
        return monai_utils.sliding_window_inference(image, patch, kwargs.pop("sw_batch_size", 2), net,
                                                    **kwargs)


# (volume D, H, W; patch; overlap): divisible, not divisible by the step, smaller than the patch
# in one axis, in two axes, in every axis, and per-axis overlaps.
GRID_CASES = [
    ((16, 16, 16), (8, 8, 8), 0.5),
    ((19, 23, 13), (8, 8, 8), 0.5),
    ((21, 17, 30), (10, 6, 12), 0.25),
    ((5, 20, 18), (8, 8, 8), 0.5),
    ((5, 7, 18), (8, 8, 8), 0.6),
    ((5, 3, 6), (8, 8, 8), 0.5),
    ((12, 25, 14), (8, 10, 6), (0.5, 0.3, 0.7)),
]


@pytest.mark.parametrize(("shape", "patch", "overlap"), GRID_CASES)
def test_window_starts_are_monais(shape, patch, overlap) -> None:
    size = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    overlaps = overlap if isinstance(overlap, tuple) else (overlap,) * 3
    interval = monai_utils._get_scan_interval(size, patch, 3, overlaps)
    expected = [tuple(s.start for s in slices)
                for slices in monai_data.dense_patch_slices(size, patch, interval)]
    assert list(window_starts(size, patch, overlaps)) == expected


@pytest.mark.parametrize("patch", [(8, 8, 8), (9, 16, 5), (64, 64, 64)])
@pytest.mark.parametrize("sigma", [0.125, 0.25, (0.1, 0.2, 0.3)])
def test_importance_map_is_monais(patch, sigma) -> None:
    expected = monai_data.compute_importance_map(patch, mode="gaussian", sigma_scale=sigma)
    sigmas = sigma if isinstance(sigma, tuple) else (sigma,) * 3
    assert torch.equal(importance_map(patch, "gaussian", sigmas), expected)
    assert float(importance_map(patch, "gaussian", sigmas).min()) >= 1e-3  # MONAI's clamp
    assert torch.equal(importance_map(patch, "constant", sigmas), torch.ones(patch))


@pytest.mark.parametrize(("shape", "patch", "overlap"), GRID_CASES)
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_equals_monai(shape, patch, overlap, mode) -> None:
    net, image = make_net(), body_volume(shape)
    ours = sliding_window_inference(image, patch, net, overlap=overlap, mode=mode, batch_size=2)
    theirs = monai(image, patch, net, overlap=overlap, mode=mode)
    assert ours.main.shape == (1, 2, *shape)
    assert ours.windows_skipped == 0
    assert ours.windows_total == len(window_starts(
        tuple(max(s, p) for s, p in zip(shape, patch, strict=True)), patch,
        overlap if isinstance(overlap, tuple) else (overlap,) * 3))
    assert (ours.main - theirs).abs().max().item() <= 1e-4


def test_equals_monai_sigma_and_pad_value() -> None:
    net, image = make_net(1), body_volume((6, 14, 11))
    ours = sliding_window_inference(image, (8, 8, 8), net, overlap=0.5, sigma_scale=0.3, pad_value=0.2)
    theirs = monai(image, (8, 8, 8), net, overlap=0.5, mode="gaussian", sigma_scale=0.3, cval=0.2)
    assert (ours.main - theirs).abs().max().item() <= 1e-4


def test_batch_of_images_equals_one_by_one() -> None:
    net = make_net()
    images = torch.cat([body_volume((12, 18, 14), seed) for seed in (0, 1)])
    both = sliding_window_inference(images, (8, 8, 8), net, batch_size=3).main
    for n in range(2):
        alone = sliding_window_inference(images[n:n + 1], (8, 8, 8), net).main
        assert (both[n:n + 1] - alone).abs().max().item() <= 1e-5


def test_batch_sizes_1_and_3_agree() -> None:
    net, image = make_net(), body_volume((19, 23, 13))
    one = sliding_window_inference(image, (8, 8, 8), net, batch_size=1).main
    three = sliding_window_inference(image, (8, 8, 8), net, batch_size=3).main
    assert (one - three).abs().max().item() <= 1e-5


def test_constant_mode_is_plain_mean() -> None:
    # A predictor that returns the window's own start as value: the constant-mode result is the
    # mean of the covering windows' starts, checkable by hand on one axis.
    image = torch.zeros(1, 1, 4, 4, 12)
    image[..., :] = torch.arange(12.0)

    def first_voxel(x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :1, :1, :1].expand_as(x).clone()

    out = sliding_window_inference(image, (4, 4, 8), first_voxel, overlap=0.5, mode="constant").main
    # windows start at 0 and 4 on the last axis: voxels 0-3 see 0, 4-7 see mean(0, 4), 8-11 see 4
    expected = torch.tensor([0.0] * 4 + [2.0] * 4 + [4.0] * 4)
    assert torch.allclose(out[0, 0, 0, 0], expected)


def test_skipping_air_keeps_the_mask() -> None:
    net, image = make_net(), body_volume((40, 48, 48))
    full = sliding_window_inference(image, (16, 16, 16), net, overlap=0.5)
    skipped = sliding_window_inference(image, (16, 16, 16), net, overlap=0.5, skip_below=0.0)
    assert skipped.windows_total == full.windows_total == 4 * 5 * 5
    assert skipped.windows_skipped > 0
    a, b = full.main.argmax(1), skipped.main.argmax(1)
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice.item() >= 0.999
    # air is clipped to exactly 0 here, so reusing the constant patch's output is exact
    assert (full.main - skipped.main).abs().max().item() <= 1e-4


def test_skip_everything_still_gives_the_constant_output() -> None:
    net, image = make_net(), torch.zeros(1, 1, 12, 12, 12)
    res = sliding_window_inference(image, (8, 8, 8), net, skip_below=0.5)
    assert res.windows_skipped == res.windows_total == 8
    assert (res.main - monai(image, (8, 8, 8), net, overlap=0.5, mode="gaussian")).abs().max() <= 1e-5
    # a voxel only the first window covers holds that window's (constant patch's) output
    const = net(torch.zeros(1, 1, 8, 8, 8))
    assert torch.allclose(res.main[..., 0, 0, 0], const[..., 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("skip_below", [None, 0.0])
@pytest.mark.parametrize("mirror_axes", [(), (0, 2)])
@pytest.mark.parametrize("output_dtype", [torch.float32, torch.float16])
def test_every_head_is_aggregated(skip_below, mirror_axes, output_dtype) -> None:
    net, image = make_net(with_heads=True), body_volume((24, 40, 38))
    res = sliding_window_inference(image, (12, 12, 12), net, heads=True, skip_below=skip_below,
                                   mirror_axes=mirror_axes, output_dtype=output_dtype, batch_size=3)
    assert res.main.shape == (1, 2, 24, 40, 38)
    assert [h.shape for h in res.heads] == [(1, 2, 24, 40, 38)] * 2
    assert all(h.dtype == output_dtype for h in [res.main, *res.heads])
    assert (res.windows_skipped > 0) == (skip_below is not None)
    for head in res.heads:
        # every voxel covered and blended: no zeros left from an unaggregated buffer
        assert torch.isfinite(head).all() and (head != 0).float().mean().item() > 0.99
        assert not torch.allclose(head, res.main)
    # Each head, blended, equals blending that head alone as a main output (upsampled likewise).
    for k in (1, 2):
        def head_as_main(x: torch.Tensor, k: int = k) -> torch.Tensor:
            return F.interpolate(net(x)[k], size=x.shape[2:], mode="trilinear", align_corners=False)

        alone = sliding_window_inference(image, (12, 12, 12), head_as_main, skip_below=skip_below,
                                         mirror_axes=mirror_axes)
        tolerance = 1e-5 if output_dtype == torch.float32 else 5e-3
        assert (alone.main - res.heads[k - 1].float()).abs().max().item() <= tolerance


def test_heads_off_uses_the_main_output_of_a_list() -> None:
    net, image = make_net(with_heads=True), body_volume((12, 12, 12))
    res = sliding_window_inference(image, (8, 8, 8), net)
    plain = sliding_window_inference(image, (8, 8, 8), lambda x: net(x)[0])
    assert res.heads == [] and torch.equal(res.main, plain.main)


def test_heads_requested_but_absent() -> None:
    with pytest.raises(ValueError, match="no deep-supervision heads"):
        sliding_window_inference(body_volume((8, 8, 8)), (8, 8, 8), make_net(), heads=True)


def test_mirror_tta_with_equivariant_predictor_changes_nothing() -> None:
    # A symmetric 3x3x3 box filter commutes with every flip.
    def smooth(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.avg_pool3d(x, 3, 1, 1), -F.avg_pool3d(x, 3, 1, 1)], dim=1)

    image = body_volume((20, 22, 18))
    plain = sliding_window_inference(image, (8, 8, 8), smooth).main
    mirrored = sliding_window_inference(image, (8, 8, 8), smooth, mirror_axes=(0, 1, 2)).main
    assert (plain - mirrored).abs().max().item() <= 1e-6


def test_mirror_tta_averages_the_flips() -> None:
    # Predictor = input + a ramp along W; flipping W and back turns the ramp around, so the
    # mirrored mean holds the ramp's average, a constant.
    ramp = torch.arange(8.0)

    def biased(x: torch.Tensor) -> torch.Tensor:
        return x + ramp

    image = body_volume((8, 8, 8))
    out = sliding_window_inference(image, (8, 8, 8), biased, mirror_axes=(2,)).main
    assert torch.allclose(out, image + ramp.mean(), atol=1e-6)


def test_fp16_buffer_close_to_fp32() -> None:
    net, image = make_net(), body_volume((19, 23, 13))
    full = sliding_window_inference(image, (8, 8, 8), net).main
    half = sliding_window_inference(image, (8, 8, 8), net, output_dtype=torch.float16).main
    assert half.dtype == torch.float16
    assert (full - half.float()).abs().max().item() <= 5e-3 * max(1.0, full.abs().max().item())
    assert torch.equal(full.argmax(1), half.argmax(1)) or (full.argmax(1) != half.argmax(1)).float(
    ).mean() < 1e-3


def test_deterministic() -> None:
    net, image = make_net(), body_volume((19, 23, 13))
    first = sliding_window_inference(image, (8, 8, 8), net, skip_below=0.0).main
    second = sliding_window_inference(image, (8, 8, 8), net, skip_below=0.0).main
    assert torch.equal(first, second)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_logits_raise(bad: float) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, 1, 0, 0, 0] = bad
        return out

    with pytest.raises(NonFiniteLogitsError, match="voxels of the main output are inf/NaN"):
        sliding_window_inference(body_volume((12, 12, 12)), (8, 8, 8), broken)


def test_fp16_overflow_is_reported() -> None:
    with pytest.raises(NonFiniteLogitsError, match="overflow float16"):
        sliding_window_inference(body_volume((8, 8, 8)), (8, 8, 8), lambda x: x * 1e6 + 1e6,
                                 output_dtype=torch.float16)


@pytest.mark.parametrize("skip_below", [None, 0.0])
def test_progress_reaches_total(skip_below) -> None:
    calls: list[tuple[int, int]] = []
    res = sliding_window_inference(body_volume((30, 30, 30)), (12, 12, 12), make_net(), batch_size=3,
                                   skip_below=skip_below, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (res.windows_total, res.windows_total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_output_device_and_dtype_follow_arguments() -> None:
    res = sliding_window_inference(body_volume((10, 10, 10)), (8, 8, 8), make_net(),
                                   window_device="cpu", output_device="cpu",
                                   output_dtype=torch.float16)
    assert res.main.device.type == "cpu" and res.main.dtype == torch.float16


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"overlap": 1.0}, "overlap must be in"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"mode": "gauss"}, "mode must be"),
    ({"mirror_axes": (3,)}, "mirror_axes are spatial axes"),
])
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        sliding_window_inference(body_volume((8, 8, 8)), (8, 8, 8), make_net(), **kwargs)


def test_bad_image() -> None:
    with pytest.raises(ValueError, match="floating"):
        sliding_window_inference(torch.zeros(1, 8, 8, 8), (8, 8, 8), make_net())
