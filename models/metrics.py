"""Reenactment quality metrics as pure functions: images, landmarks, embeddings in; numbers out.

The set follows the reenactment literature (FOMM, Siarohin et al. 2019; LivePortrait, Guo et
al. 2024) so our numbers read like theirs:

* self-reenactment, where the driving frame is the ground truth: L1, PSNR, SSIM (Wang et al.
  2004), AKD (average keypoint distance) and AED (average Euclidean distance of identity
  embeddings);
* cross-reenactment, where no ground truth exists: CSIM (cosine similarity of identity
  embeddings, source vs output), head-pose and expression errors against the driver, and
  identity leakage (MarioNETte, Ha et al. 2020): whether the output's face *shape* drifts from
  the source's towards the driver's.

Nothing here reads files or runs a model; the evaluation service feeds these.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from models.landmarks import LEFT_IRIS_CENTER, RIGHT_IRIS_CENTER, RIGID

# SSIM constants of Wang et al. 2004 (eq. 7 and section III.C): K1, K2, an 11x11 Gaussian
# window with sigma 1.5.
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5
# Shape distances below this are rounding noise (they are relative to the face's size).
_SAME_SHAPE = 1e-9


def _as_float(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def l1(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean absolute difference, as a fraction of ``data_range`` (0 = identical, 1 = inverted)."""
    _check_pair(a, b)
    return float(np.abs(_as_float(a) - _as_float(b)).mean() / data_range)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    _check_pair(a, b)
    mse = float(((_as_float(a) - _as_float(b)) ** 2).mean())
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004, eq. 13), averaged over pixels and channels.

    Gaussian-weighted local statistics (eq. 14), population (not sample) variances, and only the
    pixels whose whole window lies inside the image, i.e. the paper's own settings.  (H, W) or
    (H, W, C) images; 1 = identical.
    """
    _check_pair(a, b)
    x, y = _as_float(a), _as_float(b)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    size = 2 * _SSIM_RADIUS + 1

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (size, size), _SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    r = _SSIM_RADIUS
    inner = ssim_map[r:-r, r:-r] if min(x.shape[:2]) > 2 * r else ssim_map
    return float(inner.mean())


def akd(points: np.ndarray, reference: np.ndarray, interocular: float) -> float:
    """Average keypoint distance, in units of the reference face's inter-ocular distance.

    ``points`` and ``reference`` are (N, >=2) pixel coordinates of the same keypoints in the
    output and the ground-truth frame; only x, y are compared.  Normalising by the eye distance
    makes the number independent of crop size: 0.05 means "off by 5 % of the eye distance".
    """
    if points.shape != reference.shape:
        raise ValueError(f"keypoint sets differ in shape: {points.shape} vs {reference.shape}")
    if interocular <= 0:
        raise ValueError(f"inter-ocular distance must be positive, got {interocular}")
    distance = np.linalg.norm(_as_float(points)[:, :2] - _as_float(reference)[:, :2], axis=1)
    return float(distance.mean() / interocular)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two face-recognition embeddings (AED's per-frame term).

    For dlib's 128-d embedding, < 0.6 means "same person" (see ../shared/TOOLING.md).
    """
    return float(np.linalg.norm(_as_float(a) - _as_float(b)))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two embeddings (CSIM's per-frame term); 1 = same direction."""
    a, b = _as_float(a).ravel(), _as_float(b).ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        raise ValueError("cosine similarity of a zero vector is undefined")
    return float(a @ b / norm)


def angle_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Absolute per-axis difference of two angle triples in degrees, wrapped into [0, 180]."""
    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + 180.0) % 360.0
    return np.abs(d - 180.0)


# (iris centre, eye corner, eye corner) per eye: the subject's right eye, then left.
_GAZE_POINTS = ((RIGHT_IRIS_CENTER, 33, 133), (LEFT_IRIS_CENTER, 362, 263))


def gaze(points: np.ndarray) -> np.ndarray:
    """Where each iris sits in its eye: (2, 2), the iris centre's offset from the midpoint of
    the eye corners in units of the corner distance, along and across the corner line.

    Measured in the eye's own frame, so head pose, scale and position cancel (to first order)
    and a change of it between frames is a change of gaze.  ``points`` are (478, >=2) pixels.
    """
    p = _as_float(points)[:, :2]
    out = np.empty((2, 2))
    for k, (iris, a, b) in enumerate(_GAZE_POINTS):
        axis = p[b] - p[a]
        width = float(np.linalg.norm(axis))
        if width <= 0:
            raise ValueError("eye corners coincide")
        along = axis / width
        across = np.array([-along[1], along[0]])
        offset = p[iris] - (p[a] + p[b]) / 2
        out[k] = (offset @ along / width, offset @ across / width)
    return out


def gaze_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance of two :func:`gaze` measurements (or changes of gaze), in eye widths."""
    a, b = _as_float(a), _as_float(b)
    if a.shape != b.shape or a.shape[-1] != 2:
        raise ValueError(f"gaze measurements differ in shape: {a.shape} vs {b.shape}")
    return float(np.linalg.norm(a - b, axis=-1).mean())


def expression_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two action-unit vectors (the same AUs in the same order).

    The mean rather than the Euclidean norm keeps the number comparable when AUs are added.
    """
    a, b = _as_float(a), _as_float(b)
    if a.shape != b.shape:
        raise ValueError(f"AU vectors differ in shape: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).mean())


def _align(
    shape: np.ndarray, reference: np.ndarray, indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``shape``'s points ``indices`` moved onto ``reference``'s by the best similarity
    transform (Umeyama 1991, eq. 38-42, reflections excluded), and ``reference``'s points;
    both centred on the reference's centroid."""
    idx = list(indices)
    a = _as_float(shape)[idx]
    b = _as_float(reference)[idx]
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    u, s, vt = np.linalg.svd(b.T @ a)
    d = np.ones(a.shape[1])
    d[-1] = -1.0 if np.linalg.det(u @ vt) < 0 else 1.0
    rotation = (u * d) @ vt
    var_a = float((a**2).sum())
    scale = float((s * d).sum() / var_a) if var_a > 0 else 0.0
    return scale * a @ rotation.T, b


def shape_distance(
    shape_a: np.ndarray, shape_b: np.ndarray, indices: Sequence[int] = RIGID
) -> float:
    """How different two faces' proportions are, ignoring pose and size.

    Canonical (pose-free) shapes from ``models.pose.face_state`` are compared on ``indices``,
    by default the rigid points (eye corners, temples, nose), which carry a person's face shape
    but hardly move with expression.  A similarity Procrustes fit removes what is left of pose
    and scale; the result is the RMS residual relative to the RMS radius of ``shape_b``'s
    points, so 0 = same proportions.
    """
    a, b = _align(shape_a, shape_b, indices)
    norm_b = float(np.sqrt((b**2).sum(axis=1).mean()))
    if norm_b == 0.0:
        raise ValueError("degenerate reference shape")
    return float(np.sqrt(((b - a) ** 2).sum(axis=1).mean()) / norm_b)


def identity_leakage(
    output: np.ndarray, source: np.ndarray, driver: np.ndarray, indices: Sequence[int] = RIGID
) -> float:
    """How far the output's face proportions moved from the source's toward the driver's.

    With all three canonical shapes similarity-aligned to the source on the rigid points, the
    output's displacement from the source is projected on the source->driver direction:
    <out - src, drv - src> / |drv - src|^2.  0 = the source's proportions, 1 = the driver's,
    0.5 = halfway.  A projection rather than a ratio of distances because measurement noise
    (the face mesh on a rendered image) is mostly orthogonal to that one direction: it averages
    out to zero instead of adding a positive floor.  Pass the driver's *reference* (neutral)
    frame, the identity the transformer should not copy.  NaN when source and driver have the
    same proportions (no direction to leak along).
    """
    out, src = _align(output, source, indices)
    drv, _ = _align(driver, source, indices)
    direction = drv - src
    norm = float((direction**2).sum())
    if norm <= _SAME_SHAPE * float((src**2).sum()):
        return float("nan")
    return float(((out - src) * direction).sum() / norm)
