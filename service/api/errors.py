"""Domain errors -> HTTP: one table, one JSON body `{"error": code, "detail": sentence}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import DEFAULT_MAX_HEADER_COUNT, DEFAULT_MAX_HEADER_SIZE
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.LiversegError], int] = {
    errors.UnsupportedFormat: 415,
    errors.InvalidVolume: 422,
    errors.TooLarge: 413,
    errors.UnknownModel: 404,
    errors.NotFound: 404,
    errors.UnsupportedOutput: 422,
    errors.InvalidOption: 422,
    errors.NotReady: 409,
    errors.Unauthorized: 401,
    errors.Busy: 503,
}


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def status_of(error: errors.LiversegError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def domain_response(error: errors.LiversegError) -> JSONResponse:
    """The answer to a domain error: its status, the JSON body, and Retry-After or WWW-Authenticate."""
    headers = None
    if isinstance(error, errors.Busy):
        headers = {"Retry-After": str(error.retry_after_s)}
    elif isinstance(error, errors.Unauthorized):
        headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'}
    return error_response(status_of(error), error.code, error.detail, headers)


async def _domain(_: Request, error: errors.LiversegError) -> JSONResponse:
    return domain_response(error)


async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(parts) or "The request is not valid.")


async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
    if (cause := _domain_cause(error)) is not None:
        return domain_response(cause)
    if error.status_code == 400 and str(error.detail).startswith("Too many files"):
        # Starlette's multipart parser refusing parts beyond the app's form_limits: a limit of ours.
        limit = request.app.state.settings.max_zip_members
        return error_response(
            413, "too_large",
            f"The upload has more than {limit} files; this service accepts at most {limit} in one upload "
            "(LIVERSEG_MAX_ZIP_MEMBERS): zip the series.",
        )
    if error.status_code == 400 and (problem := _multipart_problem(error)) is not None:
        return error_response(400, "bad_request", problem)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}
    return error_response(
        error.status_code, codes.get(error.status_code, f"http_{error.status_code}"), str(error.detail),
        getattr(error, "headers", None),
    )


def _domain_cause(error: Exception) -> errors.LiversegError | None:
    """The domain error raised while FastAPI read the body (the upload limit, from `receive`),
    which FastAPI re-raises as a 400; Starlette's form parser may wrap it in an ExceptionGroup."""
    cause = error.__cause__
    while isinstance(cause, ExceptionGroup):
        domain, other = cause.split(errors.LiversegError)
        if domain is None or other is not None:
            return None
        cause = domain.exceptions[0]
    return cause if isinstance(cause, errors.LiversegError) else None


def _multipart_problem(error: Exception) -> str | None:
    """What python-multipart found wrong in the body (Starlette says only "Invalid multipart
    data."), as a sentence; None where the 400 has another cause."""
    cause, depth = error, 0
    while cause is not None and depth < 4 and not isinstance(cause, MultipartParseError):
        cause, depth = cause.__cause__ or cause.__context__, depth + 1
    if not isinstance(cause, MultipartParseError):
        return None
    if str(cause).startswith("Maximum header size"):
        return (
            f"A part of the multipart body has a header line longer than {DEFAULT_MAX_HEADER_SIZE:,} bytes "
            "(a file name that long?): send the files under names of at most 4,000 bytes."
        )
    if str(cause).startswith("Maximum header count"):
        return f"A part of the multipart body has more than {DEFAULT_MAX_HEADER_COUNT} header lines."
    return f"The multipart body is malformed ({str(cause)[:200]})."


async def _unexpected(_: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    return error_response(500, "internal_error", "The service failed unexpectedly; its log has details.")


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(errors.LiversegError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
