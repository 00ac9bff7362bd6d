"""Session mode keypoints-device, server side: the receiving end fed a sender's messages.

The browser's encoder is checked against the Python one in tests/web/test_device_codec.py, so
here Python's own Encoder stands in for the page: its messages go into
:class:`service.device.DeviceKeypoints` in a hostile order (motion before the keyframe, garbage),
and what comes out must be what the session needs: replies, counted bytes, ticks on the
sender's clock, rendered faces.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from engines import Engine, create_engine
from models.codec import KeyframeRequest, MessageType, message_type
from models.codec_stream import Encoder
from models.errors import BadInputError
from models.tracking import FaceTracker
from service.device import TICK_TIME_BASE, DeviceKeypoints
from service.rtc.peer import check_offer
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
    assert all(m is not None for m in marks)
    keyframe = encoder.make_keyframe(frames[0], marks[0], 0.0).to_bytes()
    packets = [encoder.encode(m, k / FPS) for k, m in enumerate(marks)]
    motion = [p.to_bytes() for p in packets if p is not None]

    device = DeviceKeypoints(engine, 256)
    try:
        # Motion that outran its keyframe: counted, nothing to show, the keyframe asked for.
        early = device.receive(motion[0], now=0.0)
        assert early.cost is not None and early.cost.motion_bytes == len(motion[0])
        assert early.tick is None
        assert [KeyframeRequest.from_bytes(r) for r in early.replies] == [KeyframeRequest()]
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
        assert device.receiver.decoder.stats.stale == 1
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
