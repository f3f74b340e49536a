"""Put the validation curves of several training runs in one PNG (e.g. with and without deep supervision).

    python -m train.plot_runs runs/unet3d_ds.ds_on runs/unet3d_ds.ds_off \\
        --labels "deep supervision" "main output only" -o docs/deep_supervision.png

Reads each run's log.csv (`train.run_log`, written by `python -m train`): the main output's
training loss on the left (the one term every run has) and validation Dice on the right, both per
epoch, so compare runs with the same budget of iterations.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from train.run_log import read_log


def plot_runs(runs: Sequence[Path], labels: Sequence[str], out: Path, title: str) -> None:
    """One PNG: each run's main-output training loss (left) and validation Dice (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for run, label in zip(runs, labels, strict=True):
        rows = read_log(run)
        epochs = [int(r["epoch"]) for r in rows]
        main_loss = [float(r.get("loss_out0") or r["train_loss"]) for r in rows]
        ax_loss.plot(epochs, main_loss, marker=".", label=label)
        val = [(int(r["epoch"]), float(r["val_dice"])) for r in rows if r["val_dice"]]
        if val:
            ax_dice.plot(*zip(*val, strict=True), marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="main output's training loss (Dice + CE)", title=title)
    ax_dice.set(xlabel="epoch", ylabel="validation Dice (held-out phantoms)", ylim=(0, 1), title="validation")
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m train.plot_runs RUN... -o PNG`."""
    parser = argparse.ArgumentParser(prog="python -m train.plot_runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or their log.csv)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: folder names)")
    parser.add_argument("--title", default="training", help="title of the loss panel")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")
    plot_runs(args.runs, labels, args.out, args.title)
    print(f"wrote {args.out}")  # noqa: T201  (the CLI's output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
