"""ASGI middleware: bearer API key, request body limit, and per-route request metrics.

Pure ASGI (no buffering), so a refused request is answered before its body is read and a streamed
response is timed until its last byte.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any, Awaitable, Callable

from msa.server.metrics import Metrics
from msa.server.schemas import ApiError

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
OPEN_PATHS = ("/health",)


async def send_error(send: Callable, err: ApiError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Every route except ``/health`` needs ``Authorization: Bearer <key>`` (401 otherwise)."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            err = ApiError(401, "a valid API key is required (Authorization: Bearer <key>)", code="invalid_api_key")
            return await send_error(send, err, [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Bodies over ``limit`` bytes get 413: by Content-Length before reading, else while reading."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = ApiError(413, f"the request body is over this server's limit of {self.limit} bytes", code="body_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await send_error(send, err)
        seen, answered = 0, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, answered
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    if not answered:  # answer now: the framework would turn a failing read into a 400
                        answered = True
                        await send_error(send, err)
                    raise _TooLarge
            return msg

        async def guarded_send(msg: dict[str, Any]) -> None:
            if not answered:
                await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass


class MetricsMiddleware:
    """Counts requests by route template and status, and times them until the last body byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def timed_send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.inc("msa_requests_total", route=route, status=str(status[0]))
            self.metrics.observe("msa_request_seconds", time.perf_counter() - t0, route=route)
