"""ONNX -> TensorRT: build a serialized engine once, cache it on disk, never at serve time.

A TensorRT engine is valid only for the GPU architecture and TensorRT version that built it,
and only for the graph it was built from; the cache key is all of those plus the precision and
the optimization profile (batch 1..max_batch), so a change to any of them means a rebuild
rather than a wrong or unloadable engine.  Building takes minutes: it is done ahead of time
(``python -m engines.build``, or the first explicit ``create_engine("tensorrt")``), never by
``auto`` selection when the server starts (see CONVENTIONS.md).

Both precisions are built as *strongly typed* networks: the ONNX graph decides each tensor's
type (export.py's fp16 variant carries float16 itself).  TensorRT 11 removed the FP16 builder
flag, and strong typing is what it builds; TensorRT 10 accepts the same flag.

Building is kept apart from running (Polygraphy's loaders vs runners): this module only writes
engine files; tensorrt_runner.py only loads them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engines.export import PRECISIONS, Precision, cache_dir
from models.errors import EngineError

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16


def file_sha256(path: Path) -> str:
    """Hash of a file's bytes, read in chunks (ONNX graphs can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def engine_cache_key(
    onnx_path: Path, trt_version: str, gpu_name: str, precision: str, max_batch: int
) -> str:
    """Identifies one serialized engine: changes when any input of the build changes.

    The graph enters by content (sha256 of the ONNX bytes), not by path or mtime: a re-export
    of an identical graph keeps its engine, a changed graph under the same name does not.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, not {max_batch}")
    payload = {
        "onnx_sha256": file_sha256(onnx_path),
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "precision": precision,
        "max_batch": max_batch,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def engine_path(
    onnx_path: Path, key: str, precision: str, max_batch: int, root: Path | None = None
) -> Path:
    """Where the engine for ``key`` lives: <cache>/tensorrt/<onnx stem>-<precision>-b<N>-<key>.

    The readable parts are for people listing the cache; only the key decides identity.
    """
    root = root or cache_dir() / "tensorrt"
    return root / f"{onnx_path.stem}-{precision}-b{max_batch}-{key}.engine"


def cached_engine(
    onnx_path: Path, precision: Precision, max_batch: int, gpu: str, trt_version: str
) -> Path:
    """The path the engine has (or will have) for this graph on this GPU and TensorRT."""
    key = engine_cache_key(onnx_path, trt_version, gpu, precision, max_batch)
    return engine_path(onnx_path, key, precision, max_batch)


def _gpu_identity(device: int) -> str:
    from engines.selection import cuda_devices

    devices = cuda_devices()
    if device >= len(devices):
        raise EngineError(f"no CUDA device {device} (found {len(devices)}); cannot build")
    return devices[device].identity


@contextlib.contextmanager
def _on_device(device: int) -> Iterator[None]:
    """TensorRT builds for the current CUDA device; make it ``device``."""
    import torch

    if not torch.cuda.is_available():
        yield  # TensorRT will report the missing GPU itself
        return
    with torch.cuda.device(device):
        yield


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            "TensorRT is not installed: pip install '.[gpu]' on a machine with an NVIDIA GPU"
        ) from exc
    return tensorrt


def build_engine(
    onnx_path: Path,
    precision: Precision = "fp16",
    max_batch: int = DEFAULT_MAX_BATCH,
    *,
    opt_batch: int | None = None,
    device: int = 0,
    allow_build: bool = True,
    force: bool = False,
) -> Path:
    """The serialized engine for ``onnx_path``, built and cached unless it already is.

    ``onnx_path`` must have a batch-dynamic axis 0 (export_generator(dynamic_batch=True)); the
    profile spans batch 1..max_batch and is tuned for ``opt_batch`` (default max_batch, the
    throughput case; smaller batches run on the same kernels).  With ``allow_build=False`` a
    missing engine is an EngineError instead of a build of several minutes.
    """
    trt = _tensorrt()
    path = cached_engine(onnx_path, precision, max_batch, _gpu_identity(device), trt.__version__)
    if path.exists() and not force:
        log.info("TensorRT engine cached: %s", path)
        return path
    if not allow_build:
        raise EngineError(
            f"no TensorRT engine built for this graph, GPU, TensorRT {trt.__version__}, "
            f"{precision}, batch <= {max_batch} (expected {path}); build it ahead of time: "
            f"python -m engines.build --precision {precision} --max-batch {max_batch}"
        )
    started = time.monotonic()
    with _on_device(device):
        serialized = _build_serialized(trt, onnx_path, precision, max_batch, opt_batch or max_batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(serialized)
    tmp.replace(path)  # atomic: a concurrent loader never sees half an engine
    seconds = time.monotonic() - started
    meta = {
        "onnx": str(onnx_path),
        "tensorrt": trt.__version__,
        "gpu": _gpu_identity(device),
        "precision": precision,
        "max_batch": max_batch,
        "opt_batch": opt_batch or max_batch,
        "build_seconds": round(seconds, 1),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    log.info("built TensorRT engine %s in %.0f s (%d MB)", path, seconds, len(serialized) >> 20)
    return path


def _build_serialized(
    trt: Any, onnx_path: Path, precision: Precision, max_batch: int, opt_batch: int
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 is the parity reference: no TF32 matmuls
    config.add_optimization_profile(_batch_profile(builder, network, max_batch, opt_batch))
    monitor = _progress_monitor(trt, onnx_path.name)
    if monitor is not None:
        config.progress_monitor = monitor
    log.info(
        "building TensorRT %s engine from %s (batch 1..%d, tuned for %d); this takes minutes",
        precision,
        onnx_path.name,
        max_batch,
        opt_batch,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build {onnx_path.name} (see its log above)")
    return bytes(serialized)


def _batch_profile(builder: Any, network: Any, max_batch: int, opt_batch: int) -> Any:
    """One optimization profile: every input's axis 0 from 1 to max_batch."""
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise EngineError(f"input {tensor.name} has dynamic axes beyond the batch: {rest}")
        if tensor.shape[0] >= 0:
            raise EngineError(
                f"input {tensor.name} has a fixed batch {tensor.shape[0]}: export the graph "
                "with export_generator(config, dynamic_batch=True)"
            )
        profile.set_shape(
            tensor.name, (1, *rest), (min(opt_batch, max_batch), *rest), (max_batch, *rest)
        )
    return profile


def _progress_monitor(trt: Any, label: str) -> Any:
    """A TensorRT IProgressMonitor that logs phases, or None on a TensorRT without one.

    Top-level phases go to INFO with their elapsed time; nested phases and steps to DEBUG,
    at most every tenth of a phase, so a build is visibly alive without flooding the log.
    """
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        log.info("this TensorRT has no progress monitor; building %s silently", label)
        return None

    class LogProgress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self._started: dict[str, float] = {}
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._started[phase_name] = time.monotonic()
            self._steps[phase_name] = max(num_steps, 1)
            level = logging.INFO if parent_phase is None else logging.DEBUG
            log.log(level, "%s: %s (%d steps)", label, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            total = self._steps.get(phase_name, 1)
            if total >= 10 and (step + 1) % (total // 10) == 0:
                log.debug("%s: %s %d/%d", label, phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            elapsed = time.monotonic() - self._started.pop(phase_name, time.monotonic())
            log.debug("%s: %s done in %.1f s", label, phase_name, elapsed)

    return LogProgress()


def build_generator_engine(
    size: int,
    precision: Precision = "fp16",
    max_batch: int = DEFAULT_MAX_BATCH,
    *,
    allow_build: bool = True,
    device: int = 0,
) -> Path:
    """Export the batch-dynamic generator graph at ``size`` (cached) and build its engine."""
    from engines.export import export_generator
    from models.source import generator_config

    onnx_path = export_generator(generator_config(size), dynamic_batch=True, precision=precision)
    return build_engine(onnx_path, precision, max_batch, allow_build=allow_build, device=device)


def main(argv: list[str] | None = None) -> None:
    """``python -m engines.build``: build (or find) the engines a GPU server will load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, action="append", choices=(256, 512))
    parser.add_argument("--precision", action="append", choices=PRECISIONS)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from engines.export import export_generator
    from models.source import generator_config

    for size in args.size or [256]:
        for precision in args.precision or ["fp16"]:
            onnx_path = export_generator(
                generator_config(size), dynamic_batch=True, precision=precision
            )
            path = build_engine(
                onnx_path, precision, args.max_batch, device=args.device, force=args.force
            )
            print(path)  # the CLI's output: one engine path per line


if __name__ == "__main__":
    main()
