"""The training checkpoint: what `resume` needs to continue a run exactly where it stopped.

RUN_DIR/`state.safetensors` holds the tensors (weights, optimiser moments, the RNG state) and
RUN_DIR/`state.json` the rest (configuration, optimiser scalars, loss-scaler state, history,
time), so resuming never unpickles anything. Both are written atomically every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model_zoo.atomic_write import write_atomically
from train.config import TrainConfig
from train.run_log import EpochRecord

log = logging.getLogger(__name__)

# What makes a run another network or other data: a resume must not change them.
_SAME_RUN_KEYS = ("arch", "arch_kwargs", "spacing_xyz_mm", "patch_size_dhw", "hu_window", "optimizer",
                  "antialias")
_OLD_DEFAULTS = {"antialias": False}  # runs from before the option trained without it


def save_state(
    run_dir: Path, config: TrainConfig, network: nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, generator: torch.Generator, history: Sequence[EpochRecord],
    seconds: float, earlier_training: dict[str, Any] | None = None, commands: Sequence[str] = (),
) -> None:
    """Write the training checkpoint (weights + optimiser + RNG + history) into `run_dir`, with
    the record of the weights the run started from (`earlier_training`, a card's `training`) and
    the command of each of its sessions (`commands`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors["rng.generator"] = generator.get_state()
    meta = {
        "name": config.name,
        "epoch": len(history),
        "config": config.to_json(),
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "scaler": scaler.state_dict(),
        "history": [dataclasses.asdict(r) for r in history],
        "seconds": seconds,
        "earlier_training": earlier_training,
        "commands": list(commands),
    }
    write_atomically(run_dir / "state.safetensors", lambda tmp: save_file(tensors, tmp))
    write_atomically(run_dir / "state.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))


def load_state(
    directory: Path, config: TrainConfig, network: nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, generator: torch.Generator,
) -> tuple[list[EpochRecord], float, dict[str, Any] | None, list[str]]:
    """Restore, in place, a checkpoint `save_state` wrote; returns (history, training seconds,
    the record of the weights the run started from or None, the commands of its sessions).

    Raises:
        FileNotFoundError: `directory` holds no training checkpoint.
        ValueError: it was trained as another network or on other data than `config` says.
    """
    if not (directory / "state.json").is_file():
        raise FileNotFoundError(f"nothing to resume: {directory / 'state.json'} does not exist")
    meta = json.loads((directory / "state.json").read_text())
    saved, current = meta["config"], config.to_json()
    for key in _SAME_RUN_KEYS:
        was = saved.get(key, _OLD_DEFAULTS.get(key))
        if was != current[key]:
            raise ValueError(f"cannot resume {directory}: it was trained with {key}={was!r}, "
                             f"this run has {current[key]!r}")
    tensors = load_file(directory / "state.safetensors")
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    network.load_state_dict(model, strict=True)
    device = next(network.parameters()).device
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.to(device) if value.ndim else value
    for pid, values in meta["optimizer_scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    if meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    generator.set_state(tensors["rng.generator"])
    history = [EpochRecord(**r) for r in meta["history"]]
    log.info("resumed %s at epoch %d of %d", directory, len(history), config.epochs)
    # Older states hold neither record.
    return history, float(meta["seconds"]), meta.get("earlier_training"), meta.get("commands", [])
