"""Networks, checkpoints with their cards, and the input contract they declare."""

from model_zoo import networks  # noqa: F401  (registers the architectures)
from model_zoo.architectures import create_network, list_architectures, register_architecture
from model_zoo.card import InferenceDefaults, InputContract, ModelCard, Training
from model_zoo.lookup import UnknownNameError
from model_zoo.registry import (
    ChecksumMismatch,
    IncompatibleWeights,
    LoadedModel,
    get_card,
    list_cards,
    load_model,
    save_checkpoint,
)

__all__ = [
    "create_network",
    "list_architectures",
    "register_architecture",
    "UnknownNameError",
    "ModelCard",
    "InputContract",
    "InferenceDefaults",
    "Training",
    "ChecksumMismatch",
    "IncompatibleWeights",
    "LoadedModel",
    "list_cards",
    "get_card",
    "load_model",
    "save_checkpoint",
]
