"""Everything one running app owns, created and torn down by the lifespan in service/app.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service.builtin import AvatarCatalog
from service.hosting import SessionHost, local_host
from service.metrics import Metrics
from service.rtc.jitter import release_frames_at_marker
from service.rtc.peer import use_host_addresses
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
    """Install the process-wide RTC settings and start the session host; undo both on exit."""
    undo_addresses = use_host_addresses(settings.ice_host_addresses)
    undo_jitter = release_frames_at_marker() if settings.rtp_release_at_marker else lambda: None
    try:
        async with local_host(settings, metrics) as host:
            yield ServiceState(settings, metrics, host, AvatarCatalog())
    finally:
        undo_jitter()
        undo_addresses()
        log.info("stopped")
