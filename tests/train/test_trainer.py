"""train.trainer: a real (tiny) training run that learns and exports, and fine-tuning from a checkpoint."""

from __future__ import annotations

import csv
import re

import pytest
import torch

import train.trainer as trainer_module
from model_zoo.card import ModelCard
from model_zoo.registry import CHECKPOINT_DIR, get_card, load_model
from tests.train.conftest import TINY, tiny_config
from train.trainer import Trainer, init_folder


@pytest.mark.slow
def test_tiny_training_run_learns_the_liver_and_exports_a_loadable_checkpoint(tmp_path):
    # 300 iterations of a [4, 8, 16] U-Net on 32^3 patches at 6 mm, 8 phantoms, antialiased grid
    # (the default). With seeds 0 and 1 the validation Dice (model grid) went from 0.12 untrained
    # and 0.49 / 0.54 after the first epoch to 0.76 / 0.79, and 0.80 on the input grid: 0.7 leaves
    # margin.
    trainer = Trainer(tiny_config(tmp_path))
    trainer.load_data()
    untrained = trainer.validate()
    result = trainer.fit()
    dices = [r.val_dice for r in result.history]
    assert untrained < 0.3
    assert dices[-1] >= 0.7, dices
    assert result.card.metrics["val_dice"] >= 0.7  # the service's path, input grid

    # the export round-trips and loads through the registry (strictly, checksum checked)
    zoo = tmp_path / "zoo"
    card = get_card("unet3d_ds.test", zoo)
    assert card == result.card
    assert ModelCard.model_validate_json(card.model_dump_json()) == card
    assert card.training.epochs == 12 and card.training.command == "pytest"
    assert card.training.code_revision and card.training.seconds > 0
    assert "8 synthetic phantoms" in card.training.data
    assert card.input.spacing_xyz_mm == (6.0, 6.0, 6.0) and card.input.patch_size_dhw == (32, 32, 32)
    loaded = load_model("unet3d_ds.test", zoo)
    for key, value in trainer.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value.cpu())
    assert sorted(p.name for p in zoo.iterdir()) == ["unet3d_ds.test.json", "unet3d_ds.test.safetensors"]

    # logs: one CSV row per epoch, curves drawn
    run = tmp_path / "runs" / "unet3d_ds.test"
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert float(rows[-1]["val_dice"]) == pytest.approx(dices[-1], abs=1e-4)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "prepared").glob("phantom-*.npz"))) == 8 + 2  # training and validation


def test_init_from_starts_from_a_checkpoints_weights(tmp_path):
    fast = dict(synthetic=1, n_val=1, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=1,
                final_evaluation=False)
    Trainer(tiny_config(tmp_path, **fast, tag="first", seed=1)).fit()
    first = load_model("unet3d_ds.first", tmp_path / "zoo").network.state_dict()
    fresh = Trainer(tiny_config(tmp_path, **fast, tag="second", seed=2)).network.state_dict()
    tuned = Trainer(tiny_config(tmp_path, **fast, tag="second", seed=2, init_from="unet3d_ds.first"))
    state = tuned.network.state_dict()
    assert all(torch.equal(state[k], first[k]) for k in first)
    assert not all(torch.equal(fresh[k], first[k]) for k in first)  # not the seed's own weights
    with pytest.raises(ValueError, match="init-from unet3d_ds.first: it is a unet3d_ds.*keeps the depth"):
        Trainer(tiny_config(tmp_path, **fast, tag="third", arch_kwargs={"features": [4, 8]},
                        init_from="unet3d_ds.first"))
    with pytest.raises(ValueError, match="init-from unet3d_ds.first: it is a unet3d_ds.*whole multiple"):
        Trainer(tiny_config(tmp_path, **fast, tag="third", arch_kwargs={"features": [6, 8, 16]},
                        init_from="unet3d_ds.first"))
    with pytest.raises(ValueError, match="init-from unet3d_ds.first: it is a unet3d_ds.*features, or the classes alone, may differ"):
        Trainer(tiny_config(tmp_path, **fast, tag="third", arch_kwargs={**TINY, "block": "residual"},
                        init_from="unet3d_ds.first"))


def test_init_from_a_narrower_checkpoint_starts_from_what_it_computes(tmp_path):
    fast = dict(synthetic=1, n_val=1, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=1,
                final_evaluation=False)
    Trainer(tiny_config(tmp_path, **fast, tag="narrow", seed=1)).fit()
    narrow = load_model("unet3d_ds.narrow", tmp_path / "zoo").network
    wide = Trainer(tiny_config(tmp_path, **fast, tag="wide", arch_kwargs={"features": [8, 16, 32]},
                           init_from="unet3d_ds.narrow")).network.eval()
    x = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        expected, got = narrow(x, deep_supervision=True), wide(x, deep_supervision=True)
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))


def test_without_a_terminal_an_epoch_logs_its_progress(tmp_path, monkeypatch, caplog):
    # Under pytest stderr is no terminal, so tqdm is off, as in a piped or nohup'd run.
    monkeypatch.setattr(trainer_module, "PROGRESS_EVERY_S", 0.0)  # every iteration, not every 30 s
    config = tiny_config(tmp_path, synthetic=1, n_val=0, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=3,
                         final_evaluation=False)
    caplog.set_level("INFO", logger="train.trainer")
    Trainer(config).fit()
    progress = [r.getMessage() for r in caplog.records if ": iteration " in r.getMessage()]
    assert len(progress) == 2, progress  # the last iteration is the epoch's own line
    for k, line in enumerate(progress, 1):
        assert re.fullmatch(rf"epoch 1/1: iteration {k}/3, loss \d+\.\d{{4}}, \d+\.\d\d it/s", line), line


def test_init_from_reads_the_out_folder_first_then_the_bundled_zoo(tmp_path):
    Trainer(tiny_config(tmp_path, synthetic=1, n_val=0, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=1,
                        final_evaluation=False)).fit()
    assert init_folder("unet3d_ds.test", tmp_path / "zoo") == tmp_path / "zoo"
    assert init_folder("unet3d_ds.phantom_4mm", tmp_path / "zoo") == CHECKPOINT_DIR
    assert init_folder("unet3d_ds.phantom_4mm", tmp_path / "absent") == CHECKPOINT_DIR


def test_a_card_made_from_a_checkpoint_records_the_whole_chain_across_a_resume(tmp_path):
    fast = dict(synthetic=1, n_val=0, phantom_spacing_mm=6.0, iters_per_epoch=1, final_evaluation=False)
    Trainer(tiny_config(tmp_path, **fast, tag="first", epochs=2, command="python -m train A")).fit()
    first = get_card("unet3d_ds.first", tmp_path / "zoo").training
    # The second run starts from the first, exports over it, and is resumed for 2 more epochs:
    # its --init-from then names its own export, which must not be counted twice.
    second = dict(tag="first", init_from="unet3d_ds.first", command="python -m train B")
    Trainer(tiny_config(tmp_path, **fast, **second, epochs=1)).fit()
    once = get_card("unet3d_ds.first", tmp_path / "zoo").training
    assert once.command == "python -m train A && python -m train B"
    assert once.epochs == 3 and once.seconds >= first.seconds
    assert once.data.startswith(first.data.rstrip(". ") + ". Then: ")
    Trainer(tiny_config(tmp_path, **fast, **{**second, "command": "python -m train B --resume"},
                        epochs=3)).fit(resume=True)
    resumed = get_card("unet3d_ds.first", tmp_path / "zoo").training
    assert resumed.command == "python -m train A && python -m train B && python -m train B --resume"
    assert resumed.epochs == 2 + 3
