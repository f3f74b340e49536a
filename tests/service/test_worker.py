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


def test_decode_slots_are_granted_in_arrival_order_and_past_the_queue_refused() -> None:
    worker = InferenceWorker(device="cpu", queue_size=3, decoded_uploads=2)
    first, second = worker.decode_ticket(), worker.decode_ticket()
    assert first.wait(0) and second.wait(0)
    third, fourth, fifth = worker.decode_ticket(), worker.decode_ticket(), worker.decode_ticket()
    assert not third.wait(0.05)  # both slots held: it waits, and keeps its place when the wait times out
    with pytest.raises(Busy, match="queue is full"):  # three in line fill a queue of three
        worker.decode_ticket()
    worker.give_back_decode_ticket(fourth)  # leaves the line (its client left)
    worker.give_back_decode_ticket(second)
    assert third.wait(0) and not fifth.wait(0)  # the first in line, not the last
    worker.give_back_decode_ticket(first)
    assert fifth.wait(0)
    with pytest.raises(ValueError, match="given back already"):  # a slot given back twice is a bug
        worker.give_back_decode_ticket(first)
    worker.give_back_decode_ticket(third)
    worker.give_back_decode_ticket(fifth)
    assert worker.decode_ticket().wait(0) and worker.decode_ticket().wait(0)  # two free again, no more
    assert not worker.decode_ticket().wait(0)


def test_a_ticket_waiting_in_another_thread_gets_the_slot_given_back() -> None:
    worker = InferenceWorker(device="cpu", queue_size=2, decoded_uploads=1)
    held = worker.decode_ticket()
    waiting = worker.decode_ticket()
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(waiting.wait(30)))
    thread.start()
    worker.give_back_decode_ticket(held)
    thread.join(30)
    assert got == [True]
