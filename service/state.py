"""Everything one running app owns, created and torn down by the lifespan in service/app.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from engines import Engine, create_engine
from service.builtin import AvatarCatalog
from service.metrics import Metrics
from service.rtc.jitter import release_frames_at_marker
from service.rtc.peer import use_host_addresses
from service.sessions import SessionRegistry
from service.settings import Settings
from service.sources import Sources

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    engines: dict[int, Engine]  # one per output size, shared by that size's sessions
    executor: ThreadPoolExecutor  # every frame of every session is computed here
    registry: SessionRegistry
    sources: Sources


@asynccontextmanager
async def running(settings: Settings, metrics: Metrics) -> AsyncIterator[ServiceState]:
    """Start the engines, executor and session registry; on exit close them in order.

    Shutdown is bounded: sessions are closed concurrently (peers first, then workers), each
    step under ``shutdown_timeout_s``; then the janitor, executor and engines go.
    """
    undo_addresses = use_host_addresses(settings.ice_host_addresses)
    undo_jitter = release_frames_at_marker() if settings.rtp_release_at_marker else lambda: None
    engines: dict[int, Engine] = {}
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="reenact-frame")
    janitor: asyncio.Task[None] | None = None
    registry: SessionRegistry | None = None
    try:
        for size in dict.fromkeys(settings.sizes):
            # Slow only when the ONNX cache is cold (`make setup` fills it), hence a thread.
            engines[int(size)] = await asyncio.to_thread(
                create_engine, settings.backend, size, settings.engine_threads
            )
        registry = SessionRegistry(settings, metrics, executor)
        sources = Sources(settings, AvatarCatalog())
        # The default avatar is what the page offers first: embed it now, not on first click.
        for served in engines:
            await sources.builtin(settings.default_avatar, served)
        janitor = asyncio.get_running_loop().create_task(registry.run_janitor(), name="janitor")
        log.info(
            "ready: sizes %s, backend %s, %d frame workers, max %d sessions",
            list(engines),
            settings.backend,
            settings.workers,
            settings.max_sessions,
        )
        yield ServiceState(settings, metrics, engines, executor, registry, sources)
    finally:
        if registry is not None:
            await registry.close_all()
        if janitor is not None:
            janitor.cancel()
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        for engine in engines.values():
            engine.close()
        undo_jitter()
        undo_addresses()
        log.info("stopped")
