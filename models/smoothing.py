"""One-Euro filter: jitter removal whose lag shrinks as motion speeds up.

Casiez, Roussel & Vogel, "1€ Filter", CHI 2012.  A low-pass filter whose cutoff rises with the
signal's speed: still landmarks are smoothed hard (no jitter), fast ones barely (no lag).
Vectorised over any array shape so one filter smooths all 478 landmarks at once.
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Smooths a stream of equally shaped arrays sampled at known times."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0) -> None:
        # min_cutoff (Hz): smoothing when still; beta: how fast the cutoff rises with speed
        # (in the signal's units per second); d_cutoff (Hz): smoothing of the speed estimate.
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or self._dx is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        dx_hat = self._dx + _alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(dx_hat)
        x_hat = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._x, self._dx, self._t = x_hat, dx_hat, t
        return x_hat.copy()


# How every face tracker smooths its landmarks (cutoffs in Hz, beta in pixels/s): steady when
# still, no lag on fast head turns.  The browser's tracker uses the same values
# (service/web_codec.py writes them into web/keypoints/spec.js).
LANDMARK_SMOOTHING = {"min_cutoff": 1.5, "beta": 0.08, "d_cutoff": 1.0}


class LandmarkSmoother:
    """A tracker's One-Euro filter and clock: a frame without a timestamp is taken 1/30 s after
    the previous one, so callers that know no times still get smoothing at camera rate."""

    def __init__(self) -> None:
        self._filter = OneEuroFilter(**LANDMARK_SMOOTHING)
        self._t = 0.0

    def reset(self) -> None:
        """Forget the past: the next face may be somewhere else entirely."""
        self._filter.reset()

    def __call__(self, points: np.ndarray, timestamp: float | None) -> np.ndarray:
        self._t = timestamp if timestamp is not None else self._t + 1 / 30
        return self._filter(points, self._t)
