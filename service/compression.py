"""Keypoint streams end to end: camera frames -> messages -> avatar frames, files and live.

The bitstream is :mod:`models.codec`; its two stateful ends are
:class:`models.codec_stream.Encoder` (landmarks in, packets out) and
:class:`models.codec_stream.Decoder` (packets in, face states out).  This module adds what
needs a tracker, an engine or the file system:

* :class:`Sender`: RGB frames in, messages out, split into what must travel reliably
  (keyframes, bases) and what may be lost (motion); it answers the receiver's requests;
* :class:`Receiver`: messages in, avatar frames out: it builds the source embedding from the
  keyframe picture and renders whatever the decoder's playout says;
* ``reenact encode`` / ``reenact decode``: :func:`encode_file`, :func:`decode_file`.

A file (``.rkp``, :func:`models.codec.pack_stream`) holds exactly the messages a live sender
would send, in order; decoding one with ``loss`` drops motion packets as a lossy channel would
(keyframes and bases are reliable), with a fixed seed so runs repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from engines import Engine, create_engine
from models.codec import (
    BasisAck,
    KeyframeRequest,
    MessageType,
    message_type,
    pack_stream,
    unpack_stream,
)
from models.codec_stream import Decoder, Encoder, Played, learn_basis
from models.errors import BadInputError, NoFaceError
from models.landmarks import Landmarks
from models.source import SourceEmbedding, build_source, driving_inputs
from models.tracking import FaceTracker, Tracker
from service.system import cpu_quota

log = logging.getLogger(__name__)

MAX_STREAM_BYTES = 256 * 1024 * 1024  # a .rkp file bigger than this is not a keypoint stream
LOSS_SEED = 5  # the simulated channel's seed: the same packets are lost in every run


# --- live: the two ends -------------------------------------------------------------------------


@dataclass
class Outgoing:
    """Messages to send now: ``reliable`` in order (keyframes, bases, replies), ``unreliable``
    on an unordered channel without retransmission (motion)."""

    reliable: list[bytes] = field(default_factory=list)
    unreliable: list[bytes] = field(default_factory=list)


class Sender:
    """A camera's frames as keypoint messages.

    The first frame with a face becomes the keyframe.  A speaker-adapted basis is learned from
    the sender's own frames after ``basis_after`` seconds and renewed every ``basis_every``
    (0 disables it); packets use a basis once the receiver acknowledged it.
    Not thread-safe; one per outgoing stream.
    """

    def __init__(
        self,
        fps: float = 25.0,
        *,
        encoder: Encoder | None = None,
        tracker: Tracker | None = None,
        basis_after: float = 10.0,
        basis_every: float = 60.0,
    ) -> None:
        self.encoder = encoder or Encoder(fps)
        self._tracker = tracker or FaceTracker(video=True)
        self._basis_after = basis_after
        self._basis_every = basis_every
        self._next_basis: float | None = None  # sender-clock time of the next basis
        self._want_keyframe = True
        self.last_landmarks: Landmarks | None = None

    def frame(self, rgb: np.ndarray, timestamp: float) -> Outgoing:
        """Track one camera frame and encode it."""
        return self.landmarks(self.track(rgb, timestamp), timestamp, rgb)

    def track(self, rgb: np.ndarray, timestamp: float) -> Landmarks | None:
        """The face in one camera frame (478 points, camera pixels), without encoding it; a
        caller timing tracking apart from coding passes the result to :meth:`landmarks`."""
        return self._tracker(rgb, timestamp)

    def landmarks(
        self, landmarks: Landmarks | None, timestamp: float, rgb: np.ndarray | None = None
    ) -> Outgoing:
        """Encode a frame whose landmarks are known (tracked elsewhere, e.g. in a browser).

        ``rgb`` is needed only when a keyframe is due; without it the keyframe waits.
        """
        out = Outgoing()
        self.last_landmarks = landmarks
        if self._want_keyframe and landmarks is not None and rgb is not None:
            out.reliable.append(self.encoder.make_keyframe(rgb, landmarks, timestamp).to_bytes())
            self._want_keyframe = False
            self._next_basis = timestamp + self._basis_after if self._basis_after > 0 else None
        packet = self.encoder.encode(landmarks, timestamp)
        if packet is not None:
            out.unreliable.append(packet.to_bytes())
        if self._next_basis is not None and timestamp >= self._next_basis:
            basis = self.encoder.propose_basis()
            if basis is not None:
                out.reliable.append(basis.to_bytes())
            self._next_basis = timestamp + self._basis_every if self._basis_every > 0 else None
        return out

    def control(self, data: bytes) -> Outgoing:
        """Handle a message from the receiver (keyframe request, basis acknowledgement)."""
        out = Outgoing()
        try:
            kind = message_type(data)
            if kind == MessageType.KEYFRAME_REQUEST:
                request = KeyframeRequest.from_bytes(data)
                if self.encoder.wants_new_keyframe(request):
                    self._want_keyframe = True
                elif self.encoder.keyframe is not None:
                    out.reliable.append(self.encoder.keyframe.to_bytes())
            elif kind == MessageType.BASIS_ACK:
                self.encoder.acknowledge(BasisAck.from_bytes(data))
            else:
                log.debug("sender ignored a %s message", kind.name)
        except BadInputError as e:
            log.debug("sender rejected a control message: %s", e)
        return out

    def close(self) -> None:
        self._tracker.close()


class Receiver:
    """Keypoint messages in, avatar frames out (the generator at ``engine``'s size).

    ``receive`` is cheap (parse and store: call it on the event loop); ``render`` runs the
    generator and, after a new keyframe, builds the source embedding (a face-mesh detection):
    call it from a worker thread.
    """

    def __init__(self, engine: Engine, size: int = 256, decoder: Decoder | None = None) -> None:
        self.engine = engine
        self.size = size
        self.decoder = decoder or Decoder()
        self.source: SourceEmbedding | None = None
        self._source_epoch: int | None = None  # the keyframe last tried
        self._built_epoch: int | None = None  # the keyframe ``source`` was built from

    def receive(self, data: bytes) -> None:
        self.decoder.receive(data)

    @property
    def keyframe_unusable(self) -> bool:
        """The current keyframe's picture was tried and gave no source (no face found in it):
        what is shown comes from an older keyframe, or nothing is; worth asking for a new one."""
        keyframe = self.decoder.keyframe
        return (
            keyframe is not None
            and self._source_epoch == keyframe.epoch
            and self._built_epoch != keyframe.epoch
        )

    def ensure_source(self) -> SourceEmbedding | None:
        """The embedding of the current keyframe's picture (built once per keyframe)."""
        keyframe = self.decoder.keyframe
        if keyframe is None:
            return None
        if self._source_epoch != keyframe.epoch:
            self._source_epoch = keyframe.epoch
            try:
                self.source = build_source(keyframe.decode_image(), self.size)
                self._built_epoch = keyframe.epoch
            except BadInputError as e:  # no face, or a picture that does not decode
                log.warning("keyframe %d unusable (%s): keeping the last one", keyframe.epoch, e)
        return self.source

    def target(self, played: Played) -> np.ndarray | None:
        """Target landmarks (478, 3) in source-picture pixels for a played frame."""
        source = self.ensure_source()
        if source is None:
            return None
        return self.decoder.transfer(source.state)(played.state)

    def render(self, played: Played) -> np.ndarray | None:
        """The avatar frame (S, S, 3) uint8 RGB for a played frame; None before a keyframe."""
        target = self.target(played)
        if target is None or self.source is None:
            return None
        return render(self.source, self.engine, target)


def render(source: SourceEmbedding, engine: Engine, target: np.ndarray) -> np.ndarray:
    """The generator's frame for target landmarks (as :meth:`models.pipeline.Reenactor.render`,
    without the tracker a receiver does not need)."""
    inputs = {**source.tensors, **driving_inputs(source, target)}
    return engine.infer(inputs)["frame"][0]


# --- files --------------------------------------------------------------------------------------


def read_video(path: Path) -> Iterator[tuple[np.ndarray, float, float]]:
    """(RGB frame, timestamp in s, nominal fps) for every frame of a video file."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise BadInputError(f"cannot open video {path}: {e}") from e
    with container:
        if not container.streams.video:
            raise BadInputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else i / fps
            yield frame.to_ndarray(format="rgb24"), t, fps


def track_video(
    path: Path, keyframe: int = 0, progress: bool = False
) -> tuple[list[Landmarks | None], list[float], float, np.ndarray]:
    """Landmarks and timestamps of every frame, the frame rate and frame ``keyframe`` (RGB)."""
    marks: list[Landmarks | None] = []
    times: list[float] = []
    picture: np.ndarray | None = None
    fps = 25.0
    with FaceTracker(video=True) as tracker:
        frames = read_video(path)
        for i, (rgb, t, rate) in enumerate(tqdm(frames, desc="track", disable=not progress)):
            fps = rate
            marks.append(tracker(rgb, t))
            times.append(t)
            if i == keyframe:
                picture = rgb
    if picture is None:
        raise BadInputError(f"{path} has {len(marks)} frames; no frame {keyframe} for a keyframe")
    return marks, times, fps, picture


def encode_landmarks(
    marks: list[Landmarks | None],
    times: list[float],
    fps: float,
    picture: np.ndarray,
    keyframe: int = 0,
    *,
    two_pass_basis: bool = True,
    encoder: Encoder | None = None,
) -> tuple[list[bytes], Encoder]:
    """The messages of a tracked clip: keyframe, basis (learned from the whole clip when
    ``two_pass_basis``: a file encoder may look ahead, a live one learns as it goes), motion."""
    key = marks[keyframe]
    if key is None:
        raise NoFaceError(f"no face in frame {keyframe}, the keyframe")
    encoder = encoder or Encoder(fps)
    messages = [encoder.make_keyframe(picture, key, times[keyframe], seq=keyframe).to_bytes()]
    if two_pass_basis:
        found = [encoder.analyse(m).expression for m in marks if m is not None]
        basis = encoder.propose_basis(learn_basis(np.stack(found))) if len(found) >= 2 else None
        if basis is not None:
            messages.append(basis.to_bytes())
            encoder.acknowledge(BasisAck(basis.id))  # a file has no back channel: in order
    for m, t in zip(marks, times, strict=True):
        packet = encoder.encode(m, t)
        if packet is not None:
            messages.append(packet.to_bytes())
    return messages, encoder


def stream_stats(messages: list[bytes], frames: int, fps: float) -> dict[str, float]:
    """Sizes and rates of a stream's messages, motion apart from the one-off reliable ones."""
    motion = [len(m) for m in messages if message_type(m) == MessageType.MOTION]
    kinds = [message_type(m) for m in messages]
    side = {
        kind: sum(len(m) for m, k in zip(messages, kinds, strict=True) if k == kind)
        for kind in (MessageType.KEYFRAME, MessageType.BASIS)
    }
    seconds = frames / fps if fps else 0.0
    motion_bytes = sum(motion)
    return {
        "frames": frames,
        "fps": fps,
        "packets": len(motion),
        "motion_bytes": motion_bytes,
        "keyframe_bytes": side[MessageType.KEYFRAME],
        "basis_bytes": side[MessageType.BASIS],
        "bits_per_frame": 8 * motion_bytes / frames if frames else 0.0,
        "bits_per_packet": 8 * motion_bytes / len(motion) if motion else 0.0,
        "kbps": 8 * motion_bytes / seconds / 1000 if seconds else 0.0,
        "kbps_with_basis": 8 * (motion_bytes + side[MessageType.BASIS]) / seconds / 1000
        if seconds
        else 0.0,
    }


def encode_file(clip: Path, out: Path, keyframe: int = 0, progress: bool = True) -> dict:
    """Compress a talking-head clip into a keypoint stream (``reenact encode``).

    Frame ``keyframe`` becomes the picture the receiver animates; every frame becomes a motion
    packet (frames without a face become gaps).  Returns the stream's statistics.
    """
    marks, times, fps, picture = track_video(clip, keyframe, progress)
    messages, encoder = encode_landmarks(marks, times, fps, picture, keyframe)
    data = pack_stream(messages)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    stats = stream_stats(messages, len(marks), fps)
    stats.update(file_bytes=len(data), frames_without_face=encoder.stats.no_face)
    log.info(
        "encoded %s: %d frames, %.0f bits/frame, %.2f kbit/s motion + %d B keyframe",
        clip.name,
        stats["frames"],
        stats["bits_per_frame"],
        stats["kbps"],
        stats["keyframe_bytes"],
    )
    return stats


def read_stream(path: Path) -> list[bytes]:
    """The messages of a .rkp file."""
    try:
        size = path.stat().st_size
        if size > MAX_STREAM_BYTES:
            raise BadInputError(f"{path} is {size} bytes: too big for a keypoint stream")
        data = path.read_bytes()
    except OSError as e:
        raise BadInputError(f"cannot read {path}: {e.strerror}") from e
    return unpack_stream(data)


def simulate_loss(messages: list[bytes], loss: float, seed: int = LOSS_SEED) -> list[bytes]:
    """The messages a lossy channel delivers: each motion packet is lost with probability
    ``loss``, independently; keyframes and bases travel reliably and always arrive."""
    if not 0.0 <= loss < 1.0:
        raise BadInputError(f"loss must be in [0, 1), not {loss}")
    rng = np.random.default_rng(seed)
    kept = []
    for m in messages:
        lost = rng.random() < loss  # drawn for every message, so the pattern does not shift
        if not lost or message_type(m) != MessageType.MOTION:
            kept.append(m)
    return kept


def playout(
    messages: list[bytes], seqs: range | None = None, delay: int = 2
) -> tuple[Decoder, list[Played]]:
    """Replay messages, in order, through a fresh decoder as a live receiver would.

    Frame ``s`` is shown once a packet ``delay`` frames newer has arrived (a jitter buffer of
    ``delay`` frames), so a run of up to ``delay`` lost packets is interpolated and a longer
    one is held.  ``seqs`` are the frames to show (default: the keyframe's or first packet's
    frame to the last packet's).
    """
    decoder = Decoder()
    played: list[Played] = []
    next_seq: int | None = seqs.start if seqs is not None else None

    def show_until(stop: int) -> None:
        nonlocal next_seq
        assert next_seq is not None
        while next_seq < stop:
            frame = decoder.play(next_seq)
            if frame is not None:
                played.append(frame)
            next_seq += 1

    for m in messages:
        decoder.receive(m)
        newest = decoder.newest
        if newest is None or decoder.keyframe is None:
            continue
        if next_seq is None:
            next_seq = min(decoder.keyframe_seq, newest)
        show_until(newest - delay + 1 if seqs is None else min(newest - delay + 1, seqs.stop))
    if decoder.keyframe is None:
        raise BadInputError("the stream has no valid keyframe")
    if decoder.newest is None or next_seq is None:
        raise BadInputError("the stream has no decodable motion packet")
    show_until(decoder.newest + 1 if seqs is None else seqs.stop)
    return decoder, played


def decode_file(
    stream: Path,
    out: Path,
    size: int = 256,
    loss: float = 0.0,
    *,
    backend: str = "onnxruntime",
    progress: bool = True,
) -> dict:
    """Rebuild a video (mp4, H.264) from a keypoint stream (``reenact decode``).

    ``loss`` simulates a lossy channel (see :func:`simulate_loss`); lost frames are concealed.
    Returns counts of decoded, interpolated and held frames and of rejected packets.
    """
    messages = read_stream(stream)
    delivered = simulate_loss(messages, loss)
    decoder, played = playout(delivered)
    assert decoder.keyframe is not None
    fps = decoder.keyframe.fps
    with create_engine(backend, size) as engine:
        receiver = Receiver(engine, size, decoder)
        if receiver.ensure_source() is None:
            raise NoFaceError("no face found in the keyframe picture")
        write_video(
            out,
            (receiver.render(p) for p in tqdm(played, desc="decode", disable=not progress)),
            fps,
        )
    s = decoder.stats
    stats = {
        "frames": len(played),
        "fps": fps,
        "size": size,
        "loss": loss,
        "packets": sum(message_type(m) == MessageType.MOTION for m in messages),
        "packets_lost": len(messages) - len(delivered),
        "decoded": s.decoded,
        "interpolated": s.interpolated,
        "held": s.held,
        "rejected": s.corrupt + s.stale + s.unknown_basis,
    }
    log.info("decoded %s -> %s: %s", stream.name, out, stats)
    return stats


def write_video(path: Path, frames: Iterator[np.ndarray | None], fps: float) -> int:
    """Write RGB frames as an H.264 mp4; None frames are skipped.  Returns the frame count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(round(fps * 100), 100)
    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18"}
        stream.codec_context.thread_count = cpu_quota()
        for rgb in frames:
            if rgb is None:
                continue
            if count == 0:
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = count
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    if count == 0:
        raise BadInputError("nothing to write: no frame could be rebuilt")
    return count
