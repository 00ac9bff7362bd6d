"""Loopback WebRTC benchmark (``reenact bench-rtc``): N clients against a real server.

The server runs in its own process (as in production: its GIL is not shared with the clients)
with loopback ICE.  For each N, N :class:`~service.rtc.client.ClipClient` stream a real driving
clip at 30 fps for ``seconds`` at the same time.  Per client it records:

* received fps: avatar frames decoded by the client per second;
* ``server_ms``: server-side added latency of each avatar frame, from its driver frame coming out
  of the server's decoder to the avatar frame going to the server's encoder, as the server
  reports it per frame on the telemetry data channel;
* ``e2e_ms``: client clock, from handing a driver frame to the client's encoder to decoding the
  avatar frame made from it, split into ``up_ms`` (to the server's decoder output) + server +
  ``down_ms`` (server encoder hand-off to the client's decoder output).  Frames are matched by
  their pts (the server keeps the driver's pts; telemetry gives the returned RTP clock's
  origin), so nothing is drawn on the face.  This includes both codecs, both receive paths and
  the loopback network.  Both ends release received frames at the RTP marker bit
  (service/rtc/jitter.py), as the server does by default.

It writes ``loopback.json`` and ``loopback.png`` into ``out``.  Numbers only; no assertions.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.rtc.client import ClipClient, load_clip
from service.rtc.jitter import release_frames_at_marker
from service.rtc.peer import use_host_addresses
from service.system import cpu_quota

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CLIP = REPO.parent / "shared" / "data" / "driving" / "lp_d10.mp4"
WARMUP_S = 1.0  # first second after the first avatar frame: key frames, allocator, tracker
TARGET_FPS = 20.0
TARGET_P95_MS = 80.0
LATENCY_KEYS = ("e2e_ms", "server_ms", "up_ms", "down_ms")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(size: int, max_sessions: int) -> tuple[subprocess.Popen[bytes], str]:
    """``reenact serve`` in a child process, configured for loopback; returns it and its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "REENACT_SIZES": json.dumps([size]),
        "REENACT_MAX_SESSIONS": str(max_sessions),
        "REENACT_ICE_HOST_ADDRESSES": '["127.0.0.1"]',
        "REENACT_LOG_LEVEL": "warning",
    }
    code = f"from service.app import run; run('127.0.0.1', {port})"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} during start-up")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.terminate()
    raise RuntimeError("server did not become healthy in 120 s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Terminate the child server, waiting up to 15 s for its graceful shutdown."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def loopback_server(size: int, max_sessions: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A child server plus this process's half of loopback: ICE host candidates on 127.0.0.1
    and frames released at the RTP marker bit (as the server does; service/rtc/jitter.py)."""
    process, url = start_server(size, max_sessions)
    undo_addresses = use_host_addresses(["127.0.0.1"])  # the clients' side of loopback ICE
    undo_jitter = release_frames_at_marker()
    try:
        yield process, url
    finally:
        undo_jitter()
        undo_addresses()
        stop_server(process)


@asynccontextmanager
async def connected(clients: list[ClipClient]) -> AsyncIterator[list[ClipClient]]:
    """All ``clients`` connected at once; all closed (sessions DELETEd) on the way out."""
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        yield clients
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
    }


def summarise(client: ClipClient, seconds: float) -> dict[str, Any]:
    """One client's steady-state numbers (the warm-up second excluded), in ms per frame.

    ``up`` (client encoder -> server decoder output) and ``down`` (server encoder hand-off ->
    client decoder output) compare the two processes' time.monotonic(), which is one clock
    on one host.
    """
    if client.report.started_at is None:
        return {"fps": 0.0, "frames": 0, "drift_ms": 0.0} | {k: [] for k in LATENCY_KEYS}
    begin, end = client.report.started_at + WARMUP_S, client.report.started_at + seconds
    frames, out = frame_latencies(client, begin, end)
    e2e = out["e2e_ms"]
    third = len(e2e) // 3
    # Latency growth over the run: the last third's median minus the first third's.
    drift = float(np.median(e2e[-third:]) - np.median(e2e[:third])) if third else 0.0
    return {"fps": frames / (end - begin), "frames": frames, "drift_ms": drift} | out


def frame_latencies(
    client: ClipClient, begin: float, end: float
) -> tuple[int, dict[str, list[float]]]:
    """Avatar frames ``client`` decoded in [begin, end] (time.monotonic()), and the latencies
    (ms, one per frame, keys :data:`LATENCY_KEYS`) of those matched to their driver frame and
    their telemetry message."""
    frames = [r for r in client.report.frames if begin <= r.at <= end]
    telemetry = {client.track.number_of(int(m["pts"])): m for m in client.report.telemetry}
    out: dict[str, list[float]] = {k: [] for k in LATENCY_KEYS}
    for r in frames:
        k = client.track.number_of(r.pts)
        sent, m = client.track.sent.get(k), telemetry.get(k)
        if sent is None or m is None:
            continue
        out["e2e_ms"].append((r.at - sent) * 1000)
        out["server_ms"].append(float(m["server_ms"]))
        out["up_ms"].append((float(m["arrived"]) - sent) * 1000)
        out["down_ms"].append((r.at - float(m["sent"])) * 1000)
    return len(frames), out


async def run_clients(url: str, n: int, frames: list[np.ndarray], fps: float, seconds: float,
                      size: int) -> dict[str, Any]:  # fmt: skip
    clients = [ClipClient(url, frames, fps, size=size) for _ in range(n)]
    load_before = os.getloadavg()[0]
    async with connected(clients):
        await asyncio.gather(*(c.play(seconds) for c in clients))
        answers = await asyncio.gather(*(c.stats() for c in clients), return_exceptions=True)
    # A session the server ended early (e.g. no video for media_timeout_s) answers 404.
    server_stats = [a for a in answers if isinstance(a, dict)]
    per_client = [summarise(c, seconds) for c in clients]
    fps_each = [c["fps"] for c in per_client]
    dropped = [s["stats"]["dropped"] for s in server_stats]
    stages = server_stats[0]["stats"]["latency"] if server_stats else {}
    return {
        "clients": n,
        "fps_mean": round(float(np.mean(fps_each)), 2),
        "fps_min": round(float(np.min(fps_each)), 2),
        "fps_total": round(float(np.sum(fps_each)), 2),
        **{
            key: percentiles([v for c in per_client for v in c[key]])
            for key in ("server_ms", "e2e_ms", "up_ms", "down_ms")
        },
        "e2e_drift_ms_max": round(max(c["drift_ms"] for c in per_client), 1),
        "dropped_per_client": dropped,
        "sessions_ended_early": n - len(server_stats),
        "server_stages_p50_ms": {stage: v["p50_ms"] for stage, v in stages.items()},
        "load_average_before": round(load_before, 2),
    }


def plot(results: list[dict[str, Any]], size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["clients"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, [r["fps_mean"] for r in results], "o-", label="mean per client")
    left.plot(n, [r["fps_min"] for r in results], "s--", label="slowest client")
    left.axhline(TARGET_FPS, color="grey", lw=0.8, ls=":", label=f"{TARGET_FPS:.0f} fps target")
    left.set(ylabel="received fps", title=f"Frame rate, {size}² avatar")
    for key, style, label in (
        ("server_ms", "-", "server-side added"),
        ("e2e_ms", "--", "end to end"),
    ):
        for q, marker in (("p50", "o"), ("p95", "^")):
            right.plot(n, [r[key][q] for r in results], marker + style, label=f"{label} {q}")
    right.axhline(TARGET_P95_MS, color="grey", lw=0.8, ls=":", label="80 ms p95 target")
    right.set(ylabel="latency per frame (ms)", yscale="log", title="Latency")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(x) for x in n])
        ax.minorticks_off()
        ax.set_xlabel("concurrent sessions")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(clients: list[int], seconds: float, size: int, out: Path,
        clip: Path = DEFAULT_CLIP) -> dict[str, Any]:  # fmt: skip
    """Benchmark N = each of ``clients``; write ``out``/loopback.json and .png; return results."""
    frames, fps = load_clip(clip, max_frames=300)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with loopback_server(size, max(clients)) as (_, url):
        for n in clients:
            result = asyncio.run(run_clients(url, n, frames, fps, seconds, size))
            results.append(result)
            print(
                f"{n} client(s): {result['fps_mean']:.1f} fps each (min {result['fps_min']:.1f}), "
                f"server-side added p50/p95 {result['server_ms']['p50']}/"
                f"{result['server_ms']['p95']} ms, end-to-end p50/p95 "
                f"{result['e2e_ms']['p50']}/{result['e2e_ms']['p95']} ms (up p50 "
                f"{result['up_ms']['p50']}, down p50 {result['down_ms']['p50']}), "
                f"latency drift over the run {result['e2e_drift_ms_max']:+.0f} ms"
            )
    summary = {
        "size": size,
        "seconds": seconds,
        "clip": clip.name,
        "camera_fps": fps,
        "cpus": cpu_quota(),
        "results": results,
    }
    (out / "loopback.json").write_text(json.dumps(summary, indent=2))
    plot(results, size, out / "loopback.png")
    print(f"wrote {out / 'loopback.json'} and {out / 'loopback.png'}")
    return summary
