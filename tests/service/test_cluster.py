"""Sessions on a Ray cluster: a private local cluster, two worker actors, WebRTC on loopback.

The tests drive :class:`service.cluster.RayHost` as the API does: placement on the least-loaded
worker, every call routed to the session's owner, real WebRTC media between an aiortc client
here and the worker process, one HTTP round trip through the real app, and workers killed
mid-call and replaced.  One cluster serves the module (starting it and the workers' engines is
most of the module's time), so the test that kills the workers runs last.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import replace
from types import SimpleNamespace

import cv2
import httpx
import numpy as np
import pytest
import pytest_asyncio
import ray
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from models.errors import BadInputError, ReenactError
from service.app import create_app, serving
from service.builtin import AvatarCatalog
from service.cluster import RayHost, WorkerPool, ray_host, router
from service.cluster.actor import Failure
from service.cluster.router import Worker
from service.errors import (
    ServerFullError,
    SessionConflictError,
    SessionEndedError,
    SessionNotFoundError,
    UnauthorizedError,
)
from service.hosting import HostLoad, SessionListing, SessionRequest, SessionView
from service.metrics import Metrics
from service.rtc.client import ClipClient, ClipTrack
from service.rtc.peer import peer_connection, use_host_addresses
from service.rtc.tracks import drain
from service.sessions import SessionOptions
from service.state import ServiceState
from tests.conftest import load_clip
from tests.service.conftest import make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

REQUEST = SessionRequest(size=256, fps=15)
SETTINGS = make_settings(max_sessions=2, retry_after_s=7)
FPS = 15.0  # the clients' camera rate: two sessions and their codecs share 2 cores here


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def host() -> AsyncIterator[RayHost]:
    assert not ray.is_initialized(), "the cluster must be this module's own"
    undo = use_host_addresses(["127.0.0.1"])  # this process's client peers; workers set theirs
    try:
        async with ray_host(SETTINGS, Metrics(), WorkerPool(None, 2, 1)) as host:
            yield host
    finally:
        undo()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    # 256² camera frames: the client's VP8 encoder is the costliest thing in this process.
    return [cv2.resize(f, (256, 256)) for f in load_clip("lp_d18.mp4", 60)]


class Caller:
    """A client peer that sends a clip to one session and keeps the avatar frames it gets."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.pc: RTCPeerConnection = peer_connection([])
        self.pc.addTrack(ClipTrack(frames, FPS))
        self.frames: list[np.ndarray] = []
        self._reader: asyncio.Task[None] | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.get_running_loop().create_task(self._read(track))

    async def call(self, host: RayHost, view: SessionView, token: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await host.negotiate(view.id, token, self.pc.localDescription.sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def received(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` avatar frames have arrived in all."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return len(self.frames) >= count

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self, track: MediaStreamTrack) -> None:
        await drain(track, lambda a: self.frames.append(a.frame.to_ndarray(format="rgb24")))


def looks_rendered(image: np.ndarray) -> bool:
    """An avatar frame, not a blank or frozen-grey one: the portrait's detail is there."""
    return image.shape == (256, 256, 3) and float(image.std()) > 20


class FakeWorker:
    """An actor handle whose ``load`` answers at once (placement without a cluster)."""

    def __init__(self, load: HostLoad) -> None:
        self.load = SimpleNamespace(remote=lambda: SimpleNamespace(future=lambda: done(load)))


def done(value: object) -> Future[object]:
    future: Future[object] = Future()
    future.set_result(value)
    return future


async def test_placement_prefers_the_emptiest_then_the_fewest_sessions() -> None:
    def host_of(*loads: tuple[int, int, tuple[int, ...]]) -> RayHost:
        workers = [
            Worker(f"w{i}", FakeWorker(HostLoad(sessions=n, capacity=cap, sizes=sizes)))
            for i, (n, cap, sizes) in enumerate(loads)
        ]
        return RayHost(workers, SETTINGS, Metrics())

    async def placed(host: RayHost, size: int = 256) -> str:
        return (await host._place(SessionRequest(size=size, fps=15), set())).name

    assert await placed(host_of((1, 2, (256,)), (1, 4, (256,)))) == "w1"  # 25 % beats 50 %
    assert await placed(host_of((2, 4, (256,)), (1, 2, (256,)))) == "w1"  # tie: fewer sessions
    assert await placed(host_of((0, 2, (512,)), (1, 2, (256,))), 256) == "w1"  # serves the size
    with pytest.raises(BadInputError, match="size 512 is not served"):
        await placed(host_of((0, 2, (256,))), 512)
    with pytest.raises(ServerFullError, match="every session worker is full"):
        await placed(host_of((2, 2, (256,)), (4, 4, (256,))))


async def test_a_scrape_leaves_out_workers_that_do_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def worker(name: str, answer: Future[object]) -> Worker:
        handle = SimpleNamespace(
            metrics=SimpleNamespace(remote=lambda: SimpleNamespace(future=lambda: answer))
        )
        return Worker(name, handle)

    stuck: Future[object] = Future()  # never answers
    stopped = done(Failure.of(ReenactError("worker w2 is not running")))
    metrics = Metrics()
    host = RayHost(
        [worker("w0", done(b"x 1.0\n")), worker("w1", stuck), worker("w2", stopped)],
        SETTINGS,
        metrics,
    )
    monkeypatch.setattr(router, "METRICS_TIMEOUT_S", 0.2)
    started = time.monotonic()
    assert await host.metrics() == [("w0", b"x 1.0\n")]
    assert time.monotonic() - started < 2
    errors = [
        metrics.registry.get_sample_value("reenact_cluster_scrape_errors_total", {"worker": w})
        for w in ("w0", "w1", "w2")
    ]
    assert errors == [None, 1, 1]  # w0 answered: never counted


async def test_a_listing_leaves_out_workers_that_do_not_answer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def worker(name: str, answer: Future[object]) -> Worker:
        handle = SimpleNamespace(
            sessions=SimpleNamespace(remote=lambda *_: SimpleNamespace(future=lambda: answer))
        )
        return Worker(name, handle)

    view = SessionView("s0", "live", SessionOptions(256, 15, "avatar", None), 1.0, {}, "a", "w0")
    stuck: Future[object] = Future()  # never answers
    stopped = done(Failure.of(ReenactError("worker w2 is not running")))
    host = RayHost(
        [worker("w0", done([view])), worker("w1", stuck), worker("w2", stopped)],
        SETTINGS,
        Metrics(),
    )
    monkeypatch.setattr(router, "PROBE_TIMEOUT_S", 0.2)
    started = time.monotonic()
    listing = await host.sessions("a")
    assert time.monotonic() - started < 2
    assert listing == SessionListing([view], ("w1", "w2"))  # partial, and says which
    left_out = [r.getMessage() for r in caplog.records if "left out of a listing" in r.message]
    assert [m.split(":")[0] for m in left_out] == ["worker w1", "worker w2"]
    assert "did not answer within 0.2 s" in left_out[0] and "not running" in left_out[1]


async def test_new_sessions_go_to_the_least_loaded_worker(host: RayHost) -> None:
    first = [await host.create(REQUEST) for _ in range(2)]
    assert {view.host for view, _ in first} == {"worker-0", "worker-1"}
    load = await host.load()
    assert (load.sessions, load.capacity, load.sizes) == (2, 4, (256,))

    acme = replace(REQUEST, owner="acme")
    more = [await host.create(acme) for _ in range(2)]
    assert Counter(view.host for view, _ in first + more) == {"worker-0": 2, "worker-1": 2}
    with pytest.raises(ServerFullError, match="every session worker is full") as full:
        await host.create(REQUEST)
    assert full.value.retry_after == 7

    # A listing gathers every worker's sessions: an owner's alone, or all of them.
    owned = (await host.sessions("acme")).views
    assert sorted((v.id, v.host) for v in owned) == sorted((v.id, v.host) for v, _ in more)
    assert {v.host for v in owned} == {"worker-0", "worker-1"}
    everyone = await host.sessions(None)
    assert everyone.unanswered == ()
    assert {v.id for v in everyone.views} == {v.id for v, _ in first + more}

    for view, token in first + more:
        await host.end(view.id, token, "deleted")
    assert (await host.load()).sessions == 0
    assert await host.sessions("acme") == SessionListing([])
    ended = (await host.sessions("acme", include_ended=True)).views
    assert sorted((v.id, v.status, v.ended_reason) for v in ended) == sorted(
        (v.id, "ended", "deleted") for v, _ in more
    )
    # Errors raised inside a worker come back as the project's own, message and all.
    with pytest.raises(BadInputError) as bad:
        await host.create(SessionRequest(size=256, fps=15, avatar="nobody"))
    assert str(bad.value) == "unknown avatar 'nobody' (built-in: astronaut)"
    with pytest.raises(BadInputError, match=r"size 512 is not served here \(served: \[256\]\)"):
        await host.create(SessionRequest(size=512, fps=15))


async def test_calls_reach_the_worker_that_owns_the_session(
    host: RayHost, clip: list[np.ndarray]
) -> None:
    view, token = await host.create(REQUEST)
    owner = host.worker(view.host)
    other = next(w for w in host.workers if w is not owner)
    caller = Caller(clip)
    try:
        await caller.call(host, view, token)
        assert await caller.received(10, timeout=30), f"{len(caller.frames)} frames came back"
        assert all(looks_rendered(image) for image in caller.frames[-5:])

        seen = await host.view(view.id, token)
        assert (seen.id, seen.host, seen.status) == (view.id, owner.name, "live")
        assert isinstance(seen.stats["frames_out"], int) and seen.stats["frames_out"] >= 10
        # Only the owner knows the session: sent anywhere else, the call would have failed.
        elsewhere = await other.handle.view.remote(view.id, token)
        assert isinstance(elsewhere, Failure) and elsewhere.kind is SessionNotFoundError
        # Errors of the owner's session logic come back as they were raised.
        with pytest.raises(SessionConflictError, match="already has a peer connection"):
            await host.negotiate(view.id, token, caller.pc.localDescription.sdp)
        with pytest.raises(UnauthorizedError):
            await host.end(view.id, "not-the-token", "deleted")

        # Ended, it is still the owner's to answer for, as in one process: 200 then 410.
        await host.end(view.id, token, "deleted")
        ended = await host.view(view.id, token)
        assert (ended.status, ended.ended_reason, ended.host) == ("ended", "deleted", owner.name)
        with pytest.raises(SessionEndedError, match=r"has ended \(deleted\)"):
            await host.end(view.id, token, "deleted")
        assert (await host.load()).sessions == 0
        with pytest.raises(SessionNotFoundError, match="no session 'nonesuch'"):
            await host.view("nonesuch", token)
    finally:
        await caller.close()


async def test_the_api_serves_a_call_through_the_cluster(
    host: RayHost, clip: list[np.ndarray]
) -> None:
    """One HTTP round trip: the real app and routes, with this module's RayHost behind them."""

    @asynccontextmanager
    async def on_the_cluster(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = ServiceState(SETTINGS, Metrics(), host, AvatarCatalog())
        yield

    app = create_app(SETTINGS)
    app.router.lifespan_context = on_the_cluster
    async with serving(app) as url:
        client = ClipClient(url, clip, FPS)
        async with client:
            report = await client.play(1.0)
            stats = await client.stats()
            assert stats["status"] == "live"
            placed = await host.view(stats["id"], client.session["token"])
            assert placed.host in {"worker-0", "worker-1"}
            async with httpx.AsyncClient(base_url=url) as http:
                health = (await http.get("/healthz")).json()
                scraped = (await http.get("/metrics")).text
        assert report.started_at is not None and len(report.frames) >= 5
        assert (health["sessions"], health["max_sessions"]) == (1, 4)
        # /metrics shows the frames the owning worker rendered, and every worker's registry,
        # each family once, next to the API's own samples (no worker label).
        families = {f.name: f.samples for f in text_string_to_metric_families(scraped)}
        out = {s.labels.get("worker"): s.value for s in families["reenact_frames_out"]}
        assert out.keys() == {None, "worker-0", "worker-1"}
        assert out[placed.host] >= 5 and out[None] == 0
        active = {s.labels.get("worker"): s.value for s in families["reenact_active_sessions"]}
        assert active[placed.host] == 1
        assert scraped.count("# TYPE reenact_frames_out_total ") == 1
        # After DELETE (by the client's close) the owning worker still says how it ended.
        async with httpx.AsyncClient(base_url=url, headers=client.headers) as http:
            ended = await http.get(client.session["links"]["session"])
            gone = await http.delete(client.session["links"]["session"])
        assert ended.status_code == 200 and ended.json()["status"] == "ended"
        assert (gone.status_code, gone.json()["error"]) == (410, "ended")


async def test_a_killed_worker_takes_only_its_own_sessions_and_is_replaced(
    host: RayHost, clip: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    (kept, kept_token), (doomed, doomed_token) = [await host.create(REQUEST) for _ in range(2)]
    assert kept.host != doomed.host
    survivor, victim = host.worker(kept.host), host.worker(doomed.host)
    callers = [Caller(clip), Caller(clip)]
    try:
        await callers[0].call(host, kept, kept_token)
        await callers[1].call(host, doomed, doomed_token)
        assert await callers[0].received(5, timeout=30)
        assert await callers[1].received(5, timeout=30)

        ray.kill(victim.handle)
        # Noticed at the next call on it, or by the monitor within a couple of seconds; then it
        # reads like any session that failed: status, reason, 410 to offer and delete.
        lost = await view_until(host, doomed.id, doomed_token, "failed", timeout=20)
        assert (lost.ended_reason, lost.host) == (f"its worker {victim.name} died", victim.name)
        assert not victim.alive and survivor.alive
        with pytest.raises(SessionEndedError, match=f"its worker {victim.name} died"):
            await host.end(doomed.id, doomed_token, "deleted")
        with pytest.raises(UnauthorizedError):
            await host.view(doomed.id, kept_token)
        # A listing shows it failed (the router keeps it), next to the survivor's live one.
        listing = await host.sessions(None, include_ended=True)
        listed = {v.id: v.status for v in listing.views}
        assert (listed[doomed.id], listed[kept.id]) == ("failed", "live")
        assert listing.unanswered == ()  # the dead worker's sessions are there, as failed

        # The survivor's session carries on: frames keep coming, calls keep working.
        before = len(callers[0].frames)
        assert await callers[0].received(before + 10, timeout=20)
        assert looks_rendered(callers[0].frames[-1])
        assert (await host.view(kept.id, kept_token)).status == "live"
        await callers[1].close()

        # The monitor starts a new worker in the dead one's slot; once started, the pool's
        # capacity is whole again and the emptiest worker, the new one, takes the next session.
        deadline = time.monotonic() + 60
        while (await host.load()).capacity != 4:
            assert time.monotonic() < deadline, f"not replaced: {host.workers}"
            await asyncio.sleep(0.5)
        replacement = host.workers[victim.slot]
        assert replacement.alive and replacement.name == f"worker-{victim.slot}.1"
        assert survivor in host.workers and victim not in host.workers
        extra, extra_token = await host.create(REQUEST)
        assert extra.host == replacement.name
        more = [await host.create(REQUEST) for _ in range(2)]
        with pytest.raises(ServerFullError, match="every session worker is full"):
            await host.create(REQUEST)
        assert (await host.view(kept.id, kept_token)).status == "live"
        for view, token in [(extra, extra_token), (kept, kept_token), *more]:
            await host.end(view.id, token, "deleted")
        # The dead worker's session still reads as failed, with the worker it died with.
        lost = await host.view(doomed.id, doomed_token)
        assert (lost.status, lost.host) == ("failed", victim.name)
    finally:
        for caller in callers:
            await caller.close()

    # With every worker gone (and, here, none replaced) the service still answers: new sessions
    # are refused with 503, and a session deleted before its worker died still reads as deleted.
    monkeypatch.setattr(host, "_spawn", None)
    for worker in (survivor, replacement):
        ray.kill(worker.handle)
    deadline = time.monotonic() + 20
    while host._alive() and time.monotonic() < deadline:  # the monitor notices
        await asyncio.sleep(0.2)
    assert not survivor.alive and not replacement.alive
    assert (await host.load()).capacity == 0
    with pytest.raises(ServerFullError, match="no session worker is alive"):
        await host.create(REQUEST)
    deleted = await host.view(kept.id, kept_token)
    assert (deleted.status, deleted.ended_reason) == ("ended", "deleted")


async def view_until(
    host: RayHost, session_id: str, token: str, status: str, timeout: float
) -> SessionView:
    """The session's view once it has ``status`` (a kill takes a moment to be noticed)."""
    deadline = time.monotonic() + timeout
    while (view := await host.view(session_id, token)).status != status:
        assert time.monotonic() < deadline, f"still {view.status}"
        await asyncio.sleep(0.2)
    return view
