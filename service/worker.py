"""The inference worker: one per device, owning the models and the CUDA context.

Requests reach it through a bounded queue and wait on a future. A full queue is refused at
once (the web layer answers 503 with Retry-After). CUDA running out of memory is retried once
with one window at a time and aggregation on the host. Stopping drains what was accepted.
A plain thread, not a process pool: nothing daemonic that orchestrators kill (TS #503).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import SimpleITK as sitk
import torch

from model_zoo.card import ModelCard
from model_zoo.device import resolve_device
from model_zoo.lookup import UnknownNameError
from model_zoo.registry import LoadedModel, get_card, load_model, window_batch_shape
from service.errors import QueueFull, ShuttingDown, UnknownModel
from service.pipeline import InferenceOptions, Progress, Segmentation, segment, with_fallback

log = logging.getLogger(__name__)


@dataclass
class SegmentTask:
    """One segmentation for the worker: a CT in HU, a model name and how to run it."""

    image: sitk.Image
    model_name: str
    options: InferenceOptions
    progress: Progress | None = None
    # Set by whoever waits on the task when nobody will collect its result (a timed-out request,
    # a client gone): the worker stops it at the next window batch and takes the next task.
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class DecodeTicket:
    """A place in line for a slot to decode an upload into (InferenceWorker.decode_ticket)."""

    granted: threading.Event = field(default_factory=threading.Event)
    given_back: bool = False

    def wait(self, timeout: float | None) -> bool:
        """True once the slot is this ticket's (it keeps its place in line when the wait times out)."""
        return self.granted.wait(timeout)


class Cancelled(Exception):
    """A task was stopped between window batches because its result was no longer wanted."""


@dataclass
class WorkerResult:
    """The segmentation plus what the worker did to get it."""

    segmentation: Segmentation
    model: LoadedModel
    device: str
    oom_fallback: bool
    queued_s: float


class InferenceWorker:
    """Runs segmentations one at a time on one device, from a bounded queue."""

    def __init__(self, *, device: str = "auto", queue_size: int = 8, model_dir: Path | None = None,
                 backend: str = "torch", decoded_uploads: int = 2):
        self.device = resolve_device(device)
        self.model_dir = model_dir
        self.backend = backend  # what runs the network (model_zoo.backends); CUDA keeps PyTorch
        self._queue: queue.Queue[tuple[Future[WorkerResult], SegmentTask, float] | None] = queue.Queue(queue_size)
        self._models: dict[str, LoadedModel] = {}
        self._thread = threading.Thread(target=self._serve, name=f"liverseg-worker-{self.device}")
        self._stopping = False
        self.ready = False
        self.recent_seconds: list[float] = []  # durations of the last runs, for time estimates
        self._started = 0.0  # when the running task started
        # Uploads decoded and held in memory at once, the running one included (Settings.decoded_uploads):
        # a request past them waits as files on disk, so memory does not grow with the clients.
        self._free_slots = decoded_uploads
        self._slot_line: deque[DecodeTicket] = deque()
        self._slot_lock = threading.Lock()

    def check_model(self, name: str) -> ModelCard:
        """The card of model `name`; UnknownModel unless it is in the registry (cheap: reads the card only)."""
        try:
            return get_card(name, self.model_dir)
        except UnknownNameError as error:
            raise UnknownModel(str(error)) from None

    def model(self, name: str) -> LoadedModel:
        """The loaded model, loaded once and kept warm (TS #383)."""
        if name not in self._models:
            self.check_model(name)
            started = time.perf_counter()
            self._models[name] = load_model(name, self.model_dir, device=self.device, backend=self.backend)
            log.info("loaded %s on %s in %.2f s", name, self.device_name(self._models[name]),
                     time.perf_counter() - started)
        return self._models[name]

    def device_name(self, model: LoadedModel) -> str:
        """The device and what runs the network on it, as the summary reports it: "cpu (openvino 2026.4.1)"."""
        return f"{self.device} ({model.runtime.name})"

    def start(self, warm: list[str] = ()) -> None:
        """Load and warm the given models (compiled for each window batch, or one forward pass), then
        start taking work."""
        for name in warm:
            loaded = self.model(name)
            loaded.runtime.warm([window_batch_shape(loaded.card)])
        self.ready = True
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Tasks waiting, not counting the one running."""
        return self._queue.qsize()

    @property
    def mean_run_s(self) -> float | None:
        """Mean duration of the last runs; None before the first."""
        return sum(self.recent_seconds) / len(self.recent_seconds) if self.recent_seconds else None

    def _queue_full(self) -> QueueFull:
        return QueueFull(
            f"The inference queue is full ({self._queue.maxsize} waiting); try again shortly.",
            # A slot frees when the running task ends: about one run from now.
            retry_after_s=max(1, round(self.mean_run_s or 5)),
        )

    def decode_ticket(self) -> DecodeTicket:
        """A place in line for a slot to decode an upload into (Settings.decoded_uploads): granted at
        once when a slot is free and nobody waits, else in arrival order as slots are given back.
        Give it back with `give_back_decode_ticket` once the answer is built, or to leave the line.
        QueueFull when those waiting, and the queue, already hold `queue_size`."""
        ticket = DecodeTicket()
        with self._slot_lock:
            if self._free_slots and not self._slot_line:
                self._free_slots -= 1
                ticket.granted.set()
            elif len(self._slot_line) + self.queue_depth >= self._queue.maxsize:
                raise self._queue_full()
            else:
                self._slot_line.append(ticket)
        return ticket

    def give_back_decode_ticket(self, ticket: DecodeTicket) -> None:
        """Free a granted ticket's slot for the first in line, or take a waiting one out of the line."""
        with self._slot_lock:
            if not ticket.granted.is_set():
                self._slot_line.remove(ticket)
                return
            if ticket.given_back:
                raise ValueError("this decode ticket was given back already")
            ticket.given_back = True
            if self._slot_line:
                self._slot_line.popleft().granted.set()
            else:
                self._free_slots += 1

    def submit(self, task: SegmentTask) -> Future[WorkerResult]:
        """Queue a task; QueueFull or ShuttingDown (both Busy: 503) when it cannot be taken."""
        if self._stopping:
            raise ShuttingDown("The service is shutting down; try again shortly.", retry_after_s=10)
        future: Future[WorkerResult] = Future()
        try:
            self._queue.put_nowait((future, task, time.perf_counter()))
        except queue.Full:
            raise self._queue_full() from None
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish everything already accepted, then stop the thread."""
        self._stopping = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            future, task, queued_at = item
            if not future.set_running_or_notify_cancel():
                continue  # the client gave up while it waited
            started = self._started = time.perf_counter()
            try:
                future.set_result(self._run(task, started - queued_at))
            except BaseException as error:  # noqa: BLE001  the worker must outlive any one task
                future.set_exception(error)
            finally:
                if not task.cancelled.is_set():  # a run cut short says nothing of how long runs take
                    self.recent_seconds = [*self.recent_seconds[-9:], time.perf_counter() - started]

    def _run(self, task: SegmentTask, queued_s: float) -> WorkerResult:
        loaded = self.model(task.model_name)
        options = replace(task.options, window_device=self.device)

        def progress(fraction: float) -> None:  # called after every window batch
            if task.cancelled.is_set():
                raise Cancelled("the segmentation was cancelled: its result was no longer wanted")
            if task.progress is not None:
                task.progress(fraction)

        try:
            result = segment(task.image, loaded, options, progress)
            return WorkerResult(result, loaded, self.device_name(loaded), False, queued_s)
        except Cancelled:
            log.info("cancelled a segmentation nobody would collect, after %.1f s", time.perf_counter() - self._started)
            raise
        except torch.cuda.OutOfMemoryError:
            # Large CTs must not fail for memory (TS #157): one window at a time, stitch on the host.
            log.warning("CUDA out of memory; retrying with batch 1 and host aggregation")
            torch.cuda.empty_cache()
            result = segment(task.image, loaded, with_fallback(options), progress)
            return WorkerResult(result, loaded, self.device_name(loaded), True, queued_s)
