"""The runtimes: OpenVINO gives PyTorch's logits, is compiled once for the largest window batch at
warm-up and runs every smaller batch on the same compiled model, and PyTorch takes over, saying why, when OpenVINO
is missing or fails."""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest
import torch

from model_zoo import create_network
from model_zoo.backends import OpenVinoRuntime, TorchRuntime, make_runtime

# Per test, not for the module: the GPU check runs this file's CUDA tests where no OpenVINO is carried.
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="OpenVINO is a core dependency: pip install -e .")

SHAPES = [(3, 1, 32, 32, 32)]  # the largest window batch, as load_model warms it


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_network("unet3d_ds", features=[4, 8, 16]).eval()


@pytest.fixture(scope="module")
def openvino_runtime(network) -> OpenVinoRuntime:
    runtime = make_runtime(network, "auto", "cpu", warm_shapes=SHAPES)
    assert isinstance(runtime, OpenVinoRuntime), runtime.fallback_reason
    return runtime


@needs_openvino
def test_openvino_gives_pytorchs_logits_for_every_output(network, openvino_runtime) -> None:
    batch = torch.rand((3, 1, 32, 32, 32), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = TorchRuntime(network)(batch)
    got = openvino_runtime(batch)
    assert len(got) == len(reference) == len(network.heads)
    for ours, theirs in zip(got, reference, strict=True):
        assert ours.shape == theirs.shape and ours.dtype == torch.float32
        assert (ours - theirs).abs().max().item() <= 1e-3


@needs_openvino
def test_one_compiled_batch_serves_every_smaller_batch(network, openvino_runtime) -> None:
    # each compiled model keeps its own activation memory: batches 1 and 2 run on the 3's
    for n in (1, 2):
        batch = torch.rand((n, 1, 32, 32, 32), generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            reference = TorchRuntime(network)(batch)
        got = openvino_runtime(batch)
        for ours, theirs in zip(got, reference, strict=True):
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max().item() <= 1e-3
    assert openvino_runtime.compiled_shapes == SHAPES
    assert openvino_runtime.name.startswith("openvino ")


@needs_openvino
def test_a_larger_batch_or_another_window_is_compiled_when_met(network) -> None:
    runtime = OpenVinoRuntime(network)
    runtime.warm([(2, 1, 32, 32, 32)])
    assert runtime(torch.zeros((4, 1, 32, 32, 32)))[0].shape[0] == 4
    runtime(torch.zeros((1, 1, 16, 32, 32)))
    # the batch of 4 replaced the model bounded at 2; the other window has its own
    assert runtime.compiled_shapes == [(1, 1, 16, 32, 32), (4, 1, 32, 32, 32)]


def test_missing_openvino_falls_back_to_pytorch_and_says_why(network, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with caplog.at_level(logging.WARNING, logger="model_zoo.backends"):
        runtime = make_runtime(network, "openvino", "cpu")
    assert isinstance(runtime, TorchRuntime) and runtime.name == "torch"
    assert "not installed" in runtime.fallback_reason
    assert "not installed" in caplog.text


@needs_openvino
def test_a_network_openvino_cannot_compile_falls_back_to_pytorch(network, monkeypatch, caplog) -> None:
    def refuse(self, shape, depth):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(OpenVinoRuntime, "_compiled_for", refuse)
    with caplog.at_level(logging.WARNING, logger="model_zoo.backends"):
        runtime = make_runtime(network, "auto", "cpu", warm_shapes=SHAPES)
    assert isinstance(runtime, TorchRuntime)
    assert "could not convert or compile" in runtime.fallback_reason and "unsupported operation" in caplog.text


@pytest.mark.parametrize("backend, device", [("torch", "cpu"), ("auto", "cuda"), ("openvino", "cuda:1")])
def test_pytorch_runs_when_asked_and_on_cuda(network, backend, device) -> None:
    runtime = make_runtime(network, backend, device)  # nothing runs: no GPU needed
    assert isinstance(runtime, TorchRuntime) and runtime.fallback_reason is None


def test_an_unknown_backend_is_refused(network) -> None:
    with pytest.raises(ValueError, match="auto, openvino, torch"):
        make_runtime(network, "tensorrt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_pytorch_runs_on_the_gpu(network) -> None:
    runtime = make_runtime(network.cuda(), "auto", "cuda", warm_shapes=SHAPES[:1])
    outputs = runtime(torch.zeros(SHAPES[0], device="cuda"))
    assert runtime.name == "torch" and outputs[0].device.type == "cuda"
    network.cpu()
