"""Everything one running app owns, created and torn down by the lifespan in service/app.py."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service.builtin import AvatarCatalog
from service.hosting import SessionHost, local_host
from service.metrics import Metrics
from service.rtc.process import apply_rtc_settings
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    host: SessionHost  # where sessions run: this process, or a cluster of workers
    catalog: AvatarCatalog  # the built-in avatars the API lists


@asynccontextmanager
async def running(settings: Settings, metrics: Metrics) -> AsyncIterator[ServiceState]:
    """Start the session host (this process, or a Ray cluster's workers); stop it on exit."""
    async with _host(settings, metrics) as host:
        yield ServiceState(settings, metrics, host, AvatarCatalog())
    log.info("stopped")


@asynccontextmanager
async def _host(settings: Settings, metrics: Metrics) -> AsyncIterator[SessionHost]:
    if settings.cluster == "ray":
        # Imported only here: Ray is an optional extra, and a local server never pays for it.
        # The workers apply the RTC settings in their own processes (they run the peers).
        # Ray's driver otherwise installs a C++ failure-signal handler that also catches
        # SIGTERM and kills the process halfway through uvicorn's graceful shutdown, before the
        # workers end their sessions.  Ray reads the switch when it is first imported.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        from service.cluster import WorkerPool, ray_host

        pool = WorkerPool(
            settings.ray_address,
            settings.ray_workers,
            settings.ray_cpus_per_worker,
            settings.ray_gpus_per_worker,
        )
        async with ray_host(settings, metrics, pool) as cluster:
            yield cluster
        return
    undo_rtc = apply_rtc_settings(settings)
    try:
        async with local_host(settings, metrics) as host:
            yield host
    finally:
        undo_rtc()
