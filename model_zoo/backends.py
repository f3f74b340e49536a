"""What runs a network's forward pass: PyTorch (the reference, and the only one on CUDA) or OpenVINO.

Both map a window batch (B, C_in, D, H, W) float32 to every output of the network with deep
supervision, main first, as float32 tensors on the batch's device. OpenVINO (f32, CPU) gave the
same logits to ~3e-4 at about half PyTorch's time on the bundled model. It is converted once per
model and pruning depth (TorchScript trace, then `openvino.convert_model`) and compiled once per
window shape, at warm-up for the largest window batch the service sends, with a batch dimension
bounded by it: one compiled model runs every smaller batch too. Compiling each batch size apart
kept an activation arena per size (about 30 MB per 48^3 window on the bundled model: 290 MB for
batches 1-4 where the bounded one takes 130 MB) and ran no faster.

`make_runtime` decides which one runs, in one place: PyTorch on CUDA, or when asked for, or when
OpenVINO is missing or fails to convert or compile the network (the reason is logged and kept in
`Runtime.fallback_reason`).
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

BackendName = Literal["auto", "openvino", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "openvino", "torch")


class Runtime(Protocol):
    """A network's forward pass with deep supervision on, on some engine."""

    name: str  # what the summary's `device` names: "torch" or "openvino 2026.4.1"
    fallback_reason: str | None  # why OpenVINO is not the one running, when it was wanted

    def __call__(self, batch: Tensor, depth: int | None = None) -> list[Tensor]: ...

    def warm(self, shapes: Sequence[tuple[int, ...]], depth: int | None = None) -> None: ...


class _WithHeads(nn.Module):
    """The network with its deep-supervision heads always returned, as a tuple (what tracing needs)."""

    def __init__(self, network: nn.Module, depth: int | None):
        super().__init__()
        self.network, self.kwargs = network, ({} if depth is None else {"depth": depth})

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = self.network(x, deep_supervision=True, **self.kwargs)
        return tuple(outputs) if isinstance(outputs, list | tuple) else (outputs,)


class TorchRuntime:
    """Eager PyTorch: the reference every other runtime is checked against."""

    def __init__(self, network: nn.Module, fallback_reason: str | None = None):
        self.network, self.fallback_reason = network, fallback_reason
        self.name = "torch"

    def __call__(self, batch: Tensor, depth: int | None = None) -> list[Tensor]:
        return list(_WithHeads(self.network, depth)(batch))

    @torch.inference_mode()
    def warm(self, shapes: Sequence[tuple[int, ...]], depth: int | None = None) -> None:
        """One forward pass on the largest shape: kernels chosen and memory allocated before a request."""
        if shapes:
            device = next(self.network.parameters(), torch.zeros(())).device
            self(torch.zeros(max(shapes), device=device), depth)


class OpenVinoRuntime:
    """OpenVINO on the CPU (f32): converted once per depth, compiled once per window shape for
    every batch of 1 up to the largest met (a bounded dynamic batch dimension)."""

    def __init__(self, network: nn.Module):
        import openvino

        self._ov = openvino
        self._core = openvino.Core()
        self.network = network
        self.name = f"openvino {openvino.__version__.split('-')[0]}"
        self.fallback_reason = None
        self._models: dict[int | None, object] = {}  # depth -> converted (not compiled) model
        # (window shape (C, D, H, W), depth) -> (largest batch, compiled model for batches 1..it)
        self._compiled: dict[tuple[tuple[int, ...], int | None], tuple[int, object]] = {}

    def _compiled_for(self, shape: tuple[int, ...], depth: int | None):
        key = (tuple(shape[1:]), depth)
        if key not in self._compiled or self._compiled[key][0] < shape[0]:
            if depth not in self._models:
                example = torch.zeros(shape)
                with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                    # the networks' padding arithmetic warns that a trace fixes it to this shape;
                    # each shape gets its own reshape below, so it does not matter here
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates trace
                    traced = torch.jit.trace(_WithHeads(self.network, depth).eval(), example,
                                             check_trace=False)
                    self._models[depth] = self._ov.convert_model(traced, example_input=example)
            model = self._models[depth].clone()
            batch = self._ov.Dimension(1, int(shape[0]))
            model.reshape({model.inputs[0]: self._ov.PartialShape([batch, *shape[1:]])})
            self._compiled.pop(key, None)  # a smaller bound's memory goes before the new one's comes
            self._compiled[key] = (int(shape[0]), self._core.compile_model(
                model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}))
            release_freed_heap()
        return self._compiled[key][1]

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """The largest input shape each compiled model takes (any smaller batch runs on it too)."""
        return sorted({(batch, *window) for (window, _), (batch, _) in self._compiled.items()})

    def __call__(self, batch: Tensor, depth: int | None = None) -> list[Tensor]:
        compiled = self._compiled_for(tuple(batch.shape), depth)
        results = compiled(batch.detach().to("cpu", torch.float32).contiguous().numpy())
        return [torch.from_numpy(results[i].copy()) for i in range(len(compiled.outputs))]

    def warm(self, shapes: Sequence[tuple[int, ...]], depth: int | None = None) -> None:
        """Convert and compile for each shape given (the largest window batch a request sends)."""
        for shape in shapes:
            self._compiled_for(tuple(shape), depth)


def release_freed_heap() -> None:
    """Give the C heap's freed pages back to the system (glibc's malloc_trim; elsewhere nothing).

    Tracing and converting the network free ~260 MB of the bundled model's temporaries that glibc
    keeps in the process for later; without this a server's resident memory never drops by it.
    """
    try:  # the process's own symbols: libc is loaded already (find_library would run ldconfig)
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to give back
        pass


# Converted and compiled OpenVINO runtimes by checkpoint (name and weights' SHA-256): a process
# that loads one checkpoint again (a second worker, each test's app) does not convert it again.
_OPENVINO_RUNTIMES: dict[str, OpenVinoRuntime] = {}


def make_runtime(network: nn.Module, backend: str = "auto", device: str | torch.device = "cpu",
                 warm_shapes: Sequence[tuple[int, ...]] = (), cache_key: str | None = None) -> Runtime:
    """The runtime for `network` (in eval mode, on `device`), warmed on `warm_shapes`.

    "auto" and "openvino" try OpenVINO on the CPU and fall back to PyTorch with a logged reason
    when it is not installed or cannot convert or compile the network; "torch" and any CUDA
    device run PyTorch. `cache_key` names the weights (the registry gives name and SHA-256): an
    OpenVINO runtime made for the same key is reused. Raises ValueError for an unknown backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch" or torch.device(device).type != "cpu":
        runtime: Runtime = TorchRuntime(network)
    else:
        try:
            runtime = _OPENVINO_RUNTIMES.get(cache_key) if cache_key else None
            runtime = runtime or OpenVinoRuntime(network)
            runtime.warm(warm_shapes)
            if cache_key:
                _OPENVINO_RUNTIMES[cache_key] = runtime
        except Exception as error:  # noqa: BLE001  any failure of the optional runtime: use the reference
            reason = (f"OpenVINO is not installed ({error})" if isinstance(error, ImportError)
                      else f"OpenVINO could not convert or compile the network: {type(error).__name__}: {error}")
            logger.warning("running %s on PyTorch: %s", type(network).__name__, reason)
            return _warmed(TorchRuntime(network, fallback_reason=reason), warm_shapes)
        logger.info("running %s on %s (CPU, f32)", type(network).__name__, runtime.name)
        return runtime
    return _warmed(runtime, warm_shapes)


def _warmed(runtime: Runtime, shapes: Sequence[tuple[int, ...]]) -> Runtime:
    runtime.warm(shapes)
    return runtime
