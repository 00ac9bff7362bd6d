"""Which backend runs here, and why: probes for TensorRT, onnxruntime's CUDA provider and a GPU.

The automatic order is TensorRT -> onnxruntime CUDA -> onnxruntime CPU: fastest first, and the
CPU path always works.  Every probe is lazy and cheap, and returns *why not* rather than a bare
False, so the log can say exactly what was skipped (``tensorrt: not installed``).  Nothing
here imports a GPU package at module import time.

GPUs are found through the driver library itself (``libcuda``, via ctypes) rather than through
torch or onnxruntime: a CPU-only torch build next to onnxruntime-gpu must not hide a GPU.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from functools import cache

from models.errors import EngineError

log = logging.getLogger(__name__)

AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "onnxruntime")
BACKENDS = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt", "onnxruntime", "torch")
INSTALL_HINT = "install the GPU extra (pip install '.[gpu]') on a machine with an NVIDIA GPU"

# CUdevice_attribute values from cuda.h
_COMPUTE_MAJOR, _COMPUTE_MINOR = 75, 76


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    capability: tuple[int, int]  # compute capability, e.g. (9, 0)

    @property
    def identity(self) -> str:
        """Name plus architecture: what a serialized TensorRT engine is only valid for."""
        return f"{self.name} sm_{self.capability[0]}{self.capability[1]}"


def _driver() -> ctypes.CDLL | None:
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@cache
def cuda_devices() -> tuple[CudaDevice, ...]:
    """The GPUs the NVIDIA driver reports; empty without a driver or a device.  Cached."""
    lib = _driver()
    if lib is None or lib.cuInit(0) != 0:
        return ()
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return ()
    devices = []
    for i in range(count.value):
        handle = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(handle), i) != 0:
            continue
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, len(name), handle)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _COMPUTE_MAJOR, handle)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_MINOR, handle)
        devices.append(CudaDevice(i, name.value.decode(), (major.value, minor.value)))
    return tuple(devices)


def _no_gpu() -> str | None:
    if cuda_devices():
        return None
    if _driver() is None:
        return "no NVIDIA driver (libcuda not found)"
    return "the NVIDIA driver reports no CUDA device"


def _module_missing(name: str) -> str | None:
    """Why ``name`` cannot be imported, or None; imports it only when it is installed."""
    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed"
    try:
        importlib.import_module(name)
    except Exception as exc:  # a broken install raises anything from ImportError to OSError
        return f"{name} is installed but fails to import ({exc})"
    return None


def tensorrt_version() -> str | None:
    """The TensorRT Python package's version, or None where it is missing."""
    if _module_missing("tensorrt"):
        return None
    import tensorrt

    return str(tensorrt.__version__)


def ort_providers() -> list[str]:
    """onnxruntime's execution providers compiled into this install (not proof of a GPU)."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    if backend in ("onnxruntime", "torch"):
        return None
    if backend == "tensorrt":
        return _tensorrt_missing()
    if backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        provider = "CUDA" if backend == "onnxruntime-cuda" else "Tensorrt"
        if f"{provider}ExecutionProvider" not in ort_providers():
            return f"onnxruntime has no {provider}ExecutionProvider (it is the CPU build)"
        return _no_gpu()
    raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _tensorrt_missing() -> str | None:
    why = _module_missing("tensorrt") or _no_gpu()
    if why:
        return why
    import torch  # the TensorRT runner keeps its buffers in torch CUDA tensors

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} cannot use the GPU (a CPU-only build?)"
    return None


def choose_backend(preference: str = "auto") -> tuple[str, str]:
    """The backend to run and the reason, logged.

    ``auto`` takes the first available of AUTO_ORDER; an explicit name must be available, or
    this raises EngineError saying what is missing (never a silent fall back to the CPU).
    """
    if preference != "auto":
        why_not = unavailable(preference)
        if why_not:
            raise EngineError(f"backend {preference!r} is unavailable: {why_not}; {INSTALL_HINT}")
        reason = "requested explicitly"
    else:
        skipped = []
        for backend in AUTO_ORDER:
            why_not = unavailable(backend)
            if why_not is None:
                preference = backend
                break
            skipped.append(f"{backend}: {why_not}")
        reason = "first available of " + " -> ".join(AUTO_ORDER)
        if skipped:
            reason += f" (skipped {'; '.join(skipped)})"
    log.info("backend %s: %s", preference, reason)
    return preference, reason
