"""Domain errors raised deep in I/O, the engine and the worker; the web layer maps them to HTTP.

Each has a stable machine-readable `code` (the `error` field of the JSON body) and a human
`detail` sentence. Nothing here knows about HTTP status codes.
"""

from __future__ import annotations

import re


class LiversegError(Exception):
    """Base of every error a client can cause or be told about."""

    code = "bad_request"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class UnsupportedFormat(LiversegError):
    """The upload is not a format we read (or not what its name claims)."""

    code = "unsupported_format"


class InvalidVolume(LiversegError):
    """The upload decodes but is not a usable CT volume (2D, 4D, NaN, tilted, non-CT, mixed series)."""

    code = "invalid_volume"


class TooLarge(LiversegError):
    """A configured limit (bytes, voxels, slices, zip members, decompressed bytes) is exceeded."""

    code = "too_large"


class UnknownModel(LiversegError):
    """The requested model is not in the registry."""

    code = "unknown_model"


class UnsupportedOutput(LiversegError):
    """The requested output cannot be made for this input (e.g. DICOM SEG from NIfTI)."""

    code = "unsupported_output"


class Busy(LiversegError):
    """The service cannot take this now (503 with Retry-After); one of the kinds below says why."""

    code = "busy"

    def __init__(self, detail: str, retry_after_s: int = 5):
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class QueueFull(Busy):
    """The worker's request queue, or the jobs waiting, are at their bound."""


class ShuttingDown(Busy):
    """The service is stopping and takes no new work."""


class TimedOut(Busy):
    """A synchronous segmentation did not finish within LIVERSEG_REQUEST_TIMEOUT_S."""


class QueueUnreachable(Busy):
    """Redis, where jobs are queued for the workers, does not answer."""


class NotFound(LiversegError):
    """A job or file that does not exist (or has expired)."""

    code = "not_found"


class InvalidOption(LiversegError):
    """A request option that does not apply (e.g. a UNet++ depth for another architecture)."""

    code = "invalid_option"


class Unauthorized(LiversegError):
    """A missing or wrong API key."""

    code = "unauthorized"


class NotReady(LiversegError):
    """A job's result was asked for before the job finished."""

    code = "not_ready"


def client_name(filename: str, keep_folders: bool = False) -> str:
    """A client-supplied name made safe to quote in a message (no control characters, short)."""
    text = filename if keep_folders else re.split(r"[\\/]", filename or "")[-1]
    text = "".join(ch if ch.isprintable() else "?" for ch in text) or "upload"
    return text if len(text) <= 80 else text[:77] + "..."


def format_bytes(count: int) -> str:
    """A byte count as people read it in a message: 1.5 GB, 20.0 MB, 512 bytes."""
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"
