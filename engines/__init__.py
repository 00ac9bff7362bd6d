"""Inference engines behind one protocol (see base.py); heavy imports happen lazily.

``create_engine`` is the one entry point the rest of the code uses: it exports the generator
to ONNX if the cache lacks it (``reenact export`` does that ahead of time) and loads a runner.
Backends: ``onnxruntime`` (CPU, the default), ``torch`` (reference), ``onnxruntime-cuda``,
``onnxruntime-tensorrt`` (onnxruntime's TensorRT execution provider), ``tensorrt`` (an engine
built by build.py) and ``auto`` (TensorRT -> onnxruntime CUDA -> onnxruntime CPU; see
selection.py).  For many sessions on one GPU, put a BatchScheduler (batching.py) in front of
an engine created with ``max_batch`` > 1.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engines.base import Engine
from engines.selection import AUTO_ORDER, BACKENDS, choose_backend, unavailable
from models.errors import EngineError

if TYPE_CHECKING:  # torch-free at import: engines.export imports torch
    from engines.export import Precision
    from models.generator import GeneratorConfig

log = logging.getLogger(__name__)


def create_engine(
    backend: str = "onnxruntime",
    size: int = 256,
    threads: int | None = None,
    *,
    max_batch: int = 1,
    precision: Precision = "fp16",
    device: int = 0,
) -> Engine:
    """An engine running the warping generator at ``size``.

    ``max_batch`` > 1 loads the batch-dynamic graph (inputs may then carry up to that many
    rows); 1 keeps the batch-1 graph the CPU path has always used.  ``precision`` applies to
    the TensorRT backends only (the others run float32).  An explicitly named backend that
    cannot run here raises EngineError saying why; ``auto`` falls through to the next one and
    logs the reason, and never builds a TensorRT engine (that takes minutes: build.py).
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        choose_backend(backend)  # raises with the reason when it cannot run here
        return _create(backend, size, threads, max_batch, precision, device, allow_build=True)
    skipped: list[str] = []
    for candidate in AUTO_ORDER:
        why_not = unavailable(candidate)
        if why_not is None:
            try:
                engine = _create(
                    candidate, size, threads, max_batch, precision, device, allow_build=False
                )
            except EngineError as exc:
                why_not = str(exc)
            else:
                reason = "first available of " + " -> ".join(AUTO_ORDER)
                if skipped:
                    reason += f" (skipped {'; '.join(skipped)})"
                log.info("backend %s (auto): %s", candidate, reason)
                return engine
        skipped.append(f"{candidate}: {why_not}")
    raise EngineError("no backend could start: " + "; ".join(skipped))  # CPU failed too


def _create(
    backend: str,
    size: int,
    threads: int | None,
    max_batch: int,
    precision: Precision,
    device: int,
    *,
    allow_build: bool,
) -> Engine:
    from models.source import generator_config

    config = generator_config(size)
    if backend == "torch":
        from engines.torch_runner import TorchEngine
        from models.generator import WarpingGenerator

        return TorchEngine(WarpingGenerator(config), list(config.inputs()), threads)
    if backend == "tensorrt":
        from engines.build import build_generator_engine
        from engines.tensorrt_runner import TensorRTEngine

        path = build_generator_engine(
            size, precision, max_batch, allow_build=allow_build, device=device
        )
        return TensorRTEngine(path, device)
    from engines.export import export_generator
    from engines.onnxruntime_runner import OnnxRuntimeEngine

    onnx_path = export_generator(config, dynamic_batch=max_batch > 1)
    if backend == "onnxruntime":
        return OnnxRuntimeEngine(onnx_path, threads)
    engine = OnnxRuntimeEngine(
        onnx_path, threads, _ort_gpu_providers(backend, config, max_batch, precision, device)
    )
    if engine.name != backend:  # onnxruntime falls back to the CPU silently; we do not
        engine.close()
        raise EngineError(f"{backend} did not start (onnxruntime runs on {engine.providers})")
    return engine


def _ort_gpu_providers(
    backend: str, config: GeneratorConfig, max_batch: int, precision: Precision, device: int
) -> list[str | tuple[str, dict[str, object]]]:
    """Provider list for onnxruntime on the GPU, with CUDA as the TensorRT EP's fallback."""
    from engines.export import cache_dir

    cuda: tuple[str, dict[str, object]] = ("CUDAExecutionProvider", {"device_id": device})
    if backend == "onnxruntime-cuda":
        return [cuda, "CPUExecutionProvider"]

    def shapes(batch: int) -> str:
        return ",".join(
            f"{name}:{'x'.join(str(d) for d in (batch, *shape[1:]))}"
            for name, shape in config.inputs().items()
        )

    trt_options: dict[str, object] = {
        "device_id": device,
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,  # else every start rebuilds for minutes
        "trt_engine_cache_path": str(cache_dir() / "ort-tensorrt"),
    }
    if max_batch > 1:  # one profile over the batch axis, or it rebuilds per new batch size
        trt_options |= {
            "trt_profile_min_shapes": shapes(1),
            "trt_profile_opt_shapes": shapes(max_batch),
            "trt_profile_max_shapes": shapes(max_batch),
        }
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


def create_face_mesh_engine(
    backend: str = "onnxruntime",
    threads: int | None = None,
    *,
    max_batch: int = 1,
    device: int = 0,
) -> Engine:
    """An engine running mediapipe's face mesh (models/landmark_net.FaceMeshNetwork).

    Inputs ``image`` (B, 192, 192, 3) uint8; outputs ``landmarks`` (B, 478, 3) crop pixels and
    ``presence`` (B,).  Same backend names and fall-through as ``create_engine``; the graph is
    always batch-dynamic (``max_batch`` bounds TensorRT's profile).  TensorRT runs it in float32:
    its float16 needs a float16 graph (see export.py), not made for this network yet.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    candidates = AUTO_ORDER if backend == "auto" else (backend,)
    skipped: list[str] = []
    for candidate in candidates:
        why_not = unavailable(candidate)
        if why_not is None:
            try:
                engine = _create_face_mesh(candidate, threads, max_batch, device, backend)
            except EngineError as exc:
                if backend != "auto":
                    raise
                why_not = str(exc)
            else:
                if skipped:
                    log.info("face mesh on %s (auto; skipped %s)", candidate, "; ".join(skipped))
                return engine
        elif backend != "auto":
            raise EngineError(f"{backend} cannot run here: {why_not}")
        skipped.append(f"{candidate}: {why_not}")
    raise EngineError("no backend could start the face mesh: " + "; ".join(skipped))


def _create_face_mesh(
    backend: str, threads: int | None, max_batch: int, device: int, asked: str
) -> Engine:
    from models.landmark_net import FaceMeshNetwork

    if backend == "torch":
        from engines.torch_runner import TorchEngine

        module = FaceMeshNetwork()
        return TorchEngine(
            module, list(module.input_names), threads, output_names=module.output_names
        )
    from engines.export import cache_dir, export_face_mesh

    onnx_path = export_face_mesh()
    if backend == "tensorrt":
        from engines.build import build_engine
        from engines.tensorrt_runner import TensorRTEngine

        # Like create_engine("auto"), never a build of minutes unless asked for by name.
        path = build_engine(
            onnx_path, "fp32", max_batch, device=device, allow_build=asked == "tensorrt"
        )
        return TensorRTEngine(path, device)
    from engines.onnxruntime_runner import OnnxRuntimeEngine

    if backend == "onnxruntime":
        return OnnxRuntimeEngine(onnx_path, threads)
    cuda: tuple[str, dict[str, object]] = ("CUDAExecutionProvider", {"device_id": device})
    providers: list[str | tuple[str, dict[str, object]]] = [cuda, "CPUExecutionProvider"]
    if backend == "onnxruntime-tensorrt":
        side = FaceMeshNetwork.crop_size

        def shape(batch: int) -> str:
            return f"image:{batch}x{side}x{side}x3"

        trt: dict[str, object] = {
            "device_id": device,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir() / "ort-tensorrt"),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(max_batch),
            "trt_profile_max_shapes": shape(max_batch),
        }
        providers.insert(0, ("TensorrtExecutionProvider", trt))
    engine = OnnxRuntimeEngine(onnx_path, threads, providers)
    if engine.name != backend:  # onnxruntime falls back to the CPU silently; we do not
        engine.close()
        raise EngineError(f"{backend} did not start (onnxruntime runs on {engine.providers})")
    return engine


__all__ = [
    "BACKENDS",
    "Engine",
    "EngineError",
    "choose_backend",
    "create_engine",
    "create_face_mesh_engine",
]
