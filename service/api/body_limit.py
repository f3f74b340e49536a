"""Refuse request bodies over the upload limit while they stream in, before they fill memory or disk."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import domain_response
from service.errors import TooLarge, format_bytes


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"The upload is larger than the limit of {format_bytes(max_bytes)} ({max_bytes} bytes, "
        "LIVERSEG_MAX_UPLOAD_BYTES)."
    )


class BodyLimitMiddleware:
    """413 as soon as Content-Length, or the bytes actually received, pass `max_bytes`.

    A declared length is refused here, before the app runs; bytes beyond the limit raise the
    domain error from `receive`, inside the route that reads the body, and the app's handlers
    answer it like any other (FastAPI keeps it as the cause of its body-parsing error).
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or {}).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = domain_response(_too_large(self.max_bytes))
            response.headers["Connection"] = "close"  # the unread body is not wanted
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
