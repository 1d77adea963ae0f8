"""The ASGI application: routes, OpenAI-shaped errors, /health, /metrics, middleware, lifespan."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from msa.memory import (
    BankDiskFullError,
    BankError,
    BankLockedError,
    BankReadOnlyError,
    DocumentTooLongError,
    DuplicateDocumentError,
    UnknownDocumentError,
)
from msa.server import routes_memory, routes_openai
from msa.server.banks import Registry
from msa.server.config import ServerConfig
from msa.server.jobs import ACTIVE
from msa.server.metrics import Metrics, server_metrics
from msa.server.schemas import ApiError
from msa.server.security import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware

log = logging.getLogger(__name__)


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, message, param, code).body(), status_code=status)


def _bank_error(e: Exception) -> JSONResponse:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, UnknownDocumentError):
        return _error(404, msg, code="document_not_found")
    if isinstance(e, DuplicateDocumentError):
        return _error(409, msg, code="duplicate_document")
    if isinstance(e, DocumentTooLongError):
        return _error(400, msg, code="document_too_long")
    if isinstance(e, BankReadOnlyError):
        return _error(403, msg)
    if isinstance(e, BankLockedError):
        return _error(503, msg, code="bank_locked")
    if isinstance(e, BankDiskFullError):
        return _error(507, msg, code="disk_full")
    return _error(400, msg)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        msg = first.get("msg", "invalid request")
        return _error(400, f"{where}: {msg}" if where else msg, where or None)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail))

    for kind in (BankError, ValueError, TypeError):
        app.add_exception_handler(kind, lambda _, e: _bank_error(e))
    app.add_exception_handler(PermissionError, lambda _, e: _error(403, str(e)))
    app.add_exception_handler(FileExistsError, lambda _, e: _error(409, str(e), code="bank_exists"))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return _error(500, f"internal server error ({type(e).__name__}); the server log has the details")


def _job_gauges(registry: Registry, metrics: Metrics) -> None:
    counts = {s: 0 for s in (*ACTIVE, "done", "failed")}
    for bank in list(registry.banks.values()):
        for job in list(bank.jobs.jobs.values()):
            counts[job.status] = counts.get(job.status, 0) + 1
    for status, n in counts.items():
        metrics.set("msa_jobs", n, status=status)


def create_app(config: ServerConfig, registry: Registry | None = None) -> FastAPI:
    """The server application; the registry (model + banks) is loaded here unless given."""
    metrics = registry.metrics if registry is not None else server_metrics()
    registry = registry if registry is not None else Registry(config, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        registry.close()

    app = FastAPI(title="msa", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config, app.state.registry, app.state.metrics = config, registry, metrics
    app.state.started = int(time.time())
    _install_errors(app)
    app.include_router(routes_openai.router)
    app.include_router(routes_memory.router)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "banks": len(registry.banks),
                "queue_depth": sum(b.scheduler.depth for b in list(registry.banks.values()))}  # fmt: skip

    @app.get("/metrics")
    async def metrics_page() -> PlainTextResponse:
        _job_gauges(registry, metrics)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(AuthMiddleware, api_key=config.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
