"""Sessions: one portrait, one peer connection, one worker; and the registry that bounds them.

A session is created by REST (its source embedding is computed then, once), gets its media by
one SDP offer, and ends by DELETE, by its peer going away (track ended, ICE failed/closed, no
video for ``media_timeout_s``, no telemetry heartbeat for ``heartbeat_timeout_s``, or never
connecting within ``connect_timeout_s`` of the answer), by never receiving video for
``idle_ttl_s``, by reaching ``max_session_s``, by a worker failure, or at shutdown.  Whatever
ends it, :meth:`Session.close` tells the client why (telemetry ``end``), then releases
everything in the same order: the peer connection first (so nothing new arrives), then the
worker, then the Reenactor.  An ended session leaves a small :class:`EndedSession` behind for
``ended_keep_s``, so its owner can read how it ended.
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
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

from aiortc import RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from models.pipeline import FrameRenderer
from service import device
from service.errors import (
    ServerFullError,
    SessionConflictError,
    SessionEndedError,
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
EndStatus = Literal["ended", "failed"]
# Reasons that are the server's fault: the session shows status "failed", not "ended".
FAILURE_REASONS = frozenset({"frames failing", "internal error"})
ENDED_KEEP_MAX = 256  # ended sessions remembered at most (each for ended_keep_s)
TELEMETRY_LABEL = "telemetry"
TELEMETRY_MAX_BUFFERED = 64 * 1024  # bytes queued on the channel before telemetry is skipped
TELEMETRY_MAX_MESSAGE = 4096  # a client message larger than this is ignored unparsed
GOODBYE_WAIT_S = 0.25  # at close, how long the `end` message may take to leave
RATE_ADVICE_PERIOD_S = 1.0
MIN_ADVISED_FPS = 10


def check_token(presented: str | None, expected: str) -> None:
    """Constant-time token check; UnauthorizedError unless ``presented`` is ``expected``.

    Compared as bytes: ``compare_digest`` refuses non-ASCII ``str``, and a token comes from
    the client.
    """
    if presented is None or not secrets.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode()
    ):
        raise UnauthorizedError("missing or wrong session token")


def end_status(reason: str) -> EndStatus:
    """``failed`` when the server is at fault (a worker crashed), ``ended`` otherwise."""
    return "failed" if reason in FAILURE_REASONS else "ended"


def _parse_telemetry(message: str | bytes) -> dict[str, Any] | None:
    """A client's telemetry message as a JSON object, or None (too big, not JSON, not an
    object).  The size is checked first: parsing is the expensive part, and deep nesting
    makes ``json`` raise RecursionError."""
    if len(message) > TELEMETRY_MAX_MESSAGE:
        return None
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None


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
        reenactor: FrameRenderer,
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
        # The token is only as long-lived as the session can be (the janitor ends it then).
        self.token_expires_at = self.created_at + settings.max_session_s
        self.last_media_at: float | None = None
        self.answered_at: float | None = None  # when the offer was answered
        self.last_heartbeat_at: float | None = None  # last telemetry ping; None: never sent one
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
        # Mode keypoints-device: the browser's keypoint stream drives the worker, not video.
        self._device = reenactor if isinstance(reenactor, device.DeviceKeypoints) else None
        self._control: RTCDataChannel | None = None  # its reliable channel, for replies
        self._closing = False
        self._closed = asyncio.Event()

    def check_token(self, token: str | None) -> None:
        check_token(token, self.token)
        if time.monotonic() > self.token_expires_at:
            raise UnauthorizedError("the session token has expired")

    def age_s(self) -> float:
        return time.monotonic() - self.created_at

    def idle_for(self, now: float) -> float:
        return now - (self.last_media_at if self.last_media_at is not None else self.created_at)

    def overdue(self, now: float) -> str | None:
        """Why the session should end now, if it should: the janitor's question.

        ``idle ttl``: no video ever, ``idle_ttl_s`` after creation; ``connect timeout``: the
        offer was answered but the peer did not connect within ``connect_timeout_s``;
        ``media timeout``: video flowed, then stopped for ``media_timeout_s``; ``heartbeat
        lost``: the client sent heartbeats, then none for ``heartbeat_timeout_s`` (a vanished
        peer, even one that never sent video); ``max duration``: ``max_session_s`` reached.
        """
        s = self._settings
        if now - self.created_at > s.max_session_s:
            return "max duration"
        beat = self.last_heartbeat_at
        if beat is not None and now - beat > s.heartbeat_timeout_s:
            return "heartbeat lost"
        answered = self.answered_at
        if (
            self.state == "connecting"
            and answered is not None
            and now - answered > s.connect_timeout_s
        ):
            return "connect timeout"
        if self.last_media_at is None:
            return "idle ttl" if self.idle_for(now) > s.idle_ttl_s else None
        return "media timeout" if self.idle_for(now) > s.media_timeout_s else None

    # -- signalling ---------------------------------------------------------------------------

    async def negotiate(self, offer_sdp: str) -> str:
        """Answer the client's offer (non-trickle).  One peer connection per session."""
        if self._closing:
            raise SessionEndedError(f"session {self.id} has ended; create a new one")
        if self.pc is not None:
            raise SessionConflictError(
                f"session {self.id} already has a peer connection; create a new session"
            )
        pc = peer.peer_connection(self._settings.ice_servers)
        self.pc = pc  # before any await: a concurrent second offer gets 409

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not self._video_attached and self._device is None:
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
            elif self._device is not None and channel.label in device.LABELS:
                if channel.label == device.CONTROL_LABEL:
                    self._control = channel
                channel.on("message", self._on_keypoints)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.info("session %s: peer connection %s", self.id, pc.connectionState)
            if pc.connectionState == "connected" and self.state == "connecting":
                self.state = "live"
            elif pc.connectionState in ("failed", "closed"):
                self._on_end(self, f"peer connection {pc.connectionState}")

        try:
            # A keypoint stream comes with no video: our track goes on its receiving section.
            outbound = self.output if self._device is not None else None
            answer = await peer.answer(pc, offer_sdp, outbound)
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
        self.answered_at = time.monotonic()
        self._spawn(self.worker.run(), "worker")
        if self._device is not None:
            self._spawn(self._tick_while_quiet(self._device), "quiet")
        self._spawn(self._advise_rate(), "rate")
        log.info("session %s: answered offer", self.id)
        return answer

    async def _tick_while_quiet(self, keypoints: device.DeviceKeypoints) -> None:
        """Mode keypoints-device: while no motion comes (the sender's face is lost; its page
        sends only heartbeats), tick the worker at the session's fps, so the output keeps its
        cadence and the worker holds, then fades, the last frame and reports no face, as in
        the camera modes."""
        period = 1.0 / self.options.fps
        while True:
            await asyncio.sleep(period)
            tick = keypoints.idle(time.monotonic())
            if tick is not None:
                self.worker.feed(tick)

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
                        **self.stats.telemetry(),  # keypoint sessions: the stream's rate
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
        """Telemetry from the client: ``ping`` (a heartbeat, answered with ``pong``) and
        ``reset``.

        The client is not trusted: a message that is too big, not a JSON object, or of no
        known type is counted (stats ``bad_messages``) and ignored.  Nothing here may raise:
        aiortc's event emitter would re-raise into the SCTP transport and end the call.
        """
        try:
            data = _parse_telemetry(message) or {}
            kind = data.get("type")
            if kind == "ping":
                self.last_heartbeat_at = time.monotonic()
                t = data.get("t")
                finite = isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
                self._send_telemetry({"type": "pong", "t": t if finite else None})
            elif kind == "reset":
                self.worker.request_reset()
            else:
                self.stats.bad_messages += 1
        except Exception:
            self.stats.bad_messages += 1
            log.warning("session %s: telemetry message not handled", self.id, exc_info=True)

    def _on_keypoints(self, message: str | bytes) -> None:
        """A keypoint message from the browser (mode keypoints-device): counted as received
        media, decoded on the loop (cheap), a tick for the worker when there is a new frame to
        render, and the receiver's replies sent back reliably.  Must not raise (see
        :meth:`_on_message`)."""
        assert self._device is not None
        try:
            if not isinstance(message, bytes):
                self.stats.bad_messages += 1
                return
            now = time.monotonic()
            self.last_media_at = now
            delivery = self._device.receive(message, now)
            if delivery.cost is not None:
                self.stats.stream(now, delivery.cost)
            control = self._control
            for reply in delivery.replies:
                if control is not None and control.readyState == "open":
                    control.send(reply)
            if delivery.tick is not None:
                self.worker.feed(delivery.tick)
        except Exception:
            self.stats.bad_messages += 1
            log.warning("session %s: keypoint message not handled", self.id, exc_info=True)

    def _send_telemetry(self, message: dict[str, object]) -> bool:
        """Send one JSON message if the channel is open and not backed up; whether it was."""
        channel = self._telemetry
        if (
            channel is None
            or channel.readyState != "open"
            or channel.bufferedAmount >= TELEMETRY_MAX_BUFFERED
        ):
            return False
        channel.send(json.dumps(message))
        return True

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
        """End the session and free everything; idempotent, bounded by ``timeout`` in all.

        The client is told why first (telemetry ``{"type": "end", "reason", "status"}``), when
        its channel is open: a page can say so instead of showing a frozen picture.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.state = "ended"
        log.info("session %s: ending (%s)", self.id, reason)
        deadline = time.monotonic() + timeout

        def left() -> float:  # each step gets what is left, never nothing
            return max(0.05, deadline - time.monotonic())

        try:
            goodbye: dict[str, object] = {
                "type": "end",
                "reason": reason,
                "status": end_status(reason),
            }
            if self._send_telemetry(goodbye):
                await self._drain_telemetry(min(GOODBYE_WAIT_S, left()))
            if self.pc is not None:  # peers first: nothing new arrives after this
                try:
                    await asyncio.wait_for(self.pc.close(), left())
                except TimeoutError:
                    log.warning("session %s: peer connection close timed out", self.id)
            self.output.stop()
            self.worker.stop()
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=left())
            try:
                await asyncio.wait_for(self.worker.close(), left())
            except TimeoutError:
                log.warning("session %s: a frame was still computing at close", self.id)
        finally:
            self._closed.set()

    async def _drain_telemetry(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until what was sent on the telemetry channel has left."""
        end = time.monotonic() + timeout
        channel = self._telemetry
        while (
            channel is not None
            and channel.readyState == "open"
            and channel.bufferedAmount > 0
            and time.monotonic() < end
        ):
            await asyncio.sleep(0.01)


@dataclass(frozen=True)
class EndedSession:
    """What is kept of an ended session for ``ended_keep_s``: enough to say how it ended,
    nothing heavy (no peer connection, no renderer)."""

    id: str
    owner: str | None
    options: SessionOptions
    status: EndStatus
    reason: str
    age_s: float  # how long it lived
    stats: dict[str, object]  # its stats when it ended
    ended_at: float  # time.monotonic()
    token: str = field(repr=False)

    @classmethod
    def of(cls, session: Session, reason: str, now: float) -> EndedSession:
        return cls(
            id=session.id,
            owner=session.owner,
            options=session.options,
            status=end_status(reason),
            reason=reason,
            age_s=round(now - session.created_at, 2),
            stats=session.stats.snapshot(),
            ended_at=now,
            token=session.token,
        )

    def check_token(self, token: str | None) -> None:
        """The session's own token still reads how it ended (only that) while it is kept."""
        check_token(token, self.token)


class SessionRegistry:
    """The live sessions, the max-sessions limit, expiry, cleanup, and the recently ended."""

    def __init__(self, settings: Settings, metrics: Metrics, executor: Executor) -> None:
        self._settings = settings
        self._metrics = metrics
        self._executor = executor
        self._sessions: dict[str, Session] = {}
        self._pending = 0  # sessions being created (their source embedding is computing)
        self._ending: set[asyncio.Task[None]] = set()
        # Oldest first; at most ENDED_KEEP_MAX, each for ended_keep_s.
        self._ended: OrderedDict[str, EndedSession] = OrderedDict()

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
        self, options: SessionOptions, reenactor: FrameRenderer, owner: str | None = None
    ) -> Session:
        """Register a new session around a ready renderer (Reenactor or keypoint relay; call
        inside :meth:`reserve`)."""
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
        """A live session; SessionEndedError if it ended recently, SessionNotFoundError if
        there is no such session (or it ended long ago)."""
        try:
            return self._sessions[session_id]
        except KeyError:
            ended = self.ended(session_id)
            if ended is not None:
                raise SessionEndedError(
                    f"session {session_id!r} has ended ({ended.reason}); create a new one"
                ) from None
            raise SessionNotFoundError(f"no session {session_id!r}") from None

    def ended(self, session_id: str) -> EndedSession | None:
        """The record of a recently ended session, if it is still kept.

        A live session whose time is up (:meth:`Session.overdue`) is ended here and now rather
        than at the janitor's next round: whoever asks never sees it alive past its limits
        (its token expired, its heartbeat lost).
        """
        now = time.monotonic()
        live = self._sessions.get(session_id)
        if live is not None and (reason := live.overdue(now)) is not None:
            self.end_soon(session_id, reason)
        self._forget_ended(now)
        return self._ended.get(session_id)

    def recently_ended(self) -> list[EndedSession]:
        """The records of the ended sessions still kept (``ended_keep_s``), oldest first."""
        self._forget_ended(time.monotonic())
        return list(self._ended.values())

    def _forget_ended(self, now: float) -> None:
        keep_s = self._settings.ended_keep_s
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if now - oldest.ended_at <= keep_s and len(self._ended) <= ENDED_KEEP_MAX:
                break
            self._ended.popitem(last=False)

    async def end(self, session_id: str, reason: str) -> None:
        session = self._retire(session_id, reason)
        if session is not None:
            await session.close(reason, self._settings.shutdown_timeout_s)

    def end_soon(self, session_id: str, reason: str) -> None:
        """End a session from a callback that cannot await (peer events, the worker).

        It leaves the registry (and shows as ended) at once; its resources are freed by a task.
        """
        session = self._retire(session_id, reason)
        if session is None:
            return
        task = asyncio.get_running_loop().create_task(
            session.close(reason, self._settings.shutdown_timeout_s)
        )
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    def _retire(self, session_id: str, reason: str) -> Session | None:
        """Take a live session out of the registry and keep its record; None if not live."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        now = time.monotonic()
        self._ended[session_id] = EndedSession.of(session, reason, now)
        self._forget_ended(now)
        self._metrics.active_sessions.set(len(self._sessions))
        self._metrics.sessions_ended.labels(reason).inc()
        return session

    def expire(self, now: float) -> None:
        """End the sessions whose time is up (see :meth:`Session.overdue`); forget ended ones
        kept long enough."""
        for session in self:
            reason = session.overdue(now)
            if reason is not None:
                self.end_soon(session.id, reason)
        self._forget_ended(now)

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
