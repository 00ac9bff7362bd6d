"""One cluster worker: a Ray actor that runs a :class:`LocalHost` in its own process.

The actor owns everything its sessions touch (engines, the frame executor, the registry, every
aiortc peer connection), so media flows straight between the client and the worker's node; the
API process only relays signalling.  Ray runs an actor whose methods are coroutines on one
event loop of its own, which is exactly what aiortc and the session registry expect.

Every call returns a value, never raises a project error (see :class:`Failure`): what crosses
the process boundary must survive pickling, and Ray's own exception wrapping does not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import ray

from models.errors import ReenactError
from service.errors import SessionEndedError, SessionNotFoundError
from service.hosting import HostLoad, LocalHost, SessionRequest, SessionView, local_host
from service.metrics import Metrics
from service.rtc.process import apply_rtc_settings
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """A project error raised in a worker, carried back to the API as a plain value.

    Ray re-raises a remote exception by calling its class with ``args``, which fails for an
    error whose constructor takes more than the message (``ServerFullError(message,
    retry_after)`` arrives as ``UnserializableException``), and otherwise wraps it in a
    ``RayTaskError`` whose text is the remote traceback, which would then reach the client as
    the HTTP error detail.  Class, message and attributes rebuild exactly the error raised.
    """

    kind: type[ReenactError]
    message: str
    attrs: dict[str, Any]

    @classmethod
    def of(cls, error: ReenactError) -> Failure:
        return cls(type(error), str(error), dict(vars(error)))

    def error(self) -> ReenactError:
        """The error as the worker raised it (its constructor is bypassed, not re-run)."""
        error = self.kind.__new__(self.kind)
        Exception.__init__(error, self.message)
        error.__dict__.update(self.attrs)
        return error


@dataclass(frozen=True)
class WorkerInfo:
    """Where a started worker runs, for the router's logs and ``repr``."""

    name: str
    node_ip: str
    pid: int


@dataclass(frozen=True)
class Census:
    """A worker's answer to the router's periodic check (see :meth:`HostActor.census`)."""

    gone: tuple[str, ...]  # session ids the worker has forgotten
    load: HostLoad | None  # None: the worker is not running (being shut down)


class HostActor:
    """The protocol of :class:`~service.hosting.SessionHost`, served from a Ray actor.

    Made remote by the router (``ray.remote(HostActor).options(...)``), so its resources are
    chosen where the pool is configured.  ``start`` must be awaited before anything else;
    ``shutdown`` ends the sessions cleanly (peers first) and may be called more than once.
    """

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self._stack = AsyncExitStack()
        self._host: LocalHost | None = None
        self._metrics = Metrics()  # this process's; the API's /metrics shows it (see metrics)

    async def start(self) -> WorkerInfo:
        """Load the engines and open the session host; raises if that fails (start-up must)."""
        settings = self.settings
        # The actor's process is not the API's: its logging and the process-wide RTC switches
        # (loopback ICE, release at the RTP marker) are set up here again.
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("service").setLevel(settings.log_level.upper())
        self._stack.callback(apply_rtc_settings(settings))
        self._host = await self._stack.enter_async_context(
            local_host(settings, self._metrics, name=self.name)
        )
        info = WorkerInfo(self.name, ray.util.get_node_ip_address(), os.getpid())
        log.info("worker %s started on %s (pid %d)", self.name, info.node_ip, info.pid)
        return info

    async def create(self, request: SessionRequest) -> tuple[SessionView, str] | Failure:
        return await self._call(lambda host: host.create(request))

    async def view(self, session_id: str, token: str | None) -> SessionView | Failure:
        return await self._call(lambda host: host.view(session_id, token))

    async def negotiate(self, session_id: str, token: str | None, offer_sdp: str) -> str | Failure:
        return await self._call(lambda host: host.negotiate(session_id, token, offer_sdp))

    async def end(self, session_id: str, token: str | None, reason: str) -> Failure | None:
        return await self._call(lambda host: host.end(session_id, token, reason))

    async def load(self) -> HostLoad | Failure:
        return await self._call(lambda host: host.load())

    async def sessions(self, owner: str | None, include_ended: bool) -> list[SessionView] | Failure:
        if self._host is None:
            return Failure.of(ReenactError(f"worker {self.name} is not running"))
        return self._host.views(owner, include_ended)

    async def metrics(self) -> bytes | Failure:
        """This worker's Prometheus registry in the text format, for the API's ``/metrics``
        (which labels its samples with this worker's name).  Answered while running only."""
        if self._host is None:
            return Failure.of(ReenactError(f"worker {self.name} is not running"))
        return self._metrics.render()

    async def census(self, session_ids: list[str]) -> Census:
        """The router's periodic check: this worker's load, and which of the sessions the router
        placed here it no longer knows (ended, and no longer kept to say how).  One call per
        period keeps the router's table from growing with sessions that ended on their own."""
        host = self._host
        if host is None:
            return Census(tuple(session_ids), None)
        gone = []
        for session_id in session_ids:
            try:
                host.registry.get(session_id)
            except SessionEndedError:
                pass  # ended, but still kept: its owner can still read why
            except SessionNotFoundError:
                gone.append(session_id)
        return Census(tuple(gone), await host.load())

    async def shutdown(self) -> None:
        """End every session (bounded by shutdown_timeout_s per step), then free the engines."""
        host, self._host = self._host, None
        if host is not None:
            log.info("worker %s: shutting down", self.name)
        await self._stack.aclose()

    async def _call(self, call: Callable[[LocalHost], Awaitable[T]]) -> T | Failure:
        if self._host is None:
            return Failure.of(ReenactError(f"worker {self.name} is not running"))
        try:
            return await call(self._host)
        except ReenactError as error:
            return Failure.of(error)
