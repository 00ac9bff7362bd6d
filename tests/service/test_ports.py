"""The fixed ICE port range, on real aiortc peers over loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import aioice
import aioice.ice
import pytest
import uvloop
from aiortc import RTCDataChannel, RTCPeerConnection

from service.rtc.peer import use_host_addresses
from service.rtc.ports import use_port_range

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\S+)", re.M | re.I)


def candidate_ports(sdp: str) -> list[int]:
    found = [(host, int(port), kind) for host, port, kind in CANDIDATE.findall(sdp)]
    assert all(kind == "host" for _, _, kind in found), found  # no STUN/TURN configured
    return [port for _, port, _ in found]


def free_block(size: int) -> tuple[int, int]:
    """A run of ``size`` UDP ports that are free on 127.0.0.1 right now."""
    for _ in range(200):
        low = random.randrange(42_000, 58_000)
        held: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind(("127.0.0.1", port))
            return low, low + size - 1
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free block of UDP ports")


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    undo = use_host_addresses(["127.0.0.1"])
    yield
    undo()


async def exchange(a: RTCPeerConnection, b: RTCPeerConnection) -> tuple[str, str, str]:
    """Offer/answer between ``a`` and ``b``; returns both SDPs and what ``b`` echoed back."""
    opened: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()
    echoed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @b.on("datachannel")
    def on_channel(channel: RTCDataChannel) -> None:
        channel.on("message", lambda message: channel.send(f"echo {message}"))

    channel = a.createDataChannel("ping")

    @channel.on("open")
    def on_open() -> None:
        if not opened.done():
            opened.set_result(channel)

    @channel.on("message")
    def on_message(message: str) -> None:
        if not echoed.done():
            echoed.set_result(message)

    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    (await asyncio.wait_for(opened, 20)).send("hello")
    return a.localDescription.sdp, b.localDescription.sdp, await asyncio.wait_for(echoed, 20)


@pytest.mark.usefixtures("loopback_ice")
async def test_two_peers_connect_on_ports_inside_the_range() -> None:
    low, high = free_block(16)
    undo = use_port_range(low, high)
    pcs = [RTCPeerConnection() for _ in range(4)]
    try:
        results = await asyncio.gather(exchange(pcs[0], pcs[1]), exchange(pcs[2], pcs[3]))
    finally:
        for pc in pcs:
            await pc.close()
        undo()
    ports: list[int] = []
    for offer, answer, echoed in results:
        assert echoed == "echo hello"
        ports += candidate_ports(offer) + candidate_ports(answer)
    assert len(ports) == 4  # one host candidate per peer: bundled, RTCP multiplexed
    assert all(low <= p <= high for p in ports), (low, high, ports)
    assert len(set(ports)) == 4  # concurrent peers never share a port


async def test_an_exhausted_range_fails_instead_of_binding_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    low, high = free_block(2)
    held = []
    for port in (low, high):  # occupy the whole range ourselves
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        held.append(s)
    undo = use_host_addresses(["127.0.0.1"])
    undo_range = use_port_range(low, high)
    connection = aioice.Connection(ice_controlling=True)
    try:
        # The bind itself: a clear OSError naming the range.
        loop = aioice.ice.asyncio.get_running_loop()
        with pytest.raises(OSError, match=f"no free UDP port in the ICE range {low}-{high}"):
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
        # Other binds are not host candidates and pass through: an explicit port, or a socket
        # connected to a remote address (as aioice's TURN client makes), still succeed.
        elsewhere, _ = free_block(1)
        explicit, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", elsewhere)
        )
        connected, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", 9)
        )
        assert explicit.get_extra_info("sockname")[1] == elsewhere
        assert not low <= connected.get_extra_info("sockname")[1] <= high  # ours are all held
        explicit.close()
        connected.close()
        # Through aioice: it logs that and gathers no candidate, rather than one outside.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="aioice.ice"):
            await connection.gather_candidates()
        assert connection.local_candidates == []
        said = {(r.name, r.levelno) for r in caplog.records if f"range {low}-{high}" in r.message}
        assert said == {("aioice.ice", logging.INFO), ("service.rtc.ports", logging.WARNING)}
        # Free one port of the range: the next gathering lands exactly there.
        held.pop().close()
        second = aioice.Connection(ice_controlling=True)
        await second.gather_candidates()
        assert [c.port for c in second.local_candidates] == [high]
        await second.close()
    finally:
        await connection.close()
        undo_range()
        undo()
        for s in held:
            s.close()


async def test_binds_land_in_the_range_and_undo_restores_aioice() -> None:
    original = aioice.ice.asyncio
    low, high = free_block(4)
    undo = use_port_range(low, high)
    try:
        assert aioice.ice.asyncio is not original
        loop = aioice.ice.asyncio.get_running_loop()
        ranged, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        assert low <= ranged.get_extra_info("sockname")[1] <= high
        ranged.close()
        assert loop.time() == pytest.approx(asyncio.get_running_loop().time(), abs=1)
    finally:
        undo()
    assert aioice.ice.asyncio is original is asyncio
    assert use_port_range(None, None)() is None  # nothing configured: nothing changed
    assert aioice.ice.asyncio is asyncio


async def gathered_ports(connections: int) -> list[list[int]]:
    out = []
    for _ in range(connections):
        connection = aioice.Connection(ice_controlling=True)
        await connection.gather_candidates()
        out.append([c.port for c in connection.local_candidates])
        await connection.close()
    return out


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_busy_port_is_skipped_on_both_event_loops(run: Callable[..., Any]) -> None:
    """uvicorn serves on uvloop, whose own bind error hides the errno: both must skip the port."""
    low, high = free_block(2)
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", low))
    undo = use_host_addresses(["127.0.0.1"])
    undo_range = use_port_range(low, high)
    try:
        # Random starts: with 6 tries, one almost surely begins at the busy port.
        assert run(gathered_ports(6)) == [[high]] * 6
    finally:
        undo_range()
        undo()
        busy.close()


@pytest.mark.parametrize(("low", "high"), [(None, 40_000), (40_000, None), (0, 10), (50, 40)])
def test_bad_ranges_are_refused(low: int | None, high: int | None) -> None:
    with pytest.raises(ValueError):
        use_port_range(low, high)
    assert aioice.ice.asyncio is asyncio
