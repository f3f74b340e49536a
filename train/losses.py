"""Dice + cross-entropy, and its deeply supervised sum over a network's main output and heads.

Loss of one output (nnU-Net's `DC_and_CE_loss` with `batch_dice=True`, written as 1 - Dice so
that a perfect prediction scores 0):

    L(logits, y) = CE(logits, y) + (1 - mean_c Dice_c(softmax(logits), onehot(y)))

where Dice_c = (2 sum(p_c g_c) + s) / (sum p_c + sum g_c + s), the sums run over the whole batch
and every voxel (batch Dice), s = 1e-5, and c runs over the foreground classes (background left
out, as nnU-Net's `do_bg=False`). The target is integer labels, per-class targets (N, C, D, H, W) (a
multi-class network, `train.classes.soft_targets`), or, for a two-class network, a
float liver fraction per voxel (g_1 = y, g_0 = 1 - y: soft Dice and cross-entropy with
probability targets), which an antialiasing contract trains with; CE then bottoms out at the
targets' entropy instead of 0.

Deep supervision (Dou et al. 2016; Lee et al. 2015; nnU-Net): the network returns
[main, head1, head2, ...]; each head is compared with the target brought to the head's grid
(integer labels by nearest neighbour, which at an integer stride picks every stride-th voxel as
nnU-Net's `DownsampleSegForDSTransform2` with order 0; fractions by block averaging), and

    L_DS = w_0 L(main) + a_t * sum_{i>=1} w_i L(head_i)

with weights w normalised to sum 1 and a_t the auxiliary factor of the epoch (1 without decay).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

DS_WEIGHT_SCHEMES = ("dsn", "halving")
DS_DECAYS = ("none", "linear")


def deep_supervision_weights(n_outputs: int, scheme: str | Sequence[float] = "dsn") -> list[float]:
    """Per-output weights [main, head1, head2, ...], normalised to sum 1.

    Schemes:
      - "dsn": the public Keras port of Dou et al.'s 3D DSN: main 0.6, heads 0.3 and 0.1. For other
        head counts the heads share 0.4, each a third of the one before (2 heads: exactly 0.3/0.1;
        1 head: 0.4; 3 heads: 0.277/0.092/0.031).
      - "halving": nnU-Net's 1, 1/2, 1/4, ... per level, normalised to sum 1.
      - an explicit sequence (e.g. [0.6, 0.3, 0.1]): normalised to sum 1; it must have one weight
        per output (a network with no heads needs one weight, or none: it gets 1.0).

    Raises ValueError for an unknown scheme, a wrong count, or negative / all-zero weights.
    """
    if n_outputs < 1:
        raise ValueError(f"need at least one output, got {n_outputs}")
    if isinstance(scheme, str):
        if scheme == "dsn":
            if n_outputs == 1:
                return [1.0]
            heads = [3.0 ** -i for i in range(n_outputs - 1)]
            total = sum(heads)
            return [0.6] + [0.4 * h / total for h in heads]
        if scheme == "halving":
            raw = [0.5**i for i in range(n_outputs)]
        else:
            raise ValueError(
                f"unknown deep-supervision weight scheme {scheme!r}; use one of "
                f"{', '.join(DS_WEIGHT_SCHEMES)} or a list of numbers such as 0.6,0.3,0.1"
            )
    else:
        raw = [float(w) for w in scheme]
        if len(raw) != n_outputs:
            raise ValueError(
                f"{len(raw)} deep-supervision weights given for {n_outputs} outputs "
                f"(main + {n_outputs - 1} heads); give one weight per output"
            )
    if any(w < 0 or not math.isfinite(w) for w in raw) or sum(raw) <= 0:
        raise ValueError(f"deep-supervision weights must be finite, >= 0 and not all 0: {raw}")
    total = sum(raw)
    return [w / total for w in raw]


def parse_ds_weights(text: str) -> str | list[float]:
    """CLI form of the weights: "dsn", "halving", or comma-separated numbers ("0.6,0.3,0.1")."""
    text = text.strip()
    if text in DS_WEIGHT_SCHEMES:
        return text
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--ds-weights {text!r}: use {' or '.join(DS_WEIGHT_SCHEMES)} or numbers like 0.6,0.3,0.1"
        ) from None


def aux_weight_factor(epoch: int, epochs: int, decay: str | float = "none") -> float:
    """Factor a_t on the auxiliary heads' weights at `epoch` (0-based) of `epochs`.

    "none": 1. "linear": Lee et al.'s DSN schedule a_t = 1 - t/(T-1): 1 in the first epoch and 0
    in the last, so the run ends training the main output alone (a one-epoch run keeps 1).
    A float g in (0, 1]: exponential, a_t = g ** t.
    """
    if decay == "none":
        return 1.0
    if decay == "linear":
        return max(0.0, 1.0 - epoch / max(epochs - 1, 1))
    if isinstance(decay, str):
        try:
            decay = float(decay)
        except ValueError:
            raise ValueError(f"unknown --ds-decay {decay!r}: use none, linear or a number in (0, 1]") from None
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"exponential --ds-decay must be in (0, 1], got {decay}")
    return float(decay) ** epoch


def downsample_label(label: Tensor, size: Sequence[int]) -> Tensor:
    """Labels (N, D, H, W), or per-class targets (N, C, D, H, W), brought to spatial `size` (same
    dtype): integers by nearest neighbour, fractions by averaging (the fraction of each coarse voxel)."""
    if tuple(label.shape[-3:]) == tuple(size):
        return label
    if label.ndim == 5:
        return F.interpolate(label, size=tuple(size), mode="area")
    if label.is_floating_point():
        return F.interpolate(label[:, None], size=tuple(size), mode="area")[:, 0]
    # interpolate wants floats with a channel axis; labels are small integers, exact in float32.
    resized = F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].to(label.dtype)


def target_probabilities(target: Tensor, n_classes: int) -> Tensor:
    """(N, C, D, H, W) per-class target: one-hot of integer labels, (1 - y, y) of fractions y, or
    per-class targets (N, C, D, H, W) as given, their background made the rest of each voxel (a
    spatial augmentation pads them with zeros in every channel)."""
    if target.ndim == 5:
        if target.shape[1] != n_classes:
            raise ValueError(f"{target.shape[1]}-class targets for a {n_classes}-class network")
        target = target.clone()
        target[:, 0] = (1.0 - target[:, 1:].sum(1)).clamp(0.0, 1.0)
        return target
    if target.is_floating_point():
        if n_classes != 2:
            raise ValueError(f"fractional targets need a two-class network, this one has {n_classes}")
        return torch.stack([1.0 - target, target], dim=1)
    return F.one_hot(target.long(), n_classes).movedim(-1, 1)


def soft_dice(
    probabilities: Tensor, target: Tensor, *, smooth: float = 1e-5, include_background: bool = False,
    class_weights: Sequence[float] | None = None,
) -> Tensor:
    """Mean batch soft Dice over classes: probabilities (N, C, D, H, W), target (N, D, H, W) as
    integer labels or liver fractions, or (N, C, D, H, W) per-class targets (`target_probabilities`).

    class_weights: one per class averaged (the foreground classes unless include_background), for
    a weighted mean; None: the plain mean."""
    n_classes = probabilities.shape[1]
    onehot = target_probabilities(target, n_classes).to(probabilities.dtype)
    if not include_background and n_classes > 1:
        probabilities, onehot = probabilities[:, 1:], onehot[:, 1:]
    axes = (0, *range(2, probabilities.ndim))  # batch Dice: sum over samples and voxels
    intersection = (probabilities * onehot).sum(axes)
    denominator = probabilities.sum(axes) + onehot.sum(axes)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    if class_weights is None:
        return dice.mean()
    weights = torch.as_tensor(class_weights, dtype=dice.dtype, device=dice.device)
    if weights.shape != dice.shape:
        raise ValueError(f"{len(weights)} class weights for {len(dice)} classes")
    return (dice * weights).sum() / weights.sum()


class DiceCELoss(nn.Module):
    """CE + (1 - batch soft Dice) of logits (N, C, D, H, W) against labels or fractions (N, D, H, W)."""

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth: float = 1e-5,
        include_background: bool = False,
        class_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.smooth, self.include_background = smooth, include_background
        self.class_weights = class_weights

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()  # AMP: the loss in float32, as nnU-Net and MONAI do
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if target.is_floating_point():
            ce = F.cross_entropy(logits, target_probabilities(target, logits.shape[1]).to(logits.dtype))
        else:
            target = target.long()
            ce = F.cross_entropy(logits, target)
        dice = soft_dice(
            logits.softmax(1), target, smooth=self.smooth, include_background=self.include_background,
            class_weights=self.class_weights,
        )
        return self.ce_weight * ce + self.dice_weight * (1.0 - dice)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of DiceCELoss over [main, head1, ...] (or a single tensor).

    Each head is compared with the target resampled to its own grid (nearest). `weights` is a
    scheme of `deep_supervision_weights` or one weight per output; the auxiliary weights are scaled
    by `aux_factor` (see `aux_weight_factor`) without renormalising, so that as a_t -> 0 only the
    main output is trained (Lee et al.). The last per-output losses are kept in `last_terms`.
    """

    def __init__(self, weights: str | Sequence[float] = "dsn", **dice_ce: object):
        super().__init__()
        self.weights = weights if isinstance(weights, str) else [float(w) for w in weights]
        self.term = DiceCELoss(**dice_ce)  # type: ignore[arg-type]
        self.last_terms: list[float] = []

    def resolved_weights(self, n_outputs: int) -> list[float]:
        """The normalised weights for a network with `n_outputs` outputs (main + heads)."""
        if n_outputs == 1 and not isinstance(self.weights, str) and len(self.weights) != 1:
            return [1.0]  # deep supervision switched off: the main output alone
        return deep_supervision_weights(n_outputs, self.weights)

    def forward(
        self, outputs: Tensor | Sequence[Tensor], target: Tensor, aux_factor: float = 1.0
    ) -> Tensor:
        """Loss of `outputs` (logits, or [main, heads...]) against labels (N, D, H, W) or (N, 1, D, H, W)."""
        outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        if target.ndim == outputs[0].ndim and target.shape[1] == 1:
            target = target[:, 0]
        weights = self.resolved_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        terms: list[float] = []
        for index, (logits, weight) in enumerate(zip(outputs, weights, strict=True)):
            scale = weight if index == 0 else weight * aux_factor
            head_target = downsample_label(target, logits.shape[2:])
            term = self.term(logits, head_target)
            terms.append(float(term.detach()))
            if scale > 0:
                total = total + scale * term
        self.last_terms = terms
        return total
