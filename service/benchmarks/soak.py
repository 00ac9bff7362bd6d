"""Load and soak (``reenact soak``): N loopback clients with real clips for minutes.

The question is not how fast (``reenact bench-rtc`` answers that) but whether the server stays
the same over a long call: frame rate and latency steady, and memory, open file descriptors and
threads flat.  For each N a fresh server is started in a child process, as in
:mod:`service.benchmarks.loopback`, and N :class:`~service.rtc.client.ClipClient` stream the
real clips of ``../shared/data/driving/`` (client i plays clip i modulo their number, looping it
like a camera) for ``seconds``.  Meanwhile:

* every second, the server process is read from ``/proc/<pid>``: RSS (``VmRSS``), open fds
  (entries of ``fd/``) and threads (``Threads``);
* every ``window_s`` (10 s), per session: received fps and the server-added latency
  (telemetry ``server_ms``, as bench-rtc defines it) p50/p95, plus the sessions the server's
  ``/healthz`` counts; a progress line goes to stderr.

After a warm-up (30 s, or a quarter of a short run) a straight line is fitted to RSS, fds and
threads; the report gives its slope per minute, the difference between the first and the last
minute and the range, and calls the run *flat* when RSS grows by less than
:data:`FLAT_RSS_MIB_PER_MIN` and the fitted lines of fds and threads gain less than one over
the run.  The server's RSS is also read before the clients connect and :data:`SETTLE_S` after
they have ended.  Numbers only, no assertions.

``find_max`` first probes N = 1, 2, ... (``probe_seconds`` each, at most ``max_clients``) until
the slowest session falls under :data:`MIN_FPS`, then soaks the largest N that held as well.
Everything goes to ``soak.json`` and ``soak.png`` in ``out``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.benchmarks.loopback import (
    REPO,
    connected,
    frame_latencies,
    loopback_server,
    percentiles,
)
from service.rtc.client import ClipClient, load_clip
from service.system import cpu_quota

DRIVING = REPO.parent / "shared" / "data" / "driving"
SAMPLE_S = 1.0  # server process sampling period
WINDOW_S = 10.0  # fps / latency window, and progress period
WARMUP_S = 30.0  # excluded from the growth fit and the steady-state numbers
MIN_FPS = 15.0  # --find-max: the slowest session must receive at least this
MAX_CLIENTS = 8  # --find-max stops here whatever happens
SETTLE_S = 2.0  # after the sessions end, before the server's idle RSS is read again
FLAT_RSS_MIB_PER_MIN = 5.0
MiB = 1024 * 1024


def read_process(pid: int) -> dict[str, float]:
    """RSS (MiB), open fds and threads of a live process, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) * 1024 / MiB, 1),  # reported in kB
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


def growth(times_s: list[float], values: list[float]) -> dict[str, float | None]:
    """Slope per minute of a least-squares line, last minute minus first minute (medians), and
    the range.  The range is there because a line hides a staircase: an allocator that grows
    in steps and gives memory back now and then fits a flat line.

    "Minute" shrinks to a third of the span on runs shorter than three minutes.
    """
    keys = ("slope_per_min", "first", "last", "last_minus_first", "min", "max")
    if len(times_s) < 3:
        return dict.fromkeys(keys)
    t, v = np.asarray(times_s), np.asarray(values, dtype=float)
    slope = float(np.polyfit(t / 60.0, v, 1)[0])
    edge = min(60.0, (t[-1] - t[0]) / 3)
    first = float(np.median(v[t <= t[0] + edge]))
    last = float(np.median(v[t >= t[-1] - edge]))
    return {
        "slope_per_min": round(slope, 3),
        "first": round(first, 1),
        "last": round(last, 1),
        "last_minus_first": round(last - first, 1),
        "min": round(float(v.min()), 1),
        "max": round(float(v.max()), 1),
    }


def growth_report(samples: list[dict[str, float]], begin: float, end: float) -> dict[str, Any]:
    """Growth of RSS, fds and threads over the samples taken in [begin, end] (seconds)."""
    steady = [s for s in samples if begin <= s["t"] <= end]
    times = [s["t"] for s in steady]
    report: dict[str, Any] = {
        key: growth(times, [s[key] for s in steady]) for key in ("rss_mib", "fds", "threads")
    }
    rss, fds, threads = report["rss_mib"], report["fds"], report["threads"]
    minutes = (times[-1] - times[0]) / 60 if times else 0.0
    # Counts: the fitted line gains less than one fd / thread over the whole span.  (Thread
    # pools grow and shrink by a few all the time; a leak keeps adding.)
    report["flat"] = (
        rss["slope_per_min"] is not None
        and rss["slope_per_min"] < FLAT_RSS_MIB_PER_MIN
        and fds["slope_per_min"] * minutes < 1
        and threads["slope_per_min"] * minutes < 1
    )
    report["span_s"] = [round(begin, 1), round(end, 1)]
    return report


def driving_clips(folder: Path) -> list[Path]:
    clips = sorted(folder.glob("*.mp4"))
    if not clips:
        raise FileNotFoundError(f"no driving clips (*.mp4) in {folder}")
    return clips


def make_clients(url: str, clips: list[Path], n: int, size: int) -> list[ClipClient]:
    """Client i plays ``clips[i % len(clips)]`` in a loop (ClipTrack wraps around), at the
    clip's own frame rate."""
    loaded: dict[Path, tuple[list[np.ndarray], float]] = {}
    clients = []
    for i in range(n):
        clip = clips[i % len(clips)]
        if clip not in loaded:
            loaded[clip] = load_clip(clip)
        frames, fps = loaded[clip]
        clients.append(ClipClient(url, frames, fps, size=size))
    return clients  # the RGB frames are dropped here; each track keeps its own YUV copy


class Monitor:
    """Samples the server process every second and the sessions every window, during one run."""

    def __init__(
        self,
        pid: int,
        url: str,
        clients: list[ClipClient],
        label: str,
        seconds: float,
        window_s: float,
    ) -> None:
        self.pid, self.url, self.clients, self.label = pid, url, clients, label
        self.seconds, self.window_s = seconds, window_s
        self.t0 = time.monotonic()
        self.samples: list[dict[str, float]] = []
        self.windows: list[dict[str, Any]] = []

    def sample(self) -> dict[str, float]:
        s = {"t": round(time.monotonic() - self.t0, 2)} | read_process(self.pid)
        self.samples.append(s)
        return s

    async def sample_forever(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S - (time.monotonic() - self.t0) % SAMPLE_S)

    async def windows_forever(self, http: httpx.AsyncClient) -> None:
        k = 1
        while True:
            # A little after the boundary, so frames decoded just before it are recorded.
            await asyncio.sleep(max(0.0, self.t0 + k * self.window_s + 0.2 - time.monotonic()))
            try:
                sessions: int | None = (await http.get("/healthz")).json()["sessions"]
            except (httpx.HTTPError, ValueError, KeyError):
                sessions = None
            self.window(k, sessions)
            k += 1

    def window(self, k: int, sessions: int | None) -> None:
        begin, end = self.t0 + (k - 1) * self.window_s, self.t0 + k * self.window_s
        fps, p50, p95, pooled = [], [], [], []
        for client in self.clients:
            frames, latencies = frame_latencies(client, begin, end)
            fps.append(round(frames / self.window_s, 2))
            q = percentiles(latencies["server_ms"])
            p50.append(q["p50"])
            p95.append(q["p95"])
            pooled += latencies["server_ms"]
        w = {
            "t": round(end - self.t0, 1),
            "fps": fps,
            "server_ms_p50": p50,
            "server_ms_p95": p95,
            "server_ms_p95_all": percentiles(pooled)["p95"],
            "sessions": sessions,
            "load1": round(os.getloadavg()[0], 2),
        }
        self.windows.append(w)
        last = self.samples[-1] if self.samples else {"rss_mib": 0, "fds": 0, "threads": 0}
        print(
            f"[soak {self.label}] {w['t']:5.0f} s  fps/session "
            f"{' '.join(f'{x:.1f}' for x in fps)}  server p95 {w['server_ms_p95_all']} ms  "
            f"RSS {last['rss_mib']:.0f} MiB  fds {last['fds']:.0f}  "
            f"threads {last['threads']:.0f}  sessions {sessions}  load {w['load1']:.2f}",
            file=sys.stderr,
            flush=True,
        )


async def soak_clients(
    pid: int,
    url: str,
    clients: list[ClipClient],
    label: str,
    seconds: float,
    window_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    """Stream ``clients`` for ``seconds`` while sampling the server; their numbers."""
    monitor = Monitor(pid, url, clients, label, seconds, window_s)
    idle_before = monitor.sample()
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        async with connected(clients):
            tasks = [
                asyncio.create_task(monitor.sample_forever()),
                asyncio.create_task(monitor.windows_forever(http)),
            ]
            try:
                await asyncio.gather(*(c.play(seconds) for c in clients))
                played = time.monotonic()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            answers = await asyncio.gather(*(c.stats() for c in clients), return_exceptions=True)
        await asyncio.sleep(SETTLE_S)  # the sessions are gone: what does the server keep?
        idle_after = monitor.sample()
        monitor.samples.pop()  # not part of the run's time series

    starts = [c.report.started_at for c in clients if c.report.started_at is not None]
    first = min(starts) if starts else monitor.t0
    fps: list[float] = []
    server_ms: list[list[float]] = []
    e2e_ms: list[list[float]] = []
    for c in clients:
        if c.report.started_at is None:
            fps.append(0.0)
            server_ms.append([])
            e2e_ms.append([])
            continue
        begin, end = c.report.started_at + warmup_s, c.report.started_at + seconds
        frames, latencies = frame_latencies(c, begin, end)
        fps.append(frames / (end - begin))
        server_ms.append(latencies["server_ms"])
        e2e_ms.append(latencies["e2e_ms"])
    server_stats = [a for a in answers if isinstance(a, dict)]
    return {
        "fps_per_session": [round(f, 2) for f in fps],
        "fps_mean": round(float(np.mean(fps)), 2),
        "fps_min": round(float(np.min(fps)), 2),
        "server_ms": percentiles([v for one in server_ms for v in one]),
        "server_ms_p95_per_session": [percentiles(one)["p95"] for one in server_ms],
        "e2e_ms": percentiles([v for one in e2e_ms for v in one]),
        "dropped_per_client": [s["stats"]["dropped"] for s in server_stats],
        "sessions_ended_early": len(clients) - len(server_stats),
        "growth": growth_report(
            monitor.samples, first - monitor.t0 + warmup_s, played - monitor.t0
        ),
        "idle_before": idle_before,
        "idle_after": idle_after,
        "samples": monitor.samples,
        "windows": monitor.windows,
    }


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def soak_once(
    n: int,
    seconds: float,
    size: int,
    clips: list[Path],
    *,
    probe: bool = False,
    window_s: float = WINDOW_S,
    warmup_s: float | None = None,
) -> dict[str, Any]:
    """One run: a fresh server, ``n`` clients for ``seconds``; its results."""
    warmup = min(WARMUP_S, seconds / 4) if warmup_s is None else warmup_s
    label = f"{'probe ' if probe else ''}N={n}"
    load_start = os.getloadavg()
    with loopback_server(size, n) as (process, url):
        clients = make_clients(url, clips, n, size)
        result = asyncio.run(
            soak_clients(process.pid, url, clients, label, seconds, window_s, warmup)
        )
    load_end = os.getloadavg()
    run: dict[str, Any] = {
        "clients": n,
        "probe": probe,
        "seconds": seconds,
        "warmup_s": warmup,
        "clips": [clips[i % len(clips)].name for i in range(n)],
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in load_end],
    } | result
    g = run["growth"]
    print(
        f"{label}: {run['fps_mean']:.1f} fps per session (min {run['fps_min']:.1f}), "
        f"server-side added p50/p95 {run['server_ms']['p50']}/{run['server_ms']['p95']} ms; "
        f"growth per minute RSS {_signed(g['rss_mib']['slope_per_min'])} MiB, "
        f"fds {_signed(g['fds']['slope_per_min'])}, "
        f"threads {_signed(g['threads']['slope_per_min'])} "
        f"({'flat' if g['flat'] else 'NOT flat'}); load {load_start[0]:.2f} -> {load_end[0]:.2f}",
        flush=True,
    )
    return run


async def _churn_sessions(
    pid: int, url: str, clips: list[Path], sessions: int, seconds: float, size: int
) -> list[dict[str, float]]:
    """One session after another, each streaming ``seconds`` then DELETEd; the server process
    read before the first and SETTLE_S after each ends."""
    samples = [{"session": 0, **read_process(pid)}]
    for i in range(sessions):
        (client,) = make_clients(url, [clips[i % len(clips)]], 1, size)
        async with connected([client]):
            await client.play(seconds)
        await asyncio.sleep(SETTLE_S)
        samples.append({"session": i + 1, **read_process(pid)})
        print(
            f"churn: {i + 1}/{sessions} sessions, RSS {samples[-1]['rss_mib']:.0f} MiB, "
            f"fds {samples[-1]['fds']:.0f}, threads {samples[-1]['threads']:.0f}",
            file=sys.stderr,
            flush=True,
        )
    return samples


def churn(sessions: int, seconds: float, size: int, out: Path, driving: Path = DRIVING) -> dict:
    """Sessions created and ended one after another: does the server give back what a session
    took?  A constant-N soak cannot tell an allocator keeping freed memory from a per-session
    leak; here a leak shows as RSS rising with every session ended.  The line is fitted after
    the first quarter (engines, codecs and allocator pools warm up in the first sessions).
    Writes ``churn.json`` and ``churn.png`` into ``out``."""
    clips = driving_clips(driving)
    out.mkdir(parents=True, exist_ok=True)
    with loopback_server(size, 1) as (process, url):
        samples = asyncio.run(_churn_sessions(process.pid, url, clips, sessions, seconds, size))
    start = max(1, sessions // 4)
    later = samples[start:]
    fit = {key: _slope(later, key) for key in ("rss_mib", "fds", "threads")}
    summary = {
        "sessions": sessions,
        "seconds_each": seconds,
        "size": size,
        "fit_from_session": start,
        "growth_per_session": fit,  # slope of a line through samples[start:]
        "samples": samples,
    }
    (out / "churn.json").write_text(json.dumps(summary, indent=2))
    _plot_churn(samples, fit, out / "churn.png")
    print(
        f"churn: {sessions} sessions, growth per session after #{start}: RSS "
        f"{_signed(fit['rss_mib'])} MiB, fds {_signed(fit['fds'])}, "
        f"threads {_signed(fit['threads'])}; wrote {out / 'churn.json'} and churn.png",
        flush=True,
    )
    return summary


def _slope(samples: list[dict[str, float]], key: str) -> float | None:
    """Least-squares growth of ``key`` per session; None with fewer than 3 samples."""
    if len(samples) < 3:
        return None
    x = [s["session"] for s in samples]
    return round(float(np.polyfit(x, [s[key] for s in samples], 1)[0]), 3)


def _plot_churn(samples: list[dict[str, float]], fit: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["session"] for s in samples]
    fig, (rss, counts) = plt.subplots(1, 2, figsize=(10, 3.8))
    rss.plot(x, [s["rss_mib"] for s in samples], marker="o")
    rss.set(xlabel="sessions ended", ylabel="server RSS (MiB)")
    rss.set_title(f"RSS, {_signed(fit['rss_mib'])} MiB per session (fitted)")
    counts.plot(x, [s["fds"] for s in samples], marker="o", label="open fds")
    counts.plot(x, [s["threads"] for s in samples], marker="s", label="threads")
    counts.set(xlabel="sessions ended", ylabel="count")
    counts.legend()
    for ax in (rss, counts):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(runs: list[dict[str, Any]], size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    (rss, counts), (fps, latency) = axes
    for i, run in enumerate(runs):
        color, label = f"C{i}", f"N={run['clients']}"
        t = [s["t"] for s in run["samples"]]
        rss.plot(t, [s["rss_mib"] for s in run["samples"]], color=color, label=label)
        counts.plot(t, [s["fds"] for s in run["samples"]], color=color, label=f"{label} fds")
        counts.plot(
            t,
            [s["threads"] for s in run["samples"]],
            color=color,
            ls="--",
            label=f"{label} threads",
        )
        tw = [w["t"] for w in run["windows"]]
        mean = [float(np.mean(w["fps"])) for w in run["windows"]]
        fps.plot(tw, mean, "o-", ms=3, color=color, label=f"{label} mean")
        fps.fill_between(
            tw,
            [min(w["fps"]) for w in run["windows"]],
            [max(w["fps"]) for w in run["windows"]],
            color=color,
            alpha=0.2,
        )
        p95 = [w["server_ms_p95_all"] for w in run["windows"]]
        latency.plot(
            tw, [np.nan if v is None else v for v in p95], "o-", ms=3, color=color, label=label
        )
    fps.axhline(MIN_FPS, color="grey", lw=0.8, ls=":", label=f"{MIN_FPS:.0f} fps")
    rss.set(ylabel="MiB", title="Server RSS")
    counts.set(ylabel="count", title="Server open fds (solid) and threads (dashed)")
    fps.set(ylabel="fps", title=f"Received fps per session, {size}² (band: min-max)")
    latency.set(ylabel="ms", yscale="log", title="Server-added latency p95 per window")
    for ax in axes.flat:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("seconds since the clients connected")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    clients: list[int],
    seconds: float,
    size: int,
    out: Path,
    *,
    find_max: bool = False,
    probe_seconds: float = 60.0,
    max_clients: int = MAX_CLIENTS,
    driving: Path = DRIVING,
    window_s: float = WINDOW_S,
) -> dict[str, Any]:
    """Soak N = each of ``clients`` (after the largest N found, with ``find_max``); write
    ``out``/soak.json and soak.png; return the summary.

    soak.json is rewritten after every run, so an interrupted soak keeps what it measured
    (``complete`` says whether it finished)."""
    clips = driving_clips(driving)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "size": size,
        "seconds": seconds,
        "window_s": window_s,
        "cpus": cpu_quota(),
        "thresholds": {"min_fps": MIN_FPS, "flat_rss_mib_per_min": FLAT_RSS_MIB_PER_MIN},
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "load_average_end": None,
        "largest_n_at_min_fps": None,
        "complete": False,
        "probes": [],
        "runs": [],
    }

    def save() -> None:
        summary["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        (out / "soak.json").write_text(json.dumps(summary, indent=2))

    if find_max:
        largest = 0
        for n in range(1, max_clients + 1):
            probe = soak_once(n, probe_seconds, size, clips, probe=True, window_s=window_s)
            summary["probes"].append(probe)
            save()
            if probe["fps_min"] < MIN_FPS:
                break
            largest = n
        summary["largest_n_at_min_fps"] = largest
        print(f"largest N with every session at >= {MIN_FPS:.0f} fps: {largest}", flush=True)
        if largest and largest not in clients:
            clients = [*clients, largest]
    for n in clients:
        summary["runs"].append(soak_once(n, seconds, size, clips, window_s=window_s))
        save()
        plot(summary["runs"], size, out / "soak.png")
    summary["complete"] = True
    save()
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return summary
