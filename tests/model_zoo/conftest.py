"""Fixtures of the model_zoo tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP threads on a busy 2-core machine spin
    (test_blocks ran 6x slower with 2 threads beside other jobs), so use one and restore the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
