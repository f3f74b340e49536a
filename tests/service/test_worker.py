"""The inference worker: bounded queue, OOM fallback, survival of failing tasks, draining on stop."""

from __future__ import annotations

import threading

import pytest
import SimpleITK as sitk
import torch

from service import worker as worker_module
from service.errors import Busy, InvalidOption
from service.options import InferenceOptions
from service.worker import InferenceWorker, SegmentTask
from tests.conftest import ORIENTATIONS, dice, sphere_ct
from tests.service.test_pipeline import threshold_model

NAME = "unet3d_ds.threshold"


@pytest.fixture
def worker():
    worker = InferenceWorker(device="cpu", queue_size=1)
    worker._models[NAME] = threshold_model()  # injected: no checkpoint on disk needed
    worker.start()
    yield worker
    worker.stop(timeout=60)


@pytest.fixture(scope="module")
def ct():
    return sphere_ct(ORIENTATIONS["LPS"], size_xyz=(48, 48, 24))


def test_a_task_comes_back_with_its_mask(worker, ct) -> None:
    image, sphere = ct
    result = worker.submit(SegmentTask(image, NAME, InferenceOptions())).result(timeout=60)
    assert result.device == "cpu (torch)" and not result.oom_fallback
    assert dice(sitk.GetArrayFromImage(result.segmentation.mask), sphere) > 0.9


def test_a_full_queue_is_refused_with_a_retry_hint(worker, ct) -> None:
    gate = threading.Event()
    running = threading.Event()

    def hold(_: float) -> None:
        running.set()
        gate.wait(30)

    first = worker.submit(SegmentTask(ct[0], NAME, InferenceOptions(), progress=hold))
    assert running.wait(30)
    second = worker.submit(SegmentTask(ct[0], NAME, InferenceOptions()))  # fills the one slot
    with pytest.raises(Busy, match="queue is full") as refused:
        worker.submit(SegmentTask(ct[0], NAME, InferenceOptions()))
    assert refused.value.retry_after_s == 5  # no run finished yet: a default guess
    worker.recent_seconds = [12.0, 18.0]  # runs take 15 s: a slot frees in about that
    with pytest.raises(Busy, match="queue is full") as refused:
        worker.submit(SegmentTask(ct[0], NAME, InferenceOptions()))
    assert refused.value.retry_after_s == 15
    gate.set()
    assert first.result(60) and second.result(60)


def test_cuda_out_of_memory_is_retried_with_batch_one_on_the_host(worker, ct, monkeypatch) -> None:
    calls: list[InferenceOptions] = []
    real = worker_module.segment

    def flaky(image, model, options, progress=None):
        calls.append(options)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(image, model, options, progress)

    monkeypatch.setattr(worker_module, "segment", flaky)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    result = worker.submit(SegmentTask(ct[0], NAME, InferenceOptions(batch_size=4))).result(60)
    assert result.oom_fallback
    assert calls[1].batch_size == 1 and calls[1].output_device == "cpu"
    assert dice(sitk.GetArrayFromImage(result.segmentation.mask), ct[1]) > 0.9


def test_a_failing_task_does_not_kill_the_worker(worker, ct) -> None:
    failing = worker.submit(SegmentTask(ct[0], NAME, InferenceOptions(depth=2)))
    with pytest.raises(InvalidOption):
        failing.result(60)
    assert worker.submit(SegmentTask(ct[0], NAME, InferenceOptions())).result(60).segmentation.liver_volume_ml > 0


def test_stop_finishes_what_was_accepted_and_refuses_more(ct) -> None:
    worker = InferenceWorker(device="cpu", queue_size=4)
    worker._models[NAME] = threshold_model()
    worker.start()
    futures = [worker.submit(SegmentTask(ct[0], NAME, InferenceOptions())) for _ in range(3)]
    worker.stop(timeout=120)
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(Busy, match="shutting down"):
        worker.submit(SegmentTask(ct[0], NAME, InferenceOptions()))


def test_decode_slots_bound_the_uploads_held_and_past_the_queue_refuse() -> None:
    worker = InferenceWorker(device="cpu", queue_size=2, decoded_uploads=2)
    assert worker.take_decode_slot(0) and worker.take_decode_slot(0)
    assert not worker.take_decode_slot(0.05)  # both held: a third waits, and gives up at its timeout
    got: list[bool] = []
    waiters = [threading.Thread(target=lambda: got.append(worker.take_decode_slot(30))) for _ in range(2)]
    for thread in waiters:
        thread.start()
    while worker._slot_waiters < 2:
        threading.Event().wait(0.01)
    with pytest.raises(Busy, match="queue is full"):  # two waiting fill a queue of two
        worker.take_decode_slot(0)
    worker.give_back_decode_slot()
    worker.give_back_decode_slot()
    for thread in waiters:
        thread.join(30)
    assert got == [True, True]
    worker.give_back_decode_slot()
    worker.give_back_decode_slot()
    with pytest.raises(ValueError):  # a slot given back twice is a bug, not a new slot
        worker.give_back_decode_slot()
