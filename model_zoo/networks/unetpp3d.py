"""UNet++ in 3D (Zhou et al., DLMIA 2018, arXiv 1807.10165): nested dense skip pathways, a head on
every top node X0,j, prunable to depth L at inference."""

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


@register_architecture("unetpp3d")
class UNetPlusPlus3D(nn.Module):
    """UNet++: node X_{i,j} (level i, column j >= 1) = block(concat(X_{i,0}, ..., X_{i,j-1},
    up(X_{i+1,j-1}))); X_{i,0} is encoder stage i. A 1x1x1 head on each X0,j, j = 1..S-1.

    Args:
        in_channels: input channels (1 for CT).
        out_channels: classes (logits, for a softmax).
        features: width of each level, finest first; its length S gives the full depth S-1
            (total stride 2**(S-1)).
        norm, act, block, upsample: layer names, see `model_zoo.blocks`.
        deep_supervision: what `forward` returns by default; the heads exist either way.

    `forward(x, deep_supervision=None, depth=None)`: with depth L (1..S-1, default S-1) only the nodes
    X0,L needs (i + j <= L) are computed, and the main output is the head on X0,L: (N, out_channels,
    D, H, W) for any input size. A pruned run gives exactly what the full network's head on X0,L gives
    (the input is padded for the full depth either way). With deep supervision: [head on X0,L, heads on
    X0,1 .. X0,L-1], all at full resolution (`output_strides` lists the S-1 of the full depth).
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "instance",
                 act: str = "leakyrelu", block: str = "plain", upsample: str = "transpose",
                 deep_supervision: bool = False):
        super().__init__()
        features = check_config("unetpp3d", in_channels=in_channels, out_channels=out_channels,
                                features=features, min_stages=2, why="one nested level below the top")
        self.deep_supervision = deep_supervision
        self.max_depth = len(features) - 1
        self.total_stride = 2**self.max_depth
        self.output_strides = [1] * self.max_depth
        self.encoder = Encoder(in_channels, features, block=block, norm=norm, act=act)
        nodes = [(i, j) for j in range(1, self.max_depth + 1) for i in range(self.max_depth + 1 - j)]
        self.ups = nn.ModuleDict({f"{i}_{j}": make_upsample(upsample, features[i + 1], features[i])
                                  for i, j in nodes})
        self.nodes = nn.ModuleDict({f"{i}_{j}": make_block(block, (j + 1) * features[i], features[i],
                                                           norm=norm, act=act) for i, j in nodes})
        self.heads = nn.ModuleList(nn.Conv3d(features[0], out_channels, 1) for _ in range(self.max_depth))
        init_weights(self, act)

    def forward(self, x: Tensor, deep_supervision: bool | None = None,
                depth: int | None = None) -> Tensor | list[Tensor]:
        """(N, C_in, D, H, W) -> head on X0,depth (N, C_out, D, H, W), or [that, X0,1 .. X0,depth-1]."""
        ds = self.deep_supervision if deep_supervision is None else deep_supervision
        depth = self.check_depth(depth)
        grid = self.nested(self.encoder(pad_to_stride(x, self.total_stride), depth), depth)
        columns = [depth, *range(1, depth)] if ds else [depth]
        outputs = crop_outputs([self.heads[j - 1](grid[0][j]) for j in columns], x.shape[2:], [1] * len(columns))
        return outputs if ds else outputs[0]

    def nested(self, column0: Sequence[Tensor], depth: int) -> list[list[Tensor]]:
        """All X_{i,j} with i + j <= depth, as grid[i][j], from the encoder's X_{i,0} (i = 0..depth)."""
        grid = [[x] for x in column0]
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                below = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat([*grid[i], below], dim=1)))
        return grid

    def check_depth(self, depth: int | None) -> int:
        """`depth` or the full depth; raises ValueError outside 1..max_depth."""
        if depth is None:
            return self.max_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.max_depth:
            raise ValueError(f"unetpp3d: depth must be an int in 1..{self.max_depth} (the network has "
                             f"{self.max_depth + 1} levels), got {depth!r}; use depth=None for the full network")
        return depth
