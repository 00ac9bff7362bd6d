"""The media path's building blocks, including an in-memory aiortc peer pair."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from fractions import Fraction

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from av import VideoFrame

from service.rtc.client import ClipTrack
from service.rtc.jitter import FrameEndJitterBuffer
from service.rtc.peer import use_host_addresses
from service.rtc.tracks import Arrival, AvatarTrack, LatestSlot, Rendered, drain
from service.worker import FADE_FLOOR, FaceLostFade


async def test_latest_slot_keeps_the_newest_and_counts_drops() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert await slot.get() == 3
    assert slot.dropped == 2
    waiter = asyncio.ensure_future(slot.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # nothing new: get waits
    slot.put(4)
    assert await asyncio.wait_for(waiter, 1) == 4
    # A worker thread takes whatever is newest when it starts.
    slot.put(5)
    await asyncio.wait_for(slot.wait(), 1)  # wait() does not take
    slot.put(6)
    assert await asyncio.to_thread(slot.take) == 6
    assert slot.take() is None and slot.dropped == 3
    slot.close()
    with pytest.raises(MediaStreamError):
        await slot.get()


def frame(pts: int) -> VideoFrame:
    out = VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
    out.pts, out.time_base = pts, Fraction(1, 90_000)
    return out


async def test_avatar_track_sends_the_newest_frame_in_the_driver_timebase() -> None:
    sent: list[tuple[int | None, float]] = []
    track = AvatarTrack(on_sent=lambda r, at: sent.append((r.frame.pts, at)))
    assert track.push(Rendered(frame(3000), time.monotonic(), True)) is False
    assert track.push(Rendered(frame(6000), time.monotonic(), True)) is True  # replaced
    out = await track.recv()
    assert out.pts == 6000 and out.time_base == Fraction(1, 90_000)
    assert track.first_pts == 6000
    assert track.slot.dropped == 1 and [p for p, _ in sent] == [6000]
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


def test_face_lost_fade_holds_then_fades_to_a_floor() -> None:
    fade = FaceLostFade(hold_s=0.5, fade_s=1.0)
    assert fade.amount(0.4) == 0.0
    assert 0.0 < fade.amount(1.0) < fade.amount(1.4)
    assert fade.amount(10.0) == pytest.approx(1 - FADE_FLOOR)
    image = np.full((4, 4, 3), 250, np.uint8)
    assert fade.apply(image, 0.0) is image
    faded = fade.apply(image, fade.amount(10.0))
    assert 128 < faded.mean() < 250


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    undo = use_host_addresses(["127.0.0.1"])
    yield
    undo()


async def connect_pair(
    track: MediaStreamTrack, on_track: Callable[[MediaStreamTrack], None]
) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(track)
    receiver.on("track", on_track)
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    return sender, receiver


async def slow_consumer(latest: bool, seconds: float, work_s: float) -> list[float]:
    """Ages (s) of the frames a consumer needing ``work_s`` per frame gets to process."""
    frames = [np.full((240, 320, 3), i * 8 % 256, np.uint8) for i in range(30)]
    source = ClipTrack(frames, fps=30)
    got: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    sender, receiver = await connect_pair(source, got.put_nowait)
    readers: list[asyncio.Task[None]] = []
    try:
        remote = await asyncio.wait_for(got.get(), 10)
        ages: list[float] = []
        slot: LatestSlot[Arrival] = LatestSlot()
        if latest:
            readers.append(asyncio.ensure_future(drain(remote, slot.put)))
        end: float | None = None  # counted from the first frame, not from the ICE handshake
        while end is None or time.monotonic() < end:
            if latest:
                pts = (await asyncio.wait_for(slot.get(), 5)).frame.pts
            else:
                pts = (await asyncio.wait_for(remote.recv(), 5)).pts
            assert pts is not None
            sent = source.sent_at(pts)
            assert sent is not None, pts
            ages.append(time.monotonic() - sent)
            end = end or time.monotonic() + seconds
            await asyncio.sleep(work_s)  # the "inference"
        return ages
    finally:
        for task in readers:
            task.cancel()
        await sender.close()
        await receiver.close()


@pytest.mark.usefixtures("loopback_ice")
async def test_latest_frame_slot_stops_latency_growth_on_real_peers() -> None:
    """A consumer at 8 fps behind a 30 fps sender: aiortc's own queue lets latency grow
    without bound, the latest-frame slot keeps it flat."""
    queued, latest = await asyncio.gather(
        slow_consumer(latest=False, seconds=3.0, work_s=0.12),
        slow_consumer(latest=True, seconds=3.0, work_s=0.12),
    )
    assert len(queued) > 10 and len(latest) > 10
    assert queued[-1] > queued[2] + 1.0  # the queue grew by over a second in 3 s
    # Newest frame wins: typically a frame or two old, all along.  (Median, because a shared
    # CPU can hold one delivery back now and then; a queue would be seconds behind by now.)
    half = len(latest) // 2
    assert float(np.median(latest[half:])) < 0.25
    assert float(np.median(latest[half:])) < float(np.median(queued[len(queued) // 2 :])) / 3


def packet(seq: int, timestamp: int, marker: bool = False, data: bytes = b"x") -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=timestamp, marker=int(marker))
    p._data = data  # type: ignore[attr-defined]  # what the receiver's depayloader sets
    return p


def test_aiortc_jitter_buffer_holds_a_complete_frame_until_the_next_one() -> None:
    buffer = JitterBuffer(capacity=128, is_video=True)
    assert buffer.add(packet(10, 3000, data=b"a"))[1] is None
    assert buffer.add(packet(11, 3000, marker=True, data=b"b"))[1] is None  # complete, held
    frame = buffer.add(packet(12, 6000))[1]  # released only now
    assert frame is not None and frame.data == b"ab"


def test_frame_end_buffer_releases_at_the_marker_bit() -> None:
    buffer = FrameEndJitterBuffer(capacity=128, is_video=True)
    assert buffer.add(packet(10, 3000, data=b"a"))[1] is None
    frame = buffer.add(packet(11, 3000, marker=True, data=b"b"))[1]
    assert frame is not None and (frame.data, frame.timestamp) == (b"ab", 3000)
    assert buffer.add(packet(11, 3000, marker=True))[1] is None  # retransmitted: ignored
    assert buffer.add(packet(12, 6000, data=b"c"))[1] is None
    # A gap (13 late): the marked packet cannot complete the frame, its retransmission does.
    assert buffer.add(packet(14, 6000, marker=True, data=b"e"))[1] is None
    frame = buffer.add(packet(13, 6000, data=b"d"))[1]
    assert frame is not None and (frame.data, frame.timestamp) == (b"cde", 6000)
    frame = buffer.add(packet(15, 9000, marker=True, data=b"f"))[1]
    assert frame is not None and (frame.data, frame.timestamp) == (b"f", 9000)
    # Without a marker the base rule still works: released when the next frame starts.
    assert buffer.add(packet(16, 12000, data=b"g"))[1] is None
    frame = buffer.add(packet(17, 15000, marker=True, data=b"h"))[1]
    assert frame is not None and (frame.data, frame.timestamp) == (b"g", 12000)
