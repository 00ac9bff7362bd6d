"""Live per-session statistics (for GET /v1/sessions/{id}) mirrored into Prometheus metrics."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from models.pipeline import StreamCost
from service.metrics import Metrics


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()


class KeypointStream:
    """The bitrate a keypoint stream really used (session mode ``keypoints``).

    Fed one :class:`StreamCost` per processed frame, with or without a packet, so frames
    without a face lower the rate as they do on a real channel.  ``kbps`` counts motion
    packets only, over a sliding window of wall-clock time: what a call costs once it is
    running.  Keyframes and bases are one-off reliable messages, reported apart in bytes.
    Payload bytes; a real data channel adds its headers (see docs/compression.md).
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self._window = window_s
        self._recent: deque[tuple[float, int]] = deque()  # (time, motion bytes) per frame
        self.frames = 0
        self.packets = 0
        self.motion_bytes = 0
        self.keyframes = 0
        self.keyframe_bytes = 0
        self.basis_bytes = 0

    def add(self, now: float, cost: StreamCost) -> None:
        self.frames += 1
        self.packets += cost.motion_bytes > 0
        self.motion_bytes += cost.motion_bytes
        self.keyframes += cost.keyframe_bytes > 0
        self.keyframe_bytes += cost.keyframe_bytes
        self.basis_bytes += cost.basis_bytes
        self._recent.append((now, cost.motion_bytes))
        self._trim(now)

    def kbps(self, now: float) -> float:
        """Motion kbit/s over the window: bytes after the first frame in it over its span."""
        self._trim(now)
        if len(self._recent) < 2:
            return 0.0
        span = max(now - self._recent[0][0], self._recent[-1][0] - self._recent[0][0])
        sent = sum(size for _, size in list(self._recent)[1:])
        return 8 * sent / span / 1000 if span > 0 else 0.0

    def bits_per_frame(self, now: float) -> float:
        """Motion bits per processed frame over the window (frames without a face count 0)."""
        self._trim(now)
        if not self._recent:
            return 0.0
        return 8 * sum(size for _, size in self._recent) / len(self._recent)

    def snapshot(self, now: float) -> dict[str, float | int]:
        return {
            "kbps": round(self.kbps(now), 2),
            "bits_per_frame": round(self.bits_per_frame(now), 1),
            "frames": self.frames,
            "packets": self.packets,
            "motion_bytes": self.motion_bytes,
            "keyframes": self.keyframes,
            "keyframe_bytes": self.keyframe_bytes,
            "basis_bytes": self.basis_bytes,
        }

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self._window:
            self._recent.popleft()


class SessionStats:
    """Counters, rates and recent stage latencies of one session.

    Called from the event loop only (the worker reports results after its executor job).
    """

    def __init__(self, metrics: Metrics, history: int = 300) -> None:
        self._metrics = metrics
        self.frames_in = 0
        self.frames_out = 0
        self.dropped: dict[str, int] = {"inbox": 0, "outbox": 0}
        self.errors = 0
        self.bad_messages = 0  # telemetry from the client that was ignored (malformed, unknown)
        self.face_present = False
        self._in = RateMeter()
        self._out = RateMeter()
        self._stages: dict[str, deque[float]] = {}
        self._history = history
        self.keypoints: KeypointStream | None = None  # only for sessions that send keypoints

    def frame_in(self, now: float) -> None:
        self.frames_in += 1
        self._in.tick(now)
        self._metrics.frames_in.inc()

    def drop(self, where: str) -> None:
        self.dropped[where] += 1
        self._metrics.frames_dropped.labels(where).inc()

    def frame_out(self, now: float, added_ms: float) -> None:
        self.frames_out += 1
        self._out.tick(now)
        self._metrics.frames_out.inc()
        self.stage("added", added_ms)

    def error(self) -> None:
        self.errors += 1
        self._metrics.frame_errors.inc()

    def stage(self, name: str, ms: float) -> None:
        self._stages.setdefault(name, deque(maxlen=self._history)).append(ms)
        self._metrics.stage_latency.labels(name).observe(ms / 1000)

    def stream(self, now: float, cost: StreamCost) -> None:
        """One processed frame's bytes on the keypoint stream."""
        if self.keypoints is None:
            self.keypoints = KeypointStream()
        self.keypoints.add(now, cost)
        for kind, size in (
            ("motion", cost.motion_bytes),
            ("keyframe", cost.keyframe_bytes),
            ("basis", cost.basis_bytes),
        ):
            if size:
                self._metrics.keypoint_bytes.labels(kind).inc(size)

    def telemetry(self) -> dict[str, object]:
        """What each per-frame telemetry message adds: the keypoint stream's rate, if any."""
        if self.keypoints is None:
            return {}
        now = time.monotonic()
        return {
            "keypoints": {
                "kbps": round(self.keypoints.kbps(now), 2),
                "bits_per_frame": round(self.keypoints.bits_per_frame(now), 1),
                "keyframe_bytes": self.keypoints.keyframe_bytes,
            }
        }

    def fps_in(self) -> float:
        return self._in.rate(time.monotonic())

    def fps_out(self) -> float:
        return self._out.rate(time.monotonic())

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        stages = {
            name: {
                "mean_ms": round(float(np.mean(v)), 2),
                "p50_ms": round(float(np.percentile(v, 50)), 2),
                "p95_ms": round(float(np.percentile(v, 95)), 2),
            }
            for name, v in self._stages.items()
            if v
        }
        return {
            "fps_in": round(self._in.rate(now), 2),
            "fps_out": round(self._out.rate(now), 2),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": sum(self.dropped.values()),
            "dropped_by": dict(self.dropped),
            "errors": self.errors,
            "bad_messages": self.bad_messages,
            "face_present": self.face_present,
            "latency": stages,
            "keypoints": self.keypoints.snapshot(now) if self.keypoints is not None else None,
        }
