"""Faults, injected into a real server with real aiortc clients streaming real clips.

Each fault must end only what it touches, visibly (GET shows status ``ended``/``failed`` and
the reason; the client is told over telemetry), and free everything in bounded time.  The face
leaving and re-entering the picture is in test_rtc.py (held, faded, recovered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest_asyncio
from aiortc import RTCPeerConnection

from service.app import create_app, serving
from service.rtc.client import ClipClient
from tests.conftest import load_clip
from tests.service.conftest import LiveServer, make_settings, run_server, wait_until

FPS = 30.0
REPO = Path(__file__).resolve().parents[2]


def sdp_headers(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['token']}", "Content-Type": "application/sdp"}


async def soon(predicate: Callable[[], bool], timeout: float) -> bool:
    """:func:`wait_until` for a condition on the client side (no request needed)."""

    async def check() -> bool:
        return predicate()

    return await wait_until(check, timeout)


async def test_a_crashing_session_fails_visibly_and_others_keep_streaming(
    server: LiveServer,
) -> None:
    frames = load_clip("lp_d0.mp4", 60)
    async with (
        ClipClient(server.url, frames, FPS) as victim,
        ClipClient(server.url, frames, FPS, max_fps=8) as bystander,
    ):
        await asyncio.gather(victim.play(0.5), bystander.play(0.5))
        session = server.registry.get(str(victim.session["id"]))

        def broken(target: np.ndarray) -> np.ndarray:
            raise RuntimeError("injected generator failure")

        session.worker.reenactor.render = broken  # type: ignore[attr-defined]  # fault injection
        assert await wait_until(lambda: server.ended(victim.session), 10)
        # The failure is visible: status, reason and the errors that led to it.
        state = await server.status(victim.session)
        assert state is not None
        assert (state["status"], state["ended_reason"]) == ("failed", "frames failing")
        assert state["stats"]["errors"] >= 30
        # The client was told why before its call was closed.
        end = {"type": "end", "reason": "frames failing", "status": "failed"}
        assert await soon(lambda: victim.report.end == end, 2), victim.report.end
        # ... and the session takes no more calls.
        offer = await server.http.post(
            victim.session["links"]["offer"], content=b"v=0", headers=sdp_headers(victim.session)
        )
        assert offer.status_code == 410, offer.text
        assert offer.json()["error"] == "ended" and "frames failing" in offer.json()["detail"]

        before = len(bystander.report.frames)
        await asyncio.sleep(2.0)
        assert len(bystander.report.frames) >= before + 4  # still streaming
        assert not await server.ended(bystander.session)
        stats = (await bystander.stats())["stats"]
        assert stats["errors"] == 0
        assert 0 < stats["fps_out"] <= 9  # its own fps cap, not the camera's 30
        # Frames over the cap are not worth sending: the server said so, the client obeyed.
        assert bystander.report.rate_advice[:1] == [8]
        assert stats["fps_in"] <= 12
        await server.healthy()
    metrics = (await server.http.get("/metrics")).text
    assert 'reenact_sessions_ended_total{reason="frames failing"} 1.0' in metrics


async def test_corrupt_telemetry_is_counted_and_ignored(server: LiveServer) -> None:
    frames = load_clip("lp_d0.mp4", 30)
    async with ClipClient(server.url, frames, FPS, max_fps=10) as client:
        await client.play(0.5)
        channel = client.channel
        assert channel is not None and channel.readyState == "open"
        junk: list[str | bytes] = [
            b"\xff\xfe\x00garbage",  # binary, not UTF-8
            "not json at all {",
            json.dumps({"type": "ping", "pad": "x" * 200_000}),  # huge: refused unparsed
            "[" * 3000 + "]" * 3000,  # small but too deep for the JSON parser
            json.dumps({"type": 5}),
            json.dumps([1, 2, 3]),
            "null",
            json.dumps({"type": "launch-missiles"}),
        ]
        for message in junk:
            channel.send(message)
        # Well-formed pings with a strange time are still heartbeats; the echo is sanitised.
        pongs = client.report.pongs
        channel.send(json.dumps({"type": "ping", "t": {"nested": [1, 2]}}))
        channel.send('{"type": "ping", "t": NaN}')
        assert await soon(lambda: client.report.pongs >= pongs + 2, 3)

        async def all_counted() -> bool:
            stats = (await client.stats())["stats"]
            return bool(stats["bad_messages"] == len(junk))

        assert await wait_until(all_counted, 5)
        before = len(client.report.frames)
        await asyncio.sleep(1.5)
        assert len(client.report.frames) >= before + 4  # the call went on
        state = await server.status(client.session)
        assert state is not None and state["status"] == "live"
        assert state["stats"]["errors"] == 0


@pytest_asyncio.fixture
async def short_lived() -> AsyncIterator[LiveServer]:
    settings = make_settings(idle_ttl_s=3.0, media_timeout_s=1.5, connect_timeout_s=2.0)
    async for live in run_server(settings):
        yield live


async def test_sessions_are_freed_when_their_peer_goes_away(short_lived: LiveServer) -> None:
    server = short_lived
    frames = load_clip("lp_d0.mp4", 30)
    never_offered = await server.create_session()
    async with (
        ClipClient(server.url, frames, FPS) as frozen,
        ClipClient(server.url, frames, FPS) as leaver,
    ):
        await asyncio.gather(frozen.play(0.3), leaver.play(0.3))
        assert len(server.registry) == 3
        frozen.track.pause()  # no more frames, no goodbye: media timeout
        await leaver.hang_up()  # the server sees the track end at once
        assert await wait_until(lambda: server.ended(leaver.session), 3)
        assert await wait_until(lambda: server.ended(frozen.session), 6)
    assert await wait_until(lambda: server.ended(never_offered), 6)  # idle TTL
    assert len(server.registry) == 0
    for session, reason in [
        (leaver.session, "remote video ended"),
        (frozen.session, "media timeout"),
        (never_offered, "idle ttl"),
    ]:
        state = await server.status(session)
        assert state is not None and state["ended_reason"] == reason, state
    metrics = (await server.http.get("/metrics")).text
    for reason in ("media timeout", "idle ttl"):
        assert f'reenact_sessions_ended_total{{reason="{reason}"}} 1.0' in metrics
    await server.healthy()


async def test_a_client_that_never_completes_ice_is_freed(short_lived: LiveServer) -> None:
    """Offer, take the answer, then drop it: the peer never connects (connect_timeout_s)."""
    server = short_lived
    session = await server.create_session()
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    response = await server.http.post(
        session["links"]["offer"],
        content=pc.localDescription.sdp.encode(),
        headers=sdp_headers(session),
    )
    assert response.status_code == 201, response.text
    await pc.close()  # the answer is never applied
    answered = time.monotonic()
    state = await server.status(session)
    assert state is not None and state["status"] == "connecting"
    # connect_timeout_s (2 s), checked by the janitor each second; idle TTL (3 s) not reached.
    assert await wait_until(lambda: server.ended(session), 4)
    assert time.monotonic() - answered < 3.5
    state = await server.status(session)
    assert state is not None and state["ended_reason"] == "connect timeout"
    assert len(server.registry) == 0


@pytest_asyncio.fixture
async def patient() -> AsyncIterator[LiveServer]:
    """Media and idle timeouts far away: only heartbeats can notice a peer vanish soon."""
    settings = make_settings(media_timeout_s=30.0, idle_ttl_s=60.0)
    assert settings.heartbeat_timeout_s <= 8
    async for live in run_server(settings):
        yield live


async def test_a_vanished_peer_is_freed_within_seconds(patient: LiveServer) -> None:
    """A peer process frozen mid-call (SIGSTOP) is freed by its missing heartbeats, whether or
    not video was flowing, long before ICE would say so (~30 s) or media/idle timeouts would."""
    server = patient
    peer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.service.vanishing_peer",
        server.url,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert peer.stdout is not None
        line = await asyncio.wait_for(peer.stdout.readline(), 60)
        assert line, "the peer process exited before it was connected"
        sessions = json.loads(line)["sessions"]
        for session in sessions:
            state = await server.status(session)
            assert state is not None and state["status"] == "live", state
        os.kill(peer.pid, signal.SIGSTOP)
        stopped = time.monotonic()

        async def all_ended() -> bool:
            return all([await server.ended(s) for s in sessions])

        assert await wait_until(all_ended, 12)
        freed_s = time.monotonic() - stopped
        assert freed_s <= 10, freed_s
        for session in sessions:
            state = await server.status(session)
            assert state is not None and state["ended_reason"] == "heartbeat lost", state
        assert len(server.registry) == 0
        await server.healthy()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            peer.kill()
        _, errors = await peer.communicate()
        print(errors.decode(errors="replace")[-3000:], file=sys.stderr)  # shown on failure
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            peer.kill()
        await peer.wait()


async def test_shutdown_with_live_sessions_is_graceful_and_bounded() -> None:
    settings = make_settings(shutdown_timeout_s=2.0)
    app = create_app(settings)
    frames = load_clip("lp_d0.mp4", 30)
    async with contextlib.AsyncExitStack() as clients:
        async with serving(app) as url:
            callers = [
                await clients.enter_async_context(ClipClient(url, frames, FPS, max_fps=10))
                for _ in range(2)
            ]
            await asyncio.gather(*(c.play(0.5) for c in callers))
            assert all(c.report.frames for c in callers)
            stopping = time.monotonic()
        stopped_s = time.monotonic() - stopping
        # Peers closed, workers cancelled, renderers closed: bounded by shutdown_timeout_s
        # (plus the executor finishing a frame in flight and the engines closing).
        assert stopped_s < settings.shutdown_timeout_s + 1.5, stopped_s
        end = {"type": "end", "reason": "server shutdown", "status": "ended"}
        told = await soon(lambda: all(c.report.end == end for c in callers), 1)
        assert told, [c.report.end for c in callers]
        received = [len(c.report.frames) for c in callers]
        await asyncio.sleep(0.5)
        assert [len(c.report.frames) for c in callers] == received  # nothing after the end
