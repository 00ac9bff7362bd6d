"""onnxruntime backend: CPU by default; CUDA or TensorRT execution providers when installed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.base import EngineBase
from models.errors import EngineError

log = logging.getLogger(__name__)


class OnnxRuntimeEngine(EngineBase):
    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort  # lazy: importing engines must not require any backend

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EngineError(f"cannot load {path}: {exc}") from exc
        self.providers = self._session.get_providers()
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        log.info("onnxruntime engine %s on %s", path.name, self.providers)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: inputs[name] for name in self._inputs}
        return dict(zip(self._outputs, self._session.run(self._outputs, feed), strict=True))

    def close(self) -> None:
        del self._session
