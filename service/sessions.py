"""Sessions: one portrait, one peer connection, one worker; and the registry that bounds them.

A session is created by REST (its source embedding is computed then, once), gets its media by
one SDP offer, and ends by DELETE, by its peer going away (track ended, ICE failed/closed, or no
video for ``media_timeout_s``), by never receiving video for ``idle_ttl_s``, by a worker failure,
or at shutdown.  Whatever ends it, :meth:`Session.close` releases everything in the same order:
the peer connection first (so nothing new arrives), then the worker, then the Reenactor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from models.pipeline import Reenactor
from service.errors import (
    ServerFullError,
    SessionConflictError,
    SessionNotFoundError,
    UnauthorizedError,
)
from service.metrics import Metrics
from service.rtc import peer
from service.rtc.tracks import Arrival, AvatarTrack, Rendered, drain
from service.settings import Settings
from service.stats import SessionStats
from service.worker import FaceLostFade, Worker

log = logging.getLogger(__name__)

State = Literal["created", "connecting", "live", "ended"]
TELEMETRY_LABEL = "telemetry"
TELEMETRY_MAX_BUFFERED = 64 * 1024  # bytes queued on the channel before telemetry is skipped
RATE_ADVICE_PERIOD_S = 1.0
MIN_ADVISED_FPS = 10


@dataclass(frozen=True)
class SessionOptions:
    size: int
    fps: int
    mode: str
    avatar: str | None  # built-in avatar name, None for an uploaded photo


class Session:
    def __init__(
        self,
        options: SessionOptions,
        reenactor: Reenactor,
        *,
        settings: Settings,
        executor: Executor,
        metrics: Metrics,
        on_end: Callable[[Session, str], None],
        owner: str | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.owner = owner  # the API key id that created it; None in local/dev mode
        self.token = secrets.token_urlsafe(24)
        self.options = options
        self.state: State = "created"
        self.created_at = time.monotonic()
        self.last_media_at: float | None = None
        self.stats = SessionStats(metrics)
        self._settings = settings
        self._on_end = on_end
        self.pc: RTCPeerConnection | None = None
        self.output = AvatarTrack(on_sent=self._on_sent)
        self.worker = Worker(
            self.id,
            reenactor,
            executor,
            self.output,
            self.stats,
            max_fps=options.fps,
            fade=FaceLostFade(settings.face_lost_hold_s, settings.face_lost_fade_s),
            on_fatal=lambda reason: self._on_end(self, reason),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._video_attached = False
        self._telemetry: RTCDataChannel | None = None
        self._closing = False
        self._closed = asyncio.Event()

    def check_token(self, token: str | None) -> None:
        if token is None or not secrets.compare_digest(token, self.token):
            raise UnauthorizedError("missing or wrong session token")

    def age_s(self) -> float:
        return time.monotonic() - self.created_at

    def idle_for(self, now: float) -> float:
        return now - (self.last_media_at if self.last_media_at is not None else self.created_at)

    # -- signalling ---------------------------------------------------------------------------

    async def negotiate(self, offer_sdp: str) -> str:
        """Answer the client's offer (non-trickle).  One peer connection per session."""
        if self._closing:
            raise SessionNotFoundError(f"session {self.id} has ended")
        if self.pc is not None:
            raise SessionConflictError(
                f"session {self.id} already has a peer connection; create a new session"
            )
        pc = peer.peer_connection(self._settings.ice_servers)
        self.pc = pc  # before any await: a concurrent second offer gets 409

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not self._video_attached:
                self._video_attached = True
                pc.addTrack(self.output)
                self._spawn(self._read(track), "reader")
            else:
                # Anything else (audio, a second video) is drained so it cannot queue up.
                self._spawn(drain(track, None), f"discard-{track.kind}")

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == TELEMETRY_LABEL:
                self._telemetry = channel
                channel.on("message", self._on_message)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.info("session %s: peer connection %s", self.id, pc.connectionState)
            if pc.connectionState == "connected" and self.state == "connecting":
                self.state = "live"
            elif pc.connectionState in ("failed", "closed"):
                self._on_end(self, f"peer connection {pc.connectionState}")

        try:
            answer = await peer.answer(pc, offer_sdp)
        except BaseException:
            # A bad offer leaves the session as it was, ready for a corrected one.
            pc.remove_all_listeners()
            for task in list(self._tasks):
                task.cancel()
            self.pc = None
            self._video_attached = False
            await pc.close()
            raise
        self.state = "connecting"
        self._spawn(self.worker.run(), "worker")
        self._spawn(self._advise_rate(), "rate")
        log.info("session %s: answered offer", self.id)
        return answer

    async def _read(self, track: MediaStreamTrack) -> None:
        def sink(arrival: Arrival) -> None:
            self.last_media_at = arrival.at
            self.worker.feed(arrival)

        await drain(track, sink)
        self._on_end(self, "remote video ended")

    def _on_sent(self, rendered: Rendered, sent_at: float) -> None:
        added_ms = (sent_at - rendered.arrived) * 1000
        self.stats.frame_out(sent_at, added_ms)
        channel = self._telemetry
        if (
            channel is not None
            and channel.readyState == "open"
            and channel.bufferedAmount < TELEMETRY_MAX_BUFFERED
        ):
            # pts is in the driver's timebase; origin is the pts of the first frame this track
            # sent, which the receiver's RTP clock starts from: receiver pts + origin = pts.
            # arrived/sent are time.monotonic() here: comparable with a client's on this host.
            channel.send(
                json.dumps(
                    {
                        "type": "frame",
                        "pts": rendered.frame.pts,
                        "origin": self.output.first_pts,
                        "face": rendered.face,
                        "server_ms": round(added_ms, 2),
                        "arrived": round(rendered.arrived, 4),
                        "sent": round(sent_at, 4),
                    }
                )
            )

    async def _advise_rate(self) -> None:
        """Tell the client how many frames per second are worth sending (telemetry ``rate``).

        Every frame sent costs the server a decode, used or not.  Frames over the session's fps
        cap are always dropped, so the cap is advised at once.  When the avatar is rendered at
        under 60 % of the rate frames arrive for 3 s running (the CPU is the limit), the advice
        drops to 1.5 x the rendered rate + 2 (never under MIN_ADVISED_FPS, so a frame is never
        more than 1/MIN_ADVISED_FPS old when the worker takes it); once rendering keeps up with
        the advice, it is raised again by half.  The server does not depend on clients obeying.
        """
        cap = self.options.fps
        advised: int | None = None
        overloaded_for = 0
        while True:
            await asyncio.sleep(RATE_ADVICE_PERIOD_S)
            channel = self._telemetry
            if channel is None or channel.readyState != "open":
                continue
            received, rendered = self.stats.fps_in(), self.stats.fps_out()
            overloaded_for = overloaded_for + 1 if rendered < 0.6 * received else 0
            if overloaded_for >= 3:
                advice = min(cap, max(MIN_ADVISED_FPS, math.ceil(rendered * 1.5) + 2))
            elif advised is not None and advised < cap and rendered >= 0.8 * advised:
                advice = min(cap, math.ceil(advised * 1.5))
            elif advised is None and received > 1.2 * cap:
                advice = cap
            else:
                continue
            if advice != advised:
                channel.send(json.dumps({"type": "rate", "max_fps": advice}))
                advised = advice

    def _on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
            kind = data.get("type") if isinstance(data, dict) else None
        except (ValueError, UnicodeDecodeError):
            kind = None
        if kind == "reset":
            self.worker.request_reset()
        elif kind == "ping" and self._telemetry is not None:
            self._telemetry.send(json.dumps({"type": "pong", "t": data.get("t")}))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=error)
            self._on_end(self, "internal error")

    # -- teardown -----------------------------------------------------------------------------

    async def close(self, reason: str, timeout: float) -> None:
        """End the session and free everything; idempotent, bounded by ``timeout`` per step."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.state = "ended"
        log.info("session %s: ending (%s)", self.id, reason)
        try:
            if self.pc is not None:  # peers first: nothing new arrives after this
                try:
                    await asyncio.wait_for(self.pc.close(), timeout)
                except TimeoutError:
                    log.warning("session %s: peer connection close timed out", self.id)
            self.output.stop()
            self.worker.stop()
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
            try:
                await asyncio.wait_for(self.worker.close(), timeout)
            except TimeoutError:
                log.warning("session %s: a frame was still computing at close", self.id)
        finally:
            self._closed.set()


class SessionRegistry:
    """The live sessions, the max-sessions limit, expiry, and cleanup."""

    def __init__(self, settings: Settings, metrics: Metrics, executor: Executor) -> None:
        self._settings = settings
        self._metrics = metrics
        self._executor = executor
        self._sessions: dict[str, Session] = {}
        self._pending = 0  # sessions being created (their source embedding is computing)
        self._ending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def occupied(self) -> int:
        """Live sessions plus those being created: what counts against max_sessions."""
        return len(self._sessions) + self._pending

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold a place while a session is created; ServerFullError when none is left."""
        if self.occupied >= self._settings.max_sessions:
            self._metrics.rejected.inc()
            raise ServerFullError(
                f"the server is full ({self._settings.max_sessions} sessions)",
                retry_after=self._settings.retry_after_s,
            )
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    def open(
        self, options: SessionOptions, reenactor: Reenactor, owner: str | None = None
    ) -> Session:
        """Register a new session around a ready Reenactor (call inside :meth:`reserve`)."""
        session = Session(
            options,
            reenactor,
            settings=self._settings,
            executor=self._executor,
            metrics=self._metrics,
            on_end=lambda s, reason: self.end_soon(s.id, reason),
            owner=owner,
        )
        self._sessions[session.id] = session
        self._metrics.sessions_total.inc()
        self._metrics.active_sessions.set(len(self._sessions))
        log.info("session %s: created (%s)", session.id, options)
        return session

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(f"no session {session_id!r}") from None

    async def end(self, session_id: str, reason: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self._metrics.active_sessions.set(len(self._sessions))
        self._metrics.sessions_ended.labels(reason).inc()
        await session.close(reason, self._settings.shutdown_timeout_s)

    def end_soon(self, session_id: str, reason: str) -> None:
        """End a session from a callback that cannot await (peer events, the worker)."""
        if session_id not in self._sessions:
            return
        task = asyncio.get_running_loop().create_task(self.end(session_id, reason))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    def expire(self, now: float) -> None:
        """End sessions that never got video (idle TTL) or whose video stopped (peer gone)."""
        for session in self:
            if session.last_media_at is None:
                if session.idle_for(now) > self._settings.idle_ttl_s:
                    self.end_soon(session.id, "idle ttl")
            elif session.idle_for(now) > self._settings.media_timeout_s:
                self.end_soon(session.id, "media timeout")

    async def run_janitor(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.expire(time.monotonic())

    async def close_all(self) -> None:
        """Shutdown: end every session concurrently, bounded by the shutdown timeout."""
        ids = list(self._sessions)
        if ids:
            log.info("closing %d sessions", len(ids))
            await asyncio.gather(*(self.end(i, "server shutdown") for i in ids))
        if self._ending:
            await asyncio.wait(list(self._ending), timeout=self._settings.shutdown_timeout_s)
