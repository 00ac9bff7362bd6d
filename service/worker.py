"""The per-session worker: newest driver frame in, avatar frame out, model work off the loop.

One task per session loops: wait for the session's fps cap and for a driver frame, then queue
one job in the shared inference executor.  The job takes the newest frame from the inbox when a
thread starts it (older ones were overwritten and counted), runs the session's
:class:`models.pipeline.FrameRenderer` (a Reenactor animating a portrait, or the keypoint relay
rebuilding the sender, :mod:`service.relay`), and the result goes to the outbound track.
Only one frame per session is ever in flight, so a slow session drops frames instead of
queueing them; the executor's size bounds how many frames are computed at once across all
sessions (no oversubscribed cores); and a job that waited for a thread still computes the
freshest frame.

The renderer is not thread-safe and is used from executor threads, so every call into it
(including close) holds the worker's lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from models.errors import ReenactError
from models.pipeline import FrameRenderer, StreamCost
from service.rtc.tracks import Arrival, AvatarTrack, LatestSlot, Rendered
from service.stats import SessionStats

log = logging.getLogger(__name__)

# After this many consecutive failed frames the session is ended rather than spinning.
MAX_CONSECUTIVE_ERRORS = 30
FADE_FLOOR = 0.35  # a long-lost face fades to 35 % towards mid-grey, not to nothing


@dataclass(frozen=True)
class FaceLostFade:
    """Hold the last good frame ``hold_s`` after the face is lost, then fade over ``fade_s``."""

    hold_s: float = 0.5
    fade_s: float = 1.0

    def amount(self, lost_for_s: float) -> float:
        """0 (untouched) .. 1 - FADE_FLOOR (fully faded)."""
        if lost_for_s <= self.hold_s:
            return 0.0
        t = (lost_for_s - self.hold_s) / self.fade_s if self.fade_s > 0 else 1.0
        return min(1.0, t) * (1.0 - FADE_FLOOR)

    @staticmethod
    def apply(image: np.ndarray, amount: float) -> np.ndarray:
        if amount <= 0:
            return image
        out = image.astype(np.float32) * (1 - amount) + 128.0 * amount
        return out.astype(np.uint8)


class Worker:
    def __init__(
        self,
        session_id: str,
        renderer: FrameRenderer,
        executor: Executor,
        output: AvatarTrack,
        stats: SessionStats,
        *,
        max_fps: float,
        fade: FaceLostFade,
        on_fatal: Callable[[str], None],  # ends the session; the reason is a short fixed label
    ) -> None:
        self.session_id = session_id
        self.inbox: LatestSlot[Arrival] = LatestSlot()
        self._renderer = renderer
        self._executor = executor
        self._output = output
        self._stats = stats
        self._max_fps = max_fps
        self._fade = fade
        self._on_fatal = on_fatal
        self._lock = threading.Lock()  # guards the renderer (used from executor threads)
        self._closed = False
        self._reset_requested = False
        self._lost_since: float | None = None  # driver time the face was lost, seconds

    @property
    def reenactor(self) -> FrameRenderer:
        """The session's frame renderer (named for the common case; tests inject faults here)."""
        return self._renderer

    # -- called on the event loop -------------------------------------------------------------

    def feed(self, arrival: Arrival) -> None:
        """Sink for the reader task: newest frame wins."""
        self._stats.frame_in(arrival.at)
        if self.inbox.put(arrival):
            self._stats.drop("inbox")

    def request_reset(self) -> None:
        """Take the next frame as the driver's neutral reference (a 'recentre' button)."""
        self._reset_requested = True

    async def run(self) -> None:
        """Process frames until the inbox closes.  Never raises for a bad frame."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self._max_fps
        next_start = 0.0
        errors = 0
        while True:
            # The fps cap waits *before* taking a frame, so what is processed is the newest one.
            delay = next_start - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self.inbox.wait()
            except MediaStreamError:
                return
            next_start = time.monotonic() + interval
            try:
                # The job takes the newest frame when a thread picks it up, so time spent
                # waiting for a free thread (other sessions) never makes the frame stale.
                job = await loop.run_in_executor(self._executor, self._render_newest)
                rendered, timings, cost = job
                errors = 0
            except Exception as e:
                # A bad frame costs that frame; a persistent fault ends this session only.
                errors += 1
                self._stats.error()
                if errors == 1:  # once per streak: a failing camera must not flood the log
                    log.warning(
                        "session %s: frame failed: %s",
                        self.session_id,
                        e,
                        exc_info=not isinstance(e, ReenactError),
                    )
                if errors >= MAX_CONSECUTIVE_ERRORS:
                    log.error("session %s: %d frames failed in a row", self.session_id, errors)
                    self._on_fatal("frames failing")
                    return
                continue
            if rendered is None:
                if self._closed:  # closed while the job waited for a thread
                    return
                continue
            for stage, ms in timings.items():
                self._stats.stage(stage, ms)
            if cost is not None:
                self._stats.stream(time.monotonic(), cost)
            self._stats.face_present = rendered.face
            if self._output.push(rendered):
                self._stats.drop("outbox")

    def stop(self) -> None:
        self.inbox.close()

    async def close(self) -> None:
        """Release the renderer once no frame is being computed (waits for one in flight)."""
        await asyncio.to_thread(self._close_locked)

    # -- called on executor threads ---------------------------------------------------------

    def _close_locked(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._renderer.close()

    def _render_newest(self) -> tuple[Rendered | None, dict[str, float], StreamCost | None]:
        with self._lock:
            arrival = self.inbox.take()
            if self._closed or arrival is None:
                return None, {}, None
            t0 = time.perf_counter()
            queued_ms = (time.monotonic() - arrival.at) * 1000
            src = arrival.frame
            rgb = src.to_ndarray(format="rgb24")  # (H, W, 3) uint8
            t1 = time.perf_counter()
            if self._reset_requested:
                self._reset_requested = False
                self._renderer.reset()
            t = src.time if src.time is not None else arrival.at
            result = self._renderer(rgb, timestamp=t)
            t2 = time.perf_counter()
        if result.face_found:
            self._lost_since = None
            image = result.image
        else:
            if self._lost_since is None:
                self._lost_since = t
            image = self._fade.apply(result.image, self._fade.amount(t - self._lost_since))
        out = VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        out = out.reformat(format="yuv420p")  # here, not in the encoder's thread
        out.pts, out.time_base = src.pts, src.time_base
        t3 = time.perf_counter()
        timings = {k: float(v) for k, v in result.timings_ms.items()}
        timings.update(
            queue=queued_ms,
            convert=(t1 - t0 + t3 - t2) * 1000,
            worker=(t3 - t0) * 1000,
        )
        return Rendered(out, arrival.at, result.face_found), timings, result.stream
