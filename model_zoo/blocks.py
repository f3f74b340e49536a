"""Shared building blocks of the model zoo's 3D networks, chosen by plain strings (as MONAI's factories).

Every layer a card can name is looked up here: norm "instance" | "batch" | "group" | "none",
act "leakyrelu" | "relu" | "gelu", block "plain" | "residual" | "mbconv",
upsample "transpose" | "trilinear". An unknown string raises `UnknownNameError` listing the valid ones.
Tensors are (N, C, D, H, W) throughout. The architectures in `model_zoo.networks` wire these blocks;
the padding and cropping that let them take any input size live here too, so all three agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from model_zoo.lookup import look_up

NEG_SLOPE = 1e-2  # nnU-Net's LeakyReLU slope, also used by the He initialisation


def _group_norm(channels: int) -> nn.Module:
    # Up to 8 groups (MONAI/nnU-Net use 8-32); gcd keeps any width valid, e.g. 4 channels -> 4 groups.
    return nn.GroupNorm(math.gcd(8, channels), channels, affine=True)


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "instance": lambda channels: nn.InstanceNorm3d(channels, affine=True),
    "batch": nn.BatchNorm3d,
    "group": _group_norm,
    "none": lambda channels: nn.Identity(),
}

ACTS: dict[str, Callable[[], nn.Module]] = {
    "leakyrelu": lambda: nn.LeakyReLU(NEG_SLOPE, inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
}


def norm_layer(name: str, channels: int) -> nn.Module:
    """The normalisation layer `name` for `channels` feature maps. Raises UnknownNameError."""
    return look_up(NORMS, name, "norm")(channels)


def act_layer(name: str) -> nn.Module:
    """The activation `name`. Raises UnknownNameError."""
    return look_up(ACTS, name, "activation")()


class ConvNormAct(nn.Sequential):
    """Conv3d (same padding) -> norm -> activation; `act=None` leaves the activation out."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 norm: str = "instance", act: str | None = "leakyrelu", groups: int = 1):
        # A bias before a norm layer is cancelled by it, so only convs without a norm carry one.
        layers = [nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                            groups=groups, bias=norm == "none"), norm_layer(norm, out_channels)]
        super().__init__(*layers, *([act_layer(act)] if act is not None else []))


class PlainBlock(nn.Sequential):
    """Two conv-norm-act layers (the 3D U-Net / nnU-Net stage)."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, act: str):
        super().__init__(ConvNormAct(in_channels, out_channels, norm=norm, act=act),
                         ConvNormAct(out_channels, out_channels, norm=norm, act=act))


class ResidualBlock(nn.Module):
    """Two 3x3x3 convs with a shortcut (1x1x1 conv + norm where the width changes), act after the sum."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, act: str):
        super().__init__()
        self.convs = nn.Sequential(ConvNormAct(in_channels, out_channels, norm=norm, act=act),
                                   ConvNormAct(out_channels, out_channels, norm=norm, act=None))
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else ConvNormAct(in_channels, out_channels, 1, norm=norm, act=None))
        self.act = act_layer(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2 / EfficientNet): 1x1x1 expand, 3x3x3 depthwise, linear 1x1x1
    project; identity shortcut when the width is kept. Fewer weights and FLOPs than a plain stage, but
    3D depthwise convs are slow in PyTorch on the CPU (measure before choosing it for speed)."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, act: str, expansion: int = 4):
        super().__init__()
        hidden = expansion * out_channels
        self.body = nn.Sequential(
            ConvNormAct(in_channels, hidden, 1, norm=norm, act=act),
            ConvNormAct(hidden, hidden, 3, norm=norm, act=act, groups=hidden),
            ConvNormAct(hidden, out_channels, 1, norm=norm, act=None),
        )
        self.residual = in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return y + x if self.residual else y


class MBConvBlock(nn.Sequential):
    """Two MBConvs (the second residual), so a stage sees as far as two 3x3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str, act: str):
        super().__init__(MBConv(in_channels, out_channels, norm=norm, act=act),
                         MBConv(out_channels, out_channels, norm=norm, act=act))


BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "plain": PlainBlock, "residual": ResidualBlock, "mbconv": MBConvBlock,
}


def make_block(name: str, in_channels: int, out_channels: int, *, norm: str, act: str) -> nn.Module:
    """One stage block `name` mapping (N, in, D, H, W) -> (N, out, D, H, W). Raises UnknownNameError."""
    return look_up(BLOCKS, name, "block")(in_channels, out_channels, norm=norm, act=act)


def _transpose(in_channels: int, out_channels: int, scale: int) -> nn.Module:
    return nn.ConvTranspose3d(in_channels, out_channels, scale, stride=scale)


def _trilinear(in_channels: int, out_channels: int, scale: int) -> nn.Module:
    # The 1x1x1 conv commutes with interpolation, so run it first, on the smaller grid.
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 1),
                         nn.Upsample(scale_factor=scale, mode="trilinear", align_corners=False))


UPSAMPLES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "transpose": _transpose, "trilinear": _trilinear,
}


def make_upsample(name: str, in_channels: int, out_channels: int, scale: int = 2) -> nn.Module:
    """Upsampling by an integer `scale` that also maps in -> out channels: a transposed conv
    (kernel = stride = scale) or a 1x1x1 conv then trilinear interpolation. `scale=1` is a 1x1x1 conv.
    Raises UnknownNameError."""
    factory = look_up(UPSAMPLES, name, "upsample")
    return nn.Conv3d(in_channels, out_channels, 1) if scale == 1 else factory(in_channels, out_channels, scale)


class Encoder(nn.Module):
    """Stage s = 2x2x2 max pooling (s > 0) then a block of width `features[s]`; stride 2**s."""

    def __init__(self, in_channels: int, features: Sequence[int], *, block: str, norm: str, act: str):
        super().__init__()
        widths = [in_channels, *features]
        self.stages = nn.ModuleList(make_block(block, c_in, c_out, norm=norm, act=act)
                                    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True))
        self.pool = nn.MaxPool3d(2)

    def forward(self, x: Tensor, depth: int | None = None) -> list[Tensor]:
        """Features of stages 0..depth (all stages by default), finest first."""
        stages = self.stages if depth is None else self.stages[: depth + 1]
        skips: list[Tensor] = []
        for s, stage in enumerate(stages):
            x = stage(x if s == 0 else self.pool(x))
            skips.append(x)
        return skips


def init_weights(network: nn.Module, act: str = "leakyrelu") -> None:
    """He (kaiming normal) init of every conv and transposed conv in `network`, zero biases
    (nnU-Net's InitWeights_He), for the slope of activation `act`."""
    slope = NEG_SLOPE if act == "leakyrelu" else 0.0
    for module in network.modules():
        if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(module.weight, a=slope)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def check_config(arch: str, *, in_channels: int, out_channels: int, features: Sequence[int],
                 min_stages: int, why: str) -> list[int]:
    """Validate an architecture's JSON kwargs; return `features` as a list. Raises ValueError
    saying what to change."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arch}: {name} must be a positive int, got {value!r}")
    if isinstance(features, str | bytes) or not all(isinstance(f, int) and f >= 1 for f in features):
        raise ValueError(f"{arch}: features must be a list of positive ints (one width per stage), "
                         f"got {features!r}")
    features = list(features)
    if len(features) < min_stages:
        example = [16 * 2**s for s in range(min_stages)]
        raise ValueError(f"{arch}: features lists {len(features)} stage widths {features}, needs at "
                         f"least {min_stages} ({why}); add stages, e.g. features={example}")
    return features


def pad_to_stride(x: Tensor, stride: int) -> Tensor:
    """Pad (N, C, D, H, W) at the far end of each axis (replicating the edge) up to a multiple of
    `stride`. The coarsest level must keep more than one voxel, or instance norm (and batch norm with
    N=1) cannot normalise it, so W is padded to 2 * stride when every axis would end at one voxel."""
    target = [math.ceil(n / stride) * stride for n in x.shape[2:]]
    if all(t == stride for t in target):
        target[-1] = 2 * stride
    pad = [p for n, t in zip(reversed(x.shape[2:]), reversed(target), strict=True) for p in (0, t - n)]
    return F.pad(x, pad, mode="replicate") if any(pad) else x


def crop_outputs(outputs: Sequence[Tensor], size_dhw: Sequence[int], strides: Sequence[int]) -> list[Tensor]:
    """Crop each output (computed on the padded grid) back to the input's extent: an output of
    downsampling factor s keeps ceil(n / s) voxels per axis; its voxel k covers input voxels
    [k * s, (k + 1) * s)."""
    return [out[(..., *(slice(0, math.ceil(n / s)) for n in size_dhw))]
            for out, s in zip(outputs, strides, strict=True)]
