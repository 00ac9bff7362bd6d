"""Prometheus metrics, in a registry owned by one app (tests build many apps per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds; real-time budgets live between 1 ms and a few hundred.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.08, 0.12, 0.2, 0.35, 0.6, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.active_sessions = Gauge(
            "reenact_active_sessions", "Sessions currently registered", registry=self.registry
        )
        self.sessions_total = Counter(
            "reenact_sessions", "Sessions created", registry=self.registry
        )
        self.sessions_ended = Counter(
            "reenact_sessions_ended",
            "Sessions ended, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "reenact_sessions_rejected",
            "Session requests refused because the server was full",
            registry=self.registry,
        )
        self.frames_in = Counter(
            "reenact_frames_in", "Driver frames received", registry=self.registry
        )
        self.frames_out = Counter(
            "reenact_frames_out", "Avatar frames handed to the encoder", registry=self.registry
        )
        self.frames_dropped = Counter(
            "reenact_frames_dropped",
            "Frames dropped so latency cannot grow, by where they were dropped",
            ["where"],
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "reenact_stage_latency_seconds",
            "Per-frame latency of each stage (added = server arrival to encoder hand-off)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.frame_errors = Counter(
            "reenact_frame_errors", "Frames whose processing raised", registry=self.registry
        )
        self.keypoint_bytes = Counter(
            "reenact_keypoint_bytes",
            "Keypoint stream payload bytes sent by relay sessions, by message kind",
            ["kind"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
