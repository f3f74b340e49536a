"""The checkpoint registry: save/load round trip, checksum refusal, strict load, names, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_zoo import registry
from model_zoo.__main__ import main as cli
from model_zoo.architectures import create_network, list_architectures
from model_zoo.card import InputContract, ModelCard
from model_zoo.lookup import UnknownNameError
from model_zoo.registry import (
    ChecksumMismatch,
    IncompatibleWeights,
    checkpoint_names,
    get_card,
    list_cards,
    load_model,
    record_metrics,
    save_checkpoint,
    sha256_file,
)

ARCH = "unet3d_ds"
TINY = {"features": [4, 8, 16]}
NAME = f"{ARCH}.tiny"


def tiny_card(name: str = NAME, **arch_kwargs: object) -> ModelCard:
    return ModelCard(
        name=name,
        arch=ARCH,
        arch_kwargs={**TINY, **arch_kwargs},
        input=InputContract(
            spacing_xyz_mm=(3, 3, 3), hu_window=(-200, 250), patch_size_dhw=(16, 16, 16)
        ),
        metrics={"dice_phantoms": 0.5},
    )


@pytest.fixture
def tiny_network() -> torch.nn.Module:
    if ARCH not in list_architectures():
        pytest.skip(f"architecture {ARCH!r} is not registered yet")
    torch.manual_seed(0)
    network = create_network(ARCH, **TINY)
    with torch.no_grad():  # make every weight non-trivial so a wrong load cannot go unnoticed
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return network.eval()


@pytest.fixture
def saved(tiny_network: torch.nn.Module, tmp_path: Path) -> ModelCard:
    return save_checkpoint(tiny_network, tiny_card(), tmp_path)


def test_save_then_load_gives_identical_outputs(
    tiny_network: torch.nn.Module, saved: ModelCard, tmp_path: Path
) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{NAME}.json", f"{NAME}.safetensors"]
    assert saved.weights_file == f"{NAME}.safetensors"
    assert saved.weights_sha256 == sha256_file(tmp_path / saved.weights_file)
    assert ModelCard.model_validate_json((tmp_path / f"{NAME}.json").read_text()) == saved
    assert get_card(NAME, tmp_path) == saved
    assert list_cards(tmp_path) == [saved]

    loaded = load_model(NAME, tmp_path)
    assert loaded.card == saved
    assert not loaded.network.training
    x = torch.randn(1, 1, 13, 12, 11)  # odd sizes on purpose
    with torch.no_grad():
        assert torch.equal(loaded.network(x), tiny_network(x))
    for key, value in tiny_network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key


def test_weights_are_safetensors_not_pickles(saved: ModelCard, tmp_path: Path) -> None:
    raw = (tmp_path / saved.weights_file).read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])
    assert header["__metadata__"] == {"name": NAME, "format": "pt"}
    assert raw[:2] != b"\x80\x04"  # not a pickle protocol header


def test_tampered_weights_are_refused_before_parsing(
    saved: ModelCard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / saved.weights_file
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last tensor's data
    weights.write_bytes(bytes(raw))

    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights were parsed before their checksum was checked")

    monkeypatch.setattr(registry, "load_file", must_not_parse)
    with pytest.raises(ChecksumMismatch) as caught:
        load_model(NAME, tmp_path)
    message = str(caught.value)
    assert (
        saved.weights_sha256 in message
        and sha256_file(weights) in message
        and str(weights) in message
    )
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("arch_kwargs", "problem"),
    [
        ({"features": [4, 8, 32]}, "shape mismatches"),
        ({"features": [4, 8]}, "unexpected keys"),
        ({"features": [4, 8, 16, 32]}, "missing keys"),
    ],
)
def test_card_that_does_not_fit_the_weights_fails_strict_load(
    saved: ModelCard, tmp_path: Path, arch_kwargs: dict, problem: str
) -> None:
    card_file = tmp_path / f"{NAME}.json"
    data = json.loads(card_file.read_text())
    data["arch_kwargs"] = arch_kwargs
    card_file.write_text(json.dumps(data))
    with pytest.raises(IncompatibleWeights, match=problem) as caught:
        load_model(NAME, tmp_path)
    assert NAME in str(caught.value) and "arch_kwargs" in str(caught.value)


def test_save_refuses_a_card_that_does_not_describe_the_network(
    tiny_network: torch.nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(IncompatibleWeights, match="shape mismatches"):
        save_checkpoint(tiny_network, tiny_card(features=[4, 8, 32]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_suggest_the_nearest(saved: ModelCard, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match=rf"Did you mean '{NAME}'\?.*Valid: {NAME}\."):
        get_card(f"{ARCH}.tiyn", tmp_path)
    with pytest.raises(UnknownNameError, match="Did you mean"):
        load_model(f"{ARCH}.tinny", tmp_path)
    with pytest.raises(UnknownNameError, match="Valid: none"):
        get_card(NAME, tmp_path / "empty")
    assert checkpoint_names(tmp_path / "missing") == []


def test_a_card_must_match_its_file_name(saved: ModelCard, tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.json").rename(tmp_path / f"{ARCH}.renamed.json")
    with pytest.raises(ValueError, match=f"is named '{NAME}'"):
        list_cards(tmp_path)


def test_an_invalid_card_file_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.json").write_text('{"name": "unet3d_ds.tiny"}')
    with pytest.raises(ValueError, match=rf"invalid checkpoint card .*{NAME}\.json"):
        get_card(NAME, tmp_path)


def test_missing_weights_and_unsaved_cards(saved: ModelCard, tmp_path: Path) -> None:
    (tmp_path / saved.weights_file).unlink()
    with pytest.raises(FileNotFoundError, match="weights of 'unet3d_ds.tiny' not found"):
        load_model(NAME, tmp_path)
    (tmp_path / f"{NAME}.json").write_text(tiny_card().model_dump_json())
    with pytest.raises(ValueError, match="declares no weights_file"):
        load_model(NAME, tmp_path)


def test_cli_lists_and_shows(
    saved: ModelCard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "3x3x3 mm" in out and "16x16x16" in out and "dice_phantoms=0.5" in out
    assert ARCH in out.split("Architectures:")[1]

    assert cli(["--dir", str(tmp_path), "show", NAME]) == 0
    assert ModelCard.model_validate_json(capsys.readouterr().out) == saved

    assert cli(["--dir", str(tmp_path), "show", f"{ARCH}.tiyn"]) == 2
    assert f"Did you mean '{NAME}'?" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch: ~3-8 s on 2 busy cores
def test_python_dash_m_exits_non_zero_on_an_unknown_name(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "model_zoo", "--dir", str(tmp_path), "show", "dsn3d.nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "Unknown checkpoint 'dsn3d.nope'" in run.stderr and "Valid: none" in run.stderr


@pytest.mark.parametrize("name", checkpoint_names())
def test_every_bundled_checkpoint_verifies_and_loads_strictly(name: str) -> None:
    loaded = load_model(name)
    assert loaded.card.name == name and not loaded.network.training


def test_recorded_metrics_change_the_card_and_not_the_weights(saved: ModelCard, tmp_path: Path) -> None:
    weights_before = (tmp_path / saved.weights_file).read_bytes()
    updated = record_metrics(NAME, {"real_sample_dice": 0.91, "dice_phantoms": 0.6}, tmp_path)
    assert updated.metrics == {"dice_phantoms": 0.6, "real_sample_dice": 0.91}
    assert get_card(NAME, tmp_path) == updated
    assert updated.weights_sha256 == saved.weights_sha256
    assert (tmp_path / saved.weights_file).read_bytes() == weights_before
    load_model(NAME, tmp_path)  # still loads: the checksum is the weights'
    with pytest.raises(ValueError):  # a card holds finite numbers only
        record_metrics(NAME, {"hd95": float("inf")}, tmp_path)
