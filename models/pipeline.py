"""The one path a driving frame takes: track -> transfer -> render.

Each step is small and separately callable (evaluation and the compression codec reuse them);
``Reenactor.__call__`` just chains them and times each stage.  One Reenactor per driver
stream: it owns a stateful video tracker and the driver's reference frame.  The engine is
passed in and may be shared by many Reenactors.

:class:`FrameRenderer` is the call surface a live session needs (frame in, frame out, reset,
close).  The Reenactor is one; the server's keypoint relay (``service.relay``) is another, so
the session worker drives either without knowing which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from engines.base import Engine
from models.action_units import expression_basis, state_from_action_units
from models.closeable import Closeable
from models.landmarks import Landmarks
from models.motion import Mode, MotionTransfer
from models.pose import face_state
from models.source import SourceEmbedding, driving_inputs
from models.tracking import FaceTracker, Tracker


@dataclass(frozen=True)
class StreamCost:
    """What one frame cost on a keypoint stream, in payload bytes (no transport headers).

    ``motion_bytes`` is this frame's motion packet (0 when none was sent: no face);
    ``keyframe_bytes`` and ``basis_bytes`` are one-off reliable messages sent with it.
    """

    motion_bytes: int = 0
    keyframe_bytes: int = 0
    basis_bytes: int = 0


@dataclass
class FrameResult:
    """One output frame and what it cost."""

    image: np.ndarray  # (S, S, 3) uint8 RGB; the last good frame when no face was found
    face_found: bool
    timings_ms: dict[str, float] = field(default_factory=dict)  # track, motion, generate, total
    landmarks: Landmarks | None = None  # the driver's, when found
    stream: StreamCost | None = None  # bytes sent, when the frame went through a keypoint codec


class FrameRenderer(Protocol):
    """One driver stream in, one output stream out: what a live session's worker calls.

    Not thread-safe: the caller serialises calls (one frame at a time, then ``close`` once).
    """

    def __call__(self, rgb: np.ndarray, timestamp: float | None = None) -> FrameResult:
        """The output for one driver frame (H, W, 3) uint8 RGB; ``timestamp`` in seconds,
        increasing (the driver's media clock)."""
        ...

    def reset(self) -> None:
        """Re-anchor on the next driver frame (the page's Re-centre)."""
        ...

    def close(self) -> None:
        """Release the tracker and anything else held; no call follows."""
        ...


class Reenactor(Closeable):
    """Animates one source embedding with one driver stream."""

    def __init__(
        self,
        source: SourceEmbedding,
        engine: Engine,
        mode: Mode = "relative",
        tracker: Tracker | None = None,
    ) -> None:
        """``tracker``: the driver's face tracker, owned (closed) by the Reenactor from now on;
        None builds mediapipe's FaceTracker in video mode."""
        self.source = source
        self.engine = engine
        self.transfer_motion = MotionTransfer(source.state, mode=mode)
        self.tracker: Tracker = tracker or FaceTracker(video=True)
        self._last = source.crop
        self._au_basis: np.ndarray | None = None

    def reset(self) -> None:
        """Take the next driver frame as the neutral reference (recalibrate)."""
        self.transfer_motion.reset()

    def track(self, rgb: np.ndarray, timestamp: float | None = None) -> Landmarks | None:
        return self.tracker(rgb, timestamp)

    def transfer(self, driver: Landmarks) -> np.ndarray:
        """Target landmarks (478, 3) in source-photo pixels."""
        return self.transfer_motion(face_state(driver.points))

    def render(self, target: np.ndarray) -> np.ndarray:
        """The animated crop (S, S, 3) uint8 RGB for target landmarks."""
        inputs = {**self.source.tensors, **driving_inputs(self.source, target)}
        return self.engine.infer(inputs)["frame"][0]

    def render_action_units(self, units: ArrayLike) -> np.ndarray:
        """The avatar with an expression and head pose given by action units alone (FACEGAN).

        ``units`` follows ``models.action_units.AU_NAMES``; NaN keeps the source's own value.
        """
        if self._au_basis is None:  # depends only on the source face: build it once
            self._au_basis = expression_basis(self.source.state.shape)
        state = state_from_action_units(self.source.state, units, basis=self._au_basis)
        return self.render(state.points())

    def __call__(self, rgb: np.ndarray, timestamp: float | None = None) -> FrameResult:
        t0 = time.perf_counter()
        driver = self.track(rgb, timestamp)
        t1 = time.perf_counter()
        timings = {"track": (t1 - t0) * 1e3}
        if driver is None:
            timings["total"] = timings["track"]
            return FrameResult(self._last, False, timings)
        target = self.transfer(driver)
        t2 = time.perf_counter()
        self._last = self.render(target)
        t3 = time.perf_counter()
        timings.update(motion=(t2 - t1) * 1e3, generate=(t3 - t2) * 1e3, total=(t3 - t0) * 1e3)
        return FrameResult(self._last, True, timings, driver)

    def close(self) -> None:
        self.tracker.close()
