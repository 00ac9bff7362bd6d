"""Face-recognition embeddings (dlib's ResNet) for the identity metrics CSIM and AED.

dlib's 128-d embedding is what the reenactment papers' identity numbers were measured with in
spirit (they use ArcFace or OpenFace; dlib is the one we can install as a prebuilt wheel, see
../shared/TOOLING.md): two photos of the same person lie < 0.6 apart (Euclidean).

The models ship inside the ``face_recognition_models`` distribution.  Its ``__init__`` imports
``pkg_resources``, which current setuptools no longer has, so the files are located through the
import system without importing the package.

Faces are located by the caller's face-mesh landmarks rather than dlib's HOG detector: the HOG
detector misses some faces the mesh finds (a grimace, the generator's warped output) and costs
as much again as the embedding.  ``box_from_landmarks`` reproduces the HOG detector's box from
the mesh (fitted on the portraits and clips of ../shared/data), so dlib's 5-point aligner sees
the framing it was trained on.  Use the same box source for everything that is compared.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from models.errors import BadInputError, NoFaceError
from models.landmarks import Landmarks

EMBEDDING_SIZE = 128
SAME_PERSON_THRESHOLD = 0.6  # Euclidean, dlib's published operating point
_PACKAGE = "face_recognition_models"
_SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"

# HOG-box geometry relative to the mesh's face-oval bounding box (width w, height h):
# side = mean(1.075 w, 0.90 h), centre x = the oval's, centre y = top + 0.52 h.
# Fitted on 33 faces of ../shared/data; residual spread ~6 % of the side.
_BOX_W, _BOX_H, _BOX_CY = 1.075, 0.90, 0.52


def model_dir() -> Path:
    """The folder holding dlib's .dat files, found without importing the package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{_PACKAGE} is not installed (pip install face-recognition-models)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def box_from_landmarks(landmarks: Landmarks) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the square box dlib's HOG detector would put around this face."""
    x0, y0, x1, y1 = landmarks.bbox()
    w, h = x1 - x0, y1 - y0
    side = 0.5 * (_BOX_W * w + _BOX_H * h)
    cx, cy = 0.5 * (x0 + x1), y0 + _BOX_CY * h
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


class FaceIdentity:
    """dlib's face-recognition network with its 5-point aligner.  Construct once, reuse.

    Embedding is deterministic (no jitter); ~0.15 s per face on a 2-core CPU without BLAS.
    """

    def __init__(self, models: Path | None = None) -> None:
        import dlib  # lazy: only evaluation needs it

        root = models or model_dir()
        self._dlib = dlib
        self._aligner = dlib.shape_predictor(str(root / _SHAPE_PREDICTOR))
        self._network = dlib.face_recognition_model_v1(str(root / _RECOGNITION))
        self._detector = None  # dlib's HOG detector, built on first use

    def _detect(self, rgb: np.ndarray) -> tuple[float, float, float, float]:
        if self._detector is None:
            self._detector = self._dlib.get_frontal_face_detector()
        assert self._detector is not None
        found = self._detector(rgb, 1)  # upsample once: faces down to ~40 px
        if not found:
            raise NoFaceError("dlib found no face")
        r = max(found, key=lambda b: b.area())
        return float(r.left()), float(r.top()), float(r.right()), float(r.bottom())

    def embed(
        self, rgb: np.ndarray, box: tuple[float, float, float, float] | None = None
    ) -> np.ndarray:
        """(128,) float64 embedding of the face in an RGB uint8 image.

        ``box`` (x0, y0, x1, y1 pixels, e.g. from ``box_from_landmarks``) says where the face
        is; without it dlib's HOG detector looks, raising NoFaceError when it finds nothing.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BadInputError(f"expected an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
        image = np.ascontiguousarray(rgb)
        x0, y0, x1, y1 = box if box is not None else self._detect(image)
        rect = self._dlib.rectangle(round(x0), round(y0), round(x1), round(y1))
        shape = self._aligner(image, rect)
        descriptor = self._network.compute_face_descriptor(image, shape, 0)  # 0 = no jitter
        return np.asarray(descriptor, dtype=np.float64)

    def embed_landmarks(self, rgb: np.ndarray, landmarks: Landmarks) -> np.ndarray:
        """Embedding of the face the mesh ``landmarks`` outline in ``rgb``."""
        return self.embed(rgb, box_from_landmarks(landmarks))
