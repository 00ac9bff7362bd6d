"""torch -> ONNX export of the warping generator, cached by configuration and code version.

Three variants share one exporter: the default graph (batch 1, float32: what the CPU path
runs), a batch-dynamic graph (axis 0 of every input and output is symbolic, for batching
several sessions into one call) and a float16 graph for TensorRT.  TensorRT 11 builds only
strongly typed networks (its FP16 builder flag is gone), so half precision has to be in the
ONNX graph itself rather than asked of the builder.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from models import generator, tps
from models.generator import GeneratorConfig, WarpingGenerator

log = logging.getLogger(__name__)
OPSET = 18
Precision = Literal["fp32", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16")
MAX_BATCH = 1024  # upper bound of the symbolic batch axis; TensorRT profiles stay below it


class HalfPrecisionGenerator(WarpingGenerator):
    """The generator in float16 except the thin-plate spline, behind float32 inputs.

    The spline must stay float32: in float16, |p - c|^2 computed as p^2 + c^2 - 2 p.c cancels
    to exactly 0 near a control, 1e-9 underflows and r^2 log r^2 becomes 0 * -inf = NaN (an
    all-float16 module produced NaN sampling indices on real faces).  Everything after the
    flow (sampling, mouth paint, compositing) is image arithmetic where float16 is enough:
    measured with torch on CPU against float32 on real faces, 0.1 grey levels mean absolute
    difference, at most 14 on a few edge pixels.  Graph inputs and output keep their types
    (float32 in, uint8 out) so every runner feeds both variants alike.
    """

    grid_points: torch.Tensor

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        self.half()
        self.grid_points = self.grid_points.float()  # spline evaluation points stay float32

    def flow(
        self, control: torch.Tensor, coeffs: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flow, carried = super().flow(control.float(), coeffs.float(), masks.float())
        return flow.half(), carried.half()

    def forward(
        self,
        source_image: torch.Tensor,
        head_mask: torch.Tensor,
        source_mouth: torch.Tensor,
        mouth_colors: torch.Tensor,
        control: torch.Tensor,
        coeffs: torch.Tensor,
        lips: torch.Tensor,
    ) -> torch.Tensor:
        return super().forward(
            source_image.half(),
            head_mask.half(),
            source_mouth.half(),
            mouth_colors.half(),
            control,  # the spline's inputs stay float32 (see flow)
            coeffs,
            lips.half(),
        )


def cache_dir() -> Path:
    """Where built artifacts live: $REENACT_CACHE_DIR, else ~/.cache/reenact."""
    root = os.environ.get("REENACT_CACHE_DIR") or Path.home() / ".cache" / "reenact"
    return Path(root)


def artifact_key(
    config: GeneratorConfig, *, dynamic_batch: bool = False, precision: Precision = "fp32"
) -> str:
    """Changes whenever the graph could change: its configuration or the code that builds it.

    The default variant's key is what it always was, so existing caches stay valid.
    """
    payload = json.dumps(asdict(config), sort_keys=True).encode()
    for module in (generator, tps):
        payload += inspect.getsource(module).encode()
    payload += f"opset{OPSET}torch{torch.__version__}".encode()
    if dynamic_batch:
        payload += f"dynamic-batch<={MAX_BATCH}".encode()
    if precision != "fp32":
        payload += precision.encode() + inspect.getsource(HalfPrecisionGenerator).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def artifact_path(
    config: GeneratorConfig, *, dynamic_batch: bool = False, precision: Precision = "fp32"
) -> Path:
    """Where the cache keeps a variant: generator-256-<key>.onnx, generator-256-batch-fp16-..."""
    tags = (["batch"] if dynamic_batch else []) + ([precision] if precision != "fp32" else [])
    name = "-".join(
        [
            "generator",
            str(config.size),
            *tags,
            artifact_key(config, dynamic_batch=dynamic_batch, precision=precision),
        ]
    )
    return cache_dir() / f"{name}.onnx"


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


def export_generator(
    config: GeneratorConfig,
    path: Path | None = None,
    *,
    dynamic_batch: bool = False,
    precision: Precision = "fp32",
) -> Path:
    """Export the generator to ONNX (opset 18, dynamo exporter) unless already cached.

    ``dynamic_batch``: axis 0 of every input and of ``frame`` is the symbolic ``batch``
    (1..MAX_BATCH), for the batch scheduler and TensorRT optimization profiles.
    ``precision="fp16"``: see HalfPrecisionGenerator.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    path = path or artifact_path(config, dynamic_batch=dynamic_batch, precision=precision)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "exporting generator %s (%s%s) to %s",
        config,
        precision,
        ", dynamic batch" if dynamic_batch else "",
        path,
    )
    module: nn.Module = (
        HalfPrecisionGenerator(config) if precision == "fp16" else WarpingGenerator(config)
    ).eval()
    inputs = example_inputs(config)
    dynamic_shapes = None
    if dynamic_batch:
        # Trace with batch 2: torch.export specialises a size-1 example axis to a constant.
        inputs = {name: x.repeat(2, *[1] * (x.dim() - 1)) for name, x in inputs.items()}
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        dynamic_shapes = tuple({0: batch} for _ in inputs)  # positional, in input order
    tmp = path.with_suffix(f".{os.getpid()}.tmp.onnx")
    with warnings.catch_warnings():
        # torch.export's own deprecation chatter (pytree internals), not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # Every input shares the one batch axis; the exporter says so when naming it.
        warnings.filterwarnings("ignore", "# The axis name", UserWarning)
        program = torch.onnx.export(
            module,
            tuple(inputs.values()),
            input_names=list(inputs),
            output_names=["frame"],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
            dynamic_shapes=dynamic_shapes,
        )
    assert program is not None
    program.save(str(tmp))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


FACE_MESH_MODEL = "face_landmark/face_landmark_with_attention.tflite"  # inside mediapipe's wheel


def face_mesh_artifact_path(model: Path | None = None) -> Path:
    """Where the cache keeps the face-mesh graph: face-mesh-<key>.onnx.

    The key covers what the graph is made of: the .tflite file's bytes (a different mediapipe
    wheel, a different network), the source of the module that rebuilds it, the opset, torch
    and the batch bound.
    """
    from models import landmark_net

    model = model or landmark_net.bundled_model(FACE_MESH_MODEL)
    payload = hashlib.sha256(model.read_bytes()).hexdigest().encode()
    payload += inspect.getsource(landmark_net).encode()
    payload += f"opset{OPSET}torch{torch.__version__}dynamic-batch<={MAX_BATCH}".encode()
    return cache_dir() / f"face-mesh-{hashlib.sha256(payload).hexdigest()[:16]}.onnx"


def export_face_mesh(path: Path | None = None, *, model: Path | None = None) -> Path:
    """Export mediapipe's face mesh (models/landmark_net.FaceMeshNetwork) to ONNX, unless cached.

    Input ``image`` (batch, 192, 192, 3) uint8; outputs ``landmarks`` (batch, 478, 3) and
    ``presence`` (batch,).  The batch axis is always symbolic (1..MAX_BATCH): one session's
    frame is batch 1, and a BatchScheduler can stack several sessions' crops on a GPU.
    """
    from models.landmark_net import CROP_SIZE, FaceMeshNetwork

    path = path or face_mesh_artifact_path(model)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting the face mesh to %s", path)
    module = FaceMeshNetwork(model).eval()
    # Batch 2 to trace: torch.export specialises a size-1 example axis to a constant.
    image = torch.zeros(2, CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own chatter, as above
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            module,
            (image,),
            input_names=list(FaceMeshNetwork.input_names),
            output_names=list(FaceMeshNetwork.output_names),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
            dynamic_shapes=({0: batch},),
        )
    assert program is not None
    program.save(str(tmp))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path
