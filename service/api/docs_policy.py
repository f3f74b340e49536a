"""A Content-Security-Policy on /docs and /redoc: the pages may load only from this server.

fastapi-offline serves Swagger UI and ReDoc from the package, but the ReDoc bundle still asks
https://cdn.redoc.ly for its "API docs by Redocly" logo, with no option to stop it; on a
hospital network that request hangs or leaks. The policy makes the browser refuse it (the page
shows no logo) and anything else a bundle may fetch from another host.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
# Inline script and style: both pages start their bundle from an inline <script>.
POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'"
)


class DocsPolicyMiddleware:
    """Adds `POLICY` to the responses of the API's documentation pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in DOCS_PATHS:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"content-security-policy", POLICY.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)
