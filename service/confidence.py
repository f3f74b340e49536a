"""Confidence from deep supervision: where the heads disagree with the final label, the model is unsure.

Every output k (the main output and each deep-supervision head, all aggregated over the same
windows and upsampled to the model grid) gives p_k, its probability of liver. With y the final
label, output k agrees with y by a_k = p_k where y is liver and 1 - p_k elsewhere. The voxel's
confidence is the weakest agreement rescaled to [0, 1]:

    confidence = clip(2 * min_k a_k - 1, 0, 1)

It is 1 where every output is sure of the final label, and 0 where any output sits on the
decision boundary or votes for the other class. The heads are trained against the same ground
truth, so their disagreement marks voxels the network has not resolved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The formula above in one sentence: the JSON summary's "how", and the start of a card's "confidence".
HOW_COMPUTED = (
    "clip(2 * min_k a_k - 1, 0, 1), a_k being how much output k (the main output and each "
    "deep-supervision head) agrees with the final label; 1 = every head sure, 0 = a head on the boundary"
)


def confidence_map(liver_probabilities: list[np.ndarray], label: np.ndarray) -> np.ndarray:
    """Per-voxel confidence in [0, 1] (float32, (D, H, W)) from each output's liver probability.

    Args:
        liver_probabilities: one (D, H, W) array per output (main first), values in [0, 1].
        label: (D, H, W) bool or 0/1, the final mask.
    """
    is_liver = label.astype(bool)
    weakest = np.ones(label.shape, dtype=np.float32)
    for p in liver_probabilities:
        agreement = np.where(is_liver, p, 1.0 - p).astype(np.float32, copy=False)
        np.minimum(weakest, agreement, out=weakest)
    return np.clip(2.0 * weakest - 1.0, 0.0, 1.0)


@dataclass(frozen=True)
class ConfidenceSummary:
    """What goes into every JSON summary about how sure the model is of the liver it found."""

    mean_in_liver: float
    fraction_below_threshold: float
    threshold: float
    review_recommended: bool


def summarise_confidence(
    confidence: np.ndarray, label: np.ndarray, *, low: float, review_fraction: float
) -> ConfidenceSummary:
    """Mean confidence inside the liver and the fraction of liver voxels below `low`.

    Review is recommended when that fraction exceeds `review_fraction`, or when no liver was found.
    """
    inside = confidence[label.astype(bool)]
    if inside.size == 0:
        return ConfidenceSummary(0.0, 1.0, low, True)
    fraction = float(np.mean(inside < low))
    return ConfidenceSummary(float(inside.mean()), fraction, low, fraction > review_fraction)
