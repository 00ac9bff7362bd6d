"""Face-landmark timing: mediapipe's FaceTracker vs MeshTracker (the face mesh run by an engine).

Two measurements, printed as a markdown table: per-frame tracking (crop + mesh + projection, the
cost a session pays each frame; median and p95 ms) on a real clip for each tracker, and the
mesh network alone at several batch sizes (ms per call and per face), which is what batching
sessions on a GPU buys.  Numbers only, no assertion: shared machines are noisy.

    python -m service.benchmarks.landmarks                            # CPU: mediapipe vs ORT CPU
    python -m service.benchmarks.landmarks --backends onnxruntime-cuda onnxruntime-tensorrt
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from engines import create_face_mesh_engine
from models.landmark_net import CROP_SIZE
from models.landmarks import Landmarks
from models.mesh_tracking import MeshTracker
from models.tracking import FaceTracker

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO.parent / "shared" / "data" / "driving" / "lp_d3.mp4"  # head turns, expressions


def load_frames(clip: Path, count: int) -> list[np.ndarray]:
    with av.open(str(clip)) as c:
        frames = []
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return frames


def time_tracker(
    track: Callable[[np.ndarray, float], Landmarks | None], frames: list[np.ndarray]
) -> tuple[float, float, int]:
    """Median and p95 ms per frame, after 10 warm-up frames; and how many frames had no face."""
    for i, frame in enumerate(frames[:10]):
        track(frame, i / 30)
    times, lost = [], 0
    for i, frame in enumerate(frames):
        start = time.perf_counter()
        lost += track(frame, (i + 10) / 30) is None
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95)), lost


def time_network(backend: str, threads: int | None, batch: int, calls: int) -> float:
    """Median ms per call of the mesh alone at ``batch`` crops."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (batch, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    with create_face_mesh_engine(backend, threads, max_batch=batch) as engine:
        for _ in range(5):
            engine.infer({"image": images})
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            engine.infer({"image": images})
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", type=Path, default=CLIP)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--backends", nargs="+", default=["onnxruntime"])
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (CPU backends)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--calls", type=int, default=50)
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parser().parse_args(argv)
    frames = load_frames(args.clip, args.frames)
    rows = [
        "| tracker | median ms/frame | p95 ms/frame | frames without a face |",
        "|---|---|---|---|",
    ]
    with FaceTracker(video=True, smooth=False) as mediapipe:
        med, p95, lost = time_tracker(mediapipe, frames)
    rows.append(f"| mediapipe FaceTracker (TFLite, CPU) | {med:.1f} | {p95:.1f} | {lost} |")
    for backend in args.backends:
        with (
            create_face_mesh_engine(backend, args.threads) as engine,
            MeshTracker(engine, smooth=False) as tracker,
        ):
            med, p95, lost = time_tracker(tracker, frames)
            rows.append(f"| MeshTracker on {engine.name} | {med:.1f} | {p95:.1f} | {lost} |")
    rows += ["", "| mesh network | batch | ms/call | ms/face |", "|---|---|---|---|"]
    for backend in args.backends:
        for batch in args.batches:
            ms = time_network(backend, args.threads, batch, args.calls)
            rows.append(f"| {backend} | {batch} | {ms:.2f} | {ms / batch:.2f} |")
    print(f"{args.clip.name}, {len(frames)} frames, threads={args.threads or 'default'}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
