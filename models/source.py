"""The source embedding: everything about the portrait that is computed once per session.

A session animates one photo for minutes; nothing here may run per frame.  The embedding holds
the photo's landmarks and canonical face state (for motion transfer), the square crop the
generator animates, and the generator's constant inputs (image, head mask, the source's own
mouth interior, mouth colours).  ``driving_inputs`` turns per-frame target landmarks into the
generator's per-frame inputs, solving the spline there (float64, outside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from models import tps
from models.crop import CropBox, cut, face_box
from models.errors import BadInputError
from models.generator import GeneratorConfig
from models.landmarks import (
    FACE_OVAL,
    LEFT_EYE,
    LEFT_IRIS_CENTER,
    LIPS_INNER,
    LIPS_INNER_LOWER,
    LIPS_INNER_UPPER,
    LIPS_OUTER,
    RIGHT_EYE,
    RIGHT_IRIS_CENTER,
    WARP_KEYPOINTS,
    Landmarks,
)
from models.pose import FaceState, face_state
from models.tracking import detect

_WARP = np.array(WARP_KEYPOINTS)
_UPPER = np.array(LIPS_INNER_UPPER)
_LOWER = np.array(LIPS_INNER_LOWER)
# Anchors pin the crop border in place, so the warp fades to nothing at the paste-back seam.
_SIDE = np.linspace(-1.0, 1.0, 5)
ANCHORS = np.unique(
    np.concatenate(
        [
            np.stack([_SIDE, -np.ones(5)], 1),
            np.stack([_SIDE, np.ones(5)], 1),
            np.stack([-np.ones(5), _SIDE], 1),
            np.stack([np.ones(5), _SIDE], 1),
        ]
    ),
    axis=0,
)
NUM_CONTROLS = len(WARP_KEYPOINTS) + len(ANCHORS)
# Smoothing of the spline, per control.  1e-2 (normalised units) on the face outline, nose and
# brows removes the folds their near-coincident points cause on turned heads; eyes and inner
# lips, whose small exact motions are blinks and speech, are held almost exactly (1e-4).
_PRECISE = set(LIPS_INNER + RIGHT_EYE + LEFT_EYE + (RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER))
TPS_REGULARIZATION = np.array(
    [1e-4 if i in _PRECISE else 1e-2 for i in WARP_KEYPOINTS] + [1e-2] * len(ANCHORS)
)
MAX_PIXELS = 40_000_000  # a portrait bigger than this is an accident or an attack


def generator_config(size: int) -> GeneratorConfig:
    """The generator configuration used for a given output size."""
    if size not in (256, 512):
        raise BadInputError(f"output size must be 256 or 512, not {size}")
    return GeneratorConfig(size=size, grid=64 if size <= 256 else 96, num_controls=NUM_CONTROLS)


@dataclass(frozen=True)
class SourceEmbedding:
    """A portrait prepared for animation at one output size."""

    photo: np.ndarray  # (H, W, 3) uint8 RGB, the whole portrait
    landmarks: Landmarks  # in photo pixels
    state: FaceState  # pose + canonical shape, photo pixels
    box: CropBox  # the animated square, in photo pixels
    config: GeneratorConfig
    crop: np.ndarray  # (S, S, 3) uint8 RGB
    keypoints: np.ndarray  # (N, 2) normalised crop coordinates of the warp keypoints + anchors
    tensors: dict[str, np.ndarray] = field(repr=False)  # the generator's constant inputs

    @property
    def size(self) -> int:
        return self.config.size


def to_crop(points: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Photo pixel coordinates (N, >=2) -> normalised crop coordinates (N, 2) in [-1, 1].

    Landmark coordinates are continuous (pixel i spans [i, i+1)), affine matrices act on pixel
    centres, hence the half-pixel shifts.
    """
    m = box.matrix(size)
    centres = (points[:, :2] - 0.5) @ m[:, :2].T + m[:, 2]
    return (centres + 0.5) * (2.0 / size) - 1.0


def _head_mask(oval: np.ndarray, size: int) -> np.ndarray:
    """Soft mask of head and hair: the face oval grown about its centre, then blurred."""
    centre = oval.mean(axis=0)
    grown = centre + (oval - centre) * np.array([1.3, 1.35]) - np.array([0, 0.08 * size])
    hull = cv2.convexHull(grown.astype(np.float32)).astype(np.int32)
    mask = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(mask, hull, 1.0)
    blur = size / 24
    return cv2.GaussianBlur(mask, (0, 0), blur)


def _polygon_mask(points: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1.0)
    return mask


def _open_mouth(lm: np.ndarray, size: int) -> np.ndarray:
    """The source's visible mouth interior, or nothing when its lips are (nearly) closed.

    A closed mouth still has a sliver of inner-lip polygon; counting it as interior would stop
    the generator painting teeth right under the upper lip, where they belong.
    """
    gap = float(np.linalg.norm(lm[13] - lm[14])) / max(
        float(np.linalg.norm(lm[78] - lm[308])), 1e-6
    )
    openness = float(np.clip((gap - 0.08) / 0.1, 0.0, 1.0))
    if openness == 0.0:
        return np.zeros((size, size), np.float32)
    mask = cv2.erode(_polygon_mask(lm[list(LIPS_INNER)], size), np.ones((3, 3), np.uint8))
    return cv2.GaussianBlur(mask, (0, 0), 1) * openness


def _mouth_colors(crop: np.ndarray, lm: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) cavity and teeth colours in [0, 1], shaded like the source face."""
    rgb = crop.astype(np.float32) / 255
    lips = _polygon_mask(lm[list(LIPS_OUTER)], size) * (
        1 - _polygon_mask(lm[list(LIPS_INNER)], size)
    )
    face = _polygon_mask(lm[list(FACE_OVAL)], size)
    lip_colour = rgb[lips > 0.5].mean(axis=0) if lips.sum() > 4 else np.array([0.6, 0.3, 0.3])
    luma = float((rgb[face > 0.5] @ np.array([0.299, 0.587, 0.114])).mean()) if face.sum() else 0.5
    cavity = lip_colour * 0.3
    teeth = np.array([0.93, 0.89, 0.82]) * float(np.clip(luma / 0.55, 0.55, 1.0))
    return np.stack([cavity, teeth]).astype(np.float32)


def build_source(photo: np.ndarray, size: int = 256) -> SourceEmbedding:
    """Prepare a portrait (RGB uint8) for animation; raises NoFaceError without a face."""
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise BadInputError(f"expected an RGB uint8 image, got {photo.dtype} {photo.shape}")
    if photo.shape[0] * photo.shape[1] > MAX_PIXELS:
        raise BadInputError(f"image too large: {photo.shape[1]}x{photo.shape[0]} pixels")
    config = generator_config(size)
    landmarks = detect(photo)
    box = face_box(landmarks, inside=True)
    crop = cut(photo, box, size)
    crop_px = (to_crop(landmarks.points, box, size) + 1.0) * (size / 2.0) - 0.5  # pixel centres
    keypoints = np.concatenate([to_crop(landmarks.points[_WARP], box, size), ANCHORS])
    tensors = {
        "source_image": crop.transpose(2, 0, 1)[None].astype(np.float32) / 255,
        "head_mask": _head_mask(crop_px[list(FACE_OVAL)], size)[None, None],
        "source_mouth": _open_mouth(crop_px, size)[None, None],
        "mouth_colors": _mouth_colors(crop, crop_px, size)[None],
    }
    return SourceEmbedding(
        photo=photo,
        landmarks=landmarks,
        state=face_state(landmarks.points),
        box=box,
        config=config,
        crop=crop,
        keypoints=keypoints,
        tensors=tensors,
    )


def driving_inputs(source: SourceEmbedding, target: np.ndarray) -> dict[str, np.ndarray]:
    """The generator's per-frame inputs for target landmarks (478, 3) in photo pixels."""
    size = source.size
    control = np.concatenate([to_crop(target[_WARP], source.box, size), ANCHORS])
    coeffs = tps.solve(control, source.keypoints, TPS_REGULARIZATION)
    lips = np.stack(
        [to_crop(target[_UPPER], source.box, size), to_crop(target[_LOWER][::-1], source.box, size)]
    )
    return {
        "control": control[None].astype(np.float32),
        "coeffs": coeffs[None].astype(np.float32),
        "lips": lips[None].astype(np.float32),
    }


def paste_back(source: SourceEmbedding, frame: np.ndarray, feather: float = 0.08) -> np.ndarray:
    """The animated crop (S, S, 3) put back into the full photo, with a feathered seam."""
    size = source.size
    h, w = source.photo.shape[:2]
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (feather * size)
    edge = np.clip(ramp, 0, 1).astype(np.float32)
    alpha = np.minimum(edge[:, None], edge[None, :])
    inverse = source.box.inverse_matrix(size)
    placed = cv2.warpAffine(frame, inverse, (w, h), flags=cv2.INTER_LINEAR)
    weight = cv2.warpAffine(alpha, inverse, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    out = source.photo.astype(np.float32) * (1 - weight) + placed.astype(np.float32) * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
