"""Head pose and the landmark transformer: math on real landmarks."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from models.motion import MotionTransfer
from models.pose import face_state, fit_pose
from models.tracking import detect
from tests.conftest import load_photo


def test_pose_recovers_a_known_rotation() -> None:
    points = detect(load_photo("lp_d2_frame0.jpg")).points.astype(np.float64)
    base = fit_pose(points)
    centre = points.mean(axis=0)
    for yaw in (-30.0, 15.0, 35.0):
        r = Rotation.from_euler("Y", -yaw, degrees=True).as_matrix()
        turned = (points - centre) @ r.T * 1.3 + centre + np.array([20.0, -10.0, 0.0])
        pose = fit_pose(turned)
        assert abs(pose.angles()[0] - base.angles()[0] - yaw) < 1.0
        assert abs(pose.scale / base.scale - 1.3) < 1e-6


def test_canonical_shape_is_pose_invariant() -> None:
    points = detect(load_photo("fomm_11.jpg")).points.astype(np.float64)
    r = Rotation.from_euler("YXZ", [25, -10, 8], degrees=True).as_matrix()
    moved = (points - points.mean(0)) @ r.T * 0.7 + np.array([300.0, 200.0, 5.0])
    a, b = face_state(points), face_state(moved)
    assert np.abs(a.shape - b.shape).max() < 1e-9
    assert np.abs(b.points() - moved).max() < 1e-6


def test_relative_transfer_keeps_the_source_shape_and_moves_with_the_driver() -> None:
    source = face_state(detect(load_photo("az_family3_man1.jpg")).points)
    driver_points = detect(load_photo("lp_d2_frame0.jpg")).points.astype(np.float64)
    driver = face_state(driver_points)
    transfer = MotionTransfer(source)
    # The driver's reference frame maps exactly onto the source: no identity leaks in.
    assert np.abs(transfer(driver) - source.points()).max() < 1e-6
    # The driver opens the jaw: the same canonical change appears on the source face.
    opened = driver.shape.copy()
    opened[[14, 17, 152], 1] += 0.3
    moved = transfer(type(driver)(driver.pose, opened))
    delta = (moved - source.points())[:, :2]
    assert np.all(np.linalg.norm(delta[[14, 17, 152]], axis=1) > 0.2 * source.pose.scale)
    assert np.linalg.norm(delta[[33, 263, 10]], axis=1).max() < 1e-6


def test_absolute_transfer_takes_the_driver_shape() -> None:
    source = face_state(detect(load_photo("az_family3_man1.jpg")).points)
    driver = face_state(detect(load_photo("lp_d2_frame0.jpg")).points)
    target = MotionTransfer(source, mode="absolute").target_state(driver)
    assert np.abs(target.shape - driver.shape).max() < 1e-9
