"""Metric functions against cases whose answer is known, and dlib identity on real faces."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from models import metrics
from models.landmarks import RIGHT_IRIS_CENTER, Landmarks
from models.tracking import FaceTracker
from tests.conftest import load_clip, load_photo


def _image(seed: int = 0, shape: tuple[int, ...] = (64, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- pixels ---------------------------------------------------------------------------------


def test_identical_images_are_perfect() -> None:
    img = _image()
    assert metrics.l1(img, img) == 0.0
    assert metrics.psnr(img, img) == math.inf
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-12)


def test_l1_of_black_and_white_is_one() -> None:
    black = np.zeros((8, 8, 3), np.uint8)
    assert metrics.l1(black, black + 255) == pytest.approx(1.0)
    assert metrics.l1(black, black + 51) == pytest.approx(0.2)


def test_psnr_of_a_known_error() -> None:
    a = np.full((16, 16), 100, np.uint8)
    # MSE 1 -> 10 log10(255^2) = 48.13 dB; MSE 100 -> 20 dB less.
    assert metrics.psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2))
    assert metrics.psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2) - 20)


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    # No variance anywhere: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) exactly (Wang et al., eq. 13).
    a, b = 100.0, 150.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    x = np.full((32, 32), a, np.uint8)
    y = np.full((32, 32), b, np.uint8)
    assert metrics.ssim(x, y) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_as_noise_grows_and_is_symmetric() -> None:
    clean = cv2.GaussianBlur(_image(1), (0, 0), 3)
    rng = np.random.default_rng(2)
    scores = []
    for sigma in (2, 10, 40):
        noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8)
        scores.append(metrics.ssim(clean, noisy))
        assert metrics.ssim(noisy, clean) == pytest.approx(scores[-1], abs=1e-12)
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0


def test_pixel_metrics_refuse_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        metrics.l1(_image(shape=(8, 8, 3)), _image(shape=(8, 9, 3)))


# --- landmarks, pose, expression ----------------------------------------------------------


def test_akd_is_displacement_over_eye_distance() -> None:
    ref = np.random.default_rng(3).uniform(0, 200, (50, 3))
    moved = ref + np.array([3.0, 4.0, 99.0])  # z is ignored
    assert metrics.akd(ref, ref, 60.0) == 0.0
    assert metrics.akd(moved, ref, 50.0) == pytest.approx(5.0 / 50.0)


def test_angle_difference_wraps_around() -> None:
    np.testing.assert_allclose(metrics.angle_difference((179, 10, -5), (-179, 10, 5)), [2, 0, 10])


def test_expression_error_is_mean_absolute() -> None:
    assert metrics.expression_error(np.zeros(4), np.array([0.4, 0, -0.4, 0])) == pytest.approx(0.2)


def _face_shape(seed: int) -> np.ndarray:
    """A (478, 3) point cloud standing in for a canonical face shape."""
    return np.random.default_rng(seed).normal(size=(478, 3))


def test_shape_distance_ignores_pose_and_size() -> None:
    shape = _face_shape(4)
    rotation = Rotation.from_euler("xyz", [20, -35, 10], degrees=True).as_matrix()
    posed = 2.5 * shape @ rotation.T + np.array([10.0, -3.0, 7.0])
    assert metrics.shape_distance(posed, shape) == pytest.approx(0.0, abs=1e-9)
    assert metrics.shape_distance(_face_shape(5), shape) > 0.5


def test_identity_leakage_spans_source_to_driver() -> None:
    # Two people's canonical shapes differ by a few percent, not by a whole random cloud.
    src = _face_shape(6)
    drv = src + 0.05 * _face_shape(7)
    rotation = Rotation.from_euler("xyz", [5, 30, -10], degrees=True).as_matrix()
    assert metrics.identity_leakage(src, src, drv) == pytest.approx(0.0, abs=1e-9)
    # The driver's own shape, even posed and scaled differently, is complete leakage.
    assert metrics.identity_leakage(3 * drv @ rotation.T, src, drv) == pytest.approx(1.0, abs=1e-9)
    assert metrics.identity_leakage(0.7 * src + 0.3 * drv, src, drv) == pytest.approx(0.3, abs=0.02)
    assert math.isnan(metrics.identity_leakage(src, src, src))


def test_identity_leakage_ignores_noise_across_the_identity_direction() -> None:
    # Random measurement noise around the source averages to no leakage at all.
    src, drv = _face_shape(8), _face_shape(9)
    rng = np.random.default_rng(10)
    noisy = [
        metrics.identity_leakage(src + rng.normal(0, 0.1, src.shape), src, drv) for _ in range(200)
    ]
    assert abs(float(np.mean(noisy))) < 0.02


def test_gaze_ignores_head_pose_in_the_image_and_reads_iris_offsets() -> None:
    with FaceTracker(video=False, smooth=False) as tracker:
        face = tracker(load_photo("fomm_11.jpg"))
    assert face is not None
    points = face.points[:, :2].astype(np.float64)
    straight = metrics.gaze(points)
    assert np.abs(straight).max() < 0.15  # a portrait looking into the camera
    # The same face turned, scaled and moved in the image: the same gaze.
    angle = math.radians(25)
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = 1.7 * points @ turn.T + np.array([40.0, -12.0])
    assert np.allclose(metrics.gaze(moved), straight, atol=1e-9)
    # One iris moved along its eye by a tenth of the eye's width reads as exactly that.
    looked = points.copy()
    looked[RIGHT_IRIS_CENTER] += 0.1 * (points[133] - points[33])
    change = metrics.gaze(looked) - straight
    assert change[0] == pytest.approx([0.1, 0.0], abs=1e-9) and np.all(change[1] == 0)
    assert metrics.gaze_error(metrics.gaze(looked), straight) == pytest.approx(0.05)


def test_gaze_sees_a_real_sideways_look() -> None:
    # lp_d10 looks into the camera at first and far to the side at the end.
    first, last = load_clip("lp_d10.mp4", 300)[::299]
    with FaceTracker(video=False, smooth=False) as tracker:
        a, b = tracker(first), tracker(last)
    assert a is not None and b is not None
    change = metrics.gaze(b.points) - metrics.gaze(a.points)
    assert np.all(change[:, 0] < -0.05)  # both irises moved the same way along their eyes
    assert metrics.gaze_error(metrics.gaze(b.points), metrics.gaze(a.points)) > 0.1


# --- embeddings -----------------------------------------------------------------------------


def test_cosine_similarity_known_angles() -> None:
    v = np.array([1.0, 2.0, 3.0])
    assert metrics.cosine_similarity(v, 3 * v) == pytest.approx(1.0)
    assert metrics.cosine_similarity(v, -v) == pytest.approx(-1.0)
    assert metrics.cosine_similarity(np.array([1.0, 0]), np.array([0, 2.0])) == pytest.approx(0.0)
    assert metrics.identity_distance(np.zeros(2), np.array([3.0, 4.0])) == pytest.approx(5.0)


@pytest.fixture(scope="module")
def embedder():
    """Embeds the face in an RGB image: face-mesh box -> dlib embedding (as the eval does)."""
    from models.identity import FaceIdentity
    from models.tracking import FaceTracker

    identity = FaceIdentity()
    with FaceTracker(video=False, smooth=False) as tracker:

        def embed(rgb: np.ndarray) -> np.ndarray:
            found: Landmarks | None = tracker(rgb)
            assert found is not None, "no face"
            return identity.embed_landmarks(rgb, found)

        yield embed


def test_csim_of_a_face_with_itself_is_one(embedder) -> None:
    photo = load_photo("fomm_11.jpg")
    a = embedder(photo)
    assert a.shape == (128,)
    assert metrics.cosine_similarity(a, embedder(photo.copy())) == pytest.approx(1.0, abs=1e-9)
    flipped = embedder(np.ascontiguousarray(photo[:, ::-1]))  # a mirror image: same person
    assert metrics.cosine_similarity(a, flipped) > 0.97
    assert metrics.identity_distance(a, flipped) < 0.6


def test_different_people_score_below_the_same_person(embedder) -> None:
    # Same person: two frames 2 s apart of one driving clip (other expression, other pose).
    first, later = (embedder(f) for f in load_clip("lp_d19.mp4", max_frames=2, step=60))
    same_csim = metrics.cosine_similarity(first, later)
    assert metrics.identity_distance(first, later) < 0.6
    # Different people: every pair among a few portraits (no person appears twice in source/).
    names = ("az_detection1.jpg", "az_man2_group.jpg", "fomm_11.jpg", "lp_d8img.jpg", "lp_s12.jpg")
    embeddings = [embedder(load_photo(n)) for n in names]
    for a, b in itertools.combinations(embeddings, 2):
        assert metrics.cosine_similarity(a, b) < same_csim
        assert metrics.identity_distance(a, b) > metrics.identity_distance(first, later)
