"""Session mode ``keypoints-device``: the browser sends keypoints, never video.

The page tracks the face itself (mediapipe's web build), encodes it with the codec's sending
end ported to JavaScript (``web/keypoints/``) and sends only the codec's messages, on two data
channels as :mod:`service.peer`'s peers do: ``keypoints-motion`` (unordered, no retransmission)
and ``keypoints-control`` (reliable: keyframes, heartbeats; the receiver's keyframe requests go
back on it).  The server runs only the receiving end, :class:`service.compression.Receiver`, and
the generator, and sends the reconstruction back as the session's video.

:class:`DeviceKeypoints` is the session's :class:`models.pipeline.FrameRenderer`.  Its driver is
the keypoint stream rather than camera frames, so the session feeds its worker one *tick* per
decodable motion packet: a tiny placeholder frame stamped with the packet's own timestamp (the
sender's clock), which the output track carries through as the driver's pts.  The worker then
works as for any session (newest tick wins, the fps cap, model work on the executor), and
renders whatever the playout chose for that tick.

When the motion stops (the sender lost the face: its page then sends only a heartbeat a
second), :meth:`DeviceKeypoints.idle` gives the session ticks *without* a frame, stamped on the
sender's clock extrapolated, so the worker keeps sending the last frame and reports the face
lost, and its :class:`service.worker.FaceLostFade` holds, then fades, it as in the other modes.
A gap the receiver's playout would conceal (interpolated once the next packet comes, up to
``Decoder.max_gap`` frames), or a few packet intervals of a slow tracker, is not a lost face.

Threads: parsing, playout and bookkeeping run on the event loop (:meth:`DeviceKeypoints.receive`,
cheap); the generator, and the source embedding after a new keyframe, on the worker's thread
(:meth:`DeviceKeypoints.__call__`), as :class:`service.peer.KeypointPeer` splits them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from av import VideoFrame

from engines import Engine
from models.codec import MessageType, message_type
from models.codec_stream import Played
from models.errors import BadInputError
from models.pipeline import FrameResult, StreamCost
from service.compression import Receiver
from service.peer import PLAYOUT_DELAY
from service.relay import GREY, REQUEST_EVERY_S
from service.rtc.tracks import Arrival

log = logging.getLogger(__name__)

MODE = "keypoints-device"
MOTION_LABEL = "keypoints-motion"
CONTROL_LABEL = "keypoints-control"
LABELS = (MOTION_LABEL, CONTROL_LABEL)
TICK_TIME_BASE = Fraction(1, 90_000)  # the output's RTP clock: pts in the sender's time
_TICK_SIDE = 16  # the placeholder frame a tick carries; never shown
MIN_QUIET_S = 0.25  # no motion for longer than this (and than below) is a lost face
QUIET_INTERVALS = 3.0  # ... and than this many of the stream's usual packet intervals


@dataclass
class Delivery:
    """What one received message means for the session."""

    cost: StreamCost | None = None  # bytes to count (motion packets carry the pending keyframe)
    tick: Arrival | None = None  # a new frame to render
    replies: list[bytes] = field(default_factory=list)  # to the browser, reliably


class DeviceKeypoints:
    """The receiving end of a browser's keypoint stream, as a session's frame renderer."""

    def __init__(self, engine: Engine, size: int = 256) -> None:
        self.receiver = Receiver(engine, size)
        self._last = np.full((size, size, 3), GREY, np.uint8)
        self._lock = threading.Lock()  # the played frame handed from the loop to the worker
        self._pending: Played | None = None
        self._shown: int | None = None  # the newest sequence number handed to the worker
        self._keyframe_bytes = self._basis_bytes = 0  # received, not yet counted
        self._requested: tuple[int, float] | None = None  # (epoch, monotonic) last asked for
        self._motion_at: float | None = None  # monotonic: the last decodable motion packet
        self._interval: float | None = None  # their usual spacing, s (moving average)
        self._clock: tuple[float, float] | None = None  # (sender s, monotonic) of the last tick
        self._last_t: float | None = None  # sender s of the last tick handed out (any kind)
        self._quiet = False  # idle ticks are being handed out: the sender's face is lost

    # -- event loop ---------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> Delivery:
        """One message from the browser (either channel).  Never raises."""
        try:
            kind = message_type(data)
        except BadInputError:
            kind = None
        decoded = self.receiver.decoder.stats.motion
        self.receiver.receive(data)  # validates and counts anything bad in decoder.stats
        out = Delivery()
        if kind == MessageType.KEYFRAME:
            self._keyframe_bytes += len(data)
        elif kind == MessageType.BASIS:
            self._basis_bytes += len(data)
        elif kind == MessageType.MOTION:
            # Counted per motion packet, like the relay's per frame: one-off bytes ride along.
            out.cost = StreamCost(len(data), self._keyframe_bytes, self._basis_bytes)
            self._keyframe_bytes = self._basis_bytes = 0
            if self.receiver.decoder.stats.motion > decoded:
                self._heard(now)
            out.tick = self._play(now)
        out.replies = self._replies(now)
        return out

    def idle(self, now: float) -> Arrival | None:
        """A tick with nothing new to render, when no motion has come for longer than a gap
        the playout conceals (the sender's face is lost); None while motion flows, or before
        any frame was shown.  The session calls this at its frame rate.  Its timestamp is the
        sender's clock run on from the last frame shown, so the worker's hold-then-fade runs
        in step with real time."""
        if self._clock is None or self._motion_at is None:
            return None
        if now - self._motion_at <= self._quiet_after():
            return None
        if not self._quiet:
            log.debug("no motion for %.2f s: the sender's face is lost", now - self._motion_at)
            self._quiet = True
        shown, at = self._clock
        return self._tick(shown + (now - at))

    def _quiet_after(self) -> float:
        """How long without motion counts as a lost face: longer than the receiver conceals
        by interpolation (``max_gap`` frames) and than a few of the stream's packet intervals
        (a tracker at 2 fps leaves 0.5 s between packets)."""
        decoder = self.receiver.decoder
        keyframe = decoder.keyframe
        conceals = decoder.max_gap / keyframe.fps if keyframe is not None else 0.0
        spacing = QUIET_INTERVALS * self._interval if self._interval is not None else 0.0
        return max(MIN_QUIET_S, conceals, spacing)

    def _heard(self, now: float) -> None:
        """A decodable motion packet arrived: learn the stream's usual packet spacing (not
        from the silence of a lost face)."""
        if self._motion_at is not None and not self._quiet:
            gap = now - self._motion_at
            self._interval = gap if self._interval is None else 0.8 * self._interval + 0.2 * gap
        self._motion_at = now

    def _play(self, now: float) -> Arrival | None:
        """The frame to show now: PLAYOUT_DELAY behind the newest packet, so a single lost
        packet is interpolated; None when nothing newer than what was shown is decodable.
        After a lost face, the newest packet itself: the gap's frames are history."""
        decoder = self.receiver.decoder
        newest = decoder.newest
        if newest is None or decoder.keyframe is None:
            return None
        oldest = decoder.oldest
        seq = newest - PLAYOUT_DELAY if oldest is None else max(newest - PLAYOUT_DELAY, oldest)
        if self._quiet:
            seq = newest
        if self._shown is not None and seq <= self._shown:
            return None
        played = decoder.play(seq)
        if played is None:
            return None
        if self._quiet:
            log.debug("motion again: the sender's face is back")
            self._quiet = False
        self._shown = seq
        with self._lock:
            self._pending = played
        tick = self._tick(played.timestamp)
        assert tick.frame.time is not None
        self._clock = (tick.frame.time, now)
        return tick

    def _tick(self, t: float) -> Arrival:
        """A placeholder frame stamped ``t`` (sender seconds), never before the last one."""
        pts = round(t / TICK_TIME_BASE)
        if self._last_t is not None:
            pts = max(pts, round(self._last_t / TICK_TIME_BASE) + 1)  # pts only go forwards
        tick = VideoFrame(_TICK_SIDE, _TICK_SIDE, "rgb24")
        tick.pts = pts
        tick.time_base = TICK_TIME_BASE
        self._last_t = float(pts * TICK_TIME_BASE)
        return Arrival(tick, time.monotonic())

    def _replies(self, now: float) -> list[bytes]:
        """The decoder's replies (keyframe requests); plus a request for a fresh picture when
        the current keyframe's picture showed no usable face, at most once per REQUEST_EVERY_S."""
        outbox = self.receiver.decoder.outbox
        replies = list(outbox)
        outbox.clear()
        keyframe = self.receiver.decoder.keyframe
        if keyframe is not None and self.receiver.keyframe_unusable:
            last = self._requested
            if last is None or (last[0] != keyframe.epoch and now - last[1] >= REQUEST_EVERY_S):
                self._requested = (keyframe.epoch, now)
                log.info("keyframe %d has no usable face: asking for a new one", keyframe.epoch)
                replies.append(self.receiver.decoder.request_keyframe(fresh=True))
        return replies

    # -- worker thread ------------------------------------------------------------------------

    def __call__(self, rgb: np.ndarray, timestamp: float | None = None) -> FrameResult:
        """Render the frame the playout chose for the newest tick (``rgb`` is the tick's
        placeholder and unused: the driver is the keypoint stream).  An idle tick has none:
        the last frame again, without a face, for the worker to hold and fade."""
        t0 = time.perf_counter()
        with self._lock:
            played, self._pending = self._pending, None
        if played is None:
            return FrameResult(self._last, False, {"total": 0.0})
        image = self.receiver.render(played)
        t1 = time.perf_counter()
        if image is None:  # no keyframe picture with a face yet
            return FrameResult(self._last, False, {"total": (t1 - t0) * 1e3})
        self._last = image
        return FrameResult(image, True, {"generate": (t1 - t0) * 1e3, "total": (t1 - t0) * 1e3})

    def reset(self) -> None:
        """Re-centre is the browser's own business here: its sender makes a fresh keyframe."""

    def close(self) -> None:
        """Nothing held beyond the shared engine."""
