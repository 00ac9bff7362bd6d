"""The engine choices wired into the live service: cross-session batching (frames of two
sessions go through one BatchScheduler per size; its own contract is tested in
tests/engines/test_batching.py) and the face-mesh engine as every session's tracker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest_asyncio

from engines.batching import BatchScheduler
from models.mesh_tracking import MeshTracker
from models.pipeline import Reenactor
from models.tracking import FaceTracker
from service.hosting import LocalHost
from service.rtc.client import ClipClient
from tests.conftest import load_clip, mouth_open
from tests.service.conftest import LiveServer, make_settings, run_server


@pytest_asyncio.fixture
async def batched() -> AsyncIterator[LiveServer]:
    settings = make_settings(batch_max_size=2, batch_max_wait_ms=20.0, inference_workers=2)
    async for live in run_server(settings):
        yield live


async def test_two_sessions_stream_through_one_scheduler(batched: LiveServer) -> None:
    host = batched.state.host
    assert isinstance(host, LocalHost)
    scheduler = host.engines[256]
    assert isinstance(scheduler, BatchScheduler)
    assert scheduler.max_batch == 2

    clips = [load_clip("lp_d10.mp4", 45), load_clip("lp_d18.mp4", 45)]
    clients = [ClipClient(batched.url, frames, 30.0) for frames in clips]
    async with clients[0], clients[1]:
        reports = await asyncio.gather(*(c.play(2.0) for c in clients))
        stats = [(await c.stats())["stats"] for c in clients]

    for report, stat in zip(reports, stats, strict=True):
        assert len(report.frames) >= 5, "each session must get avatar frames back"
        assert stat["frames_out"] > 0
    records = list(scheduler.records)
    # Every generated frame went through the scheduler (plus the start-up warm-up frames).
    assert sum(r.rows for r in records) >= sum(s["frames_out"] for s in stats)
    assert all(1 <= r.rows <= 2 and not r.failed for r in records)


@pytest_asyncio.fixture
async def meshed() -> AsyncIterator[LiveServer]:
    async for live in run_server(make_settings(tracker="mesh")):
        yield live


async def test_sessions_track_with_the_shared_face_mesh_engine(meshed: LiveServer) -> None:
    """tracker="mesh": each session's driver is tracked by a MeshTracker on the host's one
    face-mesh engine (what a GPU server runs instead of mediapipe's CPU graph), and the avatar
    still follows the driver's mouth."""
    host = meshed.state.host
    assert isinstance(host, LocalHost) and host.face_mesh is not None

    frames = load_clip("lp_d18.mp4", 115)[40:]  # mouth closed, open wide, closed
    client = ClipClient(meshed.url, frames, 30.0, keep_images=True)
    async with client:
        session = meshed.registry.get(str(client.session["id"]))
        report = await client.play(1.5 * len(frames) / 30.0)
        renderer = session.worker.reenactor
        assert isinstance(renderer, Reenactor)
        assert isinstance(renderer.tracker, MeshTracker)
        assert renderer.tracker.detections >= 1  # acquired once, then tracked on the engine

    images = [r.image for r in report.frames if r.image is not None]
    assert len(images) >= 10
    with FaceTracker(video=False) as judge:
        avatar = [judge(image) for image in images]
        driver = [judge(frames[client.track.clip_index(r.pts)]) for r in report.frames]
    pairs = [(d, a) for d, a in zip(driver, avatar, strict=True) if d is not None and a is not None]
    assert len(pairs) >= 0.9 * len(images)
    opening = np.array([(mouth_open(d), mouth_open(a)) for d, a in pairs])
    assert opening[:, 0].max() > 0.3
    assert float(np.corrcoef(opening[:, 0], opening[:, 1])[0, 1]) > 0.6
