"""Media tracks that never let latency accumulate.

aiortc queues every decoded frame of a remote track without bound: a consumer slower than the
camera falls further behind each second.  Here a reader task drains the remote track as fast as
frames arrive into a :class:`LatestSlot`, which keeps only the newest one and counts what it
overwrote; the worker always takes the freshest frame.  On the way out, :class:`AvatarTrack`
hands the encoder the newest generated frame, stamped with the pts/time_base of the driver frame
it was made from, so the avatar stays in step with the driver's clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-item mailbox: ``put`` overwrites; the newest item is taken once.

    ``put`` and the waits run on the event loop; ``take`` may run on any thread, so a worker
    thread can take the newest frame at the moment it starts (not the one that was newest when
    the job was queued).  ``dropped`` counts items overwritten before anyone took them.
    """

    def __init__(self) -> None:
        self._item: T | None = None
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced one nobody took (a drop)."""
        with self._lock:
            replaced = self._item is not None
            self._item = item
        if replaced:
            self.dropped += 1
        self._ready.set()
        return replaced

    def take(self) -> T | None:
        """The newest item, or None; from any thread."""
        with self._lock:
            item, self._item = self._item, None
        return item

    async def wait(self) -> None:
        """Until an item is there; raises MediaStreamError once closed."""
        while True:
            if self._closed:
                raise MediaStreamError
            with self._lock:
                if self._item is not None:
                    return
            self._ready.clear()
            await self._ready.wait()

    async def get(self) -> T:
        """Wait for, and take, the newest item; raises MediaStreamError once closed."""
        while True:
            await self.wait()
            item = self.take()
            if item is not None:
                return item

    def close(self) -> None:
        self._closed = True
        self._ready.set()


@dataclass(frozen=True)
class Arrival:
    """A decoded driver frame and when it reached the server (time.monotonic seconds)."""

    frame: VideoFrame
    at: float


async def drain(track: MediaStreamTrack, sink: Callable[[Arrival], object] | None) -> None:
    """Hand every frame of ``track`` to ``sink`` as it arrives, until the track ends.

    ``sink`` must not block (typically it puts into a :class:`LatestSlot`); None discards, which
    is how unwanted tracks (audio) are kept from queueing without bound.  Returns normally when
    the remote track ends (MediaStreamError): the peer went away.
    """
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if sink is not None and isinstance(frame, VideoFrame):
            sink(Arrival(frame, time.monotonic()))


@dataclass(frozen=True)
class Rendered:
    """A generated avatar frame, its driver frame's arrival time, and whether a face drove it."""

    frame: VideoFrame
    arrived: float
    face: bool


class AvatarTrack(MediaStreamTrack):
    """The outbound avatar video: the newest rendered frame, in the driver's timebase.

    ``on_sent(rendered, sent_at)`` is called as each frame goes to the encoder; frames replaced
    before the encoder asked for them are counted in ``slot.dropped``.
    """

    kind = "video"

    def __init__(self, on_sent: Callable[[Rendered, float], None] | None = None) -> None:
        super().__init__()
        self.slot: LatestSlot[Rendered] = LatestSlot()
        self._on_sent = on_sent
        self.first_pts: int | None = None  # pts of the first frame sent: the receiver's origin

    def push(self, rendered: Rendered) -> bool:
        """Offer a frame to the encoder; True when it replaced one the encoder never took."""
        return self.slot.put(rendered)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rendered = await self.slot.get()
        if self.first_pts is None:
            self.first_pts = rendered.frame.pts
        if self._on_sent is not None:
            self._on_sent(rendered, time.monotonic())
        return rendered.frame

    def stop(self) -> None:
        super().stop()
        self.slot.close()
