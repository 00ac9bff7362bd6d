"""Face-mesh landmarks and the named index sets of mediapipe's 478-point topology.

Index sets follow the mesh published with mediapipe's face-mesh model: 468 surface points,
then 10 iris points (468-472: the subject's right iris, centre first; 473-477: left).
"Right" and "left" are the subject's, so the right eye appears on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_LANDMARKS = 478

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)  # fmt: skip
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84,
              181, 91, 146)  # fmt: skip
# Inner lip contour as a closed polygon: right corner, upper lip to the left corner, lower lip back.
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87,
              178, 88, 95)  # fmt: skip
LIPS_INNER_UPPER = LIPS_INNER[:11]  # 78 ... 308, right corner to left corner
LIPS_INNER_LOWER = (308, *LIPS_INNER[11:], 78)  # left corner back to the right corner
RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 129, 358, 64, 294)
RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473

# Upper/lower lid pairs, nasal corner excluded, per eye: where a blink closes the gap.
RIGHT_LIDS = ((246, 7), (161, 163), (160, 144), (159, 145), (158, 153), (157, 154), (173, 155))
LEFT_LIDS = ((466, 249), (388, 390), (387, 373), (386, 374), (385, 380), (384, 381), (398, 382))
RIGHT_IRIS = tuple(range(468, 473))
LEFT_IRIS = tuple(range(473, 478))
# Upper/lower inner-lip pairs: where the mouth closes.
INNER_LIP_PAIRS = ((191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402),
                   (310, 318), (415, 324))  # fmt: skip

# Points that move with the skull but hardly with expression: used to fit the head pose.
RIGID = (33, 133, 362, 263, 234, 454, 127, 356, 162, 389, 21, 251, 54, 284, 103, 332, 67, 297,
         109, 338, 10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 98, 327, 129, 358)  # fmt: skip
# Mirror pairs (subject's right, subject's left) among the rigid points: they define the head's
# left-right axis without any canonical face model.
RIGID_PAIRS = ((33, 263), (133, 362), (234, 454), (127, 356), (162, 389), (21, 251), (54, 284),
               (103, 332), (67, 297), (109, 338), (98, 327), (129, 358))  # fmt: skip
# Midline points above (forehead) and below (nose base) the eyes: they define the up axis.
MIDLINE_TOP = (10, 151, 9)
MIDLINE_BOTTOM = (2, 98, 327)

# The sparse keypoints that drive the warp: contours of every facial part plus the irises.
WARP_KEYPOINTS: tuple[int, ...] = tuple(
    dict.fromkeys(
        FACE_OVAL
        + RIGHT_BROW
        + LEFT_BROW
        + RIGHT_EYE
        + LEFT_EYE
        + (RIGHT_IRIS_CENTER, LEFT_IRIS_CENTER)
        + NOSE
        + LIPS_OUTER
        + LIPS_INNER
    )
)


@dataclass(frozen=True)
class Landmarks:
    """One face's mesh in one image.

    ``points`` is (478, 3) float32: x, y in pixels (origin top-left, x right, y down) and z in
    the same pixel scale, smaller = nearer the camera (mediapipe's convention scaled by width).
    """

    points: np.ndarray
    image_size: tuple[int, int]  # (width, height) of the image the points live in

    @property
    def xy(self) -> np.ndarray:
        """(478, 2) pixel coordinates."""
        return self.points[:, :2]

    def bbox(self) -> tuple[float, float, float, float]:
        """Tight box (x0, y0, x1, y1) around the face oval, in pixels."""
        oval = self.points[list(FACE_OVAL), :2]
        x0, y0 = oval.min(axis=0)
        x1, y1 = oval.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def interocular(self) -> float:
        """Distance between the outer eye corners in the image plane, in pixels."""
        return float(np.linalg.norm(self.points[263, :2] - self.points[33, :2]))

    def transformed(self, matrix: np.ndarray, image_size: tuple[int, int]) -> Landmarks:
        """The same landmarks under a 2x3 similarity ``matrix`` (z scaled by its scale)."""
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        xy = self.points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        z = self.points[:, 2:] * scale
        return Landmarks(np.concatenate([xy, z], axis=1).astype(np.float32), image_size)
