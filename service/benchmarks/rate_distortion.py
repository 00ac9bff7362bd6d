"""Rate-distortion of the keypoint codec against VP8 and H.264 (``reenact bench-rd``).

Self-reenactment, as in ``reenact eval``: a clip's frame 0 is the sender's keyframe, and every
later frame, cut with the crop box the receiver animates (the keyframe's source box mapped back
into the clip), is the ground truth.  On the same 256 x 256 crops of the first ``max_frames``
frames:

* **keypoints**: the codec as a live sender runs it (no basis within the first 10 s), and
  ``keypoints+basis``: as ``reenact encode`` writes a file, with a basis learned from the whole
  clip (its bytes are counted in the rate).  Output = the generator's render of the decoded
  motion on the keyframe's picture.  The keyframe itself (sent once, reliably) is not in the
  rate; its size is reported.  Then the same stream with 5/10/20 % of the motion packets lost
  (seeded), concealed by the decoder (2-frame jitter buffer: interpolate, else hold);
* **keypoints-raw**: the generator driven by the tracker's landmarks without any coding: the
  ceiling any keypoint codec can reach with this generator;
* **static**: the keyframe's crop shown forever (0 bit/s): the floor;
* **vp8**, **h264**: PyAV's libvpx and libx264 with real-time settings (libvpx: realtime
  deadline, CBR, no lag, error resilient, frame dropping allowed as WebRTC does; libx264:
  ultrafast, zerolatency, CBR via VBV), one keyframe, at target bitrates down to where the
  encoder cannot go lower.  Dropped frames are held by the receiver.  The rate is what the
  encoder produced, first keyframe included.

Metrics on the crops, frame 0 excluded: PSNR on every frame and SSIM on every third
(:mod:`models.metrics`), and AKD on every fifth (face mesh of output vs ground truth, warp
keypoints, in ground-truth inter-ocular distances; frames where the mesh finds no face in either
are left out and counted).  Rates
are at each clip's own frame rate; ``bits/frame`` x 25 gives kbit/s at 25 fps.
Clips run in parallel, one process per core, each single-threaded, so numbers do not depend on
the core count.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext
from matplotlib.figure import Figure
from tqdm import tqdm

from engines import Engine, create_engine
from models import metrics
from models.crop import cut
from models.errors import BadInputError
from models.landmarks import WARP_KEYPOINTS, Landmarks
from models.motion import MotionTransfer
from models.pose import face_state
from models.tracking import FaceTracker
from service.compression import (
    Receiver,
    encode_landmarks,
    playout,
    read_video,
    render,
    simulate_loss,
    stream_stats,
)
from service.system import cpu_quota, single_threaded_children

log = logging.getLogger(__name__)

SIZE = 256
BITRATES_KBPS = (10, 20, 40, 80, 160)
CODECS = {"vp8": ("libvpx", "vp8"), "h264": ("libx264", "h264")}
LOSSES = (0.05, 0.10, 0.20)
SSIM_EVERY = 3  # SSIM costs ~10 ms a frame: every third frame keeps the run to minutes
AKD_EVERY = 5  # a face-mesh run per output frame: every fifth
_KEYPOINTS = list(WARP_KEYPOINTS)


# --- one clip -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One method on one clip."""

    clip: str
    method: str  # keypoints, keypoints+basis, keypoints-raw, static, vp8, h264
    target_kbps: float | None  # requested bitrate (VP8 / H.264)
    loss: float
    kbps: float | None  # measured; None for methods without a stream
    bits_per_frame: float | None
    psnr: float
    ssim: float
    akd: float | None
    akd_frames: int  # frames AKD was measured on (mesh found a face in output and truth)
    one_off_bytes: int = 0  # sent once, reliably, not in the rate (the keyframe)


class Scorer:
    """PSNR on every frame, SSIM on every ``SSIM_EVERY``-th, AKD on every ``AKD_EVERY``-th,
    against one clip's truth."""

    def __init__(self, truth: list[np.ndarray]) -> None:
        self.truth = truth
        self._mesh = FaceTracker(video=False, smooth=False)
        self._truth_marks: dict[int, Landmarks | None] = {}

    def _marks(self, i: int) -> Landmarks | None:
        if i not in self._truth_marks:
            self._truth_marks[i] = self._mesh(self.truth[i])
        return self._truth_marks[i]

    def __call__(self, outputs: list[np.ndarray]) -> tuple[float, float, float | None, int]:
        psnr = [metrics.psnr(o, t) for o, t in zip(outputs[1:], self.truth[1:], strict=True)]
        ssim = [metrics.ssim(outputs[i], self.truth[i]) for i in range(1, len(outputs), SSIM_EVERY)]
        akd = []
        for i in range(AKD_EVERY, len(outputs), AKD_EVERY):
            truth, found = self._marks(i), self._mesh(outputs[i])
            if truth is not None and found is not None:
                akd.append(
                    metrics.akd(
                        found.points[_KEYPOINTS], truth.points[_KEYPOINTS], truth.interocular()
                    )
                )
        psnr_mean = float(np.mean([min(p, 100.0) for p in psnr]))  # identical frames: inf
        return psnr_mean, float(np.mean(ssim)), float(np.mean(akd)) if akd else None, len(akd)

    def close(self) -> None:
        self._mesh.close()


def classic_codec(
    crops: list[np.ndarray], fps: float, codec: str, kbps: float
) -> tuple[list[np.ndarray], int]:
    """Encode and decode crops with libvpx / libx264 at a target bitrate (real-time settings).

    Returns one decoded frame per input frame (a frame the encoder dropped shows the previous
    one, as a receiver would) and the bytes produced.
    """
    encoder_name, decoder_name = CODECS[codec]
    rate = Fraction(round(fps * 1000), 1000)
    enc = cast(VideoCodecContext, av.CodecContext.create(encoder_name, "w"))
    enc.width = enc.height = crops[0].shape[0]
    enc.pix_fmt = "yuv420p"
    enc.time_base = 1 / rate
    enc.framerate = rate
    enc.bit_rate = int(kbps * 1000)
    enc.gop_size = 100_000  # one keyframe, as in a call
    enc.thread_count = 1
    bits = str(int(kbps * 1000))
    if codec == "vp8":
        enc.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "error-resilient": "1",
            "minrate": bits,
            "maxrate": bits,
            "qmin": "4",
            "qmax": "63",
            "drop-threshold": "30",  # let the encoder skip frames to hold the rate (WebRTC)
            "undershoot-pct": "100",
            "overshoot-pct": "15",
        }
    else:
        enc.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "maxrate": bits,
            "bufsize": str(int(kbps * 1000 / 2)),  # half a second of VBV
            "qmax": "69",
        }
    packets: list[av.Packet] = []
    for i, crop in enumerate(crops):
        frame = av.VideoFrame.from_ndarray(crop, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets.extend(enc.encode(frame))
    packets.extend(enc.encode(None))
    size = sum(p.size for p in packets)
    dec = cast(VideoCodecContext, av.CodecContext.create(decoder_name, "r"))
    decoded: dict[int, np.ndarray] = {}
    last_pts = -1
    for p in [*packets, None]:
        for frame in dec.decode(p):
            # No reordering in these real-time modes: a frame without pts is the next one.
            last_pts = frame.pts if frame.pts is not None else last_pts + 1
            decoded[last_pts] = frame.to_ndarray(format="rgb24")
    out, last = [], crops[0] * 0
    for i in range(len(crops)):
        last = decoded.get(i, last)
        out.append(last)
    return out, size


def _rgb(path: Path, max_frames: int) -> tuple[list[np.ndarray], list[float], float]:
    frames, times, fps = [], [], 25.0
    for rgb, t, rate in read_video(path):
        frames.append(rgb)
        times.append(t)
        fps = rate
        if len(frames) >= max_frames:
            break
    if len(frames) < 2:
        raise BadInputError(f"{path} has fewer than 2 frames")
    return frames, times, fps


def _stream_row(
    clip: str, method: str, loss: float, messages: list[bytes], n: int, fps: float
) -> dict:
    stats = stream_stats(messages, n, fps)
    kbps = stats["kbps_with_basis"]
    return {
        "clip": clip,
        "method": method,
        "target_kbps": None,
        "loss": loss,
        "kbps": kbps,
        "bits_per_frame": kbps * 1000 / fps,
        "one_off_bytes": stats["keyframe_bytes"],
    }


def evaluate_clip(path: Path, max_frames: int, engine: Engine) -> list[Row]:
    """Every method on one clip."""
    frames, times, fps = _rgb(path, max_frames)
    with FaceTracker(video=True) as tracker:
        marks = [tracker(f, t) for f, t in zip(frames, times, strict=True)]
    n = len(frames)
    live, encoder = encode_landmarks(marks, times, fps, frames[0], two_pass_basis=False)
    filed, _ = encode_landmarks(marks, times, fps, frames[0], two_pass_basis=True)
    decoder, _ = playout(live)
    keyframe = decoder.keyframe
    assert keyframe is not None
    receiver = Receiver(engine, SIZE, decoder)
    source = receiver.ensure_source()
    if source is None:
        raise BadInputError(f"{path.name}: no face in the keyframe picture")
    box = keyframe.to_camera(source.box)
    truth = [cut(f, box, SIZE) for f in frames]
    scorer = Scorer(truth)
    rows: list[Row] = []

    def add(base: dict, outputs: list[np.ndarray]) -> None:
        psnr, ssim, akd, akd_frames = scorer(outputs)
        rows.append(Row(**base, psnr=psnr, ssim=ssim, akd=akd, akd_frames=akd_frames))

    transfer = MotionTransfer(source.state, reference=keyframe.reference)

    def keypoint_outputs(
        messages: list[bytes], lossless: list[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Renders of a stream's playout; frames decoded from their own packet are the same
        as in the ``lossless`` run (the decoding is exact), so only concealed ones are new."""
        _, played = playout(messages, range(n))
        return [
            lossless[i]
            if lossless is not None and p.status == "decoded"
            else render(source, engine, transfer(p.state))
            for i, p in enumerate(played)
        ]

    add(_stream_row(path.stem, "keypoints", 0.0, live, n, fps), keypoint_outputs(live))
    lossless = keypoint_outputs(filed)
    add(_stream_row(path.stem, "keypoints+basis", 0.0, filed, n, fps), lossless)
    for loss in LOSSES:
        lossy = keypoint_outputs(simulate_loss(filed, loss), lossless)
        add(_stream_row(path.stem, "keypoints+basis", loss, filed, n, fps), lossy)
    held = source.crop
    raw = []
    for m in marks:
        if m is not None:
            held = render(source, engine, transfer(face_state(encoder.to_picture(m))))
        raw.append(held)
    empty = {"target_kbps": None, "loss": 0.0, "kbps": None, "bits_per_frame": None}
    add({"clip": path.stem, "method": "keypoints-raw", **empty}, raw)
    add({"clip": path.stem, "method": "static", **empty}, [source.crop] * n)
    for codec in CODECS:
        for kbps in BITRATES_KBPS:
            decoded, size = classic_codec(truth, fps, codec, kbps)
            rate = 8 * size / (n / fps) / 1000
            base = {
                "clip": path.stem,
                "method": codec,
                "target_kbps": float(kbps),
                "loss": 0.0,
                "kbps": rate,
                "bits_per_frame": 8 * size / n,
            }
            add(base, decoded)
    scorer.close()
    return rows


# --- many clips ---------------------------------------------------------------------------------

_ENGINE: Engine | None = None
_MAX_FRAMES = 0


def _start_worker(max_frames: int, backend: str) -> None:
    global _ENGINE, _MAX_FRAMES
    _ENGINE = create_engine(backend, SIZE, threads=1)
    _MAX_FRAMES = max_frames


def _work(path: Path) -> tuple[str, list[Row] | str, float]:
    """Rows of one clip, or why it failed; and the seconds it took."""
    assert _ENGINE is not None, "worker not initialised"
    started = time.perf_counter()
    try:
        result: list[Row] | str = evaluate_clip(path, _MAX_FRAMES, _ENGINE)
    except BadInputError as e:
        result = str(e)
    return path.stem, result, time.perf_counter() - started


def _select(folder: Path, names: list[str] | None) -> list[Path]:
    found = sorted(folder.glob("*.mp4"))
    if names is None:
        return found
    by_name = {p.stem: p for p in found} | {p.name: p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise BadInputError(f"not in {folder}: {', '.join(missing)}")
    return list(dict.fromkeys(by_name[n] for n in names))


def run(
    data: Path,
    out: Path,
    clips: list[str] | None = None,
    max_frames: int = 150,
    *,
    backend: str = "onnxruntime",
) -> dict:
    """Measure every method on the clips in ``data/driving``; write ``report.json``,
    ``report.md``, ``rate_distortion.png`` and ``loss.png`` into ``out``.  Returns the report."""
    if max_frames < 2 * AKD_EVERY:
        raise BadInputError(f"max_frames must be at least {2 * AKD_EVERY}")
    paths = _select(Path(data) / "driving", clips)
    if not paths:
        raise BadInputError(f"no driving clips (*.mp4) in {Path(data) / 'driving'}")
    started = time.perf_counter()
    rows: list[Row] = []
    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    workers = min(cpu_quota(), len(paths))
    context = multiprocessing.get_context("spawn")  # never fork a process holding ORT threads
    with single_threaded_children():
        pool = context.Pool(workers, initializer=_start_worker, initargs=(max_frames, backend))
    with pool, tqdm(total=len(paths), desc="bench-rd", unit="clip") as bar:
        for name, result, spent in pool.imap(_work, paths, chunksize=1):
            seconds[name] = round(spent, 1)
            if isinstance(result, str):
                failed[name] = result
                log.warning("%s skipped: %s", name, result)
            else:
                rows.extend(result)
            bar.set_postfix_str(name, refresh=False)
            bar.update()
    order = {p.stem: i for i, p in enumerate(paths)}
    rows.sort(key=lambda r: order[r.clip])
    summary = summarise(rows)
    report: dict = {
        "config": {
            "data": str(data),
            "clips": [p.stem for p in paths],
            "max_frames": max_frames,
            "size": SIZE,
            "bitrates_kbps": list(BITRATES_KBPS),
            "losses": list(LOSSES),
            "akd_every": AKD_EVERY,
            "failed": failed,
        },
        "summary": summary,
        "rows": [_rounded(r.__dict__) for r in rows],
        "timing": {"wall_s": round(time.perf_counter() - started, 1), "per_clip_s": seconds},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    plot_rate_distortion(summary, out / "rate_distortion.png")
    plot_loss(summary, out / "loss.png")
    return report


def _rounded(values: dict) -> dict:
    return {
        k: float(f"{v:.5g}") if isinstance(v, float) and math.isfinite(v) else v
        for k, v in values.items()
    }


def _key(row: Row) -> tuple[str, float | None, float]:
    return row.method, row.target_kbps, row.loss


def summarise(rows: list[Row]) -> list[dict]:
    """Per (method, target bitrate, loss): means over clips, in table order."""
    groups: dict[tuple[str, float | None, float], list[Row]] = {}
    for row in rows:
        groups.setdefault(_key(row), []).append(row)
    rank = {"keypoints": 0, "keypoints+basis": 1, "keypoints-raw": 2, "static": 3}
    out = []
    for (method, target, loss), group in sorted(
        groups.items(), key=lambda kv: (rank.get(kv[0][0], 4), kv[0][0], kv[0][1] or 0, kv[0][2])
    ):
        akd = [r.akd for r in group if r.akd is not None]

        def mean(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return float(np.mean(known)) if known else None

        out.append(
            _rounded(
                {
                    "method": method,
                    "target_kbps": target,
                    "loss": loss,
                    "clips": len(group),
                    "kbps": mean([r.kbps for r in group]),
                    "kbps_at_25fps": mean(
                        [r.bits_per_frame * 25 / 1000 if r.bits_per_frame else None for r in group]
                    ),
                    "bits_per_frame": mean([r.bits_per_frame for r in group]),
                    "psnr": mean([r.psnr for r in group]),
                    "ssim": mean([r.ssim for r in group]),
                    "akd": float(np.mean(akd)) if akd else None,
                    "one_off_bytes": mean([float(r.one_off_bytes) for r in group]),
                }
            )
        )
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _label(row: dict) -> str:
    name = row["method"]
    if row["target_kbps"] is not None:
        name += f" @ {row['target_kbps']:g} kbit/s"
    if row["loss"]:
        name += f", {100 * row['loss']:g} % loss"
    return name


def markdown(report: dict) -> str:
    """The summary (and loss robustness) as Markdown tables."""
    summary = report["summary"]
    cfg = report["config"]
    lines = [
        "# Rate-distortion: keypoint codec vs VP8 / H.264",
        "",
        f"{len(cfg['clips'])} clips, first {cfg['max_frames']} frames each, {cfg['size']}² face "
        "crops, self-reenactment (frame 0 = keyframe). Means over clips. kbit/s at each clip's "
        "own frame rate; the 25 fps column is bits/frame x 25.",
        "",
        "| method | kbit/s | kbit/s @25 fps | bits/frame | PSNR dB ↑ | SSIM ↑ | AKD ↓ | "
        "one-off bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        if row["loss"]:
            continue
        lines.append(
            f"| {_label(row)} | {_fmt(row['kbps'], '.2f')} | {_fmt(row['kbps_at_25fps'], '.2f')}"
            f" | {_fmt(row['bits_per_frame'], '.0f')} | {_fmt(row['psnr'], '.2f')}"
            f" | {_fmt(row['ssim'], '.4f')} | {_fmt(row['akd'], '.4f')}"
            f" | {_fmt(row['one_off_bytes'] or None, '.0f')} |"
        )
    base = next((r for r in summary if r["method"] == "keypoints+basis" and not r["loss"]), None)
    lossy = [r for r in summary if r["loss"]]
    if base and lossy:
        lines += [
            "",
            "## Packet loss (keypoints+basis; lost packets concealed)",
            "",
            "| loss | PSNR dB | Δ PSNR | SSIM | Δ SSIM | AKD | Δ AKD |",
            "|---|---|---|---|---|---|---|",
            f"| 0 % | {base['psnr']:.2f} | – | {base['ssim']:.4f} | – "
            f"| {_fmt(base['akd'], '.4f')} | – |",
        ]
        for r in lossy:
            d_akd = (
                r["akd"] - base["akd"] if r["akd"] is not None and base["akd"] is not None else None
            )
            lines.append(
                f"| {100 * r['loss']:g} % | {r['psnr']:.2f} | {r['psnr'] - base['psnr']:+.2f} "
                f"| {r['ssim']:.4f} | {r['ssim'] - base['ssim']:+.4f} | {_fmt(r['akd'], '.4f')} "
                f"| {_fmt(d_akd, '+.4f')} |"
            )
    if cfg["failed"]:
        lines += ["", "Skipped: " + ", ".join(f"{k} ({v})" for k, v in cfg["failed"].items())]
    return "\n".join(lines) + "\n"


_METRICS = (("psnr", "PSNR dB ↑"), ("ssim", "SSIM ↑"), ("akd", "AKD (IOD) ↓"))


def plot_rate_distortion(summary: list[dict], path: Path) -> None:
    """kbit/s (log) vs each metric: one curve per classic codec, points for the keypoints."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, len(_METRICS))
    for ax, (metric, label) in zip(axes, _METRICS, strict=True):
        for codec, colour in (("vp8", "tab:blue"), ("h264", "tab:orange")):
            pts = [(r["kbps"], r[metric]) for r in summary if r["method"] == codec]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                x, y = zip(*sorted(pts), strict=True)
                ax.plot(x, y, "o-", color=colour, label=codec)
        for method, marker, colour in (
            ("keypoints", "*", "tab:green"),
            ("keypoints+basis", "P", "tab:red"),
        ):
            r = next((r for r in summary if r["method"] == method and not r["loss"]), None)
            if r is not None and r[metric] is not None:
                ax.plot(r["kbps"], r[metric], marker, ms=14, color=colour, label=method)
        for method, style in (("keypoints-raw", "--"), ("static", ":")):
            r = next((r for r in summary if r["method"] == method), None)
            if r is not None and r[metric] is not None:
                ax.axhline(r[metric], ls=style, color="grey", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("kbit/s (log)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Rate-distortion on face crops (self-reenactment, mean over clips)")
    fig.savefig(path, dpi=110)


def plot_loss(summary: list[dict], path: Path) -> None:
    """Quality of the keypoint stream against packet loss."""
    rows = sorted((r for r in summary if r["method"] == "keypoints+basis"), key=lambda r: r["loss"])
    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, len(_METRICS))
    for ax, (metric, label) in zip(axes, _METRICS, strict=True):
        pts = [(100 * r["loss"], r[metric]) for r in rows if r[metric] is not None]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, "o-", color="tab:red")
        ax.set_xlabel("packet loss %")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Keypoint stream under packet loss (concealed)")
    fig.savefig(path, dpi=110)
