"""Inference engines behind one protocol (see base.py); heavy imports happen lazily.

``create_engine`` is the one entry point the rest of the code uses: it exports the generator
to ONNX if the cache lacks it (``reenact export`` does that ahead of time) and loads a runner.
"""

from __future__ import annotations

from engines.base import Engine
from models.errors import EngineError

BACKENDS = ("onnxruntime", "torch")


def create_engine(
    backend: str = "onnxruntime", size: int = 256, threads: int | None = None
) -> Engine:
    """An engine running the warping generator at ``size``."""
    from models.source import generator_config

    config = generator_config(size)
    if backend == "torch":
        from engines.torch_runner import TorchEngine
        from models.generator import WarpingGenerator

        return TorchEngine(WarpingGenerator(config), list(config.inputs()), threads)
    if backend == "onnxruntime":
        from engines.export import export_generator
        from engines.onnxruntime_runner import OnnxRuntimeEngine

        return OnnxRuntimeEngine(export_generator(config), threads)
    raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Engine", "create_engine"]
