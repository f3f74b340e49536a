"""`python -m train` (console script `liverseg-train`): train a network and export it to the zoo.

    python -m train --arch unet3d_ds --arch-kwargs '{"features": [16, 32, 64, 128]}' \\
        --tag phantom_3mm --synthetic 16 --val 2 --spacing 3 --patch 64 --epochs 40

writes runs/models/unet3d_ds.phantom_3mm.{json,safetensors} (the card and weights; --out moves
them: never into the bundled model_zoo/checkpoints unless asked) and runs/unet3d_ds.phantom_3mm/
(training checkpoint, log.csv, curves.png, and prepared/: every case on the model grid, read back
by a resumed or repeated run; delete it to reclaim the disk). Serve the result with
LIVERSEG_MODEL_DIR=runs/models LIVERSEG_MODEL=unet3d_ds.phantom_3mm. --init-from NAME reads NAME
from --out's folder, else from the bundled zoo.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from train.augment import AugmentConfig
from train.classes import CLASS_SCHEMES
from train.config import TrainConfig
from train.data import DATA_FORMATS
from train.losses import parse_ds_weights
from train.phantoms import ANATOMIES
from train.trainer import train

# Checkpoints a run exports go here under --work-dir unless --out says otherwise: a run
# must not replace the bundled model (model_zoo/checkpoints) by default.
MODELS_FOLDER = "models"


def _triple(text: str, kind: type) -> tuple:
    parts = [kind(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give one number or three (comma-separated)")
    return tuple(parts)


def _pair(text: str) -> tuple[float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give two numbers, lo,hi")
    return parts[0], parts[1]


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--arch-kwargs is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--arch-kwargs must be a JSON object, e.g. '{\"features\": [8, 16, 32]}'")
    return value


class _Help(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default where its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = (action.default is None or action.default is False or action.default == []
                 or action.default is argparse.SUPPRESS or action.nargs == 0)  # a flag: its help says it
        if not action.option_strings or "default" in text or unset:  # `is`: a default of 0 is shown
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments (defaults from TrainConfig)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                formatter_class=_Help)
    p.add_argument("--arch", default=d.arch, help="registered architecture (dsn3d, unet3d_ds, unetpp3d)")
    p.add_argument("--arch-kwargs", type=_json_object, default={}, help="constructor kwargs as JSON")
    p.add_argument("--tag", default=d.tag, help="checkpoint name is ARCH.TAG")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N synthetic phantoms")
    data.add_argument("--data", metavar="PATH", help="an MSD task folder, a LiTS folder or a JSON datalist")
    p.add_argument("--phantom-spacing", dest="phantom_spacing_mm", type=float, default=None, metavar="MM",
                   help="draw phantoms on an isotropic MM grid (fast) instead of their scanner grid")
    p.add_argument("--phantom-anatomy", type=int, nargs="+", default=d.phantom_anatomy, choices=ANATOMIES,
                   help="1: the classic phantoms; 2: heart, chest-to-pelvis views, diseased livers; 3: 2 with the "
                        "ribs set inside the wall's muscle; '1 2': --synthetic N of each")
    p.add_argument("--sick-fraction", type=float, default=d.sick_fraction, metavar="F",
                   help="this fraction of the anatomy-2 and -3 training phantoms drawn with a cirrhotic liver carrying HCC "
                        "(the diseased livers real scans show; validation stays as drawn)")
    p.add_argument("--ascites-fraction", type=float, default=d.ascites_fraction, metavar="F",
                   help="this fraction of those sick livers inside heavy ascites (a 20-40 mm rim of fluid)")
    p.add_argument("--native-fraction", type=float, default=d.native_fraction, metavar="F",
                   help="this fraction of the training phantoms scanned without contrast (native phase; the "
                        "others keep their drawn phase, validation stays as drawn)")
    p.add_argument("--classes", default=d.classes, choices=CLASS_SCHEMES,
                   help="liver: liver or not; organs: the liver and its neighbours (heart, spleen, stomach "
                        "and bowel, kidneys, vessels, gallbladder, pancreas) from the phantoms' tissue maps")
    p.add_argument("--format", dest="data_format", default=d.data_format, choices=DATA_FORMATS)
    p.add_argument("--val", type=int, default=d.n_val, metavar="N",
                   help="validation cases held out (phantoms: N more); a datalist's own split wins")
    p.add_argument("--spacing", dest="spacing_xyz_mm", type=lambda t: _triple(t, float), default=d.spacing_xyz_mm,
                   help="model spacing in mm, x,y,z or one value (default 3)")
    p.add_argument("--patch", dest="patch_size_dhw", type=lambda t: _triple(t, int), default=d.patch_size_dhw,
                   help="patch size D,H,W in voxels or one value (default 64)")
    p.add_argument("--hu-window", type=_pair, default=d.hu_window, help="HU window lo,hi (default -200,300)")
    p.add_argument("--crop-to-body", action="store_true", help="contract crops the body's bounding box")
    p.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=d.antialias,
                   help="block-average the CT onto the model grid and train on liver fractions "
                        "(default on; --no-antialias: linear point sampling and 0/1 labels)")
    p.add_argument("--init-from", metavar="NAME", default=None,
                   help="fine-tune: start from the weights of checkpoint NAME (in --out's folder, else the "
                        "bundled zoo); a unet3d_ds may be widened to whole multiples of its features (train/widen.py)")
    p.add_argument("--distill-from", metavar="NAME", default=None,
                   help="knowledge distillation: add a KL term to checkpoint NAME's liver/background "
                        "probabilities on each patch (train/distill.py; NAME found as --init-from's)")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight, metavar="W",
                   help="weight of the distillation term")
    p.add_argument("--distill-temperature", type=float, default=d.distill_temperature, metavar="T",
                   help="softmax temperature of both networks in the distillation term")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs to train")
    p.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch, help="optimiser steps per epoch")
    p.add_argument("--batch", dest="batch_size", type=int, default=d.batch_size, help="patches per step")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer,
                   help="adamw, or sgd (momentum 0.99, Nesterov; use --lr 0.01); both with poly decay")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (poly decay)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="the optimiser's weight decay")
    p.add_argument("--ds-weights", type=parse_ds_weights, default=d.ds_weights,
                   help='"dsn" (0.6/0.3/0.1), "halving" (nnU-Net) or numbers "0.6,0.3,0.1"')
    p.add_argument("--ds-decay", default=d.ds_decay,
                   help='auxiliary weights over epochs: "none", "linear" (Lee et al.) or a factor per epoch')
    p.add_argument("--no-deep-supervision", dest="deep_supervision", action="store_false",
                   help="train the main output only")
    p.add_argument("--no-augment", action="store_true", help="switch every augmentation off")
    p.add_argument("--val-every", type=int, default=d.val_every, metavar="EPOCHS", help="validate every EPOCHS epochs")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of everything random in the run")
    p.add_argument("--data-workers", type=int, default=d.data_workers, metavar="N",
                   help="processes preparing the cases onto the model grid (default: CPU cores, at most 8)")
    p.add_argument("--device", default=d.device, help='"auto", "cpu", "cuda", "cuda:1"...')
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    p.add_argument("--out", dest="out_dir", default=None,
                   help=f"where the checkpoint is exported (default: WORK_DIR/{MODELS_FOLDER}, beside the run; "
                        "--out model_zoo/checkpoints replaces a bundled model of the same name)")
    p.add_argument("--work-dir", default=d.work_dir, help="training checkpoints and logs (default runs/)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue the run in WORK_DIR/ARCH.TAG (or DIR) from its last epoch")
    p.add_argument("--tta", action="store_true",
                   help="the card serves mirror test-time augmentation by default (over the axes flipped in "
                        "training); it changes the card and the final validation, not the training")
    p.add_argument("--no-final-eval", dest="final_evaluation", action="store_false",
                   help="skip scoring the validation cases on their input grid before export")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, train, print where the checkpoint went."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = vars(args)
    resume = options.pop("resume")
    augment = AugmentConfig.off() if options.pop("no_augment") else AugmentConfig()
    if args.tta and augment.p_flip == 0:  # said now, not by the card's check after the whole run
        build_parser().error("--tta mirrors over the axes flipped in training, and --no-augment flips none")
    options["synthetic"] = options["synthetic"] or 0
    options["out_dir"] = options["out_dir"] or str(Path(options["work_dir"]) / MODELS_FOLDER)
    options["n_val"] = options.pop("val")
    anatomy = options["phantom_anatomy"]
    options["phantom_anatomy"] = anatomy if isinstance(anatomy, int) else (anatomy[0] if len(anatomy) == 1 else tuple(anatomy))
    config = TrainConfig(**options, augment=augment,
                         command="python -m train " + shlex.join(argv))
    result = train(config, resume=resume)
    card = result.card
    print(f"exported {card.name} to {config.out_dir} after {result.seconds:.0f} s; serve it with "
          f"LIVERSEG_MODEL_DIR={shlex.quote(config.out_dir)} LIVERSEG_MODEL={card.name}")
    print(json.dumps(card.metrics, indent=1))
    print(f"training log: {result.run_dir / 'log.csv'}, curves: {result.run_dir / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
