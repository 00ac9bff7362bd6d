"""The face mesh exported to ONNX: cached, batch-dynamic, equal to the torch module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines import create_face_mesh_engine
from engines.export import cache_dir, export_face_mesh, face_mesh_artifact_path
from engines.selection import unavailable
from models.errors import EngineError
from models.landmark_net import bundled_model
from tests.conftest import load_clip


def crops(n: int) -> np.ndarray:
    """Face-sized crops of real frames (the centre of lp_d10's 512x512 frames)."""
    frames = load_clip("lp_d10.mp4", max_frames=n, step=10)
    return np.stack([np.ascontiguousarray(f[150:342, 160:352]) for f in frames])


def test_onnx_matches_torch_and_batches() -> None:
    images = crops(3)
    with (
        create_face_mesh_engine("onnxruntime", threads=1) as ort,
        create_face_mesh_engine("torch", threads=1) as torch_engine,
    ):
        assert ort.name == "onnxruntime"
        batched = ort.infer({"image": images})
        expected = torch_engine.infer({"image": images})
        assert batched["landmarks"].shape == (3, 478, 3) and batched["presence"].shape == (3,)
        assert np.abs(batched["landmarks"] - expected["landmarks"]).max() < 1e-3  # crop px
        assert np.abs(batched["presence"] - expected["presence"]).max() < 1e-4
        for i in range(3):  # a batch row is what the same crop gives alone
            alone = ort.infer({"image": images[i : i + 1]})
            assert np.abs(alone["landmarks"][0] - batched["landmarks"][i]).max() < 1e-3


def test_export_is_cached_and_keyed_by_the_model_file() -> None:
    path = export_face_mesh()
    assert path == face_mesh_artifact_path() and path.parent == cache_dir()
    mtime = path.stat().st_mtime_ns
    assert export_face_mesh() == path and path.stat().st_mtime_ns == mtime  # not rebuilt
    other = face_mesh_artifact_path(bundled_model("face_landmark/face_landmark.tflite"))
    assert other != path and other.name.startswith("face-mesh-")


def test_cache_dir_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REENACT_CACHE_DIR", str(tmp_path))
    assert face_mesh_artifact_path().parent == tmp_path


def test_backends_on_a_cpu_machine() -> None:
    if unavailable("onnxruntime-cuda") is None or unavailable("tensorrt") is None:
        pytest.skip("a GPU backend runs here")
    with create_face_mesh_engine("auto", threads=1) as engine:
        assert engine.name == "onnxruntime"
    with pytest.raises(EngineError):
        create_face_mesh_engine("onnxruntime-cuda")
    with pytest.raises(EngineError, match="unknown backend"):
        create_face_mesh_engine("tflite")
