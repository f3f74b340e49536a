"""Retries with exponential backoff for the bridge's calls to DICOMweb, the service and DICOM peers.

One policy for every remote call: a transient failure (connection refused or reset, a timeout,
an HTTP 5xx, 429, a DICOM association that is refused or aborted) is retried after 1, 2, 4, ...
seconds (capped, with a little jitter, honouring Retry-After); anything else (a 4xx: the request
itself is wrong) is raised at once. When the attempts are spent, `GaveUp` says what failed and how.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import requests

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class TransientError(Exception):
    """A failure worth retrying that is not an HTTP error (e.g. a DICOM association refused)."""


class GaveUp(Exception):
    """A call still failed after every attempt; `str()` says what, how often, and the last error."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a remote call is retried.

    attempts: calls in all (1 = no retry); first_delay_s doubles after each failure up to
    max_delay_s; a server's Retry-After (seconds) replaces the delay when given, within max_delay_s.
    """

    attempts: int = 6
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def call(self, fn: Callable[[], T], what: str) -> T:
        """`fn()`, retried on transient failures; raises GaveUp, or the first permanent error."""
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as error:  # classified below: permanent errors are re-raised as they are
                transient, retry_after = classify(error)
                if not transient:
                    raise
                if attempt == self.attempts:
                    raise GaveUp(f"{what} failed {attempt} time(s); last error: {describe(error)}") from error
                wait = min(self.max_delay_s, retry_after if retry_after is not None else delay)
                wait *= random.uniform(0.9, 1.1)  # jitter: many bridges restarting do not stampede
                log.warning("%s: %s; retry %d/%d in %.1f s", what, describe(error), attempt, self.attempts - 1, wait)
                time.sleep(wait)
                delay = min(self.max_delay_s, delay * 2)
        raise AssertionError("unreachable")  # pragma: no cover


def classify(error: BaseException) -> tuple[bool, float | None]:
    """(whether `error` is transient, the server's Retry-After in seconds if it gave one)."""
    if isinstance(error, TransientError):
        return True, None
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code in TRANSIENT_STATUS, _retry_after(error.response.headers.get("Retry-After"))
    if isinstance(error, httpx.TransportError):  # connect, read, write, pool errors and timeouts
        return True, None
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return error.response.status_code in TRANSIENT_STATUS, _retry_after(error.response.headers.get("Retry-After"))
    if isinstance(error, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError):
        return True, None
    return False, None


def describe(error: BaseException) -> str:
    """A one-line account of an error for logs and the final report."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status} from {getattr(response, 'url', '?')}"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare from the servers we call; use our own backoff
        return None
