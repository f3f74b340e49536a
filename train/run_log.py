"""A run's log: one `EpochRecord` per epoch, written as `log.csv` and drawn as `curves.png`.

The CSV's columns are decided here, for the writer and for `read_log` (`train.plot_runs` draws
several runs from it).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class EpochRecord:
    """One row of log.csv. loss_terms: the last iteration-averaged loss of each output (main first)."""

    epoch: int
    train_loss: float
    loss_terms: list[float]
    val_dice: float | None
    lr: float
    aux_factor: float
    seconds: float


def write_log(history: Sequence[EpochRecord], run_dir: Path, title: str) -> None:
    """RUN_DIR/log.csv (one row per epoch) and RUN_DIR/curves.png (loss and validation Dice)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n_terms = max((len(r.loss_terms) for r in history), default=0)
    with open(run_dir / "log.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["epoch", "train_loss", *[f"loss_out{i}" for i in range(n_terms)],
                         "val_dice", "lr", "aux_factor", "seconds"])
        for r in history:
            terms = [f"{t:.5f}" for t in r.loss_terms] + [""] * (n_terms - len(r.loss_terms))
            writer.writerow([r.epoch, f"{r.train_loss:.5f}", *terms,
                             "" if r.val_dice is None else f"{r.val_dice:.4f}", f"{r.lr:.3g}",
                             f"{r.aux_factor:.3f}", f"{r.seconds:.1f}"])
    plot_curves(history, run_dir / "curves.png", title)


def read_log(run: Path) -> list[dict[str, str]]:
    """The rows of RUN/log.csv (or of RUN itself when it is the CSV)."""
    path = run if run.suffix == ".csv" else run / "log.csv"
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def plot_curves(history: Sequence[EpochRecord], path: Path, title: str) -> None:
    """PNG with the training loss and the validation Dice per epoch (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r.train_loss for r in history], marker=".", label="total")
    if history and len(history[-1].loss_terms) > 1:
        ax_loss.plot(epochs, [r.loss_terms[0] for r in history], linestyle="--", label="main output")
    ax_loss.set(xlabel="epoch", ylabel="training loss (Dice + CE)", title=title)
    ax_loss.legend()
    val = [(r.epoch, r.val_dice) for r in history if r.val_dice is not None]
    if val:
        ax_dice.plot(*zip(*val, strict=True), marker="o", color="tab:green")
    ax_dice.set(xlabel="epoch", ylabel="validation Dice (model grid)", ylim=(0, 1), title="validation")
    ax_dice.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
