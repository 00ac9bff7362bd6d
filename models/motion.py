"""Landmark transformer: the driver's motion on the source's face.

MarioNETte (Ha et al., AAAI 2020) names the failure this module exists to prevent: drive a
face with another person's landmarks and the output takes on the driver's face shape.  We keep
the decomposition target = identity(source) + expression(driver) in canonical space:

    shape_t    = shape_src + gain * (shape_drv - shape_drv_ref)       (expression, pose-free)
    rotation_t = (R_drv @ R_drv_ref^T) @ R_src                        (relative head rotation)
    scale_t    = scale_src * scale_drv / scale_drv_ref
    t_t        = t_src + (t_drv - t_drv_ref) * scale_src / scale_drv_ref

so only *changes* of the driver, relative to its reference frame, reach the output.
Two corrections keep that sum a face: eyelid motion is scaled by the ratio of the source's eye
opening to the driver's (a blink of wide driver eyes must close small source eyes, not push
the lid through them), and no upper lid or lip may end below its lower partner.
``absolute`` mode is the ablation: the driver's own shape and rotation, placed where the source's
head is; it leaks the driver's identity and exists to measure exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.landmarks import (
    INNER_LIP_PAIRS,
    LEFT_EYE,
    LEFT_IRIS,
    LEFT_LIDS,
    RIGHT_EYE,
    RIGHT_IRIS,
    RIGHT_LIDS,
)
from models.pose import FaceState, HeadPose

_EYES = (
    (np.array(RIGHT_LIDS), np.array(RIGHT_EYE + RIGHT_IRIS)),
    (np.array(LEFT_LIDS), np.array(LEFT_EYE + LEFT_IRIS)),
)
_CLOSING_PAIRS = np.array(RIGHT_LIDS + LEFT_LIDS + INNER_LIP_PAIRS)


def _gap(shape: np.ndarray, pairs: np.ndarray) -> float:
    """Mean vertical opening between upper and lower points (canonical y points down)."""
    return float((shape[pairs[:, 1], 1] - shape[pairs[:, 0], 1]).mean())


def expression_delta(source: np.ndarray, reference: np.ndarray, driver: np.ndarray) -> np.ndarray:
    """The driver's expression change, fitted to the source's eyes.  All (478, 3) canonical."""
    delta = driver - reference
    for lids, points in _EYES:
        ref_gap = _gap(reference, lids)
        if ref_gap > 1e-3:
            delta[points, 1] *= float(np.clip(_gap(source, lids) / ref_gap, 0.25, 4.0))
    return delta


def keep_closed_parts_closed(shape: np.ndarray) -> np.ndarray:
    """Meet any upper lid or lip that crossed below its lower partner halfway."""
    upper, lower = _CLOSING_PAIRS[:, 0], _CLOSING_PAIRS[:, 1]
    crossed = shape[upper, 1] > shape[lower, 1]
    if crossed.any():
        middle = (shape[upper[crossed], 1] + shape[lower[crossed], 1]) / 2
        shape[upper[crossed], 1] = middle
        shape[lower[crossed], 1] = middle
    return shape


Mode = Literal["relative", "absolute"]


@dataclass
class MotionTransfer:
    """Maps driver face states to target landmarks in the source photo (pixels)."""

    source: FaceState
    mode: Mode = "relative"
    expression_gain: float = 1.0
    reference: FaceState | None = None  # the driver's neutral frame; the first one seen if unset

    def reset(self) -> None:
        """Forget the driver's reference frame: the next frame becomes the neutral one."""
        self.reference = None

    def target_state(self, driver: FaceState) -> FaceState:
        if self.reference is None:
            self.reference = driver
        ref, src = self.reference, self.source
        ratio = src.pose.scale / ref.pose.scale
        translation = (
            src.pose.translation + (driver.pose.translation - ref.pose.translation) * ratio
        )
        translation[2] = src.pose.translation[2]  # depth carries no image-plane motion
        scale = src.pose.scale * driver.pose.scale / ref.pose.scale
        if self.mode == "relative":
            rotation = driver.pose.rotation @ ref.pose.rotation.T @ src.pose.rotation
            delta = expression_delta(src.shape, ref.shape, driver.shape)
            shape = keep_closed_parts_closed(src.shape + self.expression_gain * delta)
        else:
            rotation = driver.pose.rotation
            shape = driver.shape
        return FaceState(HeadPose(rotation, scale, translation), shape)

    def __call__(self, driver: FaceState) -> np.ndarray:
        """(478, 3) target landmarks in source-photo pixels."""
        return self.target_state(driver).points()
