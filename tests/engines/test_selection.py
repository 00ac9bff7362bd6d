"""Backend choice on the machine the tests run on: real probes, no fakes.

These tests state what must hold on a machine *without* a GPU stack (the CPU default); on a
machine with one they are skipped and tests/engines/test_gpu.py takes over.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines import create_engine
from engines.selection import AUTO_ORDER, BACKENDS, choose_backend, cuda_devices, unavailable
from models.errors import EngineError

no_tensorrt = pytest.mark.skipif(
    unavailable("tensorrt") is None, reason="TensorRT and a GPU are present here"
)
no_ort_cuda = pytest.mark.skipif(
    unavailable("onnxruntime-cuda") is None, reason="onnxruntime-gpu and a GPU are present here"
)


def test_cpu_backends_are_always_available() -> None:
    assert unavailable("onnxruntime") is None
    assert unavailable("torch") is None
    assert AUTO_ORDER[-1] == "onnxruntime"
    assert set(AUTO_ORDER) <= set(BACKENDS)


def test_device_probe_answers_without_a_driver() -> None:
    devices = cuda_devices()
    assert isinstance(devices, tuple)
    for d in devices:
        assert d.name and d.capability[0] >= 3


@no_tensorrt
@no_ort_cuda
def test_auto_picks_onnxruntime_cpu_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="engines"):
        backend, reason = choose_backend("auto")
    assert backend == "onnxruntime"
    assert "skipped tensorrt:" in reason and "onnxruntime-cuda:" in reason
    assert any("backend onnxruntime" in r.message and reason in r.message for r in caplog.records)


@no_tensorrt
@no_ort_cuda
def test_create_engine_auto_runs_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = create_engine("auto", 256)
    with engine:
        assert engine.name == "onnxruntime"
        assert getattr(engine, "providers", None) == ["CPUExecutionProvider"]
    assert any("(auto)" in r.message and "skipped tensorrt" in r.message for r in caplog.records)


@no_tensorrt
def test_asking_for_tensorrt_without_it_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match=r"'tensorrt' is unavailable: .*pip install '\.\[gpu\]'"):
        create_engine("tensorrt", 256)


@no_ort_cuda
@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_asking_for_onnxruntime_on_a_gpu_without_one_is_a_clear_error(backend: str) -> None:
    with pytest.raises(EngineError, match=f"'{backend}' is unavailable: onnxruntime has no"):
        create_engine(backend, 256)


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(EngineError, match=r"unknown backend 'cuda'.*onnxruntime-cuda"):
        choose_backend("cuda")


def test_existing_callers_keep_the_batch_one_cpu_graph() -> None:
    """create_engine(backend, size, threads) positional, as the service calls it."""
    with create_engine("onnxruntime", 256, 1) as engine:
        assert engine.name == "onnxruntime"
        inputs = engine._session.get_inputs()  # type: ignore[attr-defined]
        assert all(i.shape[0] == 1 for i in inputs)
        with pytest.raises(Exception, match=r"(?i)dimension|shape"):
            feed = {i.name: np.zeros([2, *i.shape[1:]], np.float32) for i in inputs}
            engine.infer(feed)


def test_importing_engines_loads_no_backend() -> None:
    """A missing or broken GPU package must never break ``import engines``; nor does the
    package itself pull in torch (build.py does, via export.py: torch is a core dependency)."""
    code = (
        "import sys, engines\n"
        "assert 'torch' not in sys.modules\n"
        "import engines.selection, engines.batching, engines.build, engines.tensorrt_runner\n"
        "heavy = {'onnxruntime', 'tensorrt'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
