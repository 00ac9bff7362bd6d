"""Action units: a small, named, pose-free description of an expression, and its inverse.

FACEGAN (Tripathy et al., WACV 2021) drives a face by action units instead of raw landmarks, so
that an expression can be read, transferred or edited one muscle group at a time without
carrying the driver's face shape along.  Here the units are measured on the canonical shape of
:mod:`models.pose` (pose-free, size-free), distances divided by the canonical inter-ocular
distance ``iod = |shape[263] - shape[33]|`` (outer eye corners).  Canonical axes: x = the
subject's left, y = down, z = away from the camera.  "Left"/"right" are the subject's.

======================  ===============================================================  =======
name                    definition (canonical shape ``s``, ``y`` = its down coordinate)  neutral
======================  ===============================================================  =======
jaw_open                inner-lip gap ``(y14 - y13) / iod``; the lips touch at 0         ~0
mouth_stretch           corner distance ``|s291 - s61| / iod - 0.58``; < 0 = pucker      ~0
lip_corner_pull_left    ``(c - y291) / iod`` with the mouth's centre line                ~0
                        ``c = y13 + 0.4 (y14 - y13)``; > 0 = corner up (smile)
lip_corner_pull_right   the same for corner 61
eye_closure_left        ``1 - ((y374 - y386) / |s362 - s263|) / 0.3``; 0 open, 1 shut    ~0
eye_closure_right       the same with lids 159 / 145 over the width ``|s33 - s133|``
brow_raise_left         ``(eye line - mean brow height) / iod - 0.22``, eye line = the   ~0
                        corners' mean y (rigid points); > 0 = raised
brow_raise_right        the same for the right brow and eye
yaw                     degrees, > 0 = face turned toward the image's right              0
pitch                   degrees, > 0 = face tilted down (chin in)                        0
roll                    degrees, > 0 = head turned clockwise in the image                0
======================  ===============================================================  =======

The constants were measured on real neutral faces so that a typical neutral face reads about 0,
but faces differ (brow height by +-0.05, mouth width by +-0.06, open-eye ratio by +-0.1): to
compare people, or to drive one face by another, use *differences* to each person's neutral
frame.  The 0.4 of the centre line is where the corners sit in a plain jaw drop (measured on a
wide yawn), so opening the mouth does not read as a smile.  Lid gaps are signed vertical gaps, not
distances, so they stay smooth through a closed lid and the solver below can cross it.

The inverse, :func:`apply_action_units`, edits a canonical shape until its expression units match
a target: one hand-built displacement field per unit (the mandible rotated about the ear axis,
upper lids lowered, brows raised, corners pulled up and out, lips scaled sideways), coefficients
solved by a few Gauss-Newton steps.  Rigid points never move, so the edited shape keeps its head
pose exactly; head pose itself is a rotation, set by :func:`rotation_from_angles` /
:func:`state_from_action_units`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

from models.errors import BadInputError
from models.landmarks import FACE_OVAL, LEFT_BROW, NUM_LANDMARKS, RIGHT_BROW, RIGID
from models.pose import FaceState, HeadPose

AU_NAMES: tuple[str, ...] = (
    "jaw_open",
    "mouth_stretch",
    "lip_corner_pull_left",
    "lip_corner_pull_right",
    "eye_closure_left",
    "eye_closure_right",
    "brow_raise_left",
    "brow_raise_right",
    "yaw",
    "pitch",
    "roll",
)
NUM_EXPRESSION = 8  # AU_NAMES[:8] are shape (expression); AU_NAMES[8:] are head pose, in degrees
EXPRESSION_AUS = AU_NAMES[:NUM_EXPRESSION]
POSE_AUS = AU_NAMES[NUM_EXPRESSION:]

_NEUTRAL_MOUTH_WIDTH = 0.58  # corner distance / iod of a typical relaxed, closed mouth
_NEUTRAL_BROW_HEIGHT = 0.22  # brow above the eye corners / iod, typical neutral face
_OPEN_EYE_RATIO = 0.3  # lid gap / eye width of a typical open eye
_CENTRE_LINE = 0.4  # the mouth corners sit this far down the inner-lip gap in a plain jaw drop

# Lip rings of the 468-point mesh, subject's right corner to left corner (corners included).
# Every lip point is on one of them, which is what lets the jaw move the lower lip alone.
_LIP_RINGS_UPPER = (
    (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291),  # outer contour
    (76, 184, 74, 73, 72, 11, 302, 303, 304, 408, 306),
    (62, 183, 42, 41, 38, 12, 268, 271, 272, 407, 292),
    (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308),  # inner contour
)
_LIP_RINGS_LOWER = (
    (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308),  # inner contour
    (62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292),
    (76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306),
    (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291),  # outer contour
)
_LIP_CORNERS = (61, 76, 62, 78, 291, 306, 292, 308)
_UPPER_LIP = tuple(sorted({i for r in _LIP_RINGS_UPPER for i in r} - set(_LIP_CORNERS)))
_LOWER_LIP = tuple(sorted({i for r in _LIP_RINGS_LOWER for i in r} - set(_LIP_CORNERS)))
_LIPS = _UPPER_LIP + _LOWER_LIP + _LIP_CORNERS

# Eyes: upper lid and the two skin rings above it (outer corner -> inner corner, point k of each
# ring above point k of the lid), then the lower lid and the ring below it.
_EYES = {
    "left": {
        "corners": (263, 362),
        "lid": (466, 388, 387, 386, 385, 384, 398),
        "lid1": (467, 260, 259, 257, 258, 286, 414),
        "lid2": (342, 445, 444, 443, 442, 441, 413),
        "lower": (249, 390, 373, 374, 380, 381, 382, 359, 255, 339, 254, 253, 252, 256, 341, 463),
        "brow": LEFT_BROW,
    },
    "right": {
        "corners": (33, 133),
        "lid": (246, 161, 160, 159, 158, 157, 173),
        "lid1": (247, 30, 29, 27, 28, 56, 190),
        "lid2": (113, 225, 224, 223, 222, 221, 189),
        "lower": (7, 163, 144, 145, 153, 154, 155, 130, 25, 110, 24, 23, 22, 26, 112, 243),
        "brow": RIGHT_BROW,
    },
}
_IRISES = tuple(range(468, NUM_LANDMARKS))
_PINNED = np.array(RIGID + _IRISES)  # never moved: keeps the head pose fit, eyeballs stay put
_IDW_POWER = 2.0  # Shepard exponent
_NEIGHBOURS = 8  # controls that move a point: its nearest few, so upper and lower lip stay apart
_REACH = 0.5  # in iod: beyond about this distance from every control a point stays at rest

# A displacement basis: (canonical shape, iod) -> control moves (478, 3) and which are controlled.
_Basis = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]


def _iod(shape: np.ndarray) -> np.ndarray:
    return np.linalg.norm(shape[..., 263, :] - shape[..., 33, :], axis=-1)


def expression_units(shape: np.ndarray) -> np.ndarray:
    """The expression AUs (``EXPRESSION_AUS``) of canonical shapes.

    ``shape`` is (..., 478, 3) canonical; returns (..., 8) float64.  Batched so that the
    solver's Jacobian is one call.
    """
    s = np.asarray(shape, dtype=np.float64)
    y = s[..., 1]
    iod = _iod(s)
    gap = y[..., 14] - y[..., 13]
    centre = y[..., 13] + _CENTRE_LINE * gap

    def closure(top: int, bottom: int, a: int, b: int) -> np.ndarray:
        width = np.linalg.norm(s[..., a, :] - s[..., b, :], axis=-1)
        return 1.0 - (y[..., bottom] - y[..., top]) / (width * _OPEN_EYE_RATIO)

    def brow(side: str) -> np.ndarray:
        eye = _EYES[side]
        eye_line = y[..., list(eye["corners"])].mean(axis=-1)
        return (eye_line - y[..., list(eye["brow"])].mean(axis=-1)) / iod - _NEUTRAL_BROW_HEIGHT

    width = np.linalg.norm(s[..., 291, :] - s[..., 61, :], axis=-1)
    return np.stack(
        [
            gap / iod,
            width / iod - _NEUTRAL_MOUTH_WIDTH,
            (centre - y[..., 291]) / iod,
            (centre - y[..., 61]) / iod,
            closure(386, 374, 362, 263),
            closure(159, 145, 33, 133),
            brow("left"),
            brow("right"),
        ],
        axis=-1,
    )


def action_units(state: FaceState) -> np.ndarray:
    """All of ``AU_NAMES`` for one face: (11,) float64, expression from the shape, pose in deg."""
    return np.concatenate([expression_units(state.shape), state.pose.angles()])


# --- the inverse: displacement fields and the solver -------------------------------------------


def _field(
    shape: np.ndarray, dist: np.ndarray, moves: np.ndarray, controlled: np.ndarray
) -> np.ndarray:
    """(478, 3) displacement: controlled points move by ``moves``, pinned points stay, and every
    other point follows the controls near it.

    Local inverse-distance weighting (modified Shepard, Franke & Nielson 1980): only the
    ``_NEIGHBOURS`` nearest controls count, so a dense cluster of distant controls (the lower lip)
    cannot outvote the near ones (the upper lip) and drag the nose along.  Weights taper to zero
    at twice ``_REACH``, and a "rest" weight equal to all ``_NEIGHBOURS`` at ``_REACH`` lets the
    motion fade: half of it ``_REACH`` away from the controls, none far from them.
    """
    moves, controlled = moves.copy(), controlled.copy()
    moves[_PINNED], controlled[_PINNED] = 0.0, True
    src, free = np.flatnonzero(controlled), np.flatnonzero(~controlled)
    reach = _REACH * float(_iod(shape))

    def weight(d: np.ndarray) -> np.ndarray:
        taper = np.clip(1.0 - d / (2.0 * reach), 0.0, 1.0) ** 2
        return np.maximum(d, 1e-9) ** -_IDW_POWER * taper

    to_src = dist[np.ix_(free, src)]  # (F, C)
    near = np.argpartition(to_src, _NEIGHBOURS - 1, axis=1)[:, :_NEIGHBOURS]  # (F, K)
    w = weight(np.take_along_axis(to_src, near, axis=1))
    rest = _NEIGHBOURS * weight(np.array(reach))
    out = moves  # controls keep their own moves
    out[free] = np.einsum("fk,fkc->fc", w, moves[src][near]) / (w.sum(1, keepdims=True) + rest)
    return out


def _controls() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((NUM_LANDMARKS, 3)), np.zeros(NUM_LANDMARKS, dtype=bool)


def _jaw_open(s: np.ndarray, iod: float) -> tuple[np.ndarray, np.ndarray]:
    # A small rotation of the mandible about the line through the ears (234-454): d/dθ of a
    # rotation about x is (0, -(z - z0), y - y0), i.e. the chin goes down and back.
    hinge = (s[234] + s[454]) / 2
    rel = s - hinge
    rot = np.stack([np.zeros(len(s)), -rel[:, 2], rel[:, 1]], axis=1)
    rot *= iod / rot[14, 1]  # unit coefficient: the lower lip drops one iod
    moves, ctl = _controls()
    ctl[list(_LIPS + FACE_OVAL)] = True  # upper lip and upper face outline stay
    lower = list(_LOWER_LIP) + [i for i in FACE_OVAL if s[i, 1] > hinge[1]]
    moves[lower] = rot[lower]
    moves[list(_LIP_CORNERS)] = _CENTRE_LINE * rot[list(_LIP_CORNERS)]
    return moves, ctl


def _lip_position(s: np.ndarray) -> np.ndarray:
    """Each point's x across the mouth: -1 at the right corner (61), +1 at the left (291)."""
    mid, half = (s[291, 0] + s[61, 0]) / 2, (s[291, 0] - s[61, 0]) / 2
    return (s[:, 0] - mid) / half


def _mouth_stretch(s: np.ndarray, iod: float) -> tuple[np.ndarray, np.ndarray]:
    moves, ctl = _controls()
    ctl[list(_LIPS + FACE_OVAL)] = True
    lips = list(_LIPS)
    moves[lips, 0] = 0.5 * iod * _lip_position(s)[lips]  # corners +-iod/2: width grows one iod
    return moves, ctl


def _corner_pull(side: int) -> _Basis:
    def basis(s: np.ndarray, iod: float) -> tuple[np.ndarray, np.ndarray]:
        moves, ctl = _controls()
        ctl[list(_LIPS + FACE_OVAL)] = True
        lips = list(_LIPS)
        t = np.clip(side * _lip_position(s)[lips], 0.0, 1.0) ** 2  # 1 at this corner, 0 mid
        moves[lips] = t[:, None] * iod * np.array([0.3 * side, -1.0, 0.0])  # up, a little out
        return moves, ctl

    return basis


def _eye_closure(side: str) -> _Basis:
    eye = _EYES[side]

    def basis(s: np.ndarray, iod: float) -> tuple[np.ndarray, np.ndarray]:
        outer, inner = s[list(eye["corners"])]
        t = np.clip((s[:, 0] - outer[0]) / (inner[0] - outer[0]), 0.0, 1.0)
        # Unit coefficient lowers the mid-lid by one typical open gap: closure +1.
        drop = _OPEN_EYE_RATIO * float(np.linalg.norm(outer - inner)) * np.sin(np.pi * t)
        moves, ctl = _controls()
        ctl[list(eye["lower"] + eye["brow"])] = True
        for ring, share in (("lid", 1.0), ("lid1", 0.5), ("lid2", 0.2)):
            idx = list(eye[ring])
            ctl[idx], moves[idx, 1] = True, share * drop[idx]
        return moves, ctl

    return basis


def _brow_raise(side: str) -> _Basis:
    eye = _EYES[side]

    def basis(s: np.ndarray, iod: float) -> tuple[np.ndarray, np.ndarray]:
        moves, ctl = _controls()
        # The eye keeps its opening, the other brow stays.
        ctl[list(eye["lower"] + eye["lid"] + LEFT_BROW + RIGHT_BROW)] = True
        for ring, share in (("brow", 1.0), ("lid2", 0.3), ("lid1", 0.1)):
            idx = list(eye[ring])
            ctl[idx], moves[idx, 1] = True, -share * iod  # unit coefficient: brow up one iod
        return moves, ctl

    return basis


_BASES: tuple[_Basis, ...] = (
    _jaw_open,
    _mouth_stretch,
    _corner_pull(+1),
    _corner_pull(-1),
    _eye_closure("left"),
    _eye_closure("right"),
    _brow_raise("left"),
    _brow_raise("right"),
)


def expression_basis(shape: np.ndarray) -> np.ndarray:
    """(8, 478, 3): the displacement of ``shape`` per unit of each expression AU's coefficient.

    Built from the face's own geometry, so it fits any face; rigid points and irises are zero.
    Depends only on the face it edits: compute it once per identity and pass it to
    :func:`apply_action_units` when driving that face frame after frame.
    """
    s = np.asarray(shape, dtype=np.float64)
    iod = float(_iod(s))
    dist = cdist(s, s)  # (478, 478), shared by all eight fields
    return np.stack([_field(s, dist, *make(s, iod)) for make in _BASES])


def _selection(target: np.ndarray, mask: ArrayLike | None) -> np.ndarray:
    """Which entries of ``target`` to enforce: finite ones, and only those ``mask`` selects."""
    chosen = np.isfinite(target)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != target.shape:
            raise BadInputError(f"mask {m.shape} does not match the targets {target.shape}")
        chosen &= m
    return chosen


def apply_action_units(
    shape: np.ndarray,
    target: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    basis: np.ndarray | None = None,
    iterations: int = 6,
) -> np.ndarray:
    """A new canonical shape, (478, 3), whose expression AUs match ``target``.

    ``target`` is ordered like ``AU_NAMES`` (the full 11, or just the first 8); its pose entries
    are ignored here (pose is a rotation: see :func:`state_from_action_units`).  Entries that are
    NaN, or False in ``mask``, are *kept* at the value ``shape`` already has, so editing one unit
    does not disturb the others (e.g. open the jaw and keep the smile).  Rigid points and irises
    are never moved.  Targets are not clamped: an eye closure above ~1 pushes the lid through the
    lower lid.  ``basis`` is ``expression_basis(shape)``, precomputed (the slow part, ~10 ms).
    """
    s = np.asarray(shape, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if s.shape != (NUM_LANDMARKS, 3) or t.ndim != 1 or t.shape[0] < NUM_EXPRESSION:
        raise BadInputError(f"expected shape (478, 3) and >= 8 targets, got {s.shape}, {t.shape}")
    goal = expression_units(s)
    chosen = _selection(t, mask)[:NUM_EXPRESSION]
    goal[chosen] = t[:NUM_EXPRESSION][chosen]
    if not chosen.any():
        return s.copy()

    if basis is None:
        basis = expression_basis(s)
    coef = np.zeros(NUM_EXPRESSION)
    step = 1e-4
    for _ in range(iterations):
        current = s + np.tensordot(coef, basis, axes=1)
        residual = goal - expression_units(current)
        if np.abs(residual).max() < 1e-7:
            break
        # Numerical Jacobian d(AU)/d(coef), one batched evaluation: (8 AUs, 8 coefficients).
        jac = (expression_units(current + step * basis) - expression_units(current)).T / step
        coef += np.linalg.lstsq(jac, residual, rcond=None)[0]
    return s + np.tensordot(coef, basis, axes=1)


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) head rotation with these ``HeadPose.angles()`` (degrees): its exact inverse."""
    return Rotation.from_euler("YXZ", [-yaw, pitch, roll], degrees=True).as_matrix()


def state_from_action_units(
    identity: FaceState,
    target: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    basis: np.ndarray | None = None,
) -> FaceState:
    """``identity``'s face with the expression and head rotation of ``target`` (``AU_NAMES``).

    Scale and position stay the identity's; NaN or masked-out entries keep the identity's own
    value (for the angles: its own yaw, pitch or roll).  Drives an avatar by AUs alone; pass
    ``basis = expression_basis(identity.shape)`` to keep that cheap frame after frame.
    """
    t = np.asarray(target, dtype=np.float64)
    if t.shape != (len(AU_NAMES),):
        raise BadInputError(f"expected {len(AU_NAMES)} action units, got {t.shape}")
    shape = apply_action_units(identity.shape, t, mask, basis=basis)
    angles = np.array(identity.pose.angles())
    chosen = _selection(t, mask)[NUM_EXPRESSION:]
    angles[chosen] = t[NUM_EXPRESSION:][chosen]
    pose = HeadPose(rotation_from_angles(*angles), identity.pose.scale, identity.pose.translation)
    return FaceState(pose=pose, shape=shape)
