"""Landmark transformer: the driver's motion on the source's face.

MarioNETte (Ha et al., AAAI 2020) names the failure this module exists to prevent: drive a
face with another person's landmarks and the output takes on the driver's face shape.  We keep
the decomposition target = identity(source) + expression(driver) in canonical space:

    shape_t    = shape_src + gain * (shape_drv - shape_drv_ref)       (expression, pose-free)
    rotation_t = (R_drv @ R_drv_ref^T) @ R_src                        (relative head rotation)
    scale_t    = scale_src * scale_drv / scale_drv_ref
    t_t        = t_src + (t_drv - t_drv_ref) * scale_src / scale_drv_ref

so only *changes* of the driver, relative to its reference frame, reach the output.
``absolute`` mode is the ablation: the driver's own shape and rotation, placed where the source's
head is; it leaks the driver's identity and exists to measure exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.pose import FaceState, HeadPose

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
            shape = src.shape + self.expression_gain * (driver.shape - ref.shape)
        else:
            rotation = driver.pose.rotation
            shape = driver.shape
        return FaceState(HeadPose(rotation, scale, translation), shape)

    def __call__(self, driver: FaceState) -> np.ndarray:
        """(478, 3) target landmarks in source-photo pixels."""
        return self.target_state(driver).points()
