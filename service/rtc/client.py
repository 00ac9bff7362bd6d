"""A scripted aiortc client: drives a session with a video clip and records what comes back.

Used by the integration tests and the loopback benchmark.  The clip plays like a camera: frames
are stamped with their capture time (pts in 1/90000 s, frame k at k/fps) and skipped, never
bunched, when the client falls behind.  Each avatar frame that comes back is matched to the
driver frame it was made from through its pts: the server keeps the driver's pts, and its
telemetry channel says where the returned RTP clock starts (``origin``).  So latency is
measured without drawing anything on the face.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from service.rtc.peer import peer_connection
from service.rtc.tracks import Arrival, drain
from service.settings import IceServer

CLOCK = 90_000  # RTP video clock; pts unit of every frame the client sends
HEARTBEAT_S = 2.0  # telemetry ping period, as the browser page sends them
TIME_BASE = Fraction(1, CLOCK)


def load_clip(path: Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """Frames (H, W, 3) uint8 RGB of a video file and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return frames, fps


class ClipTrack(MediaStreamTrack):
    """Plays ``frames`` in a loop at ``fps`` like a camera; remembers when each pts was sent."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        super().__init__()
        # Pre-converted once: the client should spend its CPU on the codec, not on colour spaces.
        self._frames = [
            VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray()
            for f in frames
        ]
        self._fps = fps
        self._rate = fps  # frames actually sent per second (the server may advise fewer)
        self._start: float | None = None
        self._due = 0.0
        self._next = 0
        self.sent: dict[int, float] = {}  # frame number -> time.monotonic() sent to the encoder
        self._running = asyncio.Event()
        self._running.set()

    def limit_rate(self, max_fps: float) -> None:
        """Send at most ``max_fps``, like a browser sender's maxFramerate; the clip's clock runs
        on (frames in between are skipped)."""
        self._rate = min(self._fps, max(1.0, max_fps))

    def pause(self) -> None:
        """Stop delivering frames without ending the track: a frozen camera or a peer that
        vanished without saying goodbye."""
        self._running.clear()

    def pts_of(self, k: int) -> int:
        return round(k * CLOCK / self._fps)

    def number_of(self, pts: int) -> int:
        """The frame number a pts stands for.  Nearest, not exact: decoders may round pts by a
        tick when they rescale timebases."""
        return round(pts * self._fps / CLOCK)

    def clip_index(self, pts: int) -> int:
        """The clip frame (index into ``frames``) a pts was made from."""
        return self.number_of(pts) % len(self._frames)

    def sent_at(self, pts: int) -> float | None:
        return self.sent.get(self.number_of(pts))

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._running.wait()
        now = time.monotonic()
        if self._start is None:
            self._start = self._due = now
        # The next capture instant of the clip's camera at or after the next send slot.
        k = max(self._next, math.ceil((self._due - self._start) * self._fps - 1e-6))
        capture = self._start + k / self._fps
        if capture > now:
            await asyncio.sleep(capture - now)
        elif capture < now - 1 / self._fps:  # late: skip to the newest capture, never bunch
            k = max(self._next, int((now - self._start) * self._fps))
        self._next = k + 1
        self._due = max(self._due + 1 / self._rate, time.monotonic() - 1 / self._rate)
        frame = VideoFrame.from_ndarray(self._frames[k % len(self._frames)], format="yuv420p")
        frame.pts, frame.time_base = self.pts_of(k), TIME_BASE
        self.sent[k] = time.monotonic()
        return frame


@dataclass
class Received:
    pts: int  # the driver frame's pts (receiver-relative pts + telemetry origin)
    at: float  # time.monotonic() when decoded
    image: np.ndarray | None  # (S, S, 3) uint8 RGB, when kept


@dataclass
class ClientReport:
    frames: list[Received] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)  # one per avatar frame
    rate_advice: list[int] = field(default_factory=list)  # max_fps values the server advised
    started_at: float | None = None  # first avatar frame
    pongs: int = 0  # heartbeats the server answered
    end: dict[str, Any] | None = None  # the server's telemetry `end` message: reason, status


class ClipClient:
    """One session driven by a clip.  ``async with ClipClient(...) as c: await c.play(s)``."""

    def __init__(
        self,
        base_url: str,
        frames: list[np.ndarray],
        fps: float,
        *,
        avatar: str | None = None,
        size: int = 256,
        max_fps: int | None = None,
        mode: str = "avatar",  # "keypoints": the server sends back this clip rebuilt
        keep_images: bool = False,
        http: httpx.AsyncClient | None = None,
        api_key: str | None = None,  # for servers with REENACT_API_KEYS
        heartbeat_s: float | None = HEARTBEAT_S,  # None: send no heartbeats
    ) -> None:
        self.base_url = base_url
        self.track = ClipTrack(frames, fps)
        self.avatar = avatar
        self.size = size
        self.max_fps = max_fps
        self.mode = mode
        self.keep_images = keep_images
        self.api_key = api_key
        self.heartbeat_s = heartbeat_s
        self.report = ClientReport()
        self.session: dict[str, Any] = {}  # the POST /v1/sessions response
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=30)
        self._own_http = http is None
        self._pc: RTCPeerConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.channel: RTCDataChannel | None = None  # telemetry, once connected
        self._origin: int | None = None
        self._pending: list[tuple[int, float, np.ndarray | None]] = []

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session['token']}"}

    async def connect(self) -> None:
        data = {"size": str(self.size), "mode": self.mode}
        if self.avatar:
            data["avatar"] = self.avatar
        if self.max_fps:
            data["fps"] = str(self.max_fps)
        key = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response = await self._http.post("/v1/sessions", data=data, headers=key)
        response.raise_for_status()
        self.session = response.json()
        servers = [IceServer.model_validate(s) for s in self.session["ice_servers"]]
        pc = self._pc = peer_connection(servers)
        pc.addTrack(self.track)
        channel = self.channel = pc.createDataChannel("telemetry")
        channel.on("message", self._on_telemetry)
        if self.heartbeat_s is not None:
            period = self.heartbeat_s

            @channel.on("open")
            def on_open() -> None:
                self._heartbeat = asyncio.get_running_loop().create_task(
                    self._beat(channel, period)
                )

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.get_running_loop().create_task(drain(track, self._on_frame))

        await pc.setLocalDescription(await pc.createOffer())
        response = await self._http.post(
            self.session["links"]["offer"],
            content=pc.localDescription.sdp,
            headers={**self.headers, "Content-Type": "application/sdp"},
        )
        response.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))

    async def play(self, seconds: float) -> ClientReport:
        """Stream for ``seconds`` after the first avatar frame arrives (or 20 s without one)."""
        deadline = time.monotonic() + 20
        while self.report.started_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.report.started_at is not None:
            await asyncio.sleep(max(0.0, self.report.started_at + seconds - time.monotonic()))
        return self.report

    async def stats(self) -> dict[str, Any]:
        """The server's view of this session (GET /v1/sessions/{id})."""
        response = await self._http.get(self.session["links"]["session"], headers=self.headers)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def hang_up(self) -> None:
        """Close the peer connection only, as a browser tab does when it goes away."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._pc is not None:
            await self._pc.close()

    async def close(self) -> None:
        """Hang up and end the session (DELETE; best effort: the server may be gone)."""
        await self.hang_up()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.session:
            with contextlib.suppress(httpx.TransportError):
                await self._http.delete(self.session["links"]["session"], headers=self.headers)
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> ClipClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _on_frame(self, arrival: Arrival) -> None:
        frame, now = arrival.frame, arrival.at
        if self.report.started_at is None:
            self.report.started_at = now
        image = frame.to_ndarray(format="rgb24") if self.keep_images else None
        # Receiver pts count from the first frame received; the telemetry origin turns them
        # back into the driver's pts.  Until it arrives, park the frames.
        self._pending.append((int(frame.pts or 0), now, image))
        if self._origin is not None:
            self._flush()

    async def _beat(self, channel: RTCDataChannel, period: float) -> None:
        """Heartbeats: a ping every ``period`` s while the channel is open, so the server
        frees the session within seconds if this client vanishes."""
        while channel.readyState == "open":
            channel.send(json.dumps({"type": "ping", "t": time.monotonic()}))
            await asyncio.sleep(period)

    def _on_telemetry(self, message: str | bytes) -> None:
        data = json.loads(message)
        if data.get("type") == "pong":
            self.report.pongs += 1
            return
        if data.get("type") == "end":  # the server ended the session, and says why
            self.report.end = data
            return
        if data.get("type") == "rate":  # the server's advice: send no more than this
            self.report.rate_advice.append(int(data["max_fps"]))
            self.track.limit_rate(float(data["max_fps"]))
            return
        if data.get("type") != "frame":
            return
        self.report.telemetry.append(data)
        if self._origin is None and data.get("origin") is not None:
            self._origin = int(data["origin"])
            self._flush()

    def _flush(self) -> None:
        assert self._origin is not None
        for pts, at, image in self._pending:
            self.report.frames.append(Received(pts + self._origin, at, image))
        self._pending.clear()

    def latencies_ms(self) -> list[float]:
        """Per returned frame: decoded here minus sent from here of its driver frame."""
        out = []
        for r in self.report.frames:
            sent = self.track.sent_at(r.pts)
            if sent is not None:
                out.append((r.at - sent) * 1000)
        return out
