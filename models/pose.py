"""Head pose from landmarks, and the pose-free ("canonical") face shape.

No canonical face model is needed: the head's axes come from the landmarks themselves.  The
left-right axis is the mean of mirror-pair vectors among rigid points (eye corners, temples,
nose wings), the down axis the forehead->nose-base direction made orthogonal to it.  The head
frame is then (left, down, back) expressed in camera coordinates (x right, y down, z away from
the camera), so a face looking straight at the camera has the identity rotation.

Canonical shape: landmarks = scale * R @ shape + translation, i.e. shape = R^T (L - t) / scale,
with t the centroid and scale the RMS radius of the rigid points.  Expressions are differences
of canonical shapes, so they are independent of head pose, position and face size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from models.landmarks import MIDLINE_BOTTOM, MIDLINE_TOP, RIGID, RIGID_PAIRS

_RIGID = np.array(RIGID)
_PAIRS = np.array(RIGID_PAIRS)


@dataclass(frozen=True)
class HeadPose:
    """A similarity transform from canonical face space to image space (pixels)."""

    rotation: np.ndarray  # (3, 3), columns: head's left, down, back axes in camera coordinates
    scale: float  # pixels per canonical unit
    translation: np.ndarray  # (3,) pixels

    def apply(self, shape: np.ndarray) -> np.ndarray:
        """(N, 3) canonical points -> (N, 3) image points."""
        return self.scale * shape @ self.rotation.T + self.translation

    def angles(self) -> tuple[float, float, float]:
        """(yaw, pitch, roll) in degrees; yaw > 0 turns the face toward the image's right."""
        yaw, pitch, roll = Rotation.from_matrix(self.rotation).as_euler("YXZ", degrees=True)
        return float(-yaw), float(pitch), float(roll)


@dataclass(frozen=True)
class FaceState:
    """One face in one frame, split into rigid head pose and pose-free shape."""

    pose: HeadPose
    shape: np.ndarray  # (478, 3) canonical coordinates

    def points(self) -> np.ndarray:
        """The landmarks this state stands for, (478, 3) pixels."""
        return self.pose.apply(self.shape)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def fit_pose(points: np.ndarray) -> HeadPose:
    """The head pose of (478, 3) pixel landmarks."""
    p = np.asarray(points, dtype=np.float64)
    left = _unit((p[_PAIRS[:, 1]] - p[_PAIRS[:, 0]]).sum(axis=0))
    up = p[list(MIDLINE_TOP)].mean(axis=0) - p[list(MIDLINE_BOTTOM)].mean(axis=0)
    down = _unit(-(up - (up @ left) * left))
    back = np.cross(left, down)
    rotation = np.stack([left, down, back], axis=1)
    t = p[_RIGID].mean(axis=0)
    local = (p[_RIGID] - t) @ rotation
    scale = float(np.sqrt((local**2).sum(axis=1).mean()))
    return HeadPose(rotation=rotation, scale=scale, translation=t)


def face_state(points: np.ndarray) -> FaceState:
    """Split (478, 3) pixel landmarks into head pose and canonical shape."""
    pose = fit_pose(points)
    shape = (np.asarray(points, dtype=np.float64) - pose.translation) @ pose.rotation / pose.scale
    return FaceState(pose=pose, shape=shape)
