"""TensorRT backend: runs a serialized engine (built by build.py) on CUDA buffers.

Buffers are torch CUDA tensors (torch is a dependency already, and GPU machines get a CUDA
build of it), allocated once at the profile's largest batch; a call of batch b uses their
first b rows.  Each call copies host inputs to the device once, runs ``execute_async_v3`` on
the engine's own stream and copies the outputs back through pinned memory: no host round trip
inside the graph.  Inputs that stay the same object across calls (the source embedding, which
a session builds once) stay resident on the device: see ResidentInputs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineBase
from engines.resident import ResidentInputs
from models.errors import EngineError

log = logging.getLogger(__name__)

_DTYPES = ("float32", "float16", "int32", "int64", "int8", "uint8", "bool")


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    """TensorRT I/O type -> torch dtype (by name: older TensorRTs lack some of them)."""
    import torch

    for name in _DTYPES:
        if hasattr(trt, name) and dtype == getattr(trt, name):
            return getattr(torch, name)
    raise EngineError(f"unsupported TensorRT I/O type {dtype}")


class TensorRTEngine(EngineBase):
    """One deserialized engine, one execution context, one CUDA stream.

    An execution context runs one inference at a time, so ``infer`` is serialised by a lock;
    concurrent sessions should share a BatchScheduler in front of it instead of queueing here.
    """

    name = "tensorrt"

    def __init__(self, path: Path, device: int = 0) -> None:
        try:
            import tensorrt as trt
            import torch
        except ImportError as exc:
            raise EngineError(f"TensorRT backend unavailable: {exc}") from exc
        if not torch.cuda.is_available():
            raise EngineError("TensorRT backend needs a CUDA build of torch and a GPU")
        self._torch = torch
        self._device = torch.device("cuda", device)
        self._lock = threading.Lock()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self._device):
            # The stream first: it initialises torch's CUDA context, which TensorRT then shares.
            self._stream = torch.cuda.Stream(self._device)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise EngineError(
                    f"cannot load {path.name}: built by another TensorRT version or for "
                    "another GPU? (build.py keys its cache by both; delete stale files)"
                )
            self._context = self._engine.create_execution_context()
            self._allocate(trt)
        self._resident: ResidentInputs[Any] = ResidentInputs(self._upload)
        log.info(
            "TensorRT engine %s on %s: inputs %s, batch <= %d",
            path.name,
            torch.cuda.get_device_name(self._device),
            self.input_names,
            self.max_batch,
        )

    def _allocate(self, trt: Any) -> None:
        """Device buffers at the profile's largest shapes; pinned host buffers for outputs."""
        torch = self._torch
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._buffers: dict[str, Any] = {}
        self._host: dict[str, Any] = {}
        self._dtypes: dict[str, Any] = {}
        self.max_batch = 1
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(name))
            self._dtypes[name] = dtype
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(self._engine.get_tensor_profile_shape(name, 0)[2])  # (min, opt, max)
                self.max_batch = shape[0]
                self.input_names.append(name)
            else:
                self.output_names.append(name)
                continue
            self._buffers[name] = torch.empty(shape, dtype=dtype, device=self._device)
            self._context.set_tensor_address(name, self._buffers[name].data_ptr())
        for name in self.input_names:  # output shapes follow from the largest inputs
            self._context.set_input_shape(name, tuple(self._buffers[name].shape))
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            self._buffers[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
            self._host[name] = torch.empty(shape, dtype=self._dtypes[name], pin_memory=True)
            self._context.set_tensor_address(name, self._buffers[name].data_ptr())

    def _upload(self, name: str, array: np.ndarray) -> Any:
        """Copy one input into its device buffer; returns the view now holding it."""
        expected = self._dtypes[name]
        host = self._torch.from_numpy(np.ascontiguousarray(array))
        if host.dtype != expected:
            raise EngineError(f"input {name}: expected {expected}, got {host.dtype}")
        view = self._buffers[name][: host.shape[0]]
        if tuple(view.shape) != tuple(host.shape):
            raise EngineError(
                f"input {name}: shape {tuple(host.shape)} outside the engine's profile "
                f"(batch <= {self.max_batch}, rest {tuple(view.shape[1:])})"
            )
        view.copy_(host, non_blocking=False)  # pageable memory: the copy is staged anyway
        return view

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise EngineError(f"missing inputs: {missing}")
        batch = {int(inputs[n].shape[0]) for n in self.input_names}
        if len(batch) != 1:
            raise EngineError(f"inputs disagree on the batch size: {sorted(batch)}")
        with self._lock, self._torch.cuda.stream(self._stream):
            for name in self.input_names:
                view = self._resident.get(name, inputs[name])
                self._context.set_input_shape(name, tuple(view.shape))
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError("TensorRT execution failed (see its log)")
            outputs = {}
            for name in self.output_names:
                shape = tuple(self._context.get_tensor_shape(name))
                host = self._host[name][: shape[0]]
                host.copy_(self._buffers[name][: shape[0]], non_blocking=True)
                outputs[name] = host
            self._stream.synchronize()
            # The pinned buffers are reused by the next call: hand out copies.
            return {name: host.numpy().copy() for name, host in outputs.items()}

    def infer_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Device in, device out: for chaining GPU stages without touching the host.

        ``inputs`` maps every input name to a CUDA tensor of the engine's dtype; the outputs
        are views of this engine's buffers, valid until its next call.
        """
        torch = self._torch
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise EngineError(f"missing inputs: {missing}")
        ready = {name: inputs[name].contiguous() for name in self.input_names}
        for name, tensor in ready.items():
            if tensor.dtype != self._dtypes[name] or tensor.device != self._device:
                raise EngineError(f"input {name}: expected {self._dtypes[name]} on {self._device}")
        with self._lock:
            # The producer's stream must finish writing before our stream reads.
            self._stream.wait_stream(torch.cuda.current_stream(self._device))
            self._resident.clear()  # our input buffers are bypassed, not updated
            try:
                for name, tensor in ready.items():
                    self._context.set_tensor_address(name, tensor.data_ptr())
                    self._context.set_input_shape(name, tuple(tensor.shape))
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise EngineError("TensorRT execution failed (see its log)")
                self._stream.synchronize()
            finally:
                for name in ready:  # back to our own buffers for infer()
                    self._context.set_tensor_address(name, self._buffers[name].data_ptr())
            return {
                name: self._buffers[name][: self._context.get_tensor_shape(name)[0]]
                for name in self.output_names
            }

    def close(self) -> None:
        with self._lock:
            self._resident.clear()
            for attr in ("_context", "_engine", "_buffers", "_host"):
                if hasattr(self, attr):
                    delattr(self, attr)
