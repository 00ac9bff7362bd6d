"""mediapipe's face-mesh networks rebuilt as torch modules from the .tflite files it bundles.

Why: mediapipe runs its face-landmark model through TFLite on CPU threads only; a GPU server
would be CPU-bound on tracking.  Rebuilt in torch, the same weights export to ONNX and run
wherever onnxruntime (CUDA, TensorRT) does, batched across sessions.  Nothing is downloaded:
the weights are read at construction from the model files inside the pinned mediapipe wheel.

``TFLiteModule`` is a small interpreter of a TFLite graph's operator list: each builtin op
becomes the torch op with the same semantics (NHWC tensors are kept as NCHW inside, TFLite's
SAME padding is reproduced including its asymmetric case, float16 weights are dequantized
once at load).  It knows exactly the ops of the three face models in mediapipe 0.10.21
(``face_landmark.tflite``, ``face_landmark_with_attention.tflite``, ``iris_landmark.tflite``)
and refuses any other op by name.  The attention model's three custom ops are geometry on
landmarks and feature maps; they are reimplemented from their specification in mediapipe's
``util/tflite/operations`` (Landmarks2TransformMatrix v2, TransformTensorBilinear v2,
TransformLandmarks v2), batched, without atan2 so that every exporter and TensorRT take them.

``FaceMeshNetwork`` wraps the attention model (the one mediapipe's face mesh runs with
``refine_landmarks=True``) into uint8 crop in, 478 refined points and a face-presence
probability out: the refinement (lips, eyes and irises overwrite the mesh; iris depth is the
mean depth of its eyelid contour) follows mediapipe's TensorsToFaceLandmarksWithAttention
graph, with its index maps taken from the model's own crop subsets, which are the same lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CROP_SIZE = 192  # the face model's input side, pixels
NUM_MESH = 468
# Order of the attention model's landmark heads as mediapipe refines the mesh with them: later
# heads overwrite earlier ones ("left" is mediapipe's naming: the subject's right eye).
_REFINED_HEADS = ("output_lips", "output_left_eye", "output_right_eye")
_IRIS_HEADS = ("output_left_iris", "output_right_iris")  # -> points 468-472, 473-477
_EYELID_POINTS = 16  # the first 16 of an eye head: its lower (9) and upper (7) eyelid contour


def bundled_model(name: str) -> Path:
    """Path of a model file shipped inside the installed mediapipe wheel, e.g.
    ``face_landmark/face_landmark_with_attention.tflite``.  Importing mediapipe's package
    marker only (not its native bindings) keeps this cheap."""
    import importlib.util

    spec = importlib.util.find_spec("mediapipe")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("mediapipe is not installed; it ships the face models")
    path = Path(spec.origin).parent / "modules" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (mediapipe 0.10.21 ships it)")
    return path


# --------------------------------------------------------------------------- flatbuffer reading


@dataclass(frozen=True)
class _Op:
    kind: str  # builtin name (CONV_2D, ...) or the custom code (Landmarks2TransformMatrix, ...)
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Graph:
    """The parts of a TFLite subgraph the interpreter needs, in plain Python."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    constants: dict[int, np.ndarray]
    ops: list[_Op]
    inputs: list[int]
    outputs: list[int]


_ACTIVATIONS = {0: "NONE", 1: "RELU", 3: "RELU6"}
_SAME, _VALID = 0, 1  # tflite.Padding


def _read_graph(data: bytes) -> _Graph:
    import tflite  # the flatbuffer schema, pure Python
    from flatbuffers import flexbuffers
    from tflite.BuiltinOperator import BuiltinOperator

    builtin = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        raise ValueError("expected a single-subgraph model")
    sg = model.Subgraphs(0)
    names, shapes, constants = [], [], {}
    dtypes = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        names.append(t.Name().decode())
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        shapes.append(shape)
        buf = model.Buffers(t.Buffer())
        if buf is not None and buf.DataLength() > 0:
            raw = buf.DataAsNumpy().tobytes()
            constants[i] = np.frombuffer(raw, dtype=dtypes[t.Type()]).reshape(shape).copy()

    def options(op: Any, kind: str) -> dict[str, Any]:
        table = op.BuiltinOptions()
        cls = {
            "CONV_2D": tflite.Conv2DOptions,
            "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
            "MAX_POOL_2D": tflite.Pool2DOptions,
            "ADD": tflite.AddOptions,
            "MUL": tflite.MulOptions,
            "STRIDED_SLICE": tflite.StridedSliceOptions,
        }.get(kind)
        if cls is None or table is None:
            return {}
        opt = cls()
        opt.Init(table.Bytes, table.Pos)
        out: dict[str, Any] = {}
        for name in ("Padding", "StrideW", "StrideH", "DilationWFactor", "DilationHFactor",
                     "DepthMultiplier", "FilterWidth", "FilterHeight",
                     "FusedActivationFunction", "BeginMask", "EndMask", "EllipsisMask",
                     "NewAxisMask", "ShrinkAxisMask"):  # fmt: skip
            if hasattr(opt, name):
                out[name] = getattr(opt, name)()
        return out

    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = builtin[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        opts = options(op, kind)
        if kind == "CUSTOM":
            kind = code.CustomCode().decode()
            raw = op.CustomOptionsAsNumpy()
            opts = dict(flexbuffers.Loads(raw.tobytes())) if not isinstance(raw, int) else {}
            opts["version"] = code.Version()
        ins = tuple(int(j) for j in op.InputsAsNumpy())
        ops.append(_Op(kind, ins, tuple(int(j) for j in op.OutputsAsNumpy()), opts))
    return _Graph(
        names,
        shapes,
        constants,
        ops,
        [int(j) for j in sg.InputsAsNumpy()],
        [int(j) for j in sg.OutputsAsNumpy()],
    )


# --------------------------------------------------------------------------- layer helpers


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TFLite/TensorFlow SAME padding: output ceil(size/stride), the odd pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _activate(x: torch.Tensor, fused: int) -> torch.Tensor:
    kind = _ACTIVATIONS.get(fused)
    if kind is None:
        raise NotImplementedError(f"fused activation {fused}")
    if kind == "RELU":
        return F.relu(x)
    if kind == "RELU6":
        return F.relu6(x)
    return x


def _nchw_constant(value: np.ndarray) -> torch.Tensor:
    """A constant operand of an elementwise op on an NCHW activation, laid out to broadcast
    the way it did against the NHWC tensor in TFLite."""
    t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if t.dim() == 4:
        return t.permute(0, 3, 1, 2).contiguous()
    if t.dim() == 3:  # (H, W, C)
        return t.permute(2, 0, 1).contiguous()
    if t.dim() == 1 and t.numel() > 1:  # per channel
        return t.reshape(-1, 1, 1)
    return t


class _Conv(nn.Module):
    """CONV_2D / DEPTHWISE_CONV_2D with TFLite's padding, on NCHW."""

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        opts: dict[str, Any],
        in_hw: tuple[int, int],
        depthwise: bool,
    ) -> None:
        super().__init__()
        if opts.get("DilationWFactor", 1) != 1 or opts.get("DilationHFactor", 1) != 1:
            raise NotImplementedError("dilated convolution")
        w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        if depthwise:  # (1, KH, KW, C * multiplier) -> (C * multiplier, 1, KH, KW)
            w = w.permute(3, 0, 1, 2)
            self.groups = w.shape[0] // max(int(opts.get("DepthMultiplier", 1)), 1)
        else:  # (O, KH, KW, I) -> (O, I, KH, KW)
            w = w.permute(0, 3, 1, 2)
            self.groups = 1
        self.weight = nn.Parameter(w.contiguous(), requires_grad=False)
        b = np.zeros(w.shape[0], np.float32) if bias is None else bias.astype(np.float32)
        self.bias = nn.Parameter(torch.from_numpy(b.copy()), requires_grad=False)
        self.stride = (int(opts["StrideH"]), int(opts["StrideW"]))
        kh, kw = w.shape[2], w.shape[3]
        if opts["Padding"] == _SAME:
            top, bottom = _same_pads(in_hw[0], kh, self.stride[0])
            left, right = _same_pads(in_hw[1], kw, self.stride[1])
        else:
            top = bottom = left = right = 0
        self.symmetric = top == bottom and left == right
        self.pads = (left, right, top, bottom)
        self.fused = int(opts.get("FusedActivationFunction", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            pad = (self.pads[2], self.pads[0])
            y = F.conv2d(x, self.weight, self.bias, self.stride, pad, 1, self.groups)
        else:
            x = F.pad(x, self.pads)
            y = F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)
        return _activate(y, self.fused)


# --------------------------------------------------------------------------- custom ops


def _rotation_to_target(
    landmarks: torch.Tensor, left: int, right: int, target: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``target - atan2(dy, dx)`` of the left->right landmark vector, (B,) each,
    computed from the normalised vector (no atan2: not every exporter has it)."""
    d = landmarks[:, right, :2] - landmarks[:, left, :2]
    n = torch.sqrt((d * d).sum(-1)).clamp_min(1e-12)
    cos_a, sin_a = d[:, 0] / n, d[:, 1] / n  # angle a of the vector
    ct, st = math.cos(target), math.sin(target)
    return ct * cos_a + st * sin_a, st * cos_a - ct * sin_a  # cos(t - a), sin(t - a)


def landmarks_to_transform_matrix(landmarks: torch.Tensor, opts: dict[str, Any]) -> torch.Tensor:
    """Landmarks2TransformMatrix v2: (B, N, 3) landmarks -> (B, 4, 4) matrix taking an
    (output_width x output_height) crop's pixel grid onto the landmarks' frame.

    The crop is the subset's bounding box in the frame rotated so that the left->right
    landmark line lies at ``target_rotation_radians``, scaled by ``scale_x/scale_y``:
    M = shift(centre) . rotate(-r) . scale(sx * w / ow, sy * h / oh) . shift(-ow/2, -oh/2).
    """
    cos_r, sin_r = _rotation_to_target(
        landmarks,
        int(opts["left_rotation_idx"]),
        int(opts["right_rotation_idx"]),
        float(opts.get("target_rotation_radians", 0.0)),
    )
    subset = torch.tensor(list(opts["subset_idxs"]), dtype=torch.long)
    xy = landmarks[:, subset, :2]  # (B, S, 2)
    c, s = cos_r[:, None], sin_r[:, None]
    rx = c * xy[..., 0] - s * xy[..., 1]  # rotate by r
    ry = s * xy[..., 0] + c * xy[..., 1]
    x0, x1 = rx.amin(1), rx.amax(1)
    y0, y1 = ry.amin(1), ry.amax(1)
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    cx = cos_r * mx + sin_r * my  # rotate the centre back by -r
    cy = -sin_r * mx + cos_r * my
    ow, oh = float(opts["output_width"]), float(opts["output_height"])
    sx = float(opts["scale_x"]) * (x1 - x0) / ow
    sy = float(opts["scale_y"]) * (y1 - y0) / oh
    # rotate(-r) . scale: columns (cos r, -sin r) * sx and (sin r, cos r) * sy
    a00, a01 = cos_r * sx, sin_r * sy
    a10, a11 = -sin_r * sx, cos_r * sy
    tx = cx - a00 * ow / 2 - a01 * oh / 2
    ty = cy - a10 * ow / 2 - a11 * oh / 2
    zero, one = torch.zeros_like(tx), torch.ones_like(tx)
    rows = [
        torch.stack([a00, a01, zero, tx], -1),
        torch.stack([a10, a11, zero, ty], -1),
        torch.stack([zero, zero, one, zero], -1),
        torch.stack([zero, zero, zero, one], -1),
    ]
    return torch.stack(rows, 1)


def transform_tensor_bilinear(
    features: torch.Tensor, matrix: torch.Tensor, out_hw: tuple[int, int]
) -> torch.Tensor:
    """TransformTensorBilinear v2 on NCHW: output pixel (x, y) samples the input bilinearly at
    M . (x + 0.5, y + 0.5) - 0.5 (pixel centres); samples outside [0, size - 1] are zero."""
    b, _, h, w = features.shape
    oh, ow = out_hw
    ys, xs = torch.meshgrid(
        torch.arange(oh, dtype=features.dtype) + 0.5,
        torch.arange(ow, dtype=features.dtype) + 0.5,
        indexing="ij",
    )
    grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)  # (1, P, 3)
    affine = matrix[:, :2, :][:, :, [0, 1, 3]]  # (B, 2, 3): the z column multiplies zero
    tc = grid @ affine.transpose(1, 2) - 0.5  # (B, P, 2) input pixel coordinates
    inside = (tc[..., 0] >= 0) & (tc[..., 0] <= w - 1) & (tc[..., 1] >= 0) & (tc[..., 1] <= h - 1)
    norm = torch.stack([tc[..., 0] * (2 / (w - 1)) - 1, tc[..., 1] * (2 / (h - 1)) - 1], -1)
    out = F.grid_sample(
        features,
        norm.reshape(b, oh, ow, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out * inside.reshape(b, 1, oh, ow).to(out.dtype)


def transform_landmarks(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """TransformLandmarks v2: (B, N, 2|3) points through the matrix's 2-D affine part; a third
    coordinate passes through unchanged."""
    xy = points[..., :2] @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, None, :2, 3]
    return torch.cat([xy, points[..., 2:]], -1)


# --------------------------------------------------------------------------- the interpreter


Step = Callable[[list[torch.Tensor]], torch.Tensor]


def _buffer_getter(module: nn.Module, name: str) -> Step:
    def get(_: list[torch.Tensor]) -> torch.Tensor:
        value = getattr(module, name)
        assert isinstance(value, torch.Tensor)
        return value

    return get


def _input_getter(position: int) -> Step:
    return lambda a: a[position]


class TFLiteModule(nn.Module):
    """A single-subgraph float TFLite model as a torch module, weights read at construction.

    ``forward`` takes the model's inputs in TFLite's layout (NHWC float) with any batch size
    and returns its outputs by tensor name, in TFLite's layout too.  Activations are NCHW
    inside; constants are laid out to broadcast as in TFLite (``_operands``).
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.source = path
        g = _read_graph(path.read_bytes())
        self.graph = g
        consts = dict(g.constants)
        for op in g.ops:  # fold DEQUANTIZE of float16 weights into float32 constants
            if op.kind == "DEQUANTIZE" and op.inputs[0] in consts:
                consts[op.outputs[0]] = consts[op.inputs[0]].astype(np.float32)
        self._consts = consts
        self.layers = nn.ModuleDict()
        self._steps: list[tuple[Step, tuple[int, ...], int]] = []
        for i, op in enumerate(g.ops):
            if op.kind == "DEQUANTIZE" and op.outputs[0] in consts:
                continue
            self._steps.append((self._compile(i, op), op.inputs, op.outputs[0]))
            if len(op.outputs) != 1:
                raise NotImplementedError(f"{op.kind} with {len(op.outputs)} outputs")
        self.output_names = [g.names[j] for j in g.outputs]

    # Each builder returns a function of the op's *activation* inputs (constants are bound).
    def _compile(self, index: int, op: _Op) -> Step:
        g, consts, o = self.graph, self._consts, op.options
        ins = op.inputs
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            bias = consts.get(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            hw = g.shapes[ins[0]][1:3]
            layer = _Conv(consts[ins[1]], bias, o, (hw[0], hw[1]), op.kind == "DEPTHWISE_CONV_2D")
            self.layers[f"op{index}"] = layer
            return lambda a: layer(a[0])
        if op.kind == "PRELU":
            slope = _nchw_constant(consts[ins[1]])
            if slope.shape[1:] == (1, 1):  # per channel: one ONNX PRelu
                slope = slope.reshape(-1)
            alpha = nn.Parameter(slope, requires_grad=False)
            self.register_parameter(f"alpha{index}", alpha)
            if alpha.dim() == 1:
                return lambda a: F.prelu(a[0], alpha)
            return lambda a: torch.where(a[0] >= 0, a[0], a[0] * alpha)
        if op.kind in ("ADD", "MUL"):
            fused = int(o.get("FusedActivationFunction", 0))
            fn = torch.add if op.kind == "ADD" else torch.mul
            first, second = self._operands(ins[:2])
            return lambda a: _activate(fn(first(a), second(a)), fused)
        if op.kind == "MAX_POOL_2D":
            k = (int(o["FilterHeight"]), int(o["FilterWidth"]))
            s = (int(o["StrideH"]), int(o["StrideW"]))
            h, w = g.shapes[ins[0]][1:3]
            pads = (0, 0, 0, 0)
            if o["Padding"] == _SAME:
                pads = (*_same_pads(w, k[1], s[1]), *_same_pads(h, k[0], s[0]))
            fused = int(o.get("FusedActivationFunction", 0))

            def pool(a: list[torch.Tensor]) -> torch.Tensor:
                x = F.pad(a[0], pads, value=-math.inf) if any(pads) else a[0]
                return _activate(F.max_pool2d(x, k, s), fused)

            return pool
        if op.kind == "PAD":
            p = consts[ins[1]].astype(int)  # (4, 2) NHWC before/after
            if p[0].any():
                raise NotImplementedError("padding the batch axis")
            torch_pads = (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]), int(p[1, 1]),
                          int(p[3, 0]), int(p[3, 1]))  # fmt: skip
            return lambda a: F.pad(a[0], torch_pads)
        if op.kind == "RESHAPE":
            shape = g.shapes[op.outputs[0]]  # static, where NewShape may hold a -1
            rank_in = len(g.shapes[ins[0]])

            def reshape(a: list[torch.Tensor]) -> torch.Tensor:
                x = a[0].permute(0, 2, 3, 1) if rank_in == 4 else a[0]
                y = x.reshape(-1, *shape[1:])
                return y.permute(0, 3, 1, 2) if len(shape) == 4 else y

            return reshape
        if op.kind == "STRIDED_SLICE":
            begin, end, strides = (consts[j].astype(int) for j in ins[1:4])
            if any(o.get(m, 0) for m in ("EllipsisMask", "NewAxisMask", "ShrinkAxisMask")):
                raise NotImplementedError("strided slice with ellipsis/new/shrink axes")
            bm, em = int(o.get("BeginMask", 0)), int(o.get("EndMask", 0))
            rank_in = len(g.shapes[ins[0]])
            index_ = [slice(None)] + [
                slice(
                    None if bm >> d & 1 else int(begin[d]),
                    None if em >> d & 1 else int(end[d]),
                    int(strides[d]),
                )
                for d in range(1, len(begin))
            ]

            def strided(a: list[torch.Tensor]) -> torch.Tensor:
                x = a[0].permute(0, 2, 3, 1) if rank_in == 4 else a[0]
                y = x[tuple(index_)]
                return y.permute(0, 3, 1, 2) if rank_in == 4 else y

            return strided
        if op.kind == "Landmarks2TransformMatrix" and o.get("version") == 2:
            return lambda a: landmarks_to_transform_matrix(a[0], o)
        if op.kind == "TransformTensorBilinear" and o.get("version") == 2:
            out_hw = (int(o["output_height"]), int(o["output_width"]))
            return lambda a: transform_tensor_bilinear(a[0], a[1], out_hw)
        if op.kind == "TransformLandmarks" and o.get("version") == 2:
            return lambda a: transform_landmarks(a[0], a[1])
        raise NotImplementedError(f"TFLite op {op.kind} (options {o}) in {self.source.name}")

    def _operands(self, ins: tuple[int, ...]) -> list[Step]:
        """Getters for an elementwise op's operands: constants become buffers laid out to
        broadcast against the other operand as they did in TFLite; activations are taken
        from the op's activation inputs by position."""
        rank = max(len(self.graph.shapes[j]) for j in ins if j not in self._consts)
        getters: list[Step] = []
        position = 0
        for j in ins:
            if j in self._consts:
                value = self._consts[j]
                name = f"const{j}"
                if not hasattr(self, name):
                    buf = (
                        _nchw_constant(value)
                        if rank == 4
                        else torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
                    )
                    self.register_buffer(name, buf, persistent=False)
                getters.append(_buffer_getter(self, name))
            else:
                getters.append(_input_getter(position))
                position += 1
        return getters

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        env: dict[int, torch.Tensor] = {}
        for j, x in zip(self.graph.inputs, inputs, strict=True):
            env[j] = x.permute(0, 3, 1, 2) if x.dim() == 4 else x
        for step, ins, out in self._steps:
            env[out] = step([env[j] for j in ins if j >= 0 and j not in self._consts])
        result = {}
        for j in self.graph.outputs:
            y = env[j]
            result[self.graph.names[j]] = y.permute(0, 2, 3, 1) if y.dim() == 4 else y
        return result


# --------------------------------------------------------------------------- the face mesh


def _crop_subset(graph: _Graph, tensor: int) -> list[int]:
    """The mesh indices of the Landmarks2TransformMatrix crop that a head's points come from:
    the attention model predicts a part (lips, an eye) in a crop around those mesh points and
    maps it back, so they are the points that part refines."""
    producer = {out: op for op in graph.ops for out in op.outputs}
    frontier, seen = [tensor], set()
    while frontier:
        t = frontier.pop(0)
        op = producer.get(t)
        if op is None or t in seen:
            continue
        seen.add(t)
        if op.kind == "Landmarks2TransformMatrix":
            return [int(k) for k in op.options["subset_idxs"]]
        frontier.extend(op.inputs)
    raise ValueError(f"{graph.names[tensor]} does not come from a landmark crop")


class FaceMeshNetwork(nn.Module):
    """mediapipe's face mesh with attention: a (B, 192, 192, 3) uint8 RGB face crop in,
    ``landmarks`` (B, 478, 3) and ``presence`` (B,) out.

    Landmarks are in crop pixels (x, y in [0, 192], origin top-left; z on the x scale, smaller
    = nearer), already refined: 468 mesh points with lips and eyes overwritten by their
    dedicated heads, then 10 iris points (468-472 the subject's right iris, centre first),
    each iris's depth the mean depth of its eyelid contour.  ``presence`` is the sigmoid of the
    face-flag head: mediapipe drops the face below its tracking confidence (0.5).
    """

    input_names = ("image",)
    output_names = ("landmarks", "presence")
    crop_size = CROP_SIZE
    gather: torch.Tensor  # (478,) row of each output point in the stacked head outputs
    eyelids: torch.Tensor  # (2, 16) mesh indices of each eye's lid contour

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.net = TFLiteModule(
            path or bundled_model("face_landmark/face_landmark_with_attention.tflite")
        )
        g = self.net.graph
        by_name = {g.names[j]: j for j in g.outputs}
        missing = {"output_mesh_identity", "conv_faceflag", *_REFINED_HEADS, *_IRIS_HEADS}
        if missing - by_name.keys():
            raise ValueError(f"{self.net.source.name} lacks heads {missing - by_name.keys()}")
        index = list(range(NUM_MESH))
        offset = NUM_MESH
        eyelids = {}
        for head in _REFINED_HEADS:
            subset = _crop_subset(g, by_name[head])
            for i, k in enumerate(subset):
                index[k] = offset + i  # later heads overwrite earlier ones, as in mediapipe
            offset += len(subset)
            eyelids[head] = subset[:_EYELID_POINTS]
        for head in _IRIS_HEADS:
            n = g.shapes[by_name[head]][-1] // 2
            index.extend(range(offset, offset + n))
            offset += n
        self.register_buffer("gather", torch.tensor(index), persistent=False)
        lids = [eyelids["output_left_eye"], eyelids["output_right_eye"]]
        self.register_buffer("eyelids", torch.tensor(lids), persistent=False)  # (2, 16)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(image.float() * (1 / 255))  # mediapipe feeds [0, 1]
        b = image.shape[0]
        mesh = out["output_mesh_identity"].reshape(b, NUM_MESH, 3)
        parts = [out[h].reshape(b, -1, 2) for h in (*_REFINED_HEADS, *_IRIS_HEADS)]
        xy = torch.cat([mesh[..., :2], *parts], 1).index_select(1, self.gather)
        z_mesh = mesh[..., 2]
        z_iris = z_mesh[:, self.eyelids.reshape(-1)].reshape(b, 2, -1).mean(-1)  # (B, 2)
        n_iris = (xy.shape[1] - NUM_MESH) // 2
        z = torch.cat([z_mesh, z_iris.repeat_interleave(n_iris, 1)], 1)
        landmarks = torch.cat([xy, z[..., None]], -1)
        presence = torch.sigmoid(out["conv_faceflag"].reshape(b))
        return landmarks, presence
