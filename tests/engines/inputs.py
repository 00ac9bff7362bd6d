"""Real generator inputs for engine tests: portraits driven by frames of a real clip."""

from __future__ import annotations

import numpy as np

from models.motion import MotionTransfer
from models.pose import face_state
from models.source import build_source, driving_inputs
from models.tracking import FaceTracker
from tests.conftest import load_clip, load_photo

Inputs = dict[str, np.ndarray]
PHOTOS = ("az_detection5_a.jpg", "lp_s11.jpg")


def generator_inputs(size: int, frames: int, step: int) -> list[Inputs]:
    """Inputs for each portrait in PHOTOS (one "session" each) x ``frames`` of lp_d18.

    Each portrait's constant tensors are the same array objects in all its frames, as in a
    real session (engines may keep them resident on the device by identity).
    """
    clip = load_clip("lp_d18.mp4", max_frames=frames, step=step)  # neutral to open mouth
    with FaceTracker(video=False) as tracker:
        landmarks = [tracker(frame) for frame in clip]
    out: list[Inputs] = []
    for photo in PHOTOS:
        source = build_source(load_photo(photo), size)
        transfer = MotionTransfer(source.state)
        for lm in landmarks:
            assert lm is not None
            out.append(
                {**source.tensors, **driving_inputs(source, transfer(face_state(lm.points)))}
            )
    return out
