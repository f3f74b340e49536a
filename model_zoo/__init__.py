"""Networks, checkpoints with their cards, and the input contract they declare."""

from model_zoo import networks  # noqa: F401  (registers the architectures)
from model_zoo.architectures import create_network, list_architectures, register_architecture
from model_zoo.names import UnknownNameError

__all__ = ["create_network", "list_architectures", "register_architecture", "UnknownNameError"]
