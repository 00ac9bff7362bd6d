"""Shared fixtures: the real faces in ../shared/data (see its MANIFEST.md).

Tests never copy those files into the repo; they read them in place.  A checkout without the
data fails loudly rather than skipping: every face test is a core path.
"""

from __future__ import annotations

import os
from pathlib import Path

# As in service/cli.py: a single-threaded BLAS, set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import av
import cv2
import numpy as np
import pytest

from models.landmarks import Landmarks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"test data missing: {path} (expected ../shared/data)")
    return path


def load_photo(name: str) -> np.ndarray:
    """A portrait from source/ as RGB uint8."""
    bgr = cv2.imread(str(data_path("source", name)))
    assert bgr is not None, name
    return np.ascontiguousarray(bgr[:, :, ::-1])


def load_clip(name: str, max_frames: int | None = None, step: int = 1) -> list[np.ndarray]:
    """Frames of a driving clip as RGB uint8, every ``step``-th, at most ``max_frames``."""
    frames: list[np.ndarray] = []
    with av.open(str(data_path("driving", name))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % step == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    return frames


def mouth_open(landmarks: Landmarks) -> float:
    """Inner-lip gap over inter-ocular distance: how tests judge that a face follows a mouth."""
    points = landmarks.points
    return float(np.linalg.norm(points[13] - points[14]) / landmarks.interocular())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_path()
