"""The checkpoint registry: cards and safetensors weights in one directory, loaded by name.

A checkpoint NAME ("arch.tag") is two files side by side: `NAME.json` (a `ModelCard`) and
`NAME.safetensors` (the state dict). Loading checks the weights' SHA-256 against the card before the
file is parsed, reads them with safetensors only (never `torch.load`, which runs pickled code), and
loads them strictly into `create_network(card.arch, **card.arch_kwargs)`. Saving (export) writes
the weights and the card, nothing else: optimiser state stays with training.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model_zoo.architectures import create_network
from model_zoo.atomic_write import write_atomically
from model_zoo.backends import Runtime, TorchRuntime, make_runtime
from model_zoo.card import Calibration, ModelCard
from model_zoo.lookup import UnknownNameError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
_CHUNK_BYTES = 1 << 20


class ChecksumMismatch(ValueError):
    """The weights file's SHA-256 is not the one its card declares (corrupt or tampered)."""


class IncompatibleWeights(ValueError):
    """The weights do not fit the network the card describes (missing/unexpected keys, shapes)."""


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference (eval mode, on its device), the card it was built from, and
    the runtime that runs its forward pass (model_zoo.backends; eager PyTorch unless given)."""

    network: nn.Module
    card: ModelCard
    runtime: Runtime | None = None

    def __post_init__(self) -> None:
        if self.runtime is None:
            object.__setattr__(self, "runtime", TorchRuntime(self.network))


def _directory(directory: str | os.PathLike[str] | None) -> Path:
    return CHECKPOINT_DIR if directory is None else Path(directory)


def checkpoint_names(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the checkpoints (card files `NAME.json`) in `directory` (default: the bundled ones)."""
    folder = _directory(directory)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def _read_card(path: Path) -> ModelCard:
    try:
        card = ModelCard.model_validate_json(path.read_bytes())
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"invalid checkpoint card {path}: {error}") from error
    if card.name != path.stem:
        raise ValueError(
            f"checkpoint card {path} is named {card.name!r}; the file must be {card.name}.json"
        )
    return card


def list_cards(directory: str | os.PathLike[str] | None = None) -> list[ModelCard]:
    """Every checkpoint card in `directory` (default: model_zoo/checkpoints), sorted by name.

    Raises ValueError naming the file when a card is invalid.
    """
    folder = _directory(directory)
    return [_read_card(folder / f"{name}.json") for name in checkpoint_names(folder)]


def get_card(name: str, directory: str | os.PathLike[str] | None = None) -> ModelCard:
    """The card of checkpoint `name`. Raises UnknownNameError (valid names, nearest one) if absent."""
    folder = _directory(directory)
    names = checkpoint_names(folder)
    if name not in names:
        raise UnknownNameError("checkpoint", name, names)
    return _read_card(folder / f"{name}.json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(card: ModelCard, directory: str | os.PathLike[str] | None = None) -> Path:
    """Check the card's weights file exists and has the declared SHA-256; return its path.

    Raises ValueError (no weights declared), FileNotFoundError, ChecksumMismatch.
    """
    if card.weights_file is None or card.weights_sha256 is None:
        raise ValueError(
            f"card {card.name!r} declares no weights_file/weights_sha256; save it first"
        )
    path = _directory(directory) / card.weights_file
    if not path.is_file():
        raise FileNotFoundError(f"weights of {card.name!r} not found: {path}")
    actual = sha256_file(path)
    if actual != card.weights_sha256:
        raise ChecksumMismatch(
            f"SHA-256 of {path} is {actual}, but card {card.name!r} expects {card.weights_sha256}: "
            "the file is corrupt or was changed; refusing to load it"
        )
    return path


def _check_fits(
    network: nn.Module, state: dict[str, torch.Tensor], card: ModelCard, source: str
) -> None:
    """Raise IncompatibleWeights with every missing/unexpected key and shape mismatch, if any."""
    expected = network.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [
        f"{key}: weights {tuple(state[key].shape)} vs network {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & state.keys())
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [
            f"{len(found)} {what}: {few(found)}"
            for what, found in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if found
        ]
        raise IncompatibleWeights(
            f"{source} does not fit {card.arch}(**{card.arch_kwargs}) from card {card.name!r}: "
            + "; ".join(problems)
            + ". Check the card's arch/arch_kwargs against the network that was saved."
        )


def window_batch_shape(card: ModelCard) -> tuple[int, ...]:
    """The largest window batch the card's inference sends: (B, C_in, D, H, W), what a runtime is
    warmed for."""
    return (card.inference.window_batch_size, card.arch_kwargs.get("in_channels", 1),
            *card.input.patch_size_dhw)


def load_model(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    backend: str = "torch",
) -> LoadedModel:
    """Build checkpoint `name`'s network, load its verified weights strictly, in eval mode on `device`.

    `backend` ("auto", "openvino", "torch": model_zoo.backends.make_runtime) picks what runs its
    forward pass; an OpenVINO runtime is compiled here for every batch up to the card's
    `window_batch_size` (one compiled model), so that no request waits for it.

    Raises UnknownNameError, ChecksumMismatch (checked before the weights are parsed),
    IncompatibleWeights (the card's arch_kwargs do not fit the weights), FileNotFoundError.
    """
    card = get_card(name, directory)
    path = verify_weights(card, directory)
    state = load_file(path, device="cpu")
    network = create_network(card.arch, **card.arch_kwargs)
    _check_fits(network, state, card, str(path))
    network.load_state_dict(state, strict=True)
    network.to(device).eval()
    shapes = [window_batch_shape(card)]
    runtime = make_runtime(network, backend, device, warm_shapes=shapes if backend != "torch" else (),
                           cache_key=f"{card.name}:{card.weights_sha256}")
    logger.info("loaded checkpoint %s (%s) on %s, %s", card.name, path, device, runtime.name)
    return LoadedModel(network=network, card=card, runtime=runtime)


def save_checkpoint(
    network: nn.Module,
    card: ModelCard,
    directory: str | os.PathLike[str] | None = None,
) -> ModelCard:
    """Export `network`'s weights and `card` as NAME.safetensors + NAME.json in `directory`.

    The card must describe the network (its arch/arch_kwargs rebuild a network the weights fit
    strictly: checked here so a bad card never reaches a server). Returns the card as written, with
    `weights_file` and `weights_sha256` filled in. Files are written atomically (temp + rename).
    """
    folder = _directory(directory)
    folder.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage; contiguous is required by the format.
    state = {
        key: value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for key, value in network.state_dict().items()
    }
    _check_fits(
        create_network(card.arch, **card.arch_kwargs),
        state,
        card,
        f"network {type(network).__name__}",
    )

    weights = folder / f"{card.name}.safetensors"
    write_atomically(
        weights, lambda tmp: save_file(state, tmp, metadata={"name": card.name, "format": "pt"})
    )
    written = ModelCard.model_validate(
        {**card.model_dump(), "weights_file": weights.name, "weights_sha256": sha256_file(weights)}
    )
    card_text = written.model_dump_json(indent=2) + "\n"
    write_atomically(folder / f"{card.name}.json", lambda tmp: Path(tmp).write_text(card_text))
    logger.info(
        "saved checkpoint %s to %s (sha256 %s)", written.name, folder, written.weights_sha256
    )
    return written


def record_metrics(
    name: str, metrics: dict[str, float], directory: str | os.PathLike[str] | None = None
) -> ModelCard:
    """Add (or replace) `metrics` in checkpoint `name`'s card, e.g. an evaluation made after export.

    Only the card changes; the weights and their SHA-256 stay as they are.
    """
    return _rewrite_card(name, directory, lambda card: {"metrics": {**card.metrics, **metrics}})


def record_calibration(
    name: str, calibration: Calibration, directory: str | os.PathLike[str] | None = None
) -> ModelCard:
    """Replace checkpoint `name`'s calibration (`python -m train.calibrate`); the weights stay as they are."""
    return _rewrite_card(name, directory, lambda card: {"calibration": calibration.model_dump()})


def _rewrite_card(
    name: str, directory: str | os.PathLike[str] | None, changes: Callable[[ModelCard], dict[str, object]]
) -> ModelCard:
    folder = _directory(directory)
    card = get_card(name, folder)
    updated = ModelCard.model_validate({**card.model_dump(), **changes(card)})
    text = updated.model_dump_json(indent=2) + "\n"
    write_atomically(folder / f"{name}.json", lambda tmp: Path(tmp).write_text(text))
    return updated
