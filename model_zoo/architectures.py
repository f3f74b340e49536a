"""Registry of network architectures (timm's `register_model`): `create_network(arch, **kwargs)`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from model_zoo.lookup import look_up

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: make a network constructible by `name` with JSON-only kwargs."""

    def register(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture {name!r} registered twice")
        _ARCHITECTURES[name] = factory
        return factory

    return register


def list_architectures() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_ARCHITECTURES)


def create_network(arch: str, **kwargs: object) -> nn.Module:
    """Build architecture `arch` with `kwargs` (as a card stores them). Raises UnknownNameError."""
    return look_up(_ARCHITECTURES, arch, "architecture")(**kwargs)
