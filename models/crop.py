"""Square face crops: where to cut, how to cut, and how to map points in and out."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.landmarks import Landmarks
from models.smoothing import OneEuroFilter


@dataclass(frozen=True)
class CropBox:
    """A square region of an image: centre and side length in pixels."""

    cx: float
    cy: float
    size: float

    def matrix(self, out_size: int) -> np.ndarray:
        """2x3 affine taking image pixels to crop pixels (crop is out_size x out_size)."""
        s = out_size / self.size
        return np.array(
            [[s, 0.0, out_size / 2 - s * self.cx], [0.0, s, out_size / 2 - s * self.cy]],
            dtype=np.float64,
        )

    def inverse_matrix(self, out_size: int) -> np.ndarray:
        """2x3 affine taking crop pixels back to image pixels."""
        return cv2.invertAffineTransform(self.matrix(out_size))


def face_box(
    landmarks: Landmarks, scale: float = 1.9, lift: float = 0.12, inside: bool = False
) -> CropBox:
    """A crop that holds the whole head with room to move.

    ``scale`` multiplies the face oval's larger side; ``lift`` moves the centre up by that
    fraction of the face height, because the oval stops at the hairline and hair matters.
    ``inside`` slides the box (never shrinks it) to stay within the image where it fits, so a
    portrait framed tightly at the top is not padded with mirrored hair.
    """
    x0, y0, x1, y1 = landmarks.bbox()
    w, h = x1 - x0, y1 - y0
    cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2 - lift * h, max(w, h) * scale
    if inside:
        width, height = landmarks.image_size
        if size <= width:
            cx = min(max(cx, size / 2), width - size / 2)
        if size <= height:
            cy = min(max(cy, size / 2), height - size / 2)
    return CropBox(cx=cx, cy=cy, size=size)


def cut(image: np.ndarray, box: CropBox, out_size: int) -> np.ndarray:
    """The crop as an out_size x out_size image; outside the image it is mirrored."""
    return cv2.warpAffine(
        image,
        box.matrix(out_size),
        (out_size, out_size),
        flags=cv2.INTER_AREA if box.size > 2 * out_size else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


class CropTracker:
    """A face box that follows a moving face without jitter (One-Euro on centre and size)."""

    def __init__(self, scale: float = 1.9, min_cutoff: float = 0.5, beta: float = 0.02) -> None:
        self.scale = scale
        self._filter = OneEuroFilter(min_cutoff=min_cutoff, beta=beta)

    def reset(self) -> None:
        self._filter.reset()

    def __call__(self, landmarks: Landmarks, t: float) -> CropBox:
        raw = face_box(landmarks, self.scale)
        cx, cy, size = self._filter(np.array([raw.cx, raw.cy, raw.size]), t)
        return CropBox(float(cx), float(cy), float(size))
