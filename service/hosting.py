"""The seam between the HTTP API and wherever sessions run.

The API never touches a session object: it calls a :class:`SessionHost` with plain, picklable
values (:class:`SessionRequest` in, :class:`SessionView` out) and gets the project's own errors
back.  That is what lets the same routes drive sessions in this process (:class:`LocalHost`,
the default) or on a pool of worker processes or machines (``service.cluster``), where every
call crosses a process boundary.

A :class:`LocalHost` owns everything a session needs in one process: one engine per output
size, the executor every frame is computed on, the session registry and the avatar sources.
:func:`local_host` builds one and tears it down in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from engines import Engine, create_engine, create_face_mesh_engine
from engines.batching import BatchScheduler
from models.errors import BadInputError
from models.mesh_tracking import MeshTracker
from models.pipeline import FrameRenderer, Reenactor
from models.tracking import Tracker
from service.builtin import AvatarCatalog
from service.device import MODE as DEVICE_MODE
from service.device import DeviceKeypoints
from service.metrics import Metrics
from service.relay import KeypointRelay
from service.sessions import EndedSession, Session, SessionOptions, SessionRegistry
from service.settings import Settings
from service.sources import Sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionRequest:
    """What ``POST /v1/sessions`` asked for, checked for shape but not yet for sense."""

    size: int
    fps: int
    mode: str = "avatar"
    avatar: str | None = None  # a built-in avatar name; None with no photo: the default avatar
    photo: bytes | None = None  # an uploaded portrait, still encoded
    owner: str | None = None  # the API key's id; None in local/dev mode


@dataclass(frozen=True)
class SessionView:
    """A snapshot of one session: what ``GET /v1/sessions/{id}`` shows (and, one per session,
    ``GET /v1/sessions``)."""

    id: str
    status: str
    options: SessionOptions
    age_s: float
    stats: dict[str, object]
    owner: str | None
    host: str  # which host runs it ("local", or a cluster worker's name)
    ended_reason: str | None = None  # why, once status is "ended" or "failed"
    # Seconds since it ended (None while it lives): a duration, not a clock reading, so views
    # from different processes and machines sort together (age_s of an ended one is how long
    # it lived).
    ended_s_ago: float | None = None


def ended_view(record: EndedSession, host: str) -> SessionView:
    """What GET shows for a session that has ended, from the record its host keeps."""
    return SessionView(
        id=record.id,
        status=record.status,
        options=record.options,
        age_s=record.age_s,
        stats=record.stats,
        owner=record.owner,
        host=host,
        ended_reason=record.reason,
        ended_s_ago=round(max(0.0, time.monotonic() - record.ended_at), 2),
    )


@dataclass(frozen=True)
class SessionListing:
    """What ``GET /v1/sessions`` lists, and which processes did not answer in time (their
    sessions are missing from it: a listing says so rather than pretending to be complete)."""

    views: list[SessionView]
    unanswered: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostLoad:
    """How full a host is; the cluster places new sessions on the emptiest."""

    sessions: int  # live plus being created
    capacity: int
    sizes: tuple[int, ...]  # output sizes served
    by_owner: dict[str, int] = field(default_factory=dict)  # live sessions per API key id


class SessionHost(Protocol):
    """Everything the API needs from wherever sessions run.  Errors are the project's own
    (service/errors.py, models/errors.py): the API maps them to HTTP statuses."""

    async def create(self, request: SessionRequest) -> tuple[SessionView, str]:
        """Make a session (its source embedding is computed here); returns it and its token."""
        ...

    async def view(self, session_id: str, token: str | None) -> SessionView: ...

    async def negotiate(self, session_id: str, token: str | None, offer_sdp: str) -> str:
        """Answer the client's complete SDP offer with a complete answer."""
        ...

    async def end(self, session_id: str, token: str | None, reason: str) -> None: ...

    async def load(self) -> HostLoad: ...

    async def sessions(self, owner: str | None, include_ended: bool = False) -> SessionListing:
        """Snapshots of the live sessions (created, connecting, live) that API key id ``owner``
        created, every owner's when ``owner`` is None (local/dev mode, where no session has
        one); with ``include_ended``, also those that ended and are still kept to say how
        (``ended_keep_s``).  In no particular order.  Never raises for a process that does not
        answer: its sessions are left out and its name is in ``unanswered``."""
        ...

    async def metrics(self) -> list[tuple[str, bytes]]:
        """Other processes' Prometheus expositions for this one's ``/metrics`` to merge in,
        by process name (service.metrics.merge); [] when every session runs here.  Never
        raises: a process that does not answer is left out."""
        ...


class LocalHost:
    """Sessions in this process.  Built by :func:`local_host`."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        engines: dict[int, Engine],
        registry: SessionRegistry,
        sources: Sources,
        face_mesh: Engine | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.engines = engines
        self.registry = registry
        self.sources = sources
        self.face_mesh = face_mesh  # shared landmark network when settings.tracker == "mesh"

    def _tracker(self) -> Tracker | None:
        """A new session's driver tracker; None: the renderer's default (mediapipe)."""
        return MeshTracker(self.face_mesh) if self.face_mesh is not None else None

    async def create(self, request: SessionRequest) -> tuple[SessionView, str]:
        settings = self.settings
        with self.registry.reserve():
            if request.size not in self.engines:
                served = sorted(self.engines)
                raise BadInputError(f"size {request.size} is not served here (served: {served})")
            fps = min(request.fps, settings.max_fps)
            engine = self.engines[request.size]
            avatar = None
            renderer: FrameRenderer
            if request.mode in ("keypoints", DEVICE_MODE) and (
                request.photo is not None or request.avatar is not None
            ):
                raise BadInputError(
                    f"mode {request.mode!r} rebuilds the sender's own face from its "
                    "keypoints: send no photo or avatar"
                )
            if request.mode == DEVICE_MODE:  # the browser tracks and encodes; we only render
                renderer = DeviceKeypoints(engine, request.size)
            elif request.mode == "keypoints":
                # The relay's sender builds a face tracker: too slow for the event loop.
                renderer = await asyncio.to_thread(
                    KeypointRelay, engine, request.size, fps, tracker=self._tracker()
                )
            else:
                if request.photo is not None and request.avatar is not None:
                    raise BadInputError("give either a photo or an avatar name, not both")
                if request.photo is not None:
                    source = await self.sources.from_upload(request.photo, request.size)
                else:
                    avatar = request.avatar or settings.default_avatar
                    source = await self.sources.builtin(avatar, request.size)
                # The Reenactor builds its own face tracker: too slow for the event loop.
                renderer = await asyncio.to_thread(
                    Reenactor, source, engine, tracker=self._tracker()
                )
            options = SessionOptions(size=request.size, fps=fps, mode=request.mode, avatar=avatar)
            session = self.registry.open(options, renderer, owner=request.owner)
        return self._view(session), session.token

    async def view(self, session_id: str, token: str | None) -> SessionView:
        """A live session, or one that ended recently (status ``ended``/``failed``, reason)."""
        ended = self.registry.ended(session_id)
        if ended is not None:
            ended.check_token(token)
            return ended_view(ended, self.name)
        return self._view(self._authorised(session_id, token))

    async def negotiate(self, session_id: str, token: str | None, offer_sdp: str) -> str:
        return await self._authorised(session_id, token).negotiate(offer_sdp)

    async def end(self, session_id: str, token: str | None, reason: str) -> None:
        session = self._authorised(session_id, token)
        await self.registry.end(session.id, reason)

    async def load(self) -> HostLoad:
        by_owner: dict[str, int] = {}
        for session in self.registry:
            if session.owner is not None:
                by_owner[session.owner] = by_owner.get(session.owner, 0) + 1
        return HostLoad(
            sessions=self.registry.occupied,
            capacity=self.settings.max_sessions,
            sizes=tuple(sorted(self.engines)),
            by_owner=by_owner,
        )

    async def sessions(self, owner: str | None, include_ended: bool = False) -> SessionListing:
        return SessionListing(self.views(owner, include_ended))

    def views(self, owner: str | None, include_ended: bool = False) -> list[SessionView]:
        """This process's part of :meth:`sessions` (a cluster worker answers with it)."""
        # Those whose time is up end first, so none is listed alive past its limits (as view).
        self.registry.expire(time.monotonic())
        views = [self._view(s) for s in self.registry if owner is None or s.owner == owner]
        if include_ended:
            views += [
                ended_view(record, self.name)
                for record in self.registry.recently_ended()
                if owner is None or record.owner == owner
            ]
        return views

    async def metrics(self) -> list[tuple[str, bytes]]:
        return []  # this process's registry is the app's own

    def _authorised(self, session_id: str, token: str | None) -> Session:
        """The live session, once its token checks out (404 before 401: ids are not secret).

        A recently ended one is SessionEndedError (410), but only to its own token.
        """
        ended = self.registry.ended(session_id)
        if ended is not None:
            ended.check_token(token)
        session = self.registry.get(session_id)
        session.check_token(token)
        return session

    def _view(self, session: Session) -> SessionView:
        return SessionView(
            id=session.id,
            status=session.state,
            options=session.options,
            age_s=round(session.age_s(), 2),
            stats=session.stats.snapshot(),
            owner=session.owner,
            host=self.name,
        )


@asynccontextmanager
async def local_host(
    settings: Settings, metrics: Metrics, name: str = "local"
) -> AsyncIterator[LocalHost]:
    """Start the engines, executor and session registry; on exit close them in order.

    Shutdown is bounded: sessions are closed concurrently (peers first, then workers), each
    step under ``shutdown_timeout_s``; then the janitor, executor and engines go.
    """
    engines: dict[int, Engine] = {}
    face_mesh: Engine | None = None
    executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="reenact-frame")
    janitor: asyncio.Task[None] | None = None
    registry: SessionRegistry | None = None
    try:
        for size in dict.fromkeys(settings.sizes):
            # Slow only when the ONNX cache is cold (`make setup` fills it), hence a thread.
            engines[int(size)] = await asyncio.to_thread(_engine, settings, int(size))
        if settings.tracker == "mesh":
            face_mesh = await asyncio.to_thread(_face_mesh_engine, settings)
        registry = SessionRegistry(settings, metrics, executor)
        sources = Sources(settings, AvatarCatalog())
        # The default avatar is what the page offers first: embed it now, not on first click.
        for served in engines:
            await sources.builtin(settings.default_avatar, served)
        janitor = asyncio.get_running_loop().create_task(registry.run_janitor(), name="janitor")
        log.info(
            "%s host ready: sizes %s, backend %s, %s tracker, %d frame workers, max %d sessions",
            name,
            list(engines),
            settings.backend,
            settings.tracker,
            settings.workers,
            settings.max_sessions,
        )
        yield LocalHost(name, settings, engines, registry, sources, face_mesh)
    finally:
        if registry is not None:
            await registry.close_all()
        if janitor is not None:
            janitor.cancel()
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        for engine in engines.values():
            engine.close()
        if face_mesh is not None:
            face_mesh.close()


def _engine(settings: Settings, size: int) -> Engine:
    """The generator engine for one size."""
    batch = settings.batch_max_size
    engine = create_engine(settings.backend, size, settings.engine_threads, max_batch=batch)
    return _shared(engine, settings)


def _face_mesh_engine(settings: Settings) -> Engine:
    """The landmark network every session's MeshTracker shares, batched like the generator."""
    batch = settings.batch_max_size
    engine = create_face_mesh_engine(settings.backend, settings.engine_threads, max_batch=batch)
    return _shared(engine, settings)


def _shared(engine: Engine, settings: Settings) -> Engine:
    """``engine`` behind a cross-session batch scheduler when batch_max_size > 1."""
    if settings.batch_max_size <= 1:
        return engine
    return BatchScheduler(
        engine, max_batch=settings.batch_max_size, max_wait_ms=settings.batch_max_wait_ms
    )
