"""The API side of the cluster: a :class:`SessionHost` whose sessions run in Ray actors.

:class:`RayHost` holds one handle per worker (:class:`service.cluster.actor.HostActor`).  A new
session goes to the least-loaded live worker that serves its size; every later call on it goes
to that worker, which alone holds the session's peer connection and checks its token.  A worker
that dies (its process killed, its node gone) is noticed on the next call to it or within
``MONITOR_PERIOD_S`` and never used again; its sessions read as ended with status ``failed``
("its worker worker-1 died"), while the other workers' sessions carry on and new ones go to the
survivors.  The monitor then starts a fresh actor in the dead one's slot (``worker-1.1``, then
``worker-1.2``, ...), at most once per slot every ``REPLACE_INTERVAL_S``; it takes sessions once
it has started.  With no live worker left, creating a session is a 503.

Every await on Ray goes through ``ObjectRef.future()``, so the event loop is never blocked
(no ``ray.get``) and the same code works with a local cluster, ``auto`` and ``ray://``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError, RayTaskError

from models.errors import BadInputError, ReenactError
from service.cluster.actor import Census, Failure, HostActor, WorkerInfo
from service.errors import ServerFullError, SessionEndedError, SessionNotFoundError
from service.hosting import HostLoad, SessionListing, SessionRequest, SessionView, ended_view
from service.metrics import Metrics
from service.sessions import ENDED_KEEP_MAX, EndedSession, EndStatus, end_status
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

NAMESPACE = "reenact"
CALL_TIMEOUT_S = 60.0  # one create/view/negotiate/end: longer means the worker is stuck
PROBE_TIMEOUT_S = 5.0  # a load or liveness probe: a slower worker is skipped for placement
# A worker's metrics for a /metrics scrape: well inside Prometheus's default 10 s scrape timeout,
# so one stuck worker costs the scrape this long and its own samples, never the whole scrape.
METRICS_TIMEOUT_S = 2.0
MONITOR_PERIOD_S = 2.0  # how soon a dead worker is noticed when nobody calls it
START_TIMEOUT_S = 300.0  # engines, face tracker and default avatar, workers in parallel
# A dead worker's slot gets a new actor at most once per this many seconds: the first replacement
# starts at the next monitor check, but a node that keeps killing its workers (out of memory, a
# crash at start-up) costs one start per slot per interval, not a tight restart loop.
REPLACE_INTERVAL_S = 30.0
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024  # only photos and SDP cross it; Docker's /dev/shm
# is 64 MiB by default, and Ray's default (30 % of RAM) is sized for data pipelines.
# One BLAS/OpenMP thread per worker process: see service.system.single_threaded_children.
WORKER_ENV = dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "1")


@dataclass(frozen=True)
class WorkerPool:
    """Which Ray cluster, and how many workers of what size to start on it."""

    address: str | None  # None: a local cluster in this process; "auto" or "ray://head:10001"
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError(f"not a usable worker pool: {self}")


class Worker:
    """One worker actor as the router sees it."""

    def __init__(self, name: str, handle: Any, slot: int = 0) -> None:
        self.name = name
        self.handle = handle  # ray.actor.ActorHandle of a HostActor
        self.slot = slot  # its index in RayHost.workers, kept by its replacements
        self.node_ip = "?"
        self.pid = 0
        self.alive = True
        self.placing = 0  # creates sent to it and not answered yet

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead"
        return f"Worker({self.name} on {self.node_ip}, pid {self.pid}, {state})"


class _WorkerLost(Exception):
    """A worker died during a call (internal: turned into a project error by the caller)."""


@dataclass
class _Placed:
    """A session the router has placed: its owner, and what it needs should the owner die."""

    worker: Worker
    token: str
    view: SessionView  # the latest seen (options, owner, stats)
    seen_at: float  # time.monotonic() of that view


@dataclass(frozen=True)
class _Lost:
    """A session that died with its worker, answered for like any recently ended session."""

    record: EndedSession
    host: str


class RayHost:
    """Places sessions on workers and routes calls to them.  Built by :func:`ray_host`.

    A session lost with its worker reads like one that ended with status ``failed``: its view
    (to its own token) says ``its worker worker-1 died`` for ``ended_keep_s``, offer and delete
    are 410, and after that it is unknown (404), as in single-process mode.
    """

    def __init__(
        self,
        workers: list[Worker],
        settings: Settings,
        metrics: Metrics,
        spawn: Callable[[str], Any] | None = None,
    ) -> None:
        self.workers = workers  # one per slot: a replacement takes its dead predecessor's place
        self._settings = settings
        self._metrics = metrics
        self._spawn = spawn  # worker name -> a new actor handle; None: dead workers stay dead
        self._placed: dict[str, _Placed] = {}  # session id -> where it runs
        self._lost: OrderedDict[str, _Lost] = OrderedDict()  # oldest first
        self._monitor: asyncio.Task[None] | None = None
        self._replacing: dict[int, asyncio.Task[None]] = {}  # slot -> its replacement starting
        self._replaced_at: dict[int, float] = {}  # slot -> when its last replacement began
        self._generation: dict[int, int] = {}  # slot -> replacements started so far
        self._deferred: set[str] = set()  # dead workers whose replacement waits (logged once)

    def worker(self, name: str) -> Worker:
        return next(w for w in self.workers if w.name == name)

    # -- SessionHost --------------------------------------------------------------------------

    async def create(self, request: SessionRequest) -> tuple[SessionView, str]:
        excluded: set[str] = set()
        while True:
            worker = await self._place(request, excluded)
            worker.placing += 1
            try:
                view, token = await self._call(worker, worker.handle.create.remote(request))
            except (_WorkerLost, ServerFullError):
                # Died, or filled up since it was probed: nothing was created; try the others.
                excluded.add(worker.name)
                continue
            finally:
                worker.placing -= 1
            self._placed[view.id] = _Placed(worker, token, view, time.monotonic())
            self._metrics.sessions_total.inc()
            log.info("session %s: placed on %s", view.id, worker.name)
            return view, token

    async def view(self, session_id: str, token: str | None) -> SessionView:
        try:
            view: SessionView = await self._on_session(
                session_id, token, lambda h: h.view.remote(session_id, token)
            )
        except SessionEndedError:
            lost = self._lost_session(session_id)
            if lost is None:
                raise
            record = lost.record  # its token was checked on the way
            return ended_view(record, lost.host)
        placed = self._placed.get(session_id)
        if placed is not None:
            placed.view, placed.seen_at = view, time.monotonic()
        return view

    async def negotiate(self, session_id: str, token: str | None, offer_sdp: str) -> str:
        answer: str = await self._on_session(
            session_id, token, lambda h: h.negotiate.remote(session_id, token, offer_sdp)
        )
        return answer

    async def end(self, session_id: str, token: str | None, reason: str) -> None:
        # Still routed afterwards: the worker keeps the ended session readable for a while.
        await self._on_session(session_id, token, lambda h: h.end.remote(session_id, token, reason))
        placed = self._placed.get(session_id)
        if placed is not None:  # should its worker die now, it still reads as ended, not failed
            placed.view = replace(placed.view, status=end_status(reason), ended_reason=reason)

    async def load(self) -> HostLoad:
        """The live workers' loads summed (a worker that does not answer in time counts 0)."""
        return _total([load for _, load in await self._loads(self._alive())])

    async def sessions(self, owner: str | None, include_ended: bool = False) -> SessionListing:
        """Every live worker's sessions of ``owner``, asked concurrently, and, with
        ``include_ended``, those lost with a dead worker that are still kept.  A worker that does
        not answer within ``PROBE_TIMEOUT_S`` (or fails, or has died) is left out and logged: a
        listing shows what answered, and names the others, rather than failing for one stuck
        worker.  A dead worker's sessions are not missing: they are the ``failed`` records kept
        for ``include_ended``."""
        answers, failures = await self._ask_all(
            lambda w: w.handle.sessions.remote(owner, include_ended),
            PROBE_TIMEOUT_S,
            "sessions left out of a listing",
        )
        views: list[SessionView] = [view for _, part in answers for view in part]
        unanswered = [w.name for w, error in failures if not isinstance(error, _WorkerLost)]
        now = time.monotonic()
        for view in views:  # fresher views for what _lose keeps should the worker die
            placed = self._placed.get(view.id)
            if placed is not None:
                placed.view, placed.seen_at = view, now
        if include_ended:
            self._forget_lost(now)
            views += [
                ended_view(lost.record, lost.host)
                for lost in self._lost.values()
                if owner is None or lost.record.owner == owner
            ]
        return SessionListing(views, tuple(unanswered))

    async def metrics(self) -> list[tuple[str, bytes]]:
        """Every live worker's Prometheus exposition, asked concurrently.  One that does not
        answer within ``METRICS_TIMEOUT_S`` (or fails, or has died) is left out of this scrape
        and counted in ``reenact_cluster_scrape_errors_total{worker}``."""
        answers, failures = await self._ask_all(
            lambda w: w.handle.metrics.remote(),
            METRICS_TIMEOUT_S,
            "metrics left out of the scrape",
        )
        for worker, _ in failures:
            self._metrics.scrape_errors.labels(worker.name).inc()
        return [(worker.name, exposition) for worker, exposition in answers]

    # -- placement and routing ----------------------------------------------------------------

    def _alive(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    async def _place(self, request: SessionRequest, excluded: set[str]) -> Worker:
        """The least-loaded live worker serving the size: lowest fill, then fewest sessions."""
        alive = self._alive()
        if not alive:
            raise ServerFullError(
                "no session worker is alive", retry_after=self._settings.retry_after_s
            )
        loads = await self._loads([w for w in alive if w.name not in excluded])
        served = {size for _, load in loads for size in load.sizes}
        if served and request.size not in served:
            raise BadInputError(
                f"size {request.size} is not served here (served: {sorted(served)})"
            )
        # A create in flight may or may not be counted by the worker's own load yet; the larger
        # of the two is right or one low, and one low costs at most a retry on another worker.
        free = [
            (max(load.sessions, worker.placing) / load.capacity, load.sessions, worker)
            for worker, load in loads
            if request.size in load.sizes and max(load.sessions, worker.placing) < load.capacity
        ]
        if not free:
            self._metrics.rejected.inc()
            raise ServerFullError(
                f"every session worker is full ({len(alive)} workers)",
                retry_after=self._settings.retry_after_s,
            )
        return min(free, key=lambda f: (f[0], f[1], f[2].name))[2]

    async def _loads(self, workers: list[Worker]) -> list[tuple[Worker, HostLoad]]:
        answers, _ = await self._ask_all(
            lambda w: w.handle.load.remote(), PROBE_TIMEOUT_S, "no load report", workers
        )
        return answers

    async def _ask_all(
        self,
        call: Callable[[Worker], Any],
        timeout: float,
        what: str,
        workers: list[Worker] | None = None,
    ) -> tuple[list[tuple[Worker, Any]], list[tuple[Worker, BaseException]]]:
        """One call to every worker (default: the live ones) at once: the answers, and the
        workers that did not give one with why.  A failure is logged as ``what``, except a
        death, which :meth:`_lose` has logged already."""
        workers = self._alive() if workers is None else workers
        results = await asyncio.gather(
            *(self._call(w, call(w), timeout) for w in workers), return_exceptions=True
        )
        answers, failures = [], []
        for worker, result in zip(workers, results, strict=True):
            if not isinstance(result, BaseException):
                answers.append((worker, result))
                continue
            failures.append((worker, result))
            if not isinstance(result, _WorkerLost):
                log.warning("worker %s: %s: %s", worker.name, what, result)
        return answers, failures

    async def _on_session(
        self, session_id: str, token: str | None, send: Callable[[Any], Any]
    ) -> Any:
        """Send a call to the session's worker; SessionEndedError (410) if it died with it."""
        placed = self._placed.get(session_id)
        if placed is not None:
            try:
                return await self._call(placed.worker, send(placed.worker.handle))
            except _WorkerLost:
                pass  # now among the lost: answered below
            except SessionEndedError:
                raise  # ended on the worker, which still answers for it
            except SessionNotFoundError:
                self._placed.pop(session_id, None)  # the worker has forgotten it
                raise
        lost = self._lost_session(session_id)
        if lost is None:
            raise SessionNotFoundError(f"no session {session_id!r}")
        lost.record.check_token(token)
        raise SessionEndedError(
            f"session {session_id!r} has ended ({lost.record.reason}); create a new one"
        )

    async def _call(self, worker: Worker, ref: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Await one actor call; return its value or raise the project error the worker raised.

        Raises :class:`_WorkerLost` (after retiring the worker) when it has died.
        """
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
        except ActorUnavailableError as e:  # a network blip or a restart: may come back
            raise ServerFullError(
                f"worker {worker.name} is unreachable right now",
                retry_after=self._settings.retry_after_s,
            ) from e
        except RayActorError as e:
            self._lose(worker, e)
            raise _WorkerLost(worker.name) from e
        except RayTaskError as e:  # not a project error: a bug in the worker, logged in full
            log.error("worker %s: call failed:\n%s", worker.name, e)
            raise ReenactError(f"worker {worker.name} failed: {type(e.cause).__name__}") from e
        except RayError as e:
            log.error("worker %s: call failed: %r", worker.name, e)
            raise ReenactError(f"worker {worker.name} failed: {type(e).__name__}") from e
        except TimeoutError:
            raise ReenactError(
                f"worker {worker.name} did not answer within {timeout:g} s"
            ) from None
        if isinstance(result, Failure):
            raise result.error()
        return result

    # -- lost workers and sessions ------------------------------------------------------------

    def _lose(self, worker: Worker, error: BaseException) -> None:
        """Retire a dead worker; its sessions (whose media died with it) become lost."""
        if not worker.alive:
            return
        worker.alive = False
        now = time.monotonic()
        reason = f"its worker {worker.name} died"
        lost = [sid for sid, placed in self._placed.items() if placed.worker is worker]
        for session_id in lost:
            placed = self._placed.pop(session_id)
            view = placed.view
            status: EndStatus = "failed"
            why, age_s = reason, round(view.age_s + now - placed.seen_at, 2)
            if view.status in ("ended", "failed"):  # it had ended before: keep how
                status = "ended" if view.status == "ended" else "failed"
                why, age_s = view.ended_reason or reason, view.age_s
            self._lost[session_id] = _Lost(
                EndedSession(
                    id=session_id,
                    owner=view.owner,
                    options=view.options,
                    status=status,
                    reason=why,
                    age_s=age_s,
                    stats=view.stats,
                    ended_at=now,
                    token=placed.token,
                ),
                worker.name,
            )
        self._forget_lost(now)
        self._metrics.sessions_ended.labels("worker lost").inc(len(lost))
        log.error(
            "worker %s on %s died, %d sessions lost, %d workers left: %s",
            worker.name,
            worker.node_ip,
            len(lost),
            len(self._alive()),
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )

    def _lost_session(self, session_id: str) -> _Lost | None:
        self._forget_lost(time.monotonic())
        return self._lost.get(session_id)

    def _forget_lost(self, now: float) -> None:
        """Keep lost sessions as the registry keeps ended ones: ended_keep_s, and a bounded few."""
        while self._lost:
            oldest = next(iter(self._lost.values())).record
            if now - oldest.ended_at <= self._settings.ended_keep_s and (
                len(self._lost) <= ENDED_KEEP_MAX
            ):
                break
            self._lost.popitem(last=False)

    # -- liveness -----------------------------------------------------------------------------

    async def check_workers(self) -> None:
        """Notice dead workers, forget sessions their worker has forgotten, and publish the
        live session count.  Run every ``MONITOR_PERIOD_S`` by :func:`ray_host`: one small
        call per live worker."""
        asked = [
            (w, [sid for sid, placed in self._placed.items() if placed.worker is w])
            for w in self._alive()
        ]
        results = await asyncio.gather(
            *(self._call(w, w.handle.census.remote(ids), PROBE_TIMEOUT_S) for w, ids in asked),
            return_exceptions=True,
        )
        loads = []
        for result in results:
            if isinstance(result, Census):
                for session_id in result.gone:
                    self._placed.pop(session_id, None)
                if result.load is not None:
                    loads.append(result.load)
        self._metrics.active_sessions.set(_total(loads).sessions)
        self._forget_lost(time.monotonic())
        self._replace_dead()

    # -- replacing dead workers ---------------------------------------------------------------

    def _replace_dead(self) -> None:
        """Start a new actor in each dead worker's slot, unless one is starting there already or
        the slot's last replacement began less than ``REPLACE_INTERVAL_S`` ago."""
        if self._spawn is None:
            return
        now = time.monotonic()
        for slot, worker in enumerate(self.workers):
            if worker.alive or slot in self._replacing:
                continue
            since = now - self._replaced_at.get(slot, -math.inf)
            if since < REPLACE_INTERVAL_S:
                if worker.name not in self._deferred:
                    self._deferred.add(worker.name)
                    log.warning(
                        "worker %s: its slot was last replaced %.0f s ago, next try in %.0f s",
                        worker.name,
                        since,
                        REPLACE_INTERVAL_S - since,
                    )
                continue
            self._deferred.discard(worker.name)
            self._replaced_at[slot] = now
            generation = self._generation[slot] = self._generation.get(slot, 0) + 1
            name = f"worker-{slot}.{generation}"
            task = asyncio.get_running_loop().create_task(
                self._replace(slot, worker, name), name=f"ray-replace-{name}"
            )
            self._replacing[slot] = task

    async def _replace(self, slot: int, dead: Worker, name: str) -> None:
        """Start ``name`` and, once started, put it in ``dead``'s slot; it then takes sessions.
        A start that fails leaves the slot dead until the next allowed attempt; cancelled (on
        shutdown), the new actor is killed."""
        try:
            await self._start_replacement(slot, dead, name)
        finally:
            self._replacing.pop(slot, None)

    async def _start_replacement(self, slot: int, dead: Worker, name: str) -> None:
        assert self._spawn is not None
        log.info("worker %s: starting to replace %s", name, dead.name)
        try:
            ray.kill(dead.handle, no_restart=True)  # dead already: frees anything it still holds
            handle = self._spawn(name)
        except Exception:
            log.exception("worker %s: could not be created", name)
            return
        try:
            info: WorkerInfo = await asyncio.wait_for(
                _result(handle.start.remote()), START_TIMEOUT_S
            )
        except BaseException as e:
            ray.kill(handle, no_restart=True)
            if not isinstance(e, Exception):
                raise  # cancelled: shutting down
            why = f"not started within {START_TIMEOUT_S:g} s" if isinstance(e, TimeoutError) else e
            log.error("worker %s: failed to start, %s stays dead: %s", name, dead.name, why)
            return
        worker = Worker(name, handle, slot)
        worker.node_ip, worker.pid = info.node_ip, info.pid
        self.workers[slot] = worker
        log.info("worker %s replaces %s: %r", name, dead.name, worker)

    async def stop_replacing(self) -> None:
        """Cancel the replacements still starting (their actors are killed)."""
        tasks = list(self._replacing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_PERIOD_S)
            try:
                await self.check_workers()
            except Exception:  # the monitor must outlive any one bad probe
                log.exception("worker check failed")

    def start_monitor(self) -> None:
        self._monitor = asyncio.get_running_loop().create_task(self._watch(), name="ray-monitor")

    async def stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
            self._monitor = None
        await self.stop_replacing()


def _total(loads: list[HostLoad]) -> HostLoad:
    """Several workers' loads as one host's."""
    by_owner: dict[str, int] = {}
    for load in loads:
        for owner, count in load.by_owner.items():
            by_owner[owner] = by_owner.get(owner, 0) + count
    return HostLoad(
        sessions=sum(load.sessions for load in loads),
        capacity=sum(load.capacity for load in loads),
        sizes=tuple(sorted({size for load in loads for size in load.sizes})),
        by_owner=by_owner,
    )


# -- lifecycle ----------------------------------------------------------------------------------


@asynccontextmanager
async def ray_host(
    settings: Settings, metrics: Metrics, pool: WorkerPool
) -> AsyncIterator[RayHost]:
    """Connect to Ray (or start a local cluster), start the workers, yield the router.

    On exit the monitor stops (and with it any replacement still starting, whose actor is
    killed), every live worker ends its sessions cleanly, bounded in time, then the actors are
    killed and Ray is shut down if this call started it.  A Ray connection that already exists
    in the process (a test's, an embedding program's) is used as it is and left open.
    """
    # ray.init in a thread: it takes seconds, and off the main thread it leaves the server's
    # SIGTERM handler alone (on it, Ray installs its own, which exits without a graceful stop).
    connected = await asyncio.to_thread(_connect, pool)
    workers: list[Worker] = []
    host: RayHost | None = None
    try:
        spawn = _spawner(settings, pool)
        workers = [Worker(f"worker-{i}", spawn(f"worker-{i}"), i) for i in range(pool.workers)]
        await _start(workers, pool)
        log.info("ray host ready: %s", ", ".join(map(repr, workers)))
        host = RayHost(workers, settings, metrics, spawn)
        host.start_monitor()
        yield host
    finally:
        if host is not None:
            await host.stop_monitor()
            workers = host.workers  # with the replacements that have started
        await _stop(workers, settings.shutdown_timeout_s)
        if connected:
            await asyncio.to_thread(ray.shutdown)


def _connect(pool: WorkerPool) -> bool:
    """``ray.init`` unless already connected; True if this call connected."""
    if ray.is_initialized():
        return False
    if pool.address is None:
        # A service does not report usage to anyone; a cluster started by `ray start` has its
        # own switch (--disable-usage-stats).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=max(1, math.ceil(pool.workers * pool.cpus_per_worker)),
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=False,
            namespace=NAMESPACE,
        )
    else:
        ray.init(address=pool.address, log_to_driver=False, namespace=NAMESPACE)
    return True


def _spawner(settings: Settings, pool: WorkerPool) -> Callable[[str], Any]:
    """A function that creates one worker actor (not started yet) by name."""
    # A worker's frame executor is sized to its CPU share, not to its node's cores.  API keys
    # are checked here, in the API: they stay out of the workers and Ray's object store.
    threads = settings.inference_workers or max(1, math.floor(pool.cpus_per_worker))
    worker_settings = settings.model_copy(update={"inference_workers": threads, "api_keys": {}})
    actor = ray.remote(HostActor).options(
        num_cpus=pool.cpus_per_worker,
        num_gpus=pool.gpus_per_worker,
        scheduling_strategy="SPREAD",  # one node's loss takes as few sessions as possible
        max_restarts=0,  # a restarted worker would have lost its sessions anyway: the router
        # starts a new one instead (RayHost._replace_dead), under its own name and rate limit
        runtime_env={"env_vars": WORKER_ENV},
    )

    def spawn(name: str) -> Any:
        return actor.remote(name, worker_settings)

    return spawn


async def _start(workers: list[Worker], pool: WorkerPool) -> None:
    """Start every worker in parallel; a worker that cannot start stops the whole start-up."""
    starts = [_result(w.handle.start.remote()) for w in workers]
    try:
        infos: list[WorkerInfo] = await asyncio.wait_for(asyncio.gather(*starts), START_TIMEOUT_S)
    except TimeoutError:
        # Ray queues an actor that no node has room for instead of failing it.
        needs = f"{pool.workers} x {pool.cpus_per_worker:g} CPUs"
        if pool.gpus_per_worker:
            needs += f" and {pool.workers} x {pool.gpus_per_worker:g} GPUs"
        raise RuntimeError(
            f"{pool.workers} workers did not start within {START_TIMEOUT_S:g} s: "
            f"does the Ray cluster have {needs} free?"
        ) from None
    for worker, info in zip(workers, infos, strict=True):
        worker.node_ip, worker.pid = info.node_ip, info.pid


async def _stop(workers: list[Worker], timeout_s: float) -> None:
    """Ask live workers to end their sessions; after the grace period, kill every actor."""
    alive = [w for w in workers if w.alive]
    if alive:
        # A worker closes its sessions concurrently, each step under timeout_s: peers, tasks,
        # then the frame in flight; then its executor.  Three steps and a margin.
        shutdowns = [asyncio.ensure_future(_result(w.handle.shutdown.remote())) for w in alive]
        _, pending = await asyncio.wait(shutdowns, timeout=3 * timeout_s + 2)
        for worker, task in zip(alive, shutdowns, strict=True):
            if task in pending:
                log.warning("worker %s: shutdown timed out", worker.name)
                task.cancel()
            elif task.exception() is not None:
                log.warning("worker %s: shutdown failed: %r", worker.name, task.exception())
    for worker in workers:
        ray.kill(worker.handle, no_restart=True)
        worker.alive = False


async def _result(ref: Any) -> Any:
    return await asyncio.wrap_future(ref.future())
