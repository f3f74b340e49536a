"""bench/pruning.py and bench/compare_networks.py on tiny untrained networks: every row, every figure."""

from __future__ import annotations

import json

import pytest

from bench import compare_networks, pruning
from bench.model_metrics import parameter_count
from model_zoo.architectures import create_network
from model_zoo.card import Training
from model_zoo.registry import load_model, save_checkpoint
from tests.train.conftest import tiny_config
from train.export import build_card

FAST = ["--phantoms", "1", "--phantom-spacing", "6", "--no-real-scans", "--quick", "--repeats", "1"]


def tiny_checkpoint(tmp_path, arch: str, features: list[int]) -> str:
    """An untrained network on the tests' 6 mm contract, saved with its card in tmp_path/zoo."""
    config = tiny_config(tmp_path, arch=arch, arch_kwargs={"features": features}, tag="tiny")
    card = build_card(config, Training(data="none", epochs=0, seconds=0.0, command="pytest", code_revision="test"))
    save_checkpoint(create_network(arch, **config.network_kwargs), card, tmp_path / "zoo")
    return card.name


def test_parameters_at_full_depth_are_all_but_the_other_heads(tmp_path):
    network = load_model(tiny_checkpoint(tmp_path, "unetpp3d", [2, 4, 4, 8, 8]), tmp_path / "zoo").network
    other_heads = sum(parameter_count(head) for head in network.heads[:-1])
    assert pruning.parameters_at_depth(network, 4) == parameter_count(network) - other_heads
    assert pruning.parameters_at_depth(network, 1) < pruning.parameters_at_depth(network, 2)


@pytest.mark.slow
def test_the_pruning_table_has_a_row_per_depth_with_more_parameters_at_each(tmp_path, capsys):
    name = tiny_checkpoint(tmp_path, "unetpp3d", [2, 4, 4, 8, 8])
    out = tmp_path / "pruning.json"
    report = pruning.main(["--model", name, "--model-dir", str(tmp_path / "zoo"), *FAST, "--json", str(out)])
    rows = report["rows"]
    assert [r["depth"] for r in rows] == [1, 2, 3, 4]
    parameters = [r["parameters"] for r in rows]
    assert all(a < b for a, b in zip(parameters, parameters[1:], strict=False)), parameters
    for r in rows:
        assert r["latency_s"] > 0
        assert r["held_out_phantoms"]["cases"] == 1 and 0.0 <= r["held_out_phantoms"]["dice"] <= 1.0
        assert r["real_scans"] == {"cases": 0, "dice": None, "hd95_mm": None, "confidence_auroc": None}
    assert json.loads(out.read_text()) == report
    printed = capsys.readouterr().out
    assert "| L | parameters |" in printed and f"| 4 | {parameters[-1]:,} |" in printed


def test_pruning_refuses_a_network_without_depths(tmp_path):
    name = tiny_checkpoint(tmp_path, "dsn3d", [2, 4, 8])
    with pytest.raises(SystemExit, match="pruning needs a unetpp3d"):
        pruning.main(["--model", name, "--model-dir", str(tmp_path / "zoo"), *FAST])


@pytest.mark.slow
def test_the_comparison_scores_every_network_on_the_same_cases(tmp_path):
    names = [tiny_checkpoint(tmp_path, "dsn3d", [2, 4, 8]), tiny_checkpoint(tmp_path, "unetpp3d", [2, 4, 8])]
    report = compare_networks.main(["--models", *names, "--model-dir", str(tmp_path / "zoo"), *FAST])
    assert [r["model"] for r in report["rows"]] == names
    assert report["held_out_phantoms"] == ["phantom-200000"]
    for r in report["rows"]:
        assert r["parameters"] == parameter_count(load_model(r["model"], tmp_path / "zoo").network)
        assert r["latency_s"] > 0 and (r["peak_mib"] is None or r["peak_mib"] >= 0)
        assert r["held_out_phantoms"]["cases"] == 1 and 0.0 <= r["held_out_phantoms"]["dice"] <= 1.0
