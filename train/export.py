"""What a run hands to the model zoo: the card (contract, training record, metrics) and the weights.

The metrics on the card are the per-epoch validation Dice on the model grid (from the run's
history) and, unless the run skips it, the final weights scored on the validation cases through
the service's full path on their input grids (`train.evaluate.evaluate_case`). Optimiser state
never goes to the zoo: it stays in the run's training checkpoint (`train.state`).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_zoo.card import InferenceDefaults, ModelCard, Training, current_framework_versions
from model_zoo.registry import LoadedModel, save_checkpoint
from service.confidence import HOW_COMPUTED
from train.classes import channel_def
from train.config import TrainConfig
from train.data import CaseSource, load_case
from train.evaluate import evaluate_case
from train.metrics import summarise
from train.run_log import EpochRecord

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
PHANTOM_LICENSE = "Apache-2.0 (weights trained here on procedural phantoms; no third-party data)"
# `python -m train.evaluate --confidence --record PREFIX` adds how well the confidence finds the
# wrong voxels (PREFIX_confidence_auroc) to the card's metrics.
CONFIDENCE_METHOD = (f"{HOW_COMPUTED} (service/confidence.py). AUROC of 1 - confidence for finding "
                     "the wrong voxels: metrics *_confidence_auroc.")


def code_revision() -> str:
    """`git rev-parse HEAD` of this checkout (+ "-dirty" with uncommitted changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head or "unknown"


# What the cards we write say about air: windows wholly below it carry no liver and are not run
# (the service skipped them so before cards said it, and the bundled card says it).
SKIP_AIR_HU = -500.0


def build_card(config: TrainConfig, training: Training, metrics: dict[str, float] | None = None) -> ModelCard:
    """The card of a run's weights: `config`'s network and contract, `training`'s record, `metrics`."""
    flips = tuple(a for a in config.augment.flip_axes) if config.augment.p_flip > 0 else ()
    synthetic_only = config.synthetic > 0  # --synthetic wins over --data
    return ModelCard(
        name=config.name,
        arch=config.arch,
        arch_kwargs=config.network_kwargs,
        input=config.contract(),
        channel_def=channel_def(config.classes),
        # nnU-Net allows test-time mirroring over the axes flipped in training, and only those.
        inference=InferenceDefaults(mirror_axes=flips, tta=config.tta, skip_air_hu=SKIP_AIR_HU),
        training=training,
        metrics=metrics or {},
        confidence=CONFIDENCE_METHOD,
        intended_use=("Trained on synthetic phantoms only. " if synthetic_only else "")
        + "Research and testing of the liverseg service; not a medical device, not for clinical use.",
        # Weights trained on someone's CT inherit that data's terms, which only its owner can state.
        license=PHANTOM_LICENSE if synthetic_only else "",
        framework_versions=current_framework_versions(),
    )


def model_grid_metrics(history: Sequence[EpochRecord]) -> dict[str, float]:
    """The last and the best validation Dice on the model grid, from the run's history."""
    dices = [r.val_dice for r in history if r.val_dice is not None]
    if not dices:
        return {}
    return {"val_dice_model_grid_final": float(dices[-1]),
            "val_dice_model_grid_best": float(dices[int(np.argmax(dices))])}


def input_grid_metrics(
    network: nn.Module, card: ModelCard, sources: Sequence[CaseSource], device: torch.device
) -> dict[str, float]:
    """Mean Dice, HD95, ASSD, VOE, RVD of `network` over `sources`, through the service's path."""
    model = LoadedModel(network=network.eval(), card=card)
    rows = []
    for source in sources:
        image, liver = load_case(source)
        rows.append(evaluate_case(image, liver, model=model, device=str(device)).metrics)
    network.train()
    return summarise(rows, "val")


def export(network: nn.Module, card: ModelCard, out_dir: str | Path) -> ModelCard:
    """Save the weights and `card` into the zoo folder `out_dir`; returns the card as written."""
    network.eval()
    written = save_checkpoint(network, card, out_dir)
    log.info("exported %s to %s: %s", written.name, out_dir, written.metrics)
    return written
