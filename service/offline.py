"""Offline rendering: animate a portrait with a driving video file (``reenact animate``).

Decoding and encoding go through PyAV; the driving clip's audio, if any, is carried over.
Frames where the driver's face is lost keep the last good pose (the Reenactor holds it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from engines import create_engine
from models.errors import BadInputError
from models.motion import Mode
from models.pipeline import Reenactor
from models.source import SourceEmbedding, build_source, paste_back
from service.images import decode_image
from service.system import cpu_quota

log = logging.getLogger(__name__)

MAX_PHOTO_BYTES = 30 * 1024 * 1024
MAX_PHOTO_PIXELS = 40_000_000
MAX_PHOTO_SIDE = 2048  # larger portraits are downscaled: the crop is at most 512 px anyway


@dataclass(frozen=True)
class AnimateOptions:
    size: int = 256
    mode: Mode = "relative"
    side_by_side: bool = False
    full_photo: bool = False  # paste the animated crop back into the whole portrait
    backend: str = "onnxruntime"
    progress: bool = True


@dataclass(frozen=True)
class AnimateReport:
    frames: int
    frames_without_face: int
    fps: float
    audio: bool


def read_photo(path: Path) -> np.ndarray:
    """A portrait file as RGB uint8; BadInputError when unreadable, not an image or absurd."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInputError(f"cannot read {path}: {e.strerror}") from e
    return decode_image(
        data, max_bytes=MAX_PHOTO_BYTES, max_pixels=MAX_PHOTO_PIXELS, max_side=MAX_PHOTO_SIDE
    )


def _even(n: int) -> int:
    return n - n % 2


def _compose(
    source: SourceEmbedding, driver: np.ndarray, frame: np.ndarray, options: AnimateOptions
) -> np.ndarray:
    out = paste_back(source, frame) if options.full_photo else frame
    if options.full_photo:
        out = out[: _even(out.shape[0]), : _even(out.shape[1])]
    if options.side_by_side:
        h = out.shape[0]
        w = _even(round(driver.shape[1] * h / driver.shape[0]))
        out = np.concatenate([cv2.resize(driver, (w, h), interpolation=cv2.INTER_AREA), out], 1)
    return np.ascontiguousarray(out)


def animate(photo: Path, driving: Path, out: Path, options: AnimateOptions) -> AnimateReport:
    """Render ``driving``'s motion on ``photo`` into ``out`` (mp4, H.264 + AAC)."""
    source = build_source(read_photo(photo), options.size)
    try:
        container = av.open(str(driving))
    except (av.error.FFmpegError, OSError) as e:
        raise BadInputError(f"cannot open driving video {driving}: {e}") from e
    with container, create_engine(options.backend, options.size) as engine:
        if not container.streams.video:
            raise BadInputError(f"{driving} has no video stream")
        vin = container.streams.video[0]
        ain = container.streams.audio[0] if container.streams.audio else None
        rate = vin.average_rate or Fraction(25)
        reenactor = Reenactor(source, engine, mode=options.mode)
        total = vin.frames or None
        out.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(out), "w") as output:
            vout = output.add_stream("libx264", rate=rate)
            vout.pix_fmt = "yuv420p"
            vout.options = {"preset": "veryfast", "crf": "18"}
            vout.codec_context.thread_count = cpu_quota()
            aout = output.add_stream("aac", rate=ain.rate) if ain else None
            resampler = (
                av.AudioResampler(format="fltp", layout="stereo", rate=ain.rate) if ain else None
            )
            frames = lost = 0
            streams = [s for s in (vin, ain) if s is not None]
            bar = tqdm(total=total, unit="frame", disable=not options.progress, desc="animate")
            for packet in container.demux(*streams):
                for decoded in packet.decode():
                    if isinstance(decoded, av.VideoFrame):
                        rgb = decoded.to_ndarray(format="rgb24")
                        t = float(decoded.time) if decoded.time is not None else frames / rate
                        result = reenactor(rgb, t)
                        lost += not result.face_found
                        image = _compose(source, rgb, result.image, options)
                        if frames == 0:
                            vout.width, vout.height = image.shape[1], image.shape[0]
                        vf = av.VideoFrame.from_ndarray(image, format="rgb24")
                        vf.pts = frames
                        vf.time_base = 1 / rate
                        output.mux(vout.encode(vf))
                        frames += 1
                        bar.update()
                    elif isinstance(decoded, av.AudioFrame) and aout and resampler:
                        decoded.pts = None
                        for chunk in resampler.resample(decoded):
                            output.mux(aout.encode(chunk))
            bar.close()
            output.mux(vout.encode(None))
            if aout and resampler:
                for chunk in resampler.resample(None):
                    output.mux(aout.encode(chunk))
                output.mux(aout.encode(None))
            reenactor.close()
    if frames == 0:
        raise BadInputError(f"{driving} has no decodable video frames")
    if lost:
        log.warning("driver face lost in %d of %d frames (last pose held)", lost, frames)
    return AnimateReport(frames, lost, float(rate), ain is not None)
