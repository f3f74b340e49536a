"""`python -m train` (train/__main__.py): the documented options, and a run from the command line."""

from __future__ import annotations

import shlex

import pytest

from model_zoo.registry import CHECKPOINT_DIR, get_card
from tests.conftest import REPO
from train.__main__ import build_parser
from train.__main__ import main as train_main
from train.export import CONFIDENCE_METHOD, PHANTOM_LICENSE
from train.trainer import init_folder


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
        "--iters-per-epoch", "1", "--device", "cpu", "--no-final-eval", "--tta",
        "--out", str(tmp_path / "zoo"), "--work-dir", str(tmp_path / "runs"),
    ])
    assert code == 0
    card = get_card("dsn3d.cli", tmp_path / "zoo")
    assert card.inference.tta is True and card.inference.mirror_axes == (0, 1, 2)  # --tta: served mirrored
    assert card.training.command.startswith("python -m train --arch dsn3d")
    assert card.arch_kwargs == {"features": [4, 8, 8]}
    assert card.license == PHANTOM_LICENSE and card.intended_use.startswith("Trained on synthetic phantoms only")
    assert card.confidence == CONFIDENCE_METHOD
    assert "exported dsn3d.cli" in capsys.readouterr().out


def test_tta_without_flips_in_training_is_refused_before_the_run(capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--synthetic", "1", "--no-augment", "--tta"])
    assert stop.value.code == 2
    assert "--no-augment flips none" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    import pytest

    from train.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("epochs to train (default: 50)", "patches per step (default: 2)", "(default: auto)", "(default: custom)",
                  "random in the run (default: 0)"):
        assert shown in text, shown


def test_by_default_a_run_exports_beside_itself_never_into_the_bundled_zoo(tmp_path, capsys):
    # Checked first: with the old default (the bundled folder) the run below would replace the bundled model.
    assert build_parser().parse_args(["--synthetic", "1"]).out_dir is None
    bundled = {p.name: p.read_bytes() for p in CHECKPOINT_DIR.iterdir()}
    runs = tmp_path / "runs"
    code = train_main([
        "--arch", "unet3d_ds", "--arch-kwargs", '{"features": [8, 16, 32, 64]}', "--tag", "phantom_4mm",
        "--synthetic", "1", "--phantom-spacing", "6", "--val", "0", "--spacing", "6", "--patch", "16",
        "--epochs", "1", "--iters-per-epoch", "1", "--device", "cpu", "--no-final-eval", "--work-dir", str(runs),
    ])
    assert code == 0
    # The bundled model's own name, exported under WORK_DIR/models; the bundled files untouched.
    assert get_card("unet3d_ds.phantom_4mm", runs / "models").training.epochs == 1
    assert {p.name: p.read_bytes() for p in CHECKPOINT_DIR.iterdir()} == bundled
    out = capsys.readouterr().out
    assert f"exported unet3d_ds.phantom_4mm to {runs / 'models'} after" in out
    assert f"serve it with LIVERSEG_MODEL_DIR={runs / 'models'} LIVERSEG_MODEL=unet3d_ds.phantom_4mm" in out


def test_the_bundled_cards_training_command_chain_still_means_what_it_did():
    # Each step passes --out model_zoo/checkpoints: it exports there, and its --init-from reads there.
    chain = get_card("unet3d_ds.phantom_4mm").training.command
    steps = [shlex.split(step)[3:] for step in chain.split(" && ")]
    assert len(steps) == 12 and all(shlex.split(step)[:3] == ["python", "-m", "train"] for step in chain.split(" && "))
    for step in steps:
        args = build_parser().parse_args(step)
        assert args.out_dir == "model_zoo/checkpoints" and args.tag == "phantom_4mm"
        if args.init_from:
            assert init_folder(args.init_from, REPO / args.out_dir) == REPO / "model_zoo" / "checkpoints"
