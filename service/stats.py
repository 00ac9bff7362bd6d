"""Live per-session statistics (for GET /v1/sessions/{id}) mirrored into Prometheus metrics."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

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
        self.face_present = False
        self._in = RateMeter()
        self._out = RateMeter()
        self._stages: dict[str, deque[float]] = {}
        self._history = history

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
            "face_present": self.face_present,
            "latency": stages,
        }
