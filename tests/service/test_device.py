"""Session mode keypoints-device, server side: the receiving end fed a sender's messages.

The browser's encoder is checked against the Python one in tests/web/test_device_codec.py, so
here Python's own Encoder stands in for the page: its messages go into
:class:`service.device.DeviceKeypoints` in a hostile order (motion before the keyframe, garbage),
and what comes out must be what the session needs: replies, counted bytes, ticks on the
sender's clock, rendered faces.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from engines import Engine, create_engine
from models.codec import Heartbeat, KeyframeRequest, MessageType, message_type
from models.codec_stream import Encoder
from models.errors import BadInputError
from models.tracking import FaceTracker
from service.device import CONTROL_LABEL, MOTION_LABEL, TICK_TIME_BASE, DeviceKeypoints
from service.rtc.peer import check_offer
from service.rtc.tracks import drain
from tests.conftest import load_clip
from tests.service.conftest import LiveServer

FPS = 30.0


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with create_engine("onnxruntime", 256, threads=1) as e:
        yield e


def test_device_receiver_asks_counts_ticks_and_renders(engine: Engine) -> None:
    frames = load_clip("lp_d18.mp4", 12)
    encoder = Encoder(FPS)
    with FaceTracker(video=True) as tracker:
        marks = [tracker(f, k / FPS) for k, f in enumerate(frames)]
    reference = marks[0]
    assert reference is not None and all(m is not None for m in marks)
    keyframe = encoder.make_keyframe(frames[0], reference, 0.0).to_bytes()
    packets = [encoder.encode(m, k / FPS) for k, m in enumerate(marks)]
    motion = [p.to_bytes() for p in packets if p is not None]

    device = DeviceKeypoints(engine, 256)
    try:
        # Motion that outran its keyframe: counted, nothing to show, and not yet a reason to
        # ask for the keyframe (it is most likely on its way); a run of them is.
        early = device.receive(motion[0], now=0.0)
        assert early.cost is not None and early.cost.motion_bytes == len(motion[0])
        assert early.tick is None and early.replies == []
        request_after = device.receiver.decoder.request_after
        run = [device.receive(motion[0], now=0.0) for _ in range(request_after - 1)]
        assert [r.tick for r in run] == [None] * (request_after - 1)
        replies = [reply for r in run for reply in r.replies]
        assert [KeyframeRequest.from_bytes(r) for r in replies] == [KeyframeRequest()]
        assert device(np.zeros((16, 16, 3), np.uint8)).face_found is False  # nothing yet

        garbage = device.receive(b"\x11\x00\x01", now=0.0)  # what arrived is counted
        assert garbage.cost is not None and garbage.cost.motion_bytes == 3
        assert garbage.tick is None
        assert device.receiver.decoder.stats.corrupt == 1

        arrived = device.receive(keyframe, now=0.1)
        assert arrived.cost is None and arrived.tick is None and arrived.replies == []
        first = device.receive(motion[1], now=0.2)  # the keyframe's bytes ride with it
        assert first.cost is not None and first.cost.keyframe_bytes == len(keyframe)
        ticks = [first.tick] + [device.receive(m, now=0.3).tick for m in motion[2:]]
        # The first packet shows at once; then each frame once, one behind the newest packet.
        assert ticks[0] is not None and ticks[1] is None and None not in ticks[2:]
        last = ticks[-1]
        assert last is not None and last.frame.time_base == TICK_TIME_BASE
        # Shown one frame behind the newest packet, stamped with the sender's time of it.
        assert abs(last.frame.time - (len(frames) - 2) / FPS) <= 0.001  # ms on the wire

        result = device(np.zeros((16, 16, 3), np.uint8), timestamp=last.frame.time)
        assert result.face_found and result.image.shape == (256, 256, 3)
        assert result.image.std() > 10
        assert device(np.zeros((16, 16, 3), np.uint8)).image is result.image  # nothing new
        # A gap the playout conceals (12 frames interpolated) is no lost face; a longer one is:
        # a tick with nothing new, on the sender's clock run on, for the worker to hold and fade.
        assert device.idle(now=0.3 + 0.35) is None
        idle = device.idle(now=0.3 + 0.5)
        assert idle is not None and idle.frame.time is not None
        assert abs(idle.frame.time - (last.frame.time + 0.5)) <= 0.001
        lost = device(np.zeros((16, 16, 3), np.uint8), timestamp=idle.frame.time)
        assert lost.face_found is False and lost.image is result.image
        assert device.receiver.decoder.stats.stale == request_after
    finally:
        device.close()


async def test_offer_for_keypoints_must_receive_video() -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("keypoints-motion", ordered=False, maxRetransmits=0)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
    finally:
        await pc.close()
    check_offer(sdp, sends_video=False)
    with pytest.raises(BadInputError, match="sends no video"):
        check_offer(sdp)  # the camera modes need the browser's video
    with pytest.raises(BadInputError, match="receives no video"):
        check_offer(sdp.replace("a=recvonly", "a=sendonly"), sends_video=False)


async def test_keypoints_device_sessions_take_no_portrait(server: LiveServer) -> None:
    response = await server.http.post(
        "/v1/sessions", data={"mode": "keypoints-device", "avatar": "astronaut"}
    )
    assert response.status_code == 400 and "keypoints-device" in response.text
    session = await server.create_session(mode="keypoints-device")
    assert session["options"]["mode"] == "keypoints-device"
    assert message_type(KeyframeRequest().to_bytes()) == MessageType.KEYFRAME_REQUEST


def grey_distance(image: np.ndarray) -> float:
    return float(np.abs(image.astype(np.float32) - 128).mean())


async def test_face_lost_holds_fades_and_recovers(server: LiveServer) -> None:
    """The sender's face leaves (no motion, a heartbeat a second, as the page does): the
    returned video keeps coming, holds the last face, fades it towards grey and says no face;
    when motion comes back, so does the face at full strength."""
    frames = load_clip("lp_d18.mp4", 20)
    with FaceTracker(video=True) as tracker:
        marks = [tracker(f, k / FPS) for k, f in enumerate(frames)]
    first = marks[0]
    assert first is not None
    encoder = Encoder(FPS)
    keyframe = encoder.make_keyframe(frames[0], first, 0.0).to_bytes()

    session = await server.create_session(mode="keypoints-device")
    pc = RTCPeerConnection()
    received: list[tuple[float, np.ndarray]] = []  # (arrived, image) of the returned video
    faces: list[tuple[float, bool]] = []  # (arrived, face) of the frames' telemetry
    readers: list[asyncio.Task[None]] = []

    async def read(track: MediaStreamTrack) -> None:
        await drain(track, lambda a: received.append((a.at, a.frame.to_ndarray(format="rgb24"))))

    def on_telemetry(message: str | bytes) -> None:
        data = json.loads(message)
        if data.get("type") == "frame":
            faces.append((time.monotonic(), bool(data["face"])))

    pc.on("track", lambda track: readers.append(asyncio.create_task(read(track))))
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("telemetry").on("message", on_telemetry)
    motion = pc.createDataChannel(MOTION_LABEL, ordered=False, maxRetransmits=0)
    control = pc.createDataChannel(CONTROL_LABEL)
    opened = asyncio.Event()
    control.on("open", opened.set)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await server.http.post(
            session["links"]["offer"],
            content=pc.localDescription.sdp,
            headers={
                "Authorization": f"Bearer {session['token']}",
                "Content-Type": "application/sdp",
            },
        )
        assert answer.status_code == 201, answer.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))
        await asyncio.wait_for(opened.wait(), 10)
        control.send(keyframe)

        async def stream(first_frame: int) -> None:
            """The clip's packets at camera pace, numbered on from ``first_frame``."""
            for k, m in enumerate(marks):
                t = (first_frame + k) / FPS
                encoder.skip_to(t)
                packet = encoder.encode(m, t)
                assert packet is not None
                send(motion, packet.to_bytes())
                await asyncio.sleep(1 / FPS)

        def send(channel: RTCDataChannel, data: bytes) -> None:
            if channel.readyState == "open":
                channel.send(data)

        await stream(0)
        stopped = time.monotonic()
        for _ in range(3):  # no face: only "still here", once a second
            await asyncio.sleep(1.0)
            send(control, Heartbeat().to_bytes())
        lost = await server.status(session)
        assert lost is not None and lost["stats"]["face_present"] is False
        resumed = time.monotonic()
        await stream(len(marks) + round((resumed - stopped) * FPS))
        ended = time.monotonic()  # quiet again from here
        await asyncio.sleep(0.3)
    finally:
        await pc.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def images(start: float, end: float) -> list[float]:
        return [grey_distance(image) for at, image in received if start <= at < end]

    before = images(stopped - 0.3, stopped)
    held = images(stopped, stopped + 0.6)  # quiet after 0.4 s, then held face_lost_hold_s
    silent = images(stopped + 0.6, resumed)
    after = images(resumed + 0.3, ended + 0.3)
    assert before and held and after, (len(before), len(held), len(after))
    # The video keeps coming while the face is away (the session's fps, about 30).
    assert len(silent) >= 20, len(silent)
    assert min(held) > 0.9 * np.median(before), (held, before)
    assert silent[-1] < 0.8 * np.median(before), (silent[-1], before)
    assert abs(np.median(after) - np.median(before)) < 0.15 * np.median(before)
    # Telemetry: a face, none while it was away, a face again.
    assert any(face for at, face in faces if at < stopped)
    assert not any(face for at, face in faces if stopped + 0.7 < at < resumed)
    assert all(face for at, face in faces if resumed + 0.3 < at < ended + 0.3)
    print(
        f"before {np.median(before):.1f}, held {min(held):.1f}, faded to {silent[-1]:.1f}, "
        f"{len(silent)} frames in silence, after {np.median(after):.1f}"
    )
