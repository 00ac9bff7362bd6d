"""The on-disk caches of built artifacts: what keys them and where they live.

No TensorRT here (and no fake of it): the key and path logic is pure, and building itself is
covered by tests/engines/test_gpu.py where a GPU exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engines.build import build_engine, engine_cache_key, engine_path
from engines.export import artifact_key, artifact_path, cache_dir
from engines.selection import unavailable
from models.errors import EngineError
from models.source import generator_config

BASE = {"trt_version": "10.13.0", "gpu_name": "NVIDIA H100 sm_90", "precision": "fp16"}


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "generator-256-batch-abc.onnx"
    path.write_bytes(b"graph bytes " * 1000)
    return path


def key(onnx: Path, **changes: object) -> str:
    args = {**BASE, "max_batch": 16, **changes}
    return engine_cache_key(onnx, **args)  # type: ignore[arg-type]


def test_same_inputs_same_key(onnx_file: Path, tmp_path: Path) -> None:
    assert key(onnx_file) == key(onnx_file)
    moved = tmp_path / "elsewhere.onnx"  # the graph enters by content, not by name
    shutil.copy(onnx_file, moved)
    assert key(moved) == key(onnx_file)


@pytest.mark.parametrize(
    "change",
    [
        {"trt_version": "10.13.1"},
        {"gpu_name": "NVIDIA L4 sm_89"},
        {"precision": "fp32"},
        {"max_batch": 32},
    ],
)
def test_key_changes_with_each_build_input(onnx_file: Path, change: dict[str, object]) -> None:
    assert key(onnx_file, **change) != key(onnx_file)


def test_key_changes_with_the_graph_bytes(onnx_file: Path) -> None:
    before = key(onnx_file)
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"!")
    assert key(onnx_file) != before


def test_bad_build_options_are_refused(onnx_file: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        key(onnx_file, precision="int8")
    with pytest.raises(ValueError, match="max_batch"):
        key(onnx_file, max_batch=0)


def test_engines_live_in_the_cache_dir(
    onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REENACT_CACHE_DIR", str(tmp_path / "cache"))
    k = key(onnx_file)
    path = engine_path(onnx_file, k, "fp16", 16)
    assert path.parent == tmp_path / "cache" / "tensorrt"
    assert path.name == f"generator-256-batch-abc-fp16-b16-{k}.engine"
    assert engine_path(onnx_file, k, "fp16", 16, root=tmp_path) == tmp_path / path.name


def test_export_variants_have_their_own_keys_and_the_default_keeps_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REENACT_CACHE_DIR", str(tmp_path))
    config = generator_config(256)
    variants = [
        {},
        {"dynamic_batch": True},
        {"precision": "fp16"},
        {"dynamic_batch": True, "precision": "fp16"},
    ]
    keys = [artifact_key(config, **v) for v in variants]  # type: ignore[arg-type]
    assert len(set(keys)) == 4
    assert artifact_path(config) == cache_dir() / f"generator-256-{keys[0]}.onnx"
    assert artifact_path(config, dynamic_batch=True, precision="fp16").name.startswith(
        "generator-256-batch-fp16-"
    )


@pytest.mark.skipif(unavailable("tensorrt") is None, reason="TensorRT is installed here")
def test_building_without_tensorrt_says_how_to_get_it(onnx_file: Path) -> None:
    with pytest.raises(EngineError, match=r"pip install '\.\[gpu\]'"):
        build_engine(onnx_file, "fp16", 16)
