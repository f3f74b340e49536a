"""Deep-supervision loss: ~0 for perfect heads, positive for wrong ones, weights as documented."""

from __future__ import annotations

import pytest
import torch

from train.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    aux_weight_factor,
    deep_supervision_weights,
    downsample_label,
    parse_ds_weights,
    soft_dice,
)


def _label(seed: int = 0, size: int = 16) -> torch.Tensor:
    """(2, size, size, size) int64 labels: a random box of liver per sample."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(2, size, size, size, dtype=torch.long)
    for n in range(2):
        lo = torch.randint(0, size // 2, (3,), generator=g)
        label[n, lo[0]:lo[0] + size // 2, lo[1]:lo[1] + size // 2, lo[2]:lo[2] + size // 2] = 1
    return label


def _perfect_logits(label: torch.Tensor, magnitude: float = 20.0) -> torch.Tensor:
    """Logits (N, 2, ...) of +-magnitude matching the one-hot of `label`."""
    onehot = torch.nn.functional.one_hot(label, 2).movedim(-1, 1).float()
    return (2 * onehot - 1) * magnitude


@pytest.mark.parametrize(
    ("n_outputs", "scheme", "expected"),
    [
        (3, "dsn", [0.6, 0.3, 0.1]),
        (2, "dsn", [0.6, 0.4]),
        (1, "dsn", [1.0]),
        (4, "dsn", [0.6, 0.4 * 9 / 13, 0.4 * 3 / 13, 0.4 / 13]),
        (3, "halving", [4 / 7, 2 / 7, 1 / 7]),
        (4, "halving", [8 / 15, 4 / 15, 2 / 15, 1 / 15]),
        (3, [3.0, 2.0, 1.0], [0.5, 1 / 3, 1 / 6]),
        (3, [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]),
    ],
)
def test_weights_normalised_as_documented(n_outputs, scheme, expected):
    weights = deep_supervision_weights(n_outputs, scheme)
    assert weights == pytest.approx(expected)
    assert sum(weights) == pytest.approx(1.0)


def test_weights_refuse_bad_input():
    with pytest.raises(ValueError, match="2 deep-supervision weights given for 3 outputs"):
        deep_supervision_weights(3, [0.5, 0.5])
    with pytest.raises(ValueError, match="unknown deep-supervision weight scheme 'geometric'"):
        deep_supervision_weights(3, "geometric")
    with pytest.raises(ValueError, match="not all 0"):
        deep_supervision_weights(2, [0.0, 0.0])
    assert parse_ds_weights("0.6,0.3,0.1") == [0.6, 0.3, 0.1]
    assert parse_ds_weights("halving") == "halving"
    with pytest.raises(ValueError, match="--ds-weights 'fast'"):
        parse_ds_weights("fast")


def test_aux_decay_schedules():
    assert aux_weight_factor(5, 10, "none") == 1.0
    # Lee et al.: the companion losses vanish, so the last epoch (t = 3 of 4) trains the main output alone
    assert [aux_weight_factor(t, 4, "linear") for t in range(4)] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert aux_weight_factor(0, 1, "linear") == 1.0
    assert aux_weight_factor(3, 10, "0.5") == pytest.approx(0.125)
    with pytest.raises(ValueError, match="unknown --ds-decay 'cosine'"):
        aux_weight_factor(1, 10, "cosine")


def test_downsample_label_picks_every_stride_th_voxel():
    label = _label(1, 16)
    assert torch.equal(downsample_label(label, (8, 8, 8)), label[:, ::2, ::2, ::2])
    assert torch.equal(downsample_label(label, (4, 4, 4)), label[:, ::4, ::4, ::4])
    assert downsample_label(label, (16, 16, 16)) is label


def test_ds_loss_is_zero_for_perfect_heads_at_their_resolution():
    label = _label(2, 16)
    outputs = [_perfect_logits(label), _perfect_logits(label[:, ::2, ::2, ::2]),
               _perfect_logits(label[:, ::4, ::4, ::4])]
    loss_fn = DeepSupervisionLoss("dsn")
    loss = loss_fn(outputs, label[:, None])  # (N, 1, D, H, W) targets are accepted too
    assert float(loss) < 0.02
    assert all(t < 0.02 for t in loss_fn.last_terms) and len(loss_fn.last_terms) == 3


def test_ds_loss_is_clearly_positive_for_wrong_heads():
    label = _label(3, 16)
    good = _perfect_logits(label)
    wrong_head = _perfect_logits(1 - label[:, ::2, ::2, ::2])  # inverted
    loss_fn = DeepSupervisionLoss([0.6, 0.4])
    loss = float(loss_fn([good, wrong_head], label))
    # the inverted head: CE ~ 40 nats per voxel, Dice 0 -> its term ~ 41; weighted by 0.4
    assert loss_fn.last_terms[0] < 0.02
    assert loss_fn.last_terms[1] > 30
    assert loss == pytest.approx(0.4 * loss_fn.last_terms[1], rel=1e-3)
    # aux_factor 0 leaves the main output alone
    assert float(loss_fn([good, wrong_head], label, aux_factor=0.0)) < 0.02


def test_single_tensor_network_gets_weight_one():
    label = _label(4, 8)
    loss_fn = DeepSupervisionLoss([0.6, 0.3, 0.1])  # switched off at run time: main alone
    assert loss_fn.resolved_weights(1) == [1.0]
    assert float(loss_fn(_perfect_logits(label), label)) < 0.02
    uniform = torch.zeros(2, 2, 8, 8, 8)  # 50/50 everywhere
    single = float(loss_fn(uniform, label))
    dice = float(soft_dice(uniform.softmax(1), label))
    assert single == pytest.approx(float(torch.log(torch.tensor(2.0))) + 1 - dice, rel=1e-5)


def test_batch_dice_with_known_overlap():
    # prediction covers 8 voxels, reference 8, overlap 4 -> Dice 0.5 (batch sums)
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, :2, :2, :2] = 1
    probs = torch.zeros(1, 2, 4, 4, 4)
    probs[0, 1, 1:3, :2, :2] = 1
    probs[0, 0] = 1 - probs[0, 1]
    assert float(soft_dice(probs, target, smooth=0)) == pytest.approx(0.5)
    assert float(soft_dice(probs, target, include_background=True, smooth=0)) == pytest.approx(
        (0.5 + 52 / 56) / 2
    )


def test_gradients_flow_through_every_head():
    label = _label(5, 8)
    outputs = [torch.zeros(2, 2, 8, 8, 8, requires_grad=True), torch.zeros(2, 2, 4, 4, 4, requires_grad=True)]
    DeepSupervisionLoss("dsn")(outputs, label).backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)
    assert DiceCELoss()(outputs[0].detach(), label).item() > 0


def test_fraction_targets_of_0_and_1_give_the_integer_loss():
    label = _label(6, 8)
    logits = torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(6))
    assert float(DiceCELoss()(logits, label.float())) == pytest.approx(float(DiceCELoss()(logits, label)), rel=1e-6)


def test_fraction_targets_score_cross_entropy_and_dice_by_hand():
    fraction = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4).expand(1, 2, 2, 4).contiguous()
    logits = torch.zeros(1, 2, 2, 2, 4)
    logits[:, 1] = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 4)  # background logit 0
    p = torch.sigmoid(logits[:, 1])
    ce = -(fraction * p.log() + (1 - fraction) * (1 - p).log()).mean()
    dice = 2 * (p * fraction).sum() / (p.sum() + fraction.sum())
    loss = DiceCELoss(smooth=0)(logits, fraction)
    assert float(loss) == pytest.approx(float(ce + 1 - dice), rel=1e-5)
    with pytest.raises(ValueError, match="two-class"):
        DiceCELoss()(torch.zeros(1, 3, 2, 2, 4), fraction)


def test_downsample_fraction_averages_each_coarse_voxel():
    fraction = torch.rand(2, 8, 8, 8, generator=torch.Generator().manual_seed(7))
    half = downsample_label(fraction, (4, 4, 4))
    assert half.dtype == torch.float32
    assert float(half[1, 2, 3, 0]) == pytest.approx(float(fraction[1, 4:6, 6:8, 0:2].mean()))
    assert float(half.mean()) == pytest.approx(float(fraction.mean()), rel=1e-5)  # volume kept
