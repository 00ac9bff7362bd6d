"""MeshTracker (the face mesh run by an engine) against mediapipe's FaceTracker on real clips."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from engines import Engine, create_face_mesh_engine
from models.landmarks import LEFT_LIDS, NUM_LANDMARKS, RIGHT_LIDS, Landmarks
from models.mesh_tracking import MeshTracker, Roi, crop, to_image
from models.tracking import FaceTracker
from tests.conftest import load_clip, load_photo


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with create_face_mesh_engine("onnxruntime", threads=1) as engine:
        yield engine


def openness(lm: Landmarks) -> tuple[float, float]:
    """Mouth gap (13-14) and mean eyelid gap, per inter-ocular distance."""
    p, iod = lm.xy, lm.interocular()
    mouth = float(np.linalg.norm(p[13] - p[14])) / iod
    lids = np.array(RIGHT_LIDS + LEFT_LIDS)
    eyes = float(np.linalg.norm(p[lids[:, 0]] - p[lids[:, 1]], axis=1).mean()) / iod
    return mouth, eyes


# lp_d18: neutral to a very wide mouth; lp_d14: gaze shifts, winks and blinks.
@pytest.mark.parametrize("clip", ["lp_d18.mp4", "lp_d14.mp4"])
def test_tracks_like_mediapipe(clip: str, engine: Engine) -> None:
    frames = load_clip(clip, max_frames=60, step=2)  # 4 s of the clip
    errors, ours, theirs = [], [], []
    with (
        FaceTracker(video=True, smooth=False) as reference,
        MeshTracker(engine, video=True, smooth=False) as tracker,
    ):
        for i, frame in enumerate(frames):
            expected, got = reference(frame, i / 15), tracker(frame, i / 15)
            assert expected is not None and got is not None
            assert got.points.shape == (NUM_LANDMARKS, 3) and got.image_size == expected.image_size
            iod = expected.interocular()
            errors.append(np.linalg.norm(got.points - expected.points, axis=1).mean() / iod)
            ours.append(openness(got))
            theirs.append(openness(expected))
        assert tracker.detections == 1  # acquired once, tracked from the landmarks after
    # Measured 2e-4 to 5e-4 of the inter-ocular distance (x, y and z): the same network on
    # the same crops, differing only in float kernels.  A half-pixel slip in the crop maths
    # alone would cost about 5e-3.
    assert np.mean(errors) < 3e-3
    assert np.max(errors) < 1e-2
    a, b = np.array(ours), np.array(theirs)
    for k in range(2):  # mouth opening, eye opening follow mediapipe's over the clip
        assert np.corrcoef(a[:, k], b[:, k])[0, 1] > 0.99


def test_no_face_is_reported(engine: Engine) -> None:
    photo = load_photo("lp_d2_frame0.jpg")
    no_face = np.ascontiguousarray(photo[-160:, :160])
    with MeshTracker(engine) as tracker:
        assert tracker(no_face) is None
        assert tracker(no_face) is None
    assert tracker.detections == 2  # nothing tracked, so each frame tries to acquire


def test_lost_face_is_acquired_again_in_the_same_frame(engine: Engine) -> None:
    frames = load_clip("lp_d19.mp4", max_frames=2)
    with MeshTracker(engine, smooth=False) as tracker:
        first = tracker(frames[0])
        assert first is not None
        tracker._roi = Roi(5.0, 5.0, 40.0, 0.0)  # a stale region where the face is not
        again = tracker(frames[1])
    assert again is not None and tracker.detections == 2
    assert np.abs(again.xy - first.xy).mean() < 3.0  # the same face, found again


def test_crop_and_projection_are_inverse() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    roi = Roi(cx=210.0, cy=140.0, size=96.0, angle=0.3)
    m = roi.matrix()
    # Crop (0, 0) is the ROI's corner, (192, 192) the opposite one, the middle its centre.
    assert np.allclose(m @ [96, 96, 1], [210, 140])
    assert np.isclose(np.linalg.norm(m @ [192, 0, 1] - m @ [0, 0, 1]), 96)
    uv = np.array([[10.0, 20.0, 4.0], [150.0, 80.0, -2.0]])
    xyz = to_image(uv, roi)
    assert np.allclose(xyz[:, 2], uv[:, 2] / 2)  # z scales with the crop: 96 px / 192 px
    # A crop pixel's value is the image's at the projected position (bilinear, so compare to
    # a smooth image rather than noise).
    smooth = np.tile(np.linspace(0, 250, 400, dtype=np.float32)[None, :, None], (300, 1, 3))
    out = crop(smooth.astype(np.uint8), roi)
    u, v = 50, 70
    x, _ = to_image(np.array([[u, v, 0.0]]), roi)[0, :2]
    assert abs(float(out[v, u, 0]) - 250 * x / 399) < 2.0
    assert crop(image, roi).shape == (192, 192, 3)
