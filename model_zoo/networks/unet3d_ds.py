"""3D U-Net (Cicek et al., MICCAI 2016, arXiv 1606.06650) with a head on every decoder level
(deep supervision as nnU-Net does it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model_zoo.architectures import register_architecture
from model_zoo.blocks import (
    Encoder,
    check_config,
    crop_outputs,
    init_weights,
    make_block,
    make_upsample,
    pad_to_stride,
)


class UNetDecoder(nn.Module):
    """Level s (s = S-2 .. 0): upsample level s+1 to width features[s], concatenate the encoder's
    stage s, then a block back to features[s]."""

    def __init__(self, features: Sequence[int], *, block: str, norm: str, act: str, upsample: str):
        super().__init__()
        levels = range(len(features) - 2, -1, -1)  # coarsest first, the order forward runs them
        self.ups = nn.ModuleList(make_upsample(upsample, features[s + 1], features[s]) for s in levels)
        self.blocks = nn.ModuleList(make_block(block, 2 * features[s], features[s], norm=norm, act=act)
                                    for s in levels)

    def forward(self, skips: Sequence[Tensor]) -> list[Tensor]:
        """Encoder features (finest first) -> decoder features of each level, finest (stride 1) first."""
        x, levels = skips[-1], []
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([skip, up(x)], dim=1))
            levels.append(x)
        return levels[::-1]


@register_architecture("unet3d_ds")
class UNet3DDS(nn.Module):
    """3D U-Net: max-pooling encoder, a decoder with skip connections, a 1x1x1 head on every level.

    Args:
        in_channels: input channels (1 for CT).
        out_channels: classes (logits, for a softmax).
        features: width of each stage, finest first; its length S sets the depth (S-1 poolings,
            total stride 2**(S-1)).
        norm, act, block, upsample: layer names, see `model_zoo.blocks`.
        deep_supervision: what `forward` returns by default; the heads exist either way, so a state_dict
            trained with them loads strictly into a network built without.

    `forward(x)` maps (N, in_channels, D, H, W), any size, to main logits (N, out_channels, D, H, W);
    with deep supervision, [main, head on level 1, ..., head on level S-2], head s at stride 2**s
    (ceil(D / 2**s), ...). `output_strides` lists those strides.
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "instance",
                 act: str = "leakyrelu", block: str = "plain", upsample: str = "transpose",
                 deep_supervision: bool = False):
        super().__init__()
        features = check_config("unet3d_ds", in_channels=in_channels, out_channels=out_channels,
                                features=features, min_stages=2, why="one pooling and one decoder level")
        self.deep_supervision = deep_supervision
        self.total_stride = 2 ** (len(features) - 1)
        self.output_strides = [2**s for s in range(len(features) - 1)]
        self.encoder = Encoder(in_channels, features, block=block, norm=norm, act=act)
        self.decoder = UNetDecoder(features, block=block, norm=norm, act=act, upsample=upsample)
        self.heads = nn.ModuleList(nn.Conv3d(f, out_channels, 1) for f in features[:-1])
        init_weights(self, act)

    def forward(self, x: Tensor, deep_supervision: bool | None = None) -> Tensor | list[Tensor]:
        """(N, C_in, D, H, W) -> main logits (N, C_out, D, H, W), or [main, *heads] (see the class)."""
        ds = self.deep_supervision if deep_supervision is None else deep_supervision
        levels = self.decoder(self.encoder(pad_to_stride(x, self.total_stride)))
        n = len(self.heads) if ds else 1  # heads not asked for are not computed
        outputs = crop_outputs([head(level) for head, level in zip(self.heads[:n], levels, strict=False)],
                               x.shape[2:], self.output_strides[:n])
        return outputs if ds else outputs[0]
