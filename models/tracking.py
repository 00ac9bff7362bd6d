"""Face landmarks from mediapipe's face mesh (478 points with irises), for photos and video.

The model files ship inside the pinned mediapipe wheel (0.10.21): nothing is downloaded.
In video mode mediapipe tracks the face from the previous frame's landmarks instead of running
the detector every frame, which is both faster and steadier; a One-Euro filter on top removes
the remaining frame-to-frame jitter without visible lag.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from models.closeable import Closeable
from models.errors import BadInputError, NoFaceError
from models.landmarks import NUM_LANDMARKS, Landmarks
from models.smoothing import LandmarkSmoother

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What a driver stream needs from a face tracker: FaceTracker (mediapipe on the CPU) or
    models.mesh_tracking.MeshTracker (the same network on an engine, e.g. a GPU)."""

    def __call__(self, rgb: np.ndarray, timestamp: float | None = None) -> Landmarks | None: ...

    def close(self) -> None: ...


class FaceTracker(Closeable):
    """Finds one face per image.  Not thread-safe: one tracker per stream."""

    def __init__(
        self,
        *,
        video: bool = True,
        smooth: bool = True,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        # Imported here so that modules which only handle landmarks never pay for mediapipe.
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(
            static_image_mode=not video,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self._video = video
        self._smoother = LandmarkSmoother() if (video and smooth) else None

    def __call__(self, rgb: np.ndarray, timestamp: float | None = None) -> Landmarks | None:
        """Landmarks of the most prominent face in an RGB uint8 (H, W, 3) image, or None.

        ``timestamp`` (seconds) drives the smoothing; without one frames are taken as 30 fps.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BadInputError(f"expected an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = result.multi_face_landmarks
        if not faces:
            if self._smoother is not None:
                self._smoother.reset()
            return None
        lm = faces[0].landmark
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lm], dtype=np.float64)
        assert pts.shape == (NUM_LANDMARKS, 3), pts.shape
        if self._smoother is not None:
            pts = self._smoother(pts, timestamp)
        return Landmarks(pts.astype(np.float32), (w, h))

    def close(self) -> None:
        self._mesh.close()


def detect(rgb: np.ndarray) -> Landmarks:
    """Landmarks of the face in a still photo; raises NoFaceError when there is none."""
    with FaceTracker(video=False, smooth=False) as tracker:
        found = tracker(rgb)
    if found is None:
        raise NoFaceError("no face found in the image")
    return found
