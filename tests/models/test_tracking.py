"""Face tracking on real portraits and clips."""

from __future__ import annotations

import numpy as np
import pytest

from models.crop import CropTracker, cut, face_box
from models.errors import NoFaceError
from models.landmarks import NUM_LANDMARKS
from models.smoothing import OneEuroFilter
from models.tracking import FaceTracker, detect
from tests.conftest import load_clip, load_photo


@pytest.mark.parametrize("name", ["fomm_11.jpg", "az_detection5_a.jpg", "lp_s12.jpg"])
def test_portrait_landmarks_lie_on_the_face(name: str) -> None:
    photo = load_photo(name)
    lm = detect(photo)
    assert lm.points.shape == (NUM_LANDMARKS, 3)
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = lm.bbox()
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    # Eyes above the mouth, subject's right eye on the image's left.
    assert lm.points[33, 0] < lm.points[263, 0]
    assert lm.points[159, 1] < lm.points[13, 1]


def test_no_face_is_reported() -> None:
    # The shirt and background of a real portrait: a real image without a face.
    photo = load_photo("lp_d2_frame0.jpg")
    no_face = np.ascontiguousarray(photo[-160:, :160])
    with pytest.raises(NoFaceError):
        detect(no_face)
    with FaceTracker(video=True) as tracker:
        assert tracker(no_face) is None


def test_face_crop_contains_the_face() -> None:
    photo = load_photo("lp_d30img.jpg")
    lm = detect(photo)
    box = face_box(lm)
    crop = cut(photo, box, 256)
    again = detect(crop)
    assert again.interocular() > 40  # the face fills the crop rather than a corner of it


def test_video_smoothing_reduces_jitter_without_lag() -> None:
    frames = load_clip("lp_d19.mp4", max_frames=60)  # near-static head, subtle smiles
    rigid = [33, 263, 1, 168]

    def track(smooth: bool) -> np.ndarray:
        with FaceTracker(video=True, smooth=smooth) as tracker:
            pts = []
            for i, f in enumerate(frames):
                lm = tracker(f, i / 30)
                assert lm is not None
                pts.append(lm.points[rigid, :2])
            return np.array(pts)

    raw, smoothed = track(False), track(True)
    jitter = lambda p: np.abs(np.diff(p, n=2, axis=0)).mean()  # noqa: E731
    assert jitter(smoothed) < 0.8 * jitter(raw)
    assert np.abs(smoothed - raw).mean() < 2.0  # pixels: no visible lag or offset


def test_one_euro_filter_follows_fast_motion() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    ts = np.arange(0, 2, 1 / 30)
    out = [f(np.array([100.0 * t]), t)[0] for t in ts]  # a 100 px/s ramp
    assert abs(out[-1] - 100.0 * ts[-1]) < 5.0


def test_crop_tracker_is_steady_on_a_still_face() -> None:
    frames = load_clip("lp_d19.mp4", max_frames=30)
    crops = CropTracker()
    with FaceTracker(video=True, smooth=False) as tracker:
        boxes = []
        for i, frame in enumerate(frames):
            lm = tracker(frame, i / 30)
            assert lm is not None
            boxes.append(crops(lm, i / 30))
    centres = np.array([[b.cx, b.cy] for b in boxes])
    assert np.abs(np.diff(centres, axis=0)).max() < 3.0
