"""`python -m train` (train/__main__.py): the documented options, and a run from the command line."""

from __future__ import annotations

import pytest

from model_zoo.registry import get_card
from train.__main__ import build_parser
from train.__main__ import main as train_main
from train.export import CONFIDENCE_METHOD, PHANTOM_LICENSE


def test_cli_parses_the_documented_options():
    args = build_parser().parse_args([
        "--arch", "dsn3d", "--arch-kwargs", '{"features": [8, 16, 32]}', "--synthetic", "4",
        "--spacing", "3", "--patch", "64,96,96", "--ds-weights", "0.6,0.3,0.1", "--ds-decay", "linear",
        "--no-deep-supervision", "--resume",
    ])
    assert args.arch_kwargs == {"features": [8, 16, 32]}
    assert args.spacing_xyz_mm == (3.0, 3.0, 3.0) and args.patch_size_dhw == (64, 96, 96)
    assert args.ds_weights == [0.6, 0.3, 0.1] and args.ds_decay == "linear"
    assert args.deep_supervision is False and args.resume is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--synthetic", "2", "--data", "x"])  # one source only
    assert args.antialias is True and args.init_from is None  # the defaults
    args = build_parser().parse_args(["--synthetic", "2", "--no-antialias", "--init-from", "unet3d_ds.a"])
    assert args.antialias is False and args.init_from == "unet3d_ds.a"


def test_cli_trains_and_exports(tmp_path, capsys):
    code = train_main([
        "--arch", "dsn3d", "--arch-kwargs", '{"features": [4, 8, 8]}', "--tag", "cli", "--synthetic", "1",
        "--phantom-spacing", "6", "--val", "1", "--spacing", "6", "--patch", "16", "--epochs", "1",
        "--iters-per-epoch", "1", "--device", "cpu", "--no-final-eval",
        "--out", str(tmp_path / "zoo"), "--work-dir", str(tmp_path / "runs"),
    ])
    assert code == 0
    card = get_card("dsn3d.cli", tmp_path / "zoo")
    assert card.training.command.startswith("python -m train --arch dsn3d")
    assert card.arch_kwargs == {"features": [4, 8, 8]}
    assert card.license == PHANTOM_LICENSE and card.intended_use.startswith("Trained on synthetic phantoms only")
    assert card.confidence == CONFIDENCE_METHOD
    assert "exported dsn3d.cli" in capsys.readouterr().out


def test_help_shows_every_default(capsys):
    import pytest

    from train.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("epochs to train (default: 50)", "patches per step (default: 2)", "(default: auto)", "(default: custom)",
                  "random in the run (default: 0)"):
        assert shown in text, shown
