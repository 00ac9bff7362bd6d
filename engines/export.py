"""torch -> ONNX export of the warping generator, cached by configuration and code version."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from models import generator, tps
from models.generator import GeneratorConfig, WarpingGenerator

log = logging.getLogger(__name__)
OPSET = 18


def cache_dir() -> Path:
    """Where built artifacts live: $REENACT_CACHE_DIR, else ~/.cache/reenact."""
    root = os.environ.get("REENACT_CACHE_DIR") or Path.home() / ".cache" / "reenact"
    return Path(root)


def artifact_key(config: GeneratorConfig) -> str:
    """Changes whenever the graph could change: its configuration or the code that builds it."""
    payload = json.dumps(asdict(config), sort_keys=True).encode()
    for module in (generator, tps):
        payload += inspect.getsource(module).encode()
    payload += f"opset{OPSET}torch{torch.__version__}".encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def example_inputs(config: GeneratorConfig) -> dict[str, torch.Tensor]:
    """Plausible inputs of the right shapes, for tracing: an identity warp of a grey image."""
    shapes = config.inputs()
    ex = {name: torch.full(shape, 0.5) for name, shape in shapes.items()}
    n = config.num_controls
    ex["control"] = torch.rand(1, n, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    coeffs = torch.zeros(1, n + 3, 2)
    coeffs[0, n + 1, 0] = coeffs[0, n + 2, 1] = 1.0  # affine part = identity
    ex["coeffs"] = coeffs
    return ex


def export_generator(config: GeneratorConfig, path: Path | None = None) -> Path:
    """Export the generator to ONNX (opset 18, dynamo exporter) unless already cached."""
    path = path or cache_dir() / f"generator-{config.size}-{artifact_key(config)}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting generator %s to %s", config, path)
    module = WarpingGenerator(config).eval()
    inputs = example_inputs(config)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.onnx")
    with warnings.catch_warnings():
        # torch.export's own deprecation chatter (pytree internals), not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            module,
            tuple(inputs.values()),
            input_names=list(inputs),
            output_names=["frame"],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None
    program.save(str(tmp))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path
