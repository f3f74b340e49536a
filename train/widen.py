"""Function-preserving widening of a trained 3D U-Net (Net2WiderNet, Chen et al., ICLR 2016).

A wider network initialised this way computes exactly what the narrow one did, so training it goes
on from the narrow model's accuracy instead of starting again: how the bundled 8-64 model grew to
16-128 on a 2-core CPU without repeating its 18 400 iterations.

Every stage's width is multiplied by an integer k. Each new channel j copies old channel j mod C
(its incoming weights, norm affine and bias), and each layer that reads a widened input splits the
weight of every old input channel over its k copies with random fractions that sum to 1. The
copies carry identical activations (instance and batch norm see identical statistics per copy;
group norm would mix copies of different channels in one group, so it is refused), and every
layer's output is the old one repeated. The random split gives the copies different outgoing
weights and so different gradients, which breaks their symmetry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

WIDENABLE_ARCHS = ("unet3d_ds",)


def widening_factors(old: Sequence[int], new: Sequence[int]) -> list[int]:
    """Per-stage integer factors new/old. Raises ValueError, naming the fix, when they are not."""
    if len(old) != len(new):
        raise ValueError(f"widening keeps the depth: features {list(old)} has {len(old)} stages, "
                         f"{list(new)} has {len(new)}")
    factors = [n // o for o, n in zip(old, new, strict=True)]
    if any(n % o or n < o for o, n in zip(old, new, strict=True)):
        raise ValueError(f"every new width must be a whole multiple of the old one: {list(old)} -> "
                         f"{list(new)}, e.g. {[2 * o for o in old]}")
    return factors


def _tile(weight: Tensor, dim: int, size: int) -> Tensor:
    """Repeat `weight` along `dim` up to `size` (new index j takes old index j mod old size)."""
    old = weight.shape[dim]
    return weight.repeat(*[size // old if d == dim else 1 for d in range(weight.dim())])


def _split_inputs(weight: Tensor, dim: int, segments: Sequence[tuple[int, int]],
                  generator: torch.Generator) -> Tensor:
    """Widen input dimension `dim`, laid out as concatenated `segments` of (old, new) widths; each old
    input's weight is shared among its copies by random fractions summing to 1."""
    parts, start = [], 0
    for old, new in segments:
        part = weight.narrow(dim, start, old)
        start += old
        k = new // old
        if k == 1:
            parts.append(part)
            continue
        copies = _tile(part, dim, new)
        shape = list(copies.shape)
        shape[dim] = k
        shape.insert(dim + 1, old)  # (..., k, old, ...): copy c of old channel i is new channel c*old + i
        fractions = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
        fractions = (fractions / fractions.sum(dim, keepdim=True)).reshape(copies.shape)
        parts.append(copies * fractions.to(copies.dtype))
    return torch.cat(parts, dim)


def widen_unet3d_ds(narrow: nn.Module, wide: nn.Module, old_features: Sequence[int],
                    new_features: Sequence[int], *, seed: int = 0) -> dict[str, Tensor]:
    """A state_dict for `wide` (a unet3d_ds of `new_features`) that computes what `narrow` (a
    unet3d_ds of `old_features`, same block, norm and upsampling) computes. Raises ValueError."""
    widening_factors(old_features, new_features)
    if any(isinstance(m, nn.GroupNorm) for m in wide.modules()):
        raise ValueError("group norm cannot be widened without changing what the network computes "
                         "(its groups would mix copies of different channels); use instance norm")
    generator = torch.Generator().manual_seed(seed)
    old_state, new_state = narrow.state_dict(), wide.state_dict()
    concat_widths = dict(enumerate(reversed(list(zip(old_features[:-1], new_features[:-1], strict=True)))))
    widened: dict[str, Tensor] = {}
    for key, target in new_state.items():
        source = old_state[key]
        module = wide.get_submodule(key.rsplit(".", 1)[0])
        out_dim = 1 if isinstance(module, nn.ConvTranspose3d) and key.endswith("weight") else 0
        value = source if source.dim() == 0 else _tile(source, out_dim, target.shape[out_dim])
        if source.dim() > 1 and source.shape[1 - out_dim] != target.shape[1 - out_dim]:
            in_dim = 1 - out_dim
            segments = [(source.shape[in_dim], target.shape[in_dim])]
            if key.startswith("decoder.blocks."):  # a conv reading cat([skip, up]) at its level
                old, new = concat_widths[int(key.split(".")[2])]
                if source.shape[in_dim] == 2 * old:
                    segments = [(old, new), (old, new)]
            value = _split_inputs(value, in_dim, segments, generator)
        if value.shape != target.shape:
            raise ValueError(f"cannot widen {key}: {tuple(source.shape)} -> {tuple(target.shape)}")
        widened[key] = value.to(target.dtype).contiguous()
    return widened
