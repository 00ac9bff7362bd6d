"""GPU benchmark of the generator engines: build, parity, batch throughput, sessions at 25 fps.

Meant for a machine with an NVIDIA GPU and ``pip install '.[gpu]'``; run it as

    python -m service.benchmarks.gpu --out reports/gpu

It measures, for each backend (``tensorrt-fp16``, ``tensorrt-fp32``, ``onnxruntime-cuda``; any
``create_engine`` backend works, e.g. ``onnxruntime`` for a CPU smoke run):

1. build: the TensorRT engine build (or cache hit), seconds;
2. parity against the torch module on real faces: mean, p99.9 and max absolute difference in
   grey levels (test_parity.py holds onnxruntime CPU to mean < 0.05, p99.9 <= 2);
3. throughput: ms per call and per frame for batch 1, 4, 16, 32 at 256 and 512 pixels, host
   to host (inputs copied from numpy, frames copied back), the source embedding resident on
   the device as in a session;
4. sessions: N sessions each submitting a frame every 40 ms (25 fps) to one BatchScheduler;
   per-frame latency (submit to result), the scheduler's added wait, batch sizes, and whether
   every session kept 25 fps.  Generator only: tracking, motion transfer and video coding
   are not in these numbers (``reenact bench``, ``reenact bench-rtc`` measure those).

It writes ``gpu.json`` and ``gpu.md`` (tables ready for docs/benchmarks.md) into ``out`` and
prints the tables.  Numbers only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from engines import create_engine
from engines.base import Engine
from engines.batching import BatchScheduler

if TYPE_CHECKING:
    from engines.export import Precision

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
FPS = 25.0
PER_FRAME = ("control", "coeffs", "lips")  # the rest is the session's constant embedding
Inputs = dict[str, np.ndarray]
log = logging.getLogger(__name__)


def split_backend(spec: str) -> tuple[str, str]:
    """``tensorrt-fp16`` -> (tensorrt, fp16); a backend without a suffix runs fp32."""
    for precision in ("fp16", "fp32"):
        if spec.endswith(f"-{precision}"):
            return spec.removesuffix(f"-{precision}"), precision
    return spec, "fp32"


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    from engines.selection import cuda_devices, tensorrt_version

    return {
        "gpus": [d.identity for d in cuda_devices()],
        "tensorrt": tensorrt_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def face_inputs(photos: list[Path], clip: Path, size: int, frames: int) -> list[list[Inputs]]:
    """Per portrait, ``frames`` generator inputs driven by a real clip (looped)."""
    import av
    import cv2

    from models.motion import MotionTransfer
    from models.pose import face_state
    from models.source import build_source, driving_inputs
    from models.tracking import FaceTracker

    with av.open(str(clip)) as container:
        video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with FaceTracker(video=True) as tracker:
        tracked = [tracker(f) for f in video[: max(frames, 2)]]
    landmarks = [lm for lm in tracked if lm is not None]
    sessions = []
    for photo in photos:
        bgr = cv2.imread(str(photo))
        if bgr is None:
            raise SystemExit(f"cannot read {photo}")
        source = build_source(np.ascontiguousarray(bgr[:, :, ::-1]), size)
        transfer = MotionTransfer(source.state)
        sessions.append(
            [
                {
                    **source.tensors,
                    **driving_inputs(source, transfer(face_state(lm.points))),
                }
                for lm in landmarks[:frames]
            ]
        )
    return sessions


def open_engine(spec: str, size: int, max_batch: int) -> tuple[Engine, float]:
    backend, precision = split_backend(spec)
    started = time.perf_counter()
    engine = create_engine(
        backend, size, max_batch=max_batch, precision=cast("Precision", precision)
    )
    return engine, time.perf_counter() - started


def parity(engine: Engine, reference: Engine, inputs: list[Inputs]) -> dict[str, float]:
    diffs = []
    for f in inputs:
        a = engine.infer(f)["frame"].astype(np.int16)
        b = reference.infer(f)["frame"].astype(np.int16)
        diffs.append(np.abs(a - b))
    d = np.stack(diffs)
    return {
        "mean": float(d.mean()),
        "p99_9": float(np.percentile(d, 99.9)),
        "max": int(d.max()),
        "frames": len(inputs),
    }


def fresh(inputs: Inputs, constant: Inputs) -> Inputs:
    """New per-frame arrays (uploaded every call, as a session's are), same constant ones."""
    return {k: (v if k in constant else v.copy()) for k, v in inputs.items()}


def throughput(
    engine: Engine, sessions: list[list[Inputs]], batch: int, seconds: float
) -> dict[str, float]:
    """Host-to-host time of one batched call; constant inputs keep their identity."""
    rows = [sessions[i % len(sessions)][i % len(sessions[0])] for i in range(batch)]
    stacked = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    constant = {k: v for k, v in stacked.items() if k not in PER_FRAME}
    for _ in range(5):  # warm-up: allocators, lazy initialisation, autotuning
        engine.infer(fresh(stacked, constant))
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 10:
        feed = fresh(stacked, constant)
        t = time.perf_counter()
        engine.infer(feed)
        times.append(time.perf_counter() - t)
    call = np.array(times) * 1000
    return {
        "batch": batch,
        "ms_per_call_median": float(np.median(call)),
        "ms_per_call_p95": float(np.percentile(call, 95)),
        "ms_per_frame": float(np.median(call)) / batch,
        "frames_per_s": batch * 1000 / float(np.median(call)),
        "calls": len(times),
    }


def sessions_at_25fps(
    engine: Engine,
    sessions: list[list[Inputs]],
    count: int,
    seconds: float,
    max_batch: int,
    max_wait_ms: float,
) -> dict[str, float]:
    """``count`` sessions, each a thread submitting a frame every 40 ms to one scheduler."""
    latencies: list[list[float]] = [[] for _ in range(count)]
    late = [0] * count
    scheduler = BatchScheduler(engine, max_batch, max_wait_ms, close_engine=False)
    start = time.perf_counter() + 0.2
    frames = int(seconds * FPS)

    def session(k: int) -> None:
        own = sessions[k % len(sessions)]
        constant = {n: v for n, v in own[0].items() if n not in PER_FRAME}
        phase = (k / count) / FPS  # cameras are not in step
        for i in range(frames):
            due = start + phase + i / FPS
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                late[k] += 1  # the previous frame overran its slot
            t = time.perf_counter()
            scheduler.infer(fresh(own[i % len(own)], constant))
            latencies[k].append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    records = list(scheduler.records)
    scheduler.close()
    lat = np.concatenate([np.array(x) for x in latencies])
    waits = np.array([(r.started - s) * 1000 for r in records for s in r.submitted])
    rows = np.array([r.rows for r in records])
    return {
        "sessions": count,
        "latency_ms_p50": float(np.median(lat)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "added_wait_ms_p95": float(np.percentile(waits, 95)),
        "added_wait_ms_max": float(waits.max()),
        "mean_batch": float(rows.mean()),
        "max_batch": int(rows.max()),
        "fps_per_session": frames / elapsed,
        "late_frames": int(sum(late)),
        "kept_25fps": bool(sum(late) <= 0.01 * count * frames),
    }


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"GPU: {', '.join(env['gpus']) or 'none'}; TensorRT {env['tensorrt']}; "
        f"onnxruntime {env['onnxruntime']}; torch {env['torch']} (CUDA {env['torch_cuda']}).",
        "",
        "| backend | size | engine ready s | parity mean / p99.9 / max |",
        "| --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        p = r["parity"]
        lines.append(
            f"| {r['backend']} | {r['size']} | {r['ready_s']:.1f} | "
            f"{p['mean']:.3f} / {p['p99_9']:.0f} / {p['max']} |"
        )
    lines += ["", "| backend | size | batch | ms/call (p95) | ms/frame | frames/s |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for r in report["runs"]:
        for t in r["throughput"]:
            lines.append(
                f"| {r['backend']} | {r['size']} | {t['batch']} | "
                f"{t['ms_per_call_median']:.2f} ({t['ms_per_call_p95']:.2f}) | "
                f"{t['ms_per_frame']:.3f} | {t['frames_per_s']:.0f} |"
            )
    lines += [
        "",
        f"Sessions at 25 fps through one BatchScheduler (max wait {report['max_wait_ms']} ms):",
        "",
        "| backend | size | sessions | latency p50 / p95 / p99 ms | added wait p95 / max ms "
        "| mean batch | kept 25 fps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        for s in r["sessions"]:
            lines.append(
                f"| {r['backend']} | {r['size']} | {s['sessions']} | "
                f"{s['latency_ms_p50']:.1f} / {s['latency_ms_p95']:.1f} / "
                f"{s['latency_ms_p99']:.1f} | {s['added_wait_ms_p95']:.1f} / "
                f"{s['added_wait_ms_max']:.1f} | {s['mean_batch']:.1f} | "
                f"{'yes' if s['kept_25fps'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    photos = args.photos or sorted((DATA / "source").glob("*.jpg"))[:4]
    report: dict[str, Any] = {
        "environment": environment(),
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "runs": [],
    }
    for size in args.sizes:
        sessions = face_inputs(photos, args.clip, size, args.frames)
        with create_engine("torch", size) as reference:
            for spec in args.backends:
                log.info("%s at %d: opening (a TensorRT build takes minutes)", spec, size)
                engine, ready_s = open_engine(spec, size, args.max_batch)
                with engine:
                    run_report = {
                        "backend": spec,
                        "size": size,
                        "ready_s": ready_s,
                        "parity": parity(engine, reference, [s[0] for s in sessions]),
                        "throughput": [
                            throughput(engine, sessions, b, args.seconds)
                            for b in args.batches
                            if b <= args.max_batch
                        ],
                        "sessions": [
                            sessions_at_25fps(
                                engine, sessions, n, args.seconds, args.max_batch, args.max_wait_ms
                            )
                            for n in args.sessions
                        ],
                    }
                report["runs"].append(run_report)
                log.info("%s at %d: done", spec, size)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="GPU benchmark of the generator engines")
    p.add_argument(
        "--backends", nargs="+", default=["tensorrt-fp16", "tensorrt-fp32", "onnxruntime-cuda"]
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 32])
    p.add_argument("--sessions", nargs="+", type=int, default=[1, 4, 16, 32])
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=4.0)
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--frames", type=int, default=50, help="driving frames per session")
    p.add_argument("--photos", nargs="+", type=Path, default=None)
    p.add_argument("--clip", type=Path, default=DATA / "driving" / "lp_d18.mp4")
    p.add_argument("--out", type=Path, default=Path("reports/gpu"))
    return p


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parser().parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "gpu.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
