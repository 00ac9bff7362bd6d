"""A keypoint call between two Python peers over WebRTC (``reenact peer``).

Each peer plays a clip as its camera, sends its face motion and renders the other's: no video
track, two data channels negotiated out of band (same ids on both sides, so neither waits for
the other to open them):

* ``motion`` (id 0): unordered, ``maxRetransmits=0``: one packet per camera frame; a lost or
  late packet is concealed by the receiver, never resent;
* ``control`` (id 1): reliable and ordered: keyframes, bases, and the receiver's replies
  (basis acknowledgements, keyframe requests).

Signalling is aiortc's ``TcpSocketSignaling`` (the offerer listens, the answerer connects),
enough for two processes on one machine or a LAN.  Real-time rules (../shared/CONVENTIONS.md):
tracking and rendering run in their own worker threads, never on the event loop; the camera
skips frames rather than queueing them when tracking falls behind, motion packets are dropped
rather than buffered when the channel backs up, and the renderer shows the newest decodable
frame at each tick.  A peer that sends nothing for ``SILENCE_S`` ends the call early.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.signaling import BYE, TcpSocketSignaling

from engines import Engine, create_engine
from models.codec import Heartbeat, MessageType, message_type
from models.codec_stream import Played
from models.errors import BadInputError
from service.compression import Outgoing, Receiver, Sender, read_video
from service.system import cpu_quota

log = logging.getLogger(__name__)

Role = Literal["offer", "answer"]
MOTION_ID, CONTROL_ID = 0, 1
MAX_BUFFERED = 16 * 1024  # bytes queued on the motion channel before packets are dropped
SILENCE_S = 5.0  # no message from the other peer for this long: it is gone
CONNECT_TIMEOUT_S = 20.0
HEARTBEAT_S = 1.0  # without motion to send (no face), say "still here" this often
PLAYOUT_DELAY = 1  # frames: lets a single lost packet be interpolated, costs 40 ms at 25 fps
_TO_SENDER = (MessageType.KEYFRAME_REQUEST, MessageType.BASIS_ACK)


@dataclass
class CallResult:
    """What one peer saw during a call."""

    role: Role
    seconds: float = 0.0
    frames_captured: int = 0
    frames_skipped: int = 0  # camera frames dropped because tracking fell behind
    packets_sent: int = 0
    motion_bytes_sent: int = 0
    reliable_bytes_sent: int = 0
    packets_dropped: int = 0  # motion packets not sent because the channel backed up
    frames_rendered: int = 0
    remote_frames_written: int = 0
    ended_early: str | None = None
    decoder: dict[str, int] = field(default_factory=dict)
    # For tests and measurement: what was sent (seq -> keyframe-picture landmarks) and shown.
    sent: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    played: list[Played] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        rate = 8 * self.motion_bytes_sent / self.seconds / 1000 if self.seconds else 0.0
        skip = {"sent", "played", "decoder"}
        return {
            **{k: v for k, v in self.__dict__.items() if k not in skip},
            "motion_kbps": round(rate, 2),
            "decoder": self.decoder,
        }


class Camera:
    """A clip played like a camera: frame ``k`` is due at ``k / fps`` after the start, looping.

    Only ever used from one worker thread (PyAV containers are not shared across threads).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fps = 25.0
        self._frames: Iterator[tuple[np.ndarray, float, float]] | None = None
        self._index = -1
        self._current: np.ndarray | None = None
        self._open()

    def _open(self) -> None:
        self._frames = read_video(self.path)
        first = next(self._frames, None)
        if first is None:
            raise BadInputError(f"{self.path} has no frames")
        self._current, _, self.fps = first
        self._index = 0

    def frame(self, k: int) -> tuple[np.ndarray, int]:
        """Frame number ``k`` of the endless loop (k never decreases) and how many frames were
        skipped to reach it."""
        assert self._frames is not None
        skipped = 0
        while self._index < k:
            nxt = next(self._frames, None)
            if nxt is None:
                self._open()
                continue
            self._current = nxt[0]
            self._index += 1
            skipped += 1
        assert self._current is not None
        return self._current, max(skipped - 1, 0)


class KeypointPeer:
    """One end of a keypoint call: sends its camera's motion, renders the other's."""

    def __init__(
        self,
        role: Role,
        pc: RTCPeerConnection,
        video: Path,
        engine: Engine | None,
        size: int = 256,
        out: Path | None = None,
        basis_after: float = 10.0,
    ) -> None:
        self.role = role
        self.pc = pc
        self.result = CallResult(role)
        self._camera_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{role}-camera")
        self._render_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{role}-render")
        self._video = video
        self._camera: Camera | None = None
        self._sender: Sender | None = None
        self._basis_after = basis_after
        self.receiver = Receiver(engine, size) if engine is not None else None
        self._decoder = self.receiver.decoder if self.receiver else None
        self._out = out
        self._writer: _VideoWriter | None = None
        self._last_heard = time.monotonic()
        self._heard_anything = False
        self.motion = pc.createDataChannel(
            "motion", ordered=False, maxRetransmits=0, negotiated=True, id=MOTION_ID
        )
        self.control = pc.createDataChannel("control", negotiated=True, id=CONTROL_ID)
        self.motion.on("message", self._on_motion)
        self.control.on("message", self._on_control)

    # -- receiving (event loop: parse and store only)

    def _heard(self) -> None:
        self._last_heard = time.monotonic()
        self._heard_anything = True

    def _on_motion(self, data: bytes | str) -> None:
        self._heard()
        if isinstance(data, bytes) and self.receiver is not None:
            self.receiver.receive(data)
            self._flush_replies()

    def _on_control(self, data: bytes | str) -> None:
        self._heard()
        if not isinstance(data, bytes):
            return
        try:
            kind = message_type(data)
        except BadInputError:
            log.debug("%s: unreadable control message", self.role)
            return
        if kind in _TO_SENDER:
            if self._sender is not None:
                self._send(self._sender.control(data))
        elif self.receiver is not None:
            self.receiver.receive(data)
            self._flush_replies()

    def _flush_replies(self) -> None:
        assert self.receiver is not None
        outbox = self.receiver.decoder.outbox
        while outbox:
            self._send_reliable(outbox.pop(0))

    # -- sending

    def _send_reliable(self, data: bytes) -> None:
        if self.control.readyState == "open":
            self.control.send(data)
            self.result.reliable_bytes_sent += len(data)

    def _send(self, out: Outgoing) -> None:
        for data in out.reliable:
            self._send_reliable(data)
        for data in out.unreliable:
            if self.motion.readyState != "open" or self.motion.bufferedAmount > MAX_BUFFERED:
                self.result.packets_dropped += 1
                continue
            self.motion.send(data)
            self.result.packets_sent += 1
            self.result.motion_bytes_sent += len(data)

    def prepare(self) -> None:
        """Worker thread, before the call: open the camera and load the face tracker (~1 s),
        so the first frame of the call is not late."""
        self._camera = Camera(self._video)
        self._sender = Sender(self._camera.fps, basis_after=self._basis_after)

    def _capture(self, k: int) -> tuple[Outgoing, int, int, np.ndarray | None]:
        """Worker thread: frame k of the camera, tracked and encoded."""
        assert self._camera is not None and self._sender is not None
        rgb, skipped = self._camera.frame(k)
        seq = self._sender.encoder.seq
        out = self._sender.frame(rgb, k / self._camera.fps)
        marks = self._sender.last_landmarks
        sent = self._sender.encoder.to_picture(marks) if marks and out.unreliable else None
        return out, skipped, seq, sent

    async def run_camera(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        start = last_sent = time.monotonic()
        k = 0
        while not stop.is_set():
            captured = await loop.run_in_executor(self._camera_pool, self._capture, k)
            out, skipped, seq, sent = captured
            now = time.monotonic()
            if out.unreliable:
                last_sent = now
            elif now - last_sent > HEARTBEAT_S:
                out.reliable.append(Heartbeat().to_bytes())
                last_sent = now
            self._send(out)
            self.result.frames_captured += 1
            self.result.frames_skipped += skipped
            if sent is not None:
                self.result.sent[seq] = sent
            fps = self._camera.fps if self._camera else 25.0
            k = max(k + 1, int((time.monotonic() - start) * fps))  # skip, never bunch
            await _sleep_until(stop, start + k / fps)

    # -- rendering

    def _render(self, played: Played) -> None:
        """Worker thread: the avatar frame, written to the output file if any."""
        assert self.receiver is not None
        frame = self.receiver.render(played)
        if frame is None:
            return
        self.result.frames_rendered += 1
        if self._out is not None:
            if self._writer is None:
                keyframe = self.receiver.decoder.keyframe
                self._writer = _VideoWriter(self._out, keyframe.fps if keyframe else 25.0)
            self._writer.write(frame)
            self.result.remote_frames_written += 1

    async def run_renderer(self, stop: asyncio.Event) -> None:
        if self.receiver is None:
            return
        loop = asyncio.get_running_loop()
        decoder = self.receiver.decoder
        shown: int | None = None
        start = time.monotonic()
        tick = 0
        while not stop.is_set():
            newest = decoder.newest
            fps = decoder.keyframe.fps if decoder.keyframe else 25.0
            if newest is not None:
                seq = newest - PLAYOUT_DELAY
                if shown is None or seq > shown:
                    played = decoder.play(seq)
                    if played is not None:
                        shown = seq
                        self.result.played.append(played)
                        await loop.run_in_executor(self._render_pool, self._render, played)
            tick = max(tick + 1, int((time.monotonic() - start) * fps))
            await _sleep_until(stop, start + tick / fps)

    async def watch(self, stop: asyncio.Event, seconds: float) -> None:
        """End the call after ``seconds``, or earlier when the other peer falls silent."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            if self._heard_anything and time.monotonic() - self._last_heard > SILENCE_S:
                self.result.ended_early = f"nothing heard for {SILENCE_S:.0f} s"
                log.warning("%s: the other peer went silent; ending the call", self.role)
                break
            await _sleep_until(stop, min(deadline, time.monotonic() + 0.2))
        stop.set()

    def close(self) -> None:
        """After the tasks stopped: release threads, tracker and output file."""
        self._camera_pool.submit(self._close_sender).result()
        self._camera_pool.shutdown(wait=True)
        self._render_pool.submit(self._close_writer).result()
        self._render_pool.shutdown(wait=True)
        if self._decoder is not None:
            self.result.decoder = dict(self._decoder.stats.__dict__)

    def _close_sender(self) -> None:
        if self._sender is not None:
            self._sender.close()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _VideoWriter:
    """H.264 mp4 of the rebuilt remote video; used from the render thread only."""

    def __init__(self, path: Path, fps: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), "w")
        self._rate = Fraction(round(fps * 100), 100)
        self._stream = self._container.add_stream("libx264", rate=self._rate)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"preset": "veryfast", "crf": "20"}
        self._stream.codec_context.thread_count = 1
        self._count = 0

    def write(self, rgb: np.ndarray) -> None:
        if self._count == 0:
            self._stream.width, self._stream.height = rgb.shape[1], rgb.shape[0]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._count
        frame.time_base = 1 / self._rate
        self._container.mux(self._stream.encode(frame))
        self._count += 1

    def close(self) -> None:
        if self._count:
            self._container.mux(self._stream.encode(None))
        self._container.close()


async def _sleep_until(stop: asyncio.Event, when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _receive_description(signaling: TcpSocketSignaling) -> RTCSessionDescription:
    """The other side's description; the answerer retries until the offerer listens."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            obj = await signaling.receive()
        except (ConnectionRefusedError, OSError):
            if time.monotonic() > deadline:
                raise BadInputError("no peer answered on the signalling address") from None
            await asyncio.sleep(0.2)
            continue
        if isinstance(obj, RTCSessionDescription):
            return obj
        if obj is BYE or obj is None:
            raise BadInputError("the other peer hung up during signalling")


async def _negotiate(role: Role, pc: RTCPeerConnection, signaling: TcpSocketSignaling) -> None:
    if role == "offer":
        await pc.setLocalDescription(await pc.createOffer())
        await signaling.send(pc.localDescription)
        await pc.setRemoteDescription(await _receive_description(signaling))
    else:
        await pc.setRemoteDescription(await _receive_description(signaling))
        await pc.setLocalDescription(await pc.createAnswer())
        await signaling.send(pc.localDescription)


async def _opened(channels: list[RTCDataChannel]) -> None:
    while any(c.readyState != "open" for c in channels):
        await asyncio.sleep(0.05)


async def call(
    role: Role,
    video: Path,
    signaling: TcpSocketSignaling,
    seconds: float,
    *,
    engine: Engine | None,
    size: int = 256,
    out: Path | None = None,
    basis_after: float = 10.0,
    on_connected: Callable[[], None] | None = None,
) -> CallResult:
    """One peer's side of a call: negotiate, exchange motion for ``seconds``, hang up.

    ``engine`` renders the other peer (None: decode only, render nothing).
    """
    if not video.exists():
        raise BadInputError(f"no such video: {video}")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer = KeypointPeer(role, pc, video, engine, size, out, basis_after)
    stop = asyncio.Event()
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(peer._camera_pool, peer.prepare)
        await asyncio.wait_for(_negotiate(role, pc, signaling), CONNECT_TIMEOUT_S)
        await asyncio.wait_for(_opened([peer.motion, peer.control]), CONNECT_TIMEOUT_S)
        if on_connected is not None:
            on_connected()
        log.info("%s: connected; calling for %.1f s", role, seconds)
        started = time.monotonic()
        await asyncio.gather(
            peer.run_camera(stop), peer.run_renderer(stop), peer.watch(stop, seconds)
        )
    except TimeoutError:
        raise BadInputError("the call could not be set up (signalling or ICE timed out)") from None
    finally:
        stop.set()
        peer.result.seconds = time.monotonic() - started
        await pc.close()
        await signaling.close()
        await loop.run_in_executor(None, peer.close)
    log.info("%s: call ended: %s", role, peer.result.summary())
    return peer.result


def _address(signal: str) -> tuple[str, int]:
    host, _, port = signal.rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"--signal must be host:port, not {signal!r}")
    return host, int(port)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """``reenact peer``: one peer of a keypoint call; returns its summary."""
    from service.rtc.peer import use_host_addresses

    host, port = _address(args.signal)
    undo = use_host_addresses(["127.0.0.1"] if host in ("127.0.0.1", "localhost") else [])
    try:
        with create_engine("onnxruntime", 256, threads=max(1, cpu_quota() // 2)) as engine:
            result = asyncio.run(
                call(
                    args.role,
                    Path(args.video),
                    TcpSocketSignaling(host, port),
                    float(args.seconds),
                    engine=engine,
                    out=args.out,
                )
            )
    finally:
        undo()
    return result.summary()
