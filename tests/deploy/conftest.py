"""Deployment fixtures: tools that CI installs, a real redis-server, queue worker processes."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REPO, save_tiny_checkpoint
from tests.e2e.conftest import (  # noqa: F401  (server_factory: the e2e fixture, reused here)
    free_port,
    process_env,
    server_factory,
    show_log,
    stop_process,
    tiny_service_env,
)


def require(tool: str, where: str) -> str:
    """The path of `tool`; skip when it is missing here, fail in CI (CI=true), which installs it."""
    path = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{tool} is not installed ({where})"
        if IN_CI:
            pytest.fail(f"{message}; .ci/run must install it")
        pytest.skip(message)
    return path


FINE = "unet3d_ds.tiny_1mm"


@pytest.fixture(scope="session")
def fine_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network on a 1 mm grid, alone in its folder: a 10 cm CT is a hundred windows or
    more, so a job runs for seconds and a test can kill its worker in the middle of it."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("fine-checkpoint"), FINE, spacing_mm=1.0)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, no persistence; its URL."""
    binary = require("redis-server", "Debian package redis-server")
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not _pong(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start:\n{(tmp_path / 'redis.log').read_text()[-2000:]}")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


class QueueWorker:
    """`python -m service.jobs.queue_worker` in its own process, as a compose worker replica runs it."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = process_env(env)
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        """host:pid, as the job summary's `worker` field records it."""
        assert self.process is not None
        return f"{socket.gethostname()}:{self.process.pid}"

    def start(self) -> QueueWorker:
        """Start the process; returns at once (wait_ready waits for the model to be loaded)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.jobs.queue_worker"], cwd=REPO, env=self.env,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 120) -> QueueWorker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"queue worker exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if f"queue worker {self.name} ready" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"queue worker not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_process(self.process, sig)


@pytest.fixture
def worker_factory(tiny_checkpoint_dir: Path, tmp_path: Path, redis_url: str) -> Iterator:
    """Make queue workers sharing the e2e servers' data dir (tmp_path/var) and this test's Redis."""
    workers: list[QueueWorker] = []

    def make(**settings: str) -> QueueWorker:
        # log level info: the worker's "ready" line
        env = tiny_service_env(tiny_checkpoint_dir, tmp_path / "var", "info", queue_url=redis_url, **settings)
        env["OMP_NUM_THREADS"] = "1"  # two workers and an API on two shared cores
        worker = QueueWorker(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.kill()
        show_log(worker.log)
