"""The process-wide WebRTC settings, applied in one place.

aioice and aiortc have no per-connection switch for which addresses and ports ICE binds or
when a received video frame is released, so these are patches on the process.  Every process
that runs peer connections applies them the same way: the app's lifespan (service/state.py)
and each cluster worker (service/cluster/actor.py).
"""

from __future__ import annotations

from collections.abc import Callable

from service.rtc.jitter import release_frames_at_marker
from service.rtc.peer import use_host_addresses
from service.rtc.ports import use_port_range
from service.settings import Settings


def apply_rtc_settings(settings: Settings) -> Callable[[], None]:
    """Install host addresses, the ICE port range and marker release; returns the undo."""
    undo = [
        use_host_addresses(settings.ice_host_addresses),
        use_port_range(settings.rtc_port_min, settings.rtc_port_max),
    ]
    if settings.rtp_release_at_marker:
        undo.append(release_frames_at_marker())

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore
