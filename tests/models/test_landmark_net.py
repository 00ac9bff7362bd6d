"""The face-mesh networks rebuilt in torch against mediapipe's own TFLite run of the same files.

The reference is mediapipe's FaceLandmarkCpu subgraph (TFLite with XNNPACK, the custom ops
registered) fed a 192x192 crop with a full-image region of interest: its input tensor is then
the crop itself, and its landmarks times 192 are the network's outputs after mediapipe's
refinement, so the two sides see identical inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.closeable import Closeable
from models.landmark_net import (
    CROP_SIZE,
    FaceMeshNetwork,
    TFLiteModule,
    bundled_model,
    landmarks_to_transform_matrix,
    transform_landmarks,
    transform_tensor_bilinear,
)
from models.landmarks import NUM_LANDMARKS
from models.mesh_tracking import Roi, crop, roi_around
from models.tracking import FaceTracker
from tests.conftest import load_clip, load_photo


class TFLiteReference(Closeable):
    """mediapipe's FaceLandmarkCpu graph: crop -> (N, 3) crop-pixel landmarks, or None."""

    def __init__(self, with_attention: bool) -> None:
        import mediapipe
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.framework.formats import rect_pb2
        from mediapipe.python import packet_creator, packet_getter
        from mediapipe.python._framework_bindings import (
            calculator_graph,
            image_frame,
            resource_util,
        )

        resource_util.set_resource_dir(str(Path(mediapipe.__file__).parents[1]))
        config = text_format.Parse(
            """
            input_stream: "image" input_stream: "roi" output_stream: "landmarks"
            node { calculator: "FaceLandmarkCpu" input_stream: "IMAGE:image"
                   input_stream: "ROI:roi" output_stream: "LANDMARKS:landmarks"
                   input_side_packet: "WITH_ATTENTION:with_attention" }
            """,
            calculator_pb2.CalculatorGraphConfig(),
        )
        self._graph = calculator_graph.CalculatorGraph(graph_config=config)
        self._found: list[np.ndarray] = []

        def keep(_: str, packet: Any) -> None:
            if packet.is_empty():  # a timestamp bound: no face at this timestamp
                return
            lm = packet_getter.get_proto(packet).landmark
            self._found.append(np.array([(p.x, p.y, p.z) for p in lm]) * CROP_SIZE)

        self._graph.observe_output_stream("landmarks", keep, True)
        self._graph.start_run({"with_attention": packet_creator.create_bool(with_attention)})
        self._image = lambda a: packet_creator.create_image_frame(
            image_format=image_frame.ImageFormat.SRGB, data=a
        )
        full = rect_pb2.NormalizedRect(x_center=0.5, y_center=0.5, width=1, height=1, rotation=0)
        self._roi = lambda: packet_creator.create_proto(full)
        self._t = 0

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        self._found.clear()
        self._t += 1
        self._graph.add_packet_to_input_stream("image", self._image(image).at(self._t))
        self._graph.add_packet_to_input_stream("roi", self._roi().at(self._t))
        self._graph.wait_until_idle()
        return self._found[0] if self._found else None

    def close(self) -> None:
        self._graph.close()


def face_crops() -> Iterator[np.ndarray]:
    """Face crops as the tracker makes them, from real frames: a head turn, a wide-open mouth,
    winks; plus one rotated by 0.4 rad off the eye line, as a tilted head gives."""
    with FaceTracker(video=False, smooth=False) as tracker:
        for clip, index in (("lp_d3.mp4", 40), ("lp_d18.mp4", 100), ("lp_d14.mp4", 20)):
            frame = load_clip(clip, max_frames=index + 1)[-1]
            lm = tracker(frame)
            assert lm is not None
            roi = roi_around(lm.xy, (lm.xy[33], lm.xy[263]))
            yield crop(frame, roi)
        yield crop(frame, Roi(roi.cx, roi.cy, roi.size, roi.angle + 0.4))


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return list(face_crops())


@pytest.fixture(scope="module")
def mesh() -> FaceMeshNetwork:
    return FaceMeshNetwork().eval()


@torch.inference_mode()
def test_face_mesh_matches_tflite_on_real_crops(
    crops: list[np.ndarray], mesh: FaceMeshNetwork
) -> None:
    points, presence = mesh(torch.from_numpy(np.stack(crops)))
    assert points.shape == (len(crops), NUM_LANDMARKS, 3)
    with TFLiteReference(with_attention=True) as reference:
        for i, image in enumerate(crops):
            expected = reference(image)
            assert expected is not None and expected.shape == (NUM_LANDMARKS, 3)
            # Measured: 1e-4 px at most (float32, different kernels): the same network.
            assert np.abs(points[i].numpy() - expected).max() < 0.01
            assert presence[i] > 0.5


@torch.inference_mode()
def test_no_face_has_low_presence(mesh: FaceMeshNetwork) -> None:
    photo = load_photo("lp_d2_frame0.jpg")  # shirt and background: a real image without a face
    image = np.ascontiguousarray(photo[-CROP_SIZE:, :CROP_SIZE])
    _, presence = mesh(torch.from_numpy(image)[None])
    assert presence[0] < 0.5
    with TFLiteReference(with_attention=True) as reference:
        assert reference(image) is None  # mediapipe drops it too


@torch.inference_mode()
def test_plain_face_landmark_model_matches_tflite(crops: list[np.ndarray]) -> None:
    net = TFLiteModule(bundled_model("face_landmark/face_landmark.tflite")).eval()
    out = net(torch.from_numpy(crops[0])[None].float() / 255)
    (mesh_name, flag_name) = net.output_names
    points = out[mesh_name].reshape(468, 3).numpy()
    with TFLiteReference(with_attention=False) as reference:
        expected = reference(crops[0])
    assert expected is not None and expected.shape == (468, 3)
    assert np.abs(points - expected).max() < 0.01
    assert torch.sigmoid(out[flag_name]).item() > 0.5


@torch.inference_mode()
def test_iris_model_is_interpreted() -> None:
    net = TFLiteModule(bundled_model("iris_landmark/iris_landmark.tflite")).eval()
    out = net(torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0)))
    assert [tuple(out[n].shape) for n in net.output_names] == [(2, 213), (2, 15)]


def test_crop_transform_matrix_follows_the_landmarks() -> None:
    # A 20 x 40 box of points, level eye line: the 16x16 crop covers 1.5x the box.
    pts = torch.tensor([[[10.0, 20, 0], [30, 20, 0], [30, 60, 0], [10, 60, 0]]])
    opts = {
        "left_rotation_idx": 0, "right_rotation_idx": 1, "subset_idxs": [0, 1, 2, 3],
        "output_width": 16, "output_height": 16, "scale_x": 1.5, "scale_y": 1.5,
    }  # fmt: skip
    m = landmarks_to_transform_matrix(pts, opts)[0]
    corner = m @ torch.tensor([0.0, 0, 0, 1])
    centre = m @ torch.tensor([8.0, 8, 0, 1])
    assert torch.allclose(centre[:2], torch.tensor([20.0, 40]), atol=1e-5)
    assert torch.allclose(corner[:2], torch.tensor([20 - 15.0, 40 - 30]), atol=1e-5)
    # Turned by 90 degrees: the crop's x axis follows the left->right vector.
    turned = pts.clone()
    turned[..., :2] = torch.stack([-pts[..., 1], pts[..., 0]], -1)
    m90 = landmarks_to_transform_matrix(turned, opts)[0]
    assert torch.allclose(m90[:2, 0] / m90[:2, 0].norm(), torch.tensor([0.0, 1.0]), atol=1e-5)
    moved = transform_landmarks(torch.tensor([[[8.0, 8.0, 3.0]]]), m[None])
    assert torch.allclose(moved[0, 0], torch.tensor([20.0, 40, 3]), atol=1e-5)


def test_bilinear_crop_samples_pixel_centres() -> None:
    features = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(1, 2, 6, 6)
    identity = torch.eye(4)[None]
    same = transform_tensor_bilinear(features, identity, (6, 6))
    assert torch.allclose(same, features, atol=1e-4)
    half = torch.eye(4)[None].clone()
    half[0, 0, 3] = half[0, 1, 3] = 0.5  # half a pixel right and down: mean of 4 neighbours
    out = transform_tensor_bilinear(features, half, (5, 5))
    expected = torch.nn.functional.avg_pool2d(features, 2, 1)
    assert torch.allclose(out, expected)
    # Samples beyond the last pixel centre are zero, as in mediapipe's kernel.
    assert torch.all(transform_tensor_bilinear(features, half, (6, 6))[..., 5, :] == 0)
