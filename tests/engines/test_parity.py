"""onnxruntime runs the exported graph as torch runs the module."""

from __future__ import annotations

import numpy as np
import pytest

from engines import create_engine
from models.errors import EngineError
from models.pose import face_state
from models.source import build_source, driving_inputs
from models.tracking import FaceTracker
from tests.conftest import load_clip, load_photo


@pytest.mark.parametrize(
    ("size", "photo", "step"),
    [
        (256, "az_detection5_a.jpg", 25),
        (512, "az_detection5_a.jpg", 25),
        # A small face whose warp reaches the image edge: once made a gather read out of range.
        (512, "lp_s11.jpg", 10),
    ],
)
def test_onnxruntime_matches_torch(size: int, photo: str, step: int) -> None:
    source = build_source(load_photo(photo), size)
    frames = load_clip("lp_d18.mp4", max_frames=6, step=step)  # neutral to wide open mouth
    from models.motion import MotionTransfer

    transfer = MotionTransfer(source.state)
    with (
        create_engine("torch", size) as reference,
        create_engine("onnxruntime", size) as candidate,
        FaceTracker(video=False) as tracker,
    ):
        for frame in frames:
            lm = tracker(frame)
            assert lm is not None
            inputs = {**source.tensors, **driving_inputs(source, transfer(face_state(lm.points)))}
            a = reference.infer(inputs)["frame"].astype(np.int16)
            b = candidate.infer(inputs)["frame"].astype(np.int16)
            assert a.shape == b.shape == (1, size, size, 3)
            diff = np.abs(a - b)
            assert diff.mean() < 0.05, diff.mean()  # levels of 255
            assert np.percentile(diff, 99.9) <= 2
            assert diff.max() <= 32  # a few pixels on sharp edges may round differently


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match="unknown backend"):
        create_engine("tensorflow", 256)
