"""A fixed, data-free basis for expression changes of the warp keypoints, part by part.

The keypoint codec (:mod:`models.codec`) must describe how a face's canonical shape changed
since its keyframe in a few dozen numbers, with a basis both ends know *without* sending it and
without learning it from anyone's face.  Each facial part is a contour of keypoints
(:data:`models.landmarks.WARP_KEYPOINTS` is exactly the parts below, in this order), and an
expression moves a contour smoothly: a blink lowers the upper half of an eye, a jaw drop the
lower half of the lips, a raised brow the whole brow.  So each part's displacement, x and y
separately, is expanded in the low frequencies of a Fourier series along its contour (closed
contours) or a DCT-II along its chain (open ones), the spectral view of mesh geometry of Karni &
Gotsman (SIGGRAPH 2000) restricted to one curve at a time.  Parts are kept apart because they
move independently (upper vs lower lip, eyes vs brows): a global smooth basis would smear one
into the other.

Depth (canonical z) is not coded: the generator only warps the 2-D positions, and a depth change
of an expression shows in the image only through head rotation, where it is a fraction of the
x-y motion (measured: dropping it adds ~0.02 px at 256 px).  How many frequencies each part keeps
(``modes``) is the one accuracy/rate knob here; it is part of the bitstream specification, so
changing it is a new bitstream version.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from models.landmarks import (
    FACE_OVAL,
    LEFT_BROW,
    LEFT_EYE,
    LEFT_IRIS_CENTER,
    LIPS_INNER,
    LIPS_OUTER,
    NOSE,
    RIGHT_BROW,
    RIGHT_EYE,
    RIGHT_IRIS_CENTER,
    WARP_KEYPOINTS,
)


@dataclass(frozen=True)
class Part:
    """One facial part: its keypoints in contour order, and how many frequencies are coded."""

    name: str
    indices: tuple[int, ...]  # mediapipe landmark indices, in contour / chain order
    closed: bool  # a closed contour (Fourier series) or an open chain (DCT-II)
    modes: int  # basis functions kept per coordinate, lowest frequencies first

    @property
    def size(self) -> int:
        """Coefficients this part contributes: ``modes`` for x, then ``modes`` for y."""
        return 2 * self.modes


PARTS: tuple[Part, ...] = (
    Part("face_oval", FACE_OVAL, closed=True, modes=5),
    Part("right_brow", RIGHT_BROW, closed=True, modes=3),
    Part("left_brow", LEFT_BROW, closed=True, modes=3),
    Part("right_eye", RIGHT_EYE, closed=True, modes=5),
    Part("left_eye", LEFT_EYE, closed=True, modes=5),
    Part("irises", (RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER), closed=False, modes=2),
    Part("nose", NOSE, closed=False, modes=3),
    Part("lips_outer", LIPS_OUTER, closed=True, modes=5),
    Part("lips_inner", LIPS_INNER, closed=True, modes=7),
)
CODED_POINTS: tuple[int, ...] = tuple(i for p in PARTS for i in p.indices)
NUM_COEFFICIENTS = sum(p.size for p in PARTS)

if CODED_POINTS != WARP_KEYPOINTS:  # the generator's keypoints, each coded exactly once
    raise RuntimeError("contour_basis.PARTS must list exactly WARP_KEYPOINTS, in order")


def _closed(n: int, modes: int) -> np.ndarray:
    """(modes, n) orthonormal real Fourier series along a closed contour of n points:
    constant, cos 1, sin 1, cos 2, sin 2, ..."""
    t = np.arange(n) / n
    rows = [np.full(n, 1.0 / np.sqrt(n))]
    k = 1
    while len(rows) < modes:
        rows.append(np.sqrt(2.0 / n) * np.cos(2 * np.pi * k * t))
        if len(rows) < modes:
            rows.append(np.sqrt(2.0 / n) * np.sin(2 * np.pi * k * t))
        k += 1
    return np.stack(rows)


def _open(n: int, modes: int) -> np.ndarray:
    """(modes, n) orthonormal DCT-II along an open chain of n points."""
    t = (np.arange(n) + 0.5) / n
    rows = [np.full(n, 1.0 / np.sqrt(n))]
    rows += [np.sqrt(2.0 / n) * np.cos(np.pi * k * t) for k in range(1, modes)]
    return np.stack(rows)


@cache
def basis() -> np.ndarray:
    """(NUM_COEFFICIENTS, len(CODED_POINTS), 2): orthonormal rows, block-diagonal by part.

    Coefficient order: part by part as in :data:`PARTS`; within a part all x modes, then all
    y modes, lowest frequency first.  Read-only: shared by every caller.
    """
    n = len(CODED_POINTS)
    rows = np.zeros((NUM_COEFFICIENTS, n, 2))
    row = start = 0
    for part in PARTS:
        m = len(part.indices)
        if part.modes > m:
            raise RuntimeError(f"{part.name}: {part.modes} modes but only {m} points")
        curve = (_closed if part.closed else _open)(m, part.modes)
        for axis in (0, 1):
            rows[row : row + part.modes, start : start + m, axis] = curve
            row += part.modes
        start += m
    rows.setflags(write=False)
    return rows


def analyse(delta: np.ndarray) -> np.ndarray:
    """Coefficients (NUM_COEFFICIENTS,) of a displacement of the coded points.

    ``delta`` is (len(CODED_POINTS), >=2) canonical units; only x and y are used.
    """
    return np.einsum("kpc,pc->k", basis(), np.asarray(delta, dtype=np.float64)[:, :2])


def synthesise(coefficients: np.ndarray) -> np.ndarray:
    """(len(CODED_POINTS), 2) displacement for coefficients (the inverse of :func:`analyse` on
    the span of the basis)."""
    return np.einsum("k,kpc->pc", np.asarray(coefficients, dtype=np.float64), basis())


def part_slices() -> tuple[slice, ...]:
    """Where each part's coefficients lie in the coefficient vector, in :data:`PARTS` order."""
    out, start = [], 0
    for part in PARTS:
        out.append(slice(start, start + part.size))
        start += part.size
    return tuple(out)
