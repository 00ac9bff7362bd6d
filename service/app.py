"""The FastAPI application: factory, lifespan, and the entry points that run it.

``create_app(settings)`` builds an app and owns nothing until its lifespan starts: engines,
executor and sessions live in :func:`service.state.running`, so any number of apps can be built
(tests do) and nothing heavy happens at import.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from service.api import avatars, errors, health, sessions
from service.api.auth import Guard
from service.api.limits import BodySizeLimit
from service.metrics import Metrics
from service.settings import Settings
from service.state import running

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The app for ``settings``.  Raises ConfigurationError for an unsafe configuration (no API
    keys on a non-loopback host) before anything starts."""
    settings.check_exposure()
    metrics = Metrics()  # per app: tests build many apps in one process

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, metrics) as state:
            app.state.service = state
            yield

    app = FastAPI(
        title="reenact",
        summary="Real-time face reenactment: drive a portrait with your webcam over WebRTC.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.guard = Guard(settings)  # API keys, per-key limits, failed attempts per address
    errors.install(app)
    # Every route: the largest body any route takes is a portrait upload with its form.
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes + UPLOAD_OVERHEAD)
    if settings.cors_origins:
        # Added last, so outermost: refusals (413, 401, 429) carry CORS headers too and a page
        # on another origin can read them.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            expose_headers=["Location", "Retry-After"],
            max_age=600,
        )
    app.include_router(health.router)
    app.include_router(avatars.router)
    app.include_router(sessions.router)
    if settings.web_dir is not None and settings.web_dir.is_dir():
        # Last, so the API routes win; html=True serves index.html at /.
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    return app


UPLOAD_OVERHEAD = 64 * 1024  # multipart boundaries and the small form fields


def run(host: str | None = None, port: int | None = None) -> None:
    """``reenact serve``: settings from REENACT_* (host/port overridable), then uvicorn.

    An unsafe configuration raises ConfigurationError before anything starts (``reenact``
    prints it and exits with status 1).
    """
    settings = Settings()
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update=updates)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The service's own loggers; libraries keep the root level (aioice is chatty at INFO).
    logging.getLogger("service").setLevel(settings.log_level.upper())
    app = create_app(settings)
    if settings.dev_mode:
        log.info("no API keys configured: local/dev mode, serving %s only", settings.host)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 1,
    )


@asynccontextmanager
async def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn inside the current event loop; yields its base URL.

    For embedding the service in another asyncio program (tests, loopback benchmark).
    ``port=0`` picks a free port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # start-up failed: raise its error
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.05)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()
