"""onnxruntime backend: CPU by default; CUDA or TensorRT execution providers when installed.

On the CPU, ``session.run`` with numpy inputs is the whole story.  On a GPU provider the
inputs are bound as device OrtValues (I/O binding): inputs that stay the same object across
calls, i.e. the session's source embedding, are uploaded once and stay resident
(ResidentInputs), so a frame costs only the small per-frame inputs' copies.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineBase
from engines.resident import ResidentInputs
from models.errors import EngineError

log = logging.getLogger(__name__)

# Provider -> the backend name it makes this engine (what the logs and selection call it).
_NAMES = {
    "TensorrtExecutionProvider": "onnxruntime-tensorrt",
    "CUDAExecutionProvider": "onnxruntime-cuda",
}
Provider = str | tuple[str, dict[str, Any]]


class OnnxRuntimeEngine(EngineBase):
    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: list[Provider] | None = None,
        *,
        io_device: str | None = None,
        resident_per_input: int = 8,
    ) -> None:
        """``io_device``: where bound inputs live ("cuda", "cpu"); None: "cuda" on a GPU
        provider, else plain ``run`` without binding.  ``resident_per_input``: how many
        distinct arrays per input stay uploaded (one per session sharing the engine)."""
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
        self.name = _NAMES.get(self.providers[0], "onnxruntime")
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        if io_device is None and self.name != "onnxruntime":
            io_device = "cuda"
        self._io_device = io_device
        self._resident: ResidentInputs[Any] = ResidentInputs(self._upload, resident_per_input)
        log.info("onnxruntime engine %s on %s", path.name, self.providers)

    def _upload(self, name: str, array: np.ndarray) -> Any:
        import onnxruntime as ort

        assert self._io_device is not None
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._io_device, 0)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._io_device is None:
            feed = {name: inputs[name] for name in self._inputs}
            return dict(zip(self._outputs, self._session.run(self._outputs, feed), strict=True))
        binding = self._session.io_binding()  # one per call: bindings are not thread-safe
        for name in self._inputs:
            binding.bind_ortvalue_input(name, self._resident.get(name, inputs[name]))
        for name in self._outputs:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding)
        return dict(zip(self._outputs, binding.copy_outputs_to_cpu(), strict=True))

    def close(self) -> None:
        self._resident.clear()
        del self._session
