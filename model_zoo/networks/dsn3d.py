"""3D deeply supervised network for liver CT (Dou et al., MICCAI 2016, arXiv 1607.00582)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from model_zoo.architectures import register_architecture
from model_zoo.blocks import (
    ConvNormAct,
    Encoder,
    check_config,
    crop_outputs,
    init_weights,
    make_upsample,
    pad_to_stride,
)


@register_architecture("dsn3d")
class DSN3D(nn.Module):
    """3D FCN (conv stages with max pooling, no skip connections) whose main output is upsampled from
    the deepest stage by deconvolutions, plus two auxiliary classifiers on lower layers.

    The auxiliary heads sit on the two stages below the deepest (strides 2**(S-2) and 2**(S-3)) and
    are deconvolved straight back to full resolution, as in the paper; training weighs the losses of
    [main, aux on stage S-2, aux on stage S-3] (the paper's Keras port: 0.6 / 0.3 / 0.1).

    Args:
        in_channels: input channels (1 for CT).
        out_channels: classes (logits, for a softmax).
        features: width of each stage, finest first; at least 3 stages (total stride 2**(S-1)).
        norm, act, block, upsample: layer names, see `model_zoo.blocks` (`block` builds the encoder
            stages; the main path uses one conv-norm-act after each x2 upsampling).
        deep_supervision: what `forward` returns by default; the heads exist either way.

    `forward(x)` maps (N, in_channels, D, H, W), any size, to main logits (N, out_channels, D, H, W);
    with deep supervision, [main, aux_deeper, aux_shallower], all at full resolution
    (`output_strides` = [1, 1, 1]).
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128), norm: str = "instance",
                 act: str = "leakyrelu", block: str = "plain", upsample: str = "transpose",
                 deep_supervision: bool = False):
        super().__init__()
        features = check_config("dsn3d", in_channels=in_channels, out_channels=out_channels,
                                features=features, min_stages=3,
                                why="the two auxiliary heads sit on the two stages below the deepest")
        deepest = len(features) - 1
        self.deep_supervision = deep_supervision
        self.total_stride = 2**deepest
        self.output_strides = [1, 1, 1]
        self.encoder = Encoder(in_channels, features, block=block, norm=norm, act=act)
        self.decoder = nn.Sequential(*(
            nn.Sequential(make_upsample(upsample, features[s], features[s - 1]),
                          ConvNormAct(features[s - 1], features[s - 1], norm=norm, act=act))
            for s in range(deepest, 0, -1)))
        self.head = nn.Conv3d(features[0], out_channels, 1)
        self.aux_stages = [deepest - 1, deepest - 2]
        self.aux_heads = nn.ModuleList(make_upsample(upsample, features[s], out_channels, 2**s)
                                       for s in self.aux_stages)
        init_weights(self, act)

    def forward(self, x: Tensor, deep_supervision: bool | None = None) -> Tensor | list[Tensor]:
        """(N, C_in, D, H, W) -> main logits (N, C_out, D, H, W), or [main, aux_deeper, aux_shallower]."""
        ds = self.deep_supervision if deep_supervision is None else deep_supervision
        stages = self.encoder(pad_to_stride(x, self.total_stride))
        outputs = [self.head(self.decoder(stages[-1]))]
        outputs += [head(stages[s]) for s, head in zip(self.aux_stages, self.aux_heads, strict=True)] if ds else []
        outputs = crop_outputs(outputs, x.shape[2:], self.output_strides[: len(outputs)])
        return outputs if ds else outputs[0]
