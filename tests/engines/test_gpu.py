"""GPU backends against the torch reference, on real faces.  Skipped where there is no GPU.

Written and run on CPU-only machines only as far as collection and skipping: the first GPU
session runs them (``pytest -m gpu``) and service/benchmarks/gpu.py measures the speed.
Engines are built for batch <= 8 to keep the TensorRT builds to a few minutes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from engines import Engine, create_engine
from engines.batching import BatchScheduler
from engines.selection import unavailable
from tests.engines.inputs import Inputs, generator_inputs

pytestmark = pytest.mark.gpu
needs_tensorrt = pytest.mark.skipif(
    unavailable("tensorrt") is not None, reason=f"no TensorRT: {unavailable('tensorrt')}"
)
needs_ort_cuda = pytest.mark.skipif(
    unavailable("onnxruntime-cuda") is not None,
    reason=f"no onnxruntime CUDA: {unavailable('onnxruntime-cuda')}",
)
SIZE = 256
MAX_BATCH = 8


@pytest.fixture(scope="module")
def frames() -> list[Inputs]:
    """Four generator inputs: two portraits x two driving frames (neutral, open mouth)."""
    return generator_inputs(SIZE, frames=2, step=100)


@pytest.fixture(scope="module")
def expected(frames: list[Inputs]) -> list[np.ndarray]:
    with create_engine("torch", SIZE) as reference:
        return [reference.infer(f)["frame"] for f in frames]


def diff_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), float(np.percentile(d, 99.9)), int(d.max())


def assert_parity(engine: Engine, frames: list[Inputs], expected: list[np.ndarray]) -> None:
    """The bounds test_parity.py holds onnxruntime CPU to."""
    for f, want in zip(frames, expected, strict=True):
        mean, p999, _ = diff_stats(engine.infer(f)["frame"], want)
        assert mean < 0.05 and p999 <= 2, (mean, p999)


@pytest.fixture(scope="module")
def trt_fp32() -> Iterator[Engine]:
    with create_engine("tensorrt", SIZE, max_batch=MAX_BATCH, precision="fp32") as e:
        yield e


@needs_tensorrt
def test_tensorrt_fp32_matches_torch(
    trt_fp32: Engine, frames: list[Inputs], expected: list[np.ndarray]
) -> None:
    assert_parity(trt_fp32, frames, expected)


@needs_tensorrt
def test_tensorrt_fp16_is_close_to_torch(frames: list[Inputs], expected: list[np.ndarray]) -> None:
    """float16 images, float32 spline (export.HalfPrecisionGenerator): looser bounds, the
    ones torch's own float16 on CPU met with room (mean 0.1, p99.9 4, max 14 levels)."""
    with create_engine("tensorrt", SIZE, max_batch=MAX_BATCH, precision="fp16") as engine:
        for f, want in zip(frames, expected, strict=True):
            mean, p999, worst = diff_stats(engine.infer(f)["frame"], want)
            assert mean < 0.5 and p999 <= 8 and worst <= 64, (mean, p999, worst)


@needs_tensorrt
def test_tensorrt_batch_matches_single_runs(
    trt_fp32: Engine, frames: list[Inputs], expected: list[np.ndarray]
) -> None:
    batch = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    out = trt_fp32.infer(batch)["frame"]
    singles = [trt_fp32.infer(f)["frame"] for f in frames]
    assert out.shape == (len(frames), SIZE, SIZE, 3)
    for row, single in enumerate(singles):
        assert diff_stats(out[row : row + 1], single)[2] <= 1


@needs_tensorrt
def test_tensorrt_keeps_the_source_on_the_device(trt_fp32: Engine, frames: list[Inputs]) -> None:
    resident = trt_fp32._resident  # type: ignore[attr-defined]
    trt_fp32.infer(frames[0])
    hits = resident.hits
    trt_fp32.infer(frames[1])  # same portrait, next driving frame
    assert resident.hits - hits == 4  # source_image, head_mask, source_mouth, mouth_colors


@needs_tensorrt
def test_tensorrt_engine_is_built_once(trt_fp32: Engine) -> None:
    from engines.build import build_generator_engine

    first = build_generator_engine(SIZE, "fp32", MAX_BATCH, allow_build=False)
    stamp = first.stat().st_mtime_ns
    assert build_generator_engine(SIZE, "fp32", MAX_BATCH) == first
    assert first.stat().st_mtime_ns == stamp


@needs_tensorrt
def test_scheduler_over_tensorrt(
    trt_fp32: Engine, frames: list[Inputs], expected: list[np.ndarray]
) -> None:
    with BatchScheduler(trt_fp32, MAX_BATCH, max_wait_ms=50, close_engine=False) as scheduler:
        futures = [scheduler.submit(f) for f in frames]
        for future, want in zip(futures, expected, strict=True):
            mean, p999, _ = diff_stats(future.result(timeout=30)["frame"], want)
            assert mean < 0.05 and p999 <= 2
        assert [r.rows for r in scheduler.records] == [len(frames)]


@needs_ort_cuda
def test_onnxruntime_cuda_matches_torch(frames: list[Inputs], expected: list[np.ndarray]) -> None:
    with create_engine("onnxruntime-cuda", SIZE, max_batch=MAX_BATCH) as engine:
        assert engine.name == "onnxruntime-cuda"
        assert_parity(engine, frames, expected)


@needs_tensorrt
def test_auto_prefers_a_built_tensorrt_engine(trt_fp32: Engine) -> None:
    with create_engine("auto", SIZE, max_batch=MAX_BATCH, precision="fp32") as engine:
        assert engine.name == "tensorrt"
