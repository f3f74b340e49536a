"""`python -m model_zoo`: list the checkpoints and architectures; `show NAME` prints a card's JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from model_zoo.architectures import list_architectures
from model_zoo.card import ModelCard
from model_zoo.lookup import UnknownNameError
from model_zoo.registry import CHECKPOINT_DIR, get_card, list_cards

_KEY_METRICS = 3


def _row(card: ModelCard) -> list[str]:
    spacing = "x".join(f"{s:g}" for s in card.input.spacing_xyz_mm)
    patch = "x".join(str(p) for p in card.input.patch_size_dhw)
    metrics = ", ".join(f"{k}={v:.3g}" for k, v in list(card.metrics.items())[:_KEY_METRICS])
    return [card.name, card.arch, f"{spacing} mm", patch, card.input.orientation, metrics or "-"]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _list(directory: str | None) -> int:
    cards = list_cards(directory)
    print(f"Checkpoints in {directory or CHECKPOINT_DIR}:")
    if cards:
        header = ["name", "arch", "spacing xyz", "patch dhw", "orient", "metrics"]
        print(_table([header, *(_row(card) for card in cards)]))
    else:
        print("  (none)")
    print(f"\nArchitectures: {', '.join(list_architectures()) or '(none)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on an unknown checkpoint name or invalid card)."""
    parser = argparse.ArgumentParser(prog="python -m model_zoo", description=__doc__)
    parser.add_argument(
        "--dir", default=None, help="checkpoint directory (default: the bundled one)"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="list checkpoints and architectures (the default)")
    show = commands.add_parser("show", help="print a checkpoint's card as JSON")
    show.add_argument("name", help='checkpoint name, "arch.tag"')
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            print(get_card(args.name, args.dir).model_dump_json(indent=2))
            return 0
        return _list(args.dir)
    except (UnknownNameError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
