"""Face landmarks with the face-mesh network run by an inference engine (GPU-ready tracking).

``MeshTracker`` is a drop-in for tracking.FaceTracker: the same call, the same ``Landmarks``
(478 points, mediapipe's refine_landmarks order and pixel conventions), the same One-Euro
smoothing.  The difference is who runs the network: mediapipe runs it with TFLite on CPU
threads; here it is models/landmark_net.FaceMeshNetwork exported to ONNX and run by any
``Engine`` (onnxruntime on CPU, CUDA or TensorRT; several sessions can share one engine behind
a BatchScheduler).  Only acquisition stays on mediapipe's CPU face detector: it runs when no
face is tracked, rarely in a call, while the mesh runs every frame.

The per-frame loop is mediapipe's face-mesh solution graph (FaceLandmarkFrontCpu in 0.10.21):
the region of interest comes from the previous frame's landmarks (FaceLandmarkLandmarksToRoi:
the landmarks' bounding box, rotated so that the line from point 33 to point 263, the outer
eye corners, is horizontal, grown 1.5x and made square on its long side), or from a detection
(FaceDetectionFrontDetectionToRoi: the box and the two eye keypoints, same 1.5x square).  The
crop is warped to 192x192 the way mediapipe's ImageToTensorCalculator does (the ROI's corners
onto the tensor's corners, bilinear, edge pixels replicated), and the points are projected
back with the same matrix (LandmarkProjectionCalculator; z scaled like x).

One deliberate difference: when tracking fails on a frame (face presence below
``min_tracking_confidence``), mediapipe reports no face and detects on the next frame; here the
detector runs on the same frame at once, so a fast head turn costs no frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from engines.base import Engine
from models.closeable import Closeable
from models.errors import BadInputError
from models.landmark_net import CROP_SIZE
from models.landmarks import NUM_LANDMARKS, Landmarks
from models.smoothing import LandmarkSmoother

log = logging.getLogger(__name__)

ROI_SCALE = 1.5  # both of mediapipe's ROI graphs grow the face box by this much
ROI_EYES = (33, 263)  # outer eye corners: the rotation vector of FaceLandmarkLandmarksToRoi


@dataclass(frozen=True)
class Roi:
    """A square, rotated region of an image: centre and side in pixels, angle in radians of
    the region's x axis from the image's (y down, so positive turns clockwise on screen)."""

    cx: float
    cy: float
    size: float
    angle: float

    def matrix(self, side: int = CROP_SIZE) -> np.ndarray:
        """(2, 3) crop pixel -> image pixel: crop (0, 0) and (side, side) are the ROI's
        corners, exactly as mediapipe maps an ROI onto its input tensor."""
        k = self.size / side
        c, s = np.cos(self.angle) * k, np.sin(self.angle) * k
        half = side / 2
        return np.array(
            [
                [c, -s, self.cx - c * half + s * half],
                [s, c, self.cy - s * half - c * half],
            ]
        )


def roi_around(xy: np.ndarray, eyes: tuple[np.ndarray, np.ndarray]) -> Roi:
    """The ROI of points ``xy`` (N, 2) pixels: their axis-aligned box's centre, the angle of
    the ``eyes`` vector, the box's long side times ROI_SCALE (mediapipe's DetectionsToRects
    then RectTransformation with square_long)."""
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    d = eyes[1] - eyes[0]
    return Roi(
        cx=float(x0 + x1) / 2,
        cy=float(y0 + y1) / 2,
        size=float(max(x1 - x0, y1 - y0)) * ROI_SCALE,
        angle=float(np.arctan2(d[1], d[0])),
    )


def crop(rgb: np.ndarray, roi: Roi) -> np.ndarray:
    """The ROI resampled to a (192, 192, 3) uint8 crop (a GPU warp could replace this)."""
    return cv2.warpAffine(
        rgb,
        roi.matrix(),
        (CROP_SIZE, CROP_SIZE),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def to_image(points: np.ndarray, roi: Roi) -> np.ndarray:
    """(N, 3) crop-pixel landmarks -> image pixels; z scaled like x and y."""
    m = roi.matrix()
    xy = points[:, :2] @ m[:, :2].T + m[:, 2]
    z = points[:, 2:] * (roi.size / CROP_SIZE)
    return np.concatenate([xy, z], axis=1)


class MeshTracker(Closeable):
    """Finds one face per image, with the mesh run by ``engine`` (create_face_mesh_engine).

    Same contract as FaceTracker.  Not thread-safe: one tracker per stream; the engine may be
    shared (its ``infer`` is thread-safe) and is not closed by the tracker.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        video: bool = True,
        smooth: bool = True,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        # Imported here, as in tracking.py: modules that only handle landmarks never pay for it.
        from mediapipe.python.solutions import face_detection

        self._engine = engine
        self._detector = face_detection.FaceDetection(
            min_detection_confidence=min_detection_confidence, model_selection=0
        )
        self._video = video
        self._min_presence = min_tracking_confidence
        self._roi: Roi | None = None  # from the previous frame's landmarks
        self._smoother = LandmarkSmoother() if (video and smooth) else None
        self.detections = 0  # how often acquisition ran: the CPU cost this tracker still has

    def __call__(self, rgb: np.ndarray, timestamp: float | None = None) -> Landmarks | None:
        """Landmarks of the most prominent face in an RGB uint8 (H, W, 3) image, or None.

        ``timestamp`` (seconds) drives the smoothing; without one frames are taken as 30 fps.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BadInputError(f"expected an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        pts = self._mesh(rgb, self._roi) if (self._video and self._roi is not None) else None
        if pts is None:
            roi = self._detect(rgb)
            pts = self._mesh(rgb, roi) if roi is not None else None
        if pts is None:
            self._roi = None
            if self._smoother is not None:
                self._smoother.reset()
            return None
        self._roi = roi_around(pts[:, :2], (pts[ROI_EYES[0], :2], pts[ROI_EYES[1], :2]))
        assert pts.shape == (NUM_LANDMARKS, 3), pts.shape
        if self._smoother is not None:
            pts = self._smoother(pts, timestamp)
        return Landmarks(pts.astype(np.float32), (w, h))

    def _mesh(self, rgb: np.ndarray, roi: Roi) -> np.ndarray | None:
        """(478, 3) image-pixel landmarks in ``roi``, or None when the net sees no face there."""
        out = self._engine.infer({"image": crop(rgb, roi)[None]})
        if float(out["presence"][0]) < self._min_presence:
            return None
        return to_image(out["landmarks"][0].astype(np.float64), roi)

    def _detect(self, rgb: np.ndarray) -> Roi | None:
        """The ROI of the best face detection, or None: mediapipe's short-range detector, CPU."""
        self.detections += 1
        found = self._detector.process(rgb).detections
        if not found:
            return None
        h, w = rgb.shape[:2]
        loc = found[0].location_data
        box = loc.relative_bounding_box
        corners = np.array(
            [[box.xmin, box.ymin], [box.xmin + box.width, box.ymin + box.height]]
        ) * (w, h)
        eyes = [np.array([k.x * w, k.y * h]) for k in loc.relative_keypoints[:2]]
        return roi_around(corners, (eyes[0], eyes[1]))

    def close(self) -> None:
        self._detector.close()
