"""A Content-Security-Policy on /docs and /redoc: the pages may load only from this server.

fastapi-offline serves Swagger UI and ReDoc from the package, but the ReDoc bundle still asks
https://cdn.redoc.ly for its "API docs by Redocly" logo, with no option to stop it; on a
hospital network that request hangs or leaks. The policy makes the browser refuse it (the page
shows no logo) and anything else a bundle may fetch from another host.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Inline script and style: both pages start their bundle from an inline <script>.
POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'"
)


class DocsPolicyMiddleware:
    """Adds `POLICY` to the responses of the API's documentation pages (`paths`: the app's own
    docs, ReDoc and OAuth2-redirect URLs, so that the pages and the policy cannot drift apart)."""

    def __init__(self, app: ASGIApp, paths: Iterable[str | None]) -> None:
        self.app = app
        self.paths = frozenset(p for p in paths if p)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("content-security-policy", POLICY)
            await send(message)

        await self.app(scope, receive, send_with_policy)
