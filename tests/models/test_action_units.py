"""Action units on real faces (a yawn, blinks, portraits) and the AU -> shape inverse."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from models.action_units import (
    AU_NAMES,
    NUM_EXPRESSION,
    action_units,
    apply_action_units,
    expression_basis,
    expression_units,
    rotation_from_angles,
    state_from_action_units,
)
from models.errors import BadInputError
from models.landmarks import LEFT_BROW, LEFT_EYE, RIGHT_BROW, RIGHT_EYE, RIGID
from models.pose import FaceState, HeadPose, face_state
from models.tracking import FaceTracker, detect

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "source").is_dir(), reason="../shared/data missing")

AU = {name: i for i, name in enumerate(AU_NAMES)}
EYES = list(RIGHT_EYE + LEFT_EYE)
BROWS = list(RIGHT_BROW + LEFT_BROW)
UPPER_LIP = [0, 37, 267, 13, 82, 312]  # outer and inner upper-lip midline region


def _clip_units(name: str) -> np.ndarray:
    """(frames, 11) action units of every frame of a driving clip; NaN rows where no face."""
    rows = []
    with (
        av.open(str(DATA / "driving" / name)) as container,
        FaceTracker(video=True, smooth=False) as tracker,
    ):
        for frame in container.decode(video=0):
            found = tracker(frame.to_ndarray(format="rgb24"))
            rows.append(
                action_units(face_state(found.points)) if found else np.full(len(AU_NAMES), np.nan)
            )
    return np.array(rows)


def _portrait(name: str) -> FaceState:
    bgr = cv2.imread(str(DATA / "source" / name))
    assert bgr is not None, name
    return face_state(detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).points)


def _target(**units: float) -> np.ndarray:
    """An AU vector that sets only the named units (NaN = keep)."""
    t = np.full(len(AU_NAMES), np.nan)
    for name, value in units.items():
        t[AU[name]] = value
    return t


def _moved(before: np.ndarray, after: np.ndarray, idx: list[int]) -> float:
    """Largest displacement among ``idx``, in inter-ocular distances."""
    iod = np.linalg.norm(before[263] - before[33])
    return float(np.linalg.norm(after[idx] - before[idx], axis=1).max() / iod)


@pytest.fixture(scope="module")
def yawn() -> np.ndarray:
    return _clip_units("lp_d18.mp4")  # neutral -> very wide mouth opening -> closed


@pytest.fixture(scope="module")
def neutral() -> FaceState:
    return _portrait("lp_d2_frame0.jpg")  # neutral, frontal, mouth closed


# --- reading AUs off real faces -----------------------------------------------------------------


@needs_data
def test_jaw_open_follows_a_wide_yawn(yawn: np.ndarray) -> None:
    jaw = yawn[:, AU["jaw_open"]]
    assert not np.isnan(jaw).any(), "face lost"
    widest = int(np.argmax(jaw))
    assert abs(jaw[0]) < 0.05  # lips together at the start
    assert jaw[widest] > jaw[0] + 0.4  # a yawn: lip gap of almost half the eye distance
    assert 0.3 * len(jaw) < widest < 0.9 * len(jaw)  # the peak is mid-clip, not an edge
    assert jaw[-1] < 0.1  # and the mouth closes again
    # A plain jaw drop is not read as a smile or a frown.
    pulls = [AU["lip_corner_pull_left"], AU["lip_corner_pull_right"]]
    assert np.abs(yawn[widest, pulls] - yawn[0, pulls]).max() < 0.05


@needs_data
def test_eye_closure_peaks_on_blinks() -> None:
    units = _clip_units("lp_d5.mp4")  # blinks with a near-static head
    closure = units[:, [AU["eye_closure_left"], AU["eye_closure_right"]]]
    assert not np.isnan(closure).any(), "face lost"
    assert closure[0].max() < 0.4  # eyes open at the start
    assert np.median(closure) < 0.4  # open most of the time
    shut = closure.min(axis=1) > 0.8  # both eyes closed
    blinks = np.count_nonzero(shut[1:] & ~shut[:-1])
    assert blinks >= 2, f"{blinks} blinks found"
    assert shut.mean() < 0.15  # blinks are brief


@needs_data
def test_expression_units_ignore_head_pose(neutral: FaceState) -> None:
    points = neutral.points()
    centre = points[list(RIGID)].mean(axis=0)
    turn = Rotation.from_euler("YXZ", [25.0, -12.0, 15.0], degrees=True).as_matrix()
    moved = face_state(1.7 * (points - centre) @ turn.T + centre + [40.0, -25.0, 0.0])
    before, after = action_units(neutral), action_units(moved)
    np.testing.assert_allclose(after[:NUM_EXPRESSION], before[:NUM_EXPRESSION], atol=1e-9)
    assert np.abs(after[NUM_EXPRESSION:] - before[NUM_EXPRESSION:]).max() > 10.0


@needs_data
def test_turning_toward_the_image_right_raises_yaw(neutral: FaceState) -> None:
    points = neutral.points()
    centre = points[list(RIGID)].mean(axis=0)
    # About the camera's down axis, -20 degrees brings the face's front toward +x (image right).
    turn = Rotation.from_euler("y", -20.0, degrees=True).as_matrix()
    turned_points = (points - centre) @ turn.T + centre
    assert turned_points[1, 0] - centre[0] > points[1, 0] - centre[0]  # nose tip went right
    before, after = action_units(neutral), action_units(face_state(turned_points))
    assert after[AU["yaw"]] - before[AU["yaw"]] == pytest.approx(20.0, abs=1e-6)
    np.testing.assert_allclose(after[:NUM_EXPRESSION], before[:NUM_EXPRESSION], atol=1e-9)


# --- AUs back to a shape ------------------------------------------------------------------------


@needs_data
def test_opening_the_jaw_moves_only_the_lower_face(neutral: FaceState) -> None:
    shape = neutral.shape
    target = _target(jaw_open=0.35)
    edited = apply_action_units(shape, target)
    got, was = expression_units(edited), expression_units(shape)
    assert got[AU["jaw_open"]] == pytest.approx(0.35, abs=1e-5)
    others = [i for i in range(NUM_EXPRESSION) if i != AU["jaw_open"]]
    np.testing.assert_allclose(got[others], was[others], atol=1e-5)  # the rest kept
    assert _moved(shape, edited, [14, 17, 152]) > 0.3  # lower lip and chin dropped
    assert _moved(shape, edited, UPPER_LIP) < 0.01
    assert _moved(shape, edited, EYES + BROWS) < 1e-3
    np.testing.assert_array_equal(edited[list(RIGID)], shape[list(RIGID)])


@needs_data
def test_closing_one_eye_leaves_the_other_and_the_mouth(neutral: FaceState) -> None:
    shape = neutral.shape
    edited = apply_action_units(shape, _target(eye_closure_left=1.0))
    got, was = expression_units(edited), expression_units(shape)
    assert got[AU["eye_closure_left"]] == pytest.approx(1.0, abs=1e-5)
    assert got[AU["eye_closure_right"]] == pytest.approx(was[AU["eye_closure_right"]], abs=1e-5)
    assert _moved(shape, edited, [386]) > 0.05  # the upper lid came down
    assert _moved(shape, edited, [*RIGHT_EYE, 13, 14, 61, 291]) < 1e-3
    # Subject's left = the image's right for this frontal face.
    image = neutral.pose.apply(edited)
    assert image[386, 0] > image[1, 0]


@needs_data
def test_raising_the_brows_keeps_the_eyes_open(neutral: FaceState) -> None:
    shape = neutral.shape
    was = expression_units(shape)
    raised = was[AU["brow_raise_left"]] + 0.08
    edited = apply_action_units(shape, _target(brow_raise_left=raised, brow_raise_right=raised))
    got = expression_units(edited)
    assert got[AU["brow_raise_left"]] == pytest.approx(raised, abs=1e-5)
    assert got[AU["brow_raise_right"]] == pytest.approx(raised, abs=1e-5)
    assert (edited[BROWS, 1] < shape[BROWS, 1]).all()  # up is -y
    assert _moved(shape, edited, EYES + UPPER_LIP) < 2e-3


@needs_data
def test_closing_a_shouting_mouth_into_a_smile() -> None:
    """Several units at once, from an extreme expression; the result keeps its head pose."""
    shout = _portrait("lp_d9img.jpg")
    target = _target(jaw_open=0.02, mouth_stretch=0.15, lip_corner_pull_left=0.1)
    target[AU["lip_corner_pull_right"]] = 0.1
    edited = apply_action_units(shout.shape, target)
    np.testing.assert_allclose(expression_units(edited)[:4], target[:4], atol=1e-5)
    again = face_state(shout.pose.apply(edited))  # rigid points untouched: same pose fit
    np.testing.assert_allclose(again.shape, edited, atol=1e-9)


@needs_data
def test_driving_a_portrait_by_the_yawns_units(yawn: np.ndarray, neutral: FaceState) -> None:
    """Relative AU transfer: the portrait's own units plus the driver's change from frame 0."""
    widest = int(np.argmax(yawn[:, AU["jaw_open"]]))
    target = action_units(neutral) + (yawn[widest] - yawn[0])
    state = state_from_action_units(neutral, target)
    np.testing.assert_allclose(action_units(state), target, atol=1e-5)
    assert action_units(state)[AU["jaw_open"]] > 0.4
    # Frame after frame the basis is reused; it gives the very same face.
    basis = expression_basis(neutral.shape)
    cached = state_from_action_units(neutral, target, basis=basis)
    np.testing.assert_allclose(cached.points(), state.points(), atol=1e-9)


def test_state_from_action_units_sets_the_head_rotation() -> None:
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(478, 3))
    identity = FaceState(HeadPose(np.eye(3), 120.0, np.array([200.0, 220.0, 0.0])), shape)
    target = np.full(len(AU_NAMES), np.nan)
    target[AU["yaw"] :] = [12.0, -7.0, 4.0]
    state = state_from_action_units(identity, target)
    np.testing.assert_allclose(state.pose.angles(), [12.0, -7.0, 4.0], atol=1e-9)
    np.testing.assert_allclose(state.shape, shape, atol=1e-12)  # nothing asked of the shape
    assert state.pose.scale == identity.pose.scale
    # A masked-out angle keeps the identity's own (zero) value.
    mask = np.ones(len(AU_NAMES), dtype=bool)
    mask[AU["pitch"]] = False
    np.testing.assert_allclose(
        state_from_action_units(identity, target, mask).pose.angles(), [12.0, 0.0, 4.0], atol=1e-9
    )


def test_rotation_from_angles_inverts_head_pose_angles() -> None:
    for angles in ([0.0, 0.0, 0.0], [30.0, -15.0, 10.0], [-45.0, 20.0, -25.0]):
        rotation = rotation_from_angles(*angles)
        pose = HeadPose(rotation, 1.0, np.zeros(3))
        np.testing.assert_allclose(pose.angles(), angles, atol=1e-9)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)


def test_mask_keeps_units_and_bad_input_is_refused() -> None:
    shape = np.random.default_rng(1).normal(size=(478, 3))
    target = np.zeros(len(AU_NAMES))
    mask = np.zeros(len(AU_NAMES), dtype=bool)
    np.testing.assert_allclose(apply_action_units(shape, target, mask), shape, atol=1e-12)
    with pytest.raises(BadInputError):
        apply_action_units(shape, target, mask[:5])
    with pytest.raises(BadInputError):
        apply_action_units(shape[:100], target)
