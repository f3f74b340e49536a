"""What a device setting ("auto", "cpu", "cuda:1") names: one reading for the service and for training."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; any other name as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
