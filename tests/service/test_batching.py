"""Cross-session batching wired into the live service: frames of two sessions go through one
BatchScheduler per size, and both sessions still stream.  (The scheduler's own contract is
tested in tests/engines/test_batching.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio

from engines.batching import BatchScheduler
from service.hosting import LocalHost
from service.rtc.client import ClipClient
from tests.conftest import load_clip
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
