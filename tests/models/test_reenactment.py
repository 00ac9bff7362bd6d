"""End-to-end reenactment on real faces: the avatar follows the driver and stays the source.

Outputs are measured the way a viewer would: by tracking the *rendered* face with a fresh
tracker and comparing its signals with the driver's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from engines import Engine, create_engine
from models.landmarks import FACE_OVAL, NOSE, Landmarks
from models.motion import Mode
from models.pipeline import Reenactor
from models.pose import face_state
from models.source import build_source
from models.tracking import FaceTracker
from tests.conftest import load_clip, load_photo, mouth_open

SIZE = 256
IDENTITY_POINTS = list(FACE_OVAL + NOSE + (33, 133, 362, 263))  # face shape, not expression


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with create_engine("onnxruntime", SIZE) as e:
        yield e


def eyes_open(lm: Landmarks) -> float:
    p = lm.points
    right = np.linalg.norm(p[159] - p[145]) / np.linalg.norm(p[33] - p[133])
    left = np.linalg.norm(p[386] - p[374]) / np.linalg.norm(p[362] - p[263])
    return float(right + left) / 2


def yaw(lm: Landmarks) -> float:
    return face_state(lm.points).pose.angles()[0]


def drive(
    engine: Engine, photo: str, clip: str, frames: int, step: int = 1, mode: Mode = "relative"
) -> tuple[list[Landmarks], list[Landmarks]]:
    """Driver landmarks and landmarks tracked on the avatar, for frames with both."""
    source = build_source(load_photo(photo), SIZE)
    reenactor = Reenactor(source, engine, mode=mode)
    drivers, outputs = [], []
    with FaceTracker(video=True, smooth=False) as judge:
        for i, frame in enumerate(load_clip(clip, frames, step)):
            result = reenactor(frame, i * step / 30)
            seen = judge(result.image, i * step / 30)
            if result.face_found and result.landmarks is not None and seen is not None:
                drivers.append(result.landmarks)
                outputs.append(seen)
    reenactor.close()
    assert len(outputs) > 0.9 * frames, "the avatar must stay a detectable face"
    return drivers, outputs


def correlation(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_mouth_opening_follows_the_driver(engine: Engine) -> None:
    drivers, outputs = drive(engine, "lp_d2_frame0.jpg", "lp_d18.mp4", 90, step=2)
    d, o = [mouth_open(x) for x in drivers], [mouth_open(x) for x in outputs]
    assert correlation(d, o) > 0.85
    assert max(o) > 0.4  # the avatar's mouth really opens wide, not a twitch


def test_blinks_follow_the_driver(engine: Engine) -> None:
    drivers, outputs = drive(engine, "fomm_11.jpg", "lp_d14.mp4", 150)
    d, o = [eyes_open(x) for x in drivers], [eyes_open(x) for x in outputs]
    assert correlation(d, o) > 0.6
    assert min(o) < 0.6 * np.median(o)  # at least one clear blink on the avatar


def test_head_yaw_follows_the_driver(engine: Engine) -> None:
    drivers, outputs = drive(engine, "az_family3_man1.jpg", "lp_d3.mp4", 75, step=4)
    d, o = [yaw(x) for x in drivers], [yaw(x) for x in outputs]
    assert np.ptp(d) > 20  # the clip really turns the head
    assert correlation(d, o) > 0.8


def identity_distances(drivers: list[Landmarks], outputs: list[Landmarks], photo: str):
    """Mean canonical face-shape distance of the avatar to the source and to the driver."""
    source = face_state(build_source(load_photo(photo), SIZE).landmarks.points).shape
    to_source, to_driver = [], []
    for drv, out in zip(drivers, outputs, strict=True):
        shape = face_state(out.points).shape[IDENTITY_POINTS, :2]
        to_source.append(np.linalg.norm(shape - source[IDENTITY_POINTS, :2], axis=1).mean())
        drv_shape = face_state(drv.points).shape[IDENTITY_POINTS, :2]
        to_driver.append(np.linalg.norm(shape - drv_shape, axis=1).mean())
    return float(np.mean(to_source)), float(np.mean(to_driver))


def test_identity_is_the_source_not_the_driver(engine: Engine) -> None:
    photo, clip = "az_family3_man1.jpg", "lp_d10.mp4"  # an older man driven by a young woman
    rel_src, rel_drv = identity_distances(*drive(engine, photo, clip, 40, step=5), photo)
    abs_src, abs_drv = identity_distances(
        *drive(engine, photo, clip, 40, step=5, mode="absolute"), photo
    )
    assert rel_src < rel_drv  # relative: the avatar keeps the source's face shape
    assert abs_src > rel_src  # absolute (no landmark transformer) leaks the driver's shape
    assert abs_drv < rel_drv


def test_action_units_alone_drive_the_avatar(engine: Engine) -> None:
    from models.action_units import AU_NAMES, action_units
    from models.tracking import detect

    reenactor = Reenactor(build_source(load_photo("lp_d2_frame0.jpg"), SIZE), engine)
    neutral = action_units(face_state(detect(reenactor.source.crop).points))
    units = np.full(len(AU_NAMES), np.nan)
    units[AU_NAMES.index("jaw_open")] = 0.3
    units[AU_NAMES.index("yaw")] = 15.0
    edited = action_units(face_state(detect(reenactor.render_action_units(units)).points))
    jaw, yaw_i = AU_NAMES.index("jaw_open"), AU_NAMES.index("yaw")
    assert edited[jaw] - neutral[jaw] > 0.2  # the rendered mouth really opened
    assert 7.0 < edited[yaw_i] - neutral[yaw_i] < 25.0  # and the head turned the asked way
    eyes = [AU_NAMES.index("eye_closure_left"), AU_NAMES.index("eye_closure_right")]
    assert np.abs(edited[eyes] - neutral[eyes]).max() < 0.3  # untouched units stay put
    reenactor.close()
