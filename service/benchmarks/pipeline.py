"""Per-stage CPU timing of the reenactment pipeline (``reenact bench``).

Runs a real driving clip through track -> motion -> generate for each size and backend and
reports median and p95 per stage over at least 200 frames.  A benchmark prints numbers; it
asserts nothing (these machines are shared and noisy).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from engines import create_engine
from models.pipeline import Reenactor
from models.source import build_source
from service.offline import read_photo

STAGES = ("track", "motion", "generate", "total")


def load_frames(clip: Path, count: int) -> list[np.ndarray]:
    """``count`` RGB frames of ``clip``, looping it back and forth when it is shorter."""
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    loop = frames + frames[-2:0:-1]
    return [loop[i % len(loop)] for i in range(count)]


def measure(
    photo: Path, frames: list[np.ndarray], size: int, backend: str, threads: int | None
) -> dict[str, dict[str, float]]:
    source = build_source(read_photo(photo), size)
    with create_engine(backend, size, threads) as engine:
        reenactor = Reenactor(source, engine)
        for i in range(10):  # warm-up: allocator, tracker start-up, ORT first runs
            reenactor(frames[i], i / 30)
        reenactor.reset()
        samples: dict[str, list[float]] = {s: [] for s in STAGES}
        bar = tqdm(frames, desc=f"{backend} {size}", unit="frame", leave=False)
        for i, frame in enumerate(bar):
            result = reenactor(frame, 1 + i / 30)
            if result.face_found:
                for s in STAGES:
                    samples[s].append(result.timings_ms[s])
        reenactor.close()
    return {
        s: {
            "median_ms": float(np.median(v)),
            "p95_ms": float(np.percentile(v, 95)),
            "frames": len(v),
        }
        for s, v in samples.items()
    }


def run(
    photo: Path,
    clip: Path,
    sizes: list[int],
    backends: list[str],
    frames: int = 200,
    threads: int | None = None,
    out: Path | None = None,
) -> dict:
    data = load_frames(clip, frames)
    started = time.time()
    results = {
        f"{backend}-{size}": measure(photo, data, size, backend, threads)
        for size in sizes
        for backend in backends
    }
    print(f"{'config':<18}" + "".join(f"{s + ' med/p95 ms':>22}" for s in STAGES) + f"{'fps':>8}")
    for name, r in results.items():
        cells = "".join(f"{r[s]['median_ms']:>12.1f} / {r[s]['p95_ms']:<7.1f}" for s in STAGES)
        print(f"{name:<18}{cells}{1000 / r['total']['median_ms']:>8.1f}")
    report = {"photo": str(photo), "clip": str(clip), "frames": frames, "results": results,
              "wall_s": time.time() - started}  # fmt: skip
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report
