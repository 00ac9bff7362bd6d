"""The server relay (session mode ``keypoints``): a clip goes in as video, comes back rebuilt
from its own keypoint stream, and the session reports what that stream cost.

Judged like a viewer would: a fresh face tracker on the returned frames (the rebuilt face's
mouth must open when the clip's does), dlib's face embedding (it must still be the sender),
and the bitrate the server counted (a few kbit/s of motion, the keyframe apart).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from engines import Engine, create_engine
from models.identity import SAME_PERSON_THRESHOLD, FaceIdentity
from models.pipeline import StreamCost
from models.tracking import FaceTracker
from service.relay import GREY, KeypointRelay
from service.rtc.client import ClipClient
from service.stats import KeypointStream
from tests.conftest import load_clip, mouth_open
from tests.service.conftest import LiveServer

FPS = 30.0


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with create_engine("onnxruntime", 256, threads=1) as e:
        yield e


def test_keypoint_stream_rate_counts_frames_without_packets() -> None:
    stream = KeypointStream(window_s=5.0)
    for k in range(31):  # 1 s at 30 fps, 25 bytes a frame, every other frame without a face
        stream.add(k / 30, StreamCost(motion_bytes=25 if k % 2 == 0 else 0))
    stream.add(1.0, StreamCost(keyframe_bytes=12_000))  # one-off: not in the rate
    assert stream.kbps(1.0) == pytest.approx(8 * 25 * 15 / 1.0 / 1000)
    assert stream.bits_per_frame(1.0) == pytest.approx(8 * 25 * 16 / 32)
    assert stream.keyframes == 1 and stream.keyframe_bytes == 12_000 and stream.packets == 16
    assert stream.kbps(10.0) == 0.0  # nothing sent for longer than the window


def test_relay_skips_gaps_holds_without_a_face_and_rekeys_on_reset(engine: Engine) -> None:
    frames = load_clip("lp_d10.mp4", 24)
    relay = KeypointRelay(engine, 256, FPS, basis_after=0)
    try:
        first = relay(np.zeros_like(frames[0]), timestamp=0.0)  # no face: nothing to rebuild
        assert not first.face_found and first.stream == StreamCost()
        assert (first.image == GREY).all()
        times = [k / FPS for k in range(1, 24, 3)]  # a server that sees every third frame
        results = []
        for t, rgb in zip(times, frames[1::3], strict=True):
            results.append(relay(rgb, timestamp=t))
            played = relay.receiver.decoder.latest()
            # Skipped frames are gaps, so packet timestamps stay on the camera's grid.
            assert played is not None and abs(played.timestamp - t) < 0.002
        assert all(r.face_found for r in results)
        assert results[0].stream is not None and results[0].stream.keyframe_bytes > 1000
        motion = [r.stream.motion_bytes for r in results if r.stream is not None]
        assert all(0 < m < 60 for m in motion)
        assert relay.sender.encoder.stats.skipped == 2 * (len(times) - 1)
        assert relay.receiver.decoder.stats.corrupt == 0

        lost = relay(np.zeros_like(frames[0]), timestamp=times[-1] + 1 / FPS)
        assert not lost.face_found and lost.stream == StreamCost()
        assert lost.image is results[-1].image  # held, as a receiver holds a gap

        relay.reset()  # the receiver asks for a fresh picture
        again = relay(frames[0], timestamp=times[-1] + 2 / FPS)
        assert again.face_found and again.stream is not None
        assert again.stream.keyframe_bytes > 1000 and again.stream.motion_bytes > 0
        assert relay.sender.encoder.stats.keyframes == 2
    finally:
        relay.close()


async def test_relay_session_rebuilds_the_sender_from_a_few_kbps(server: LiveServer) -> None:
    # lp_d18 from 1.3 s to 3.8 s: mouth closed (the keyframe), open wide, closed.
    frames = load_clip("lp_d18.mp4", 115)[40:]
    client = ClipClient(server.url, frames, FPS, mode="keypoints", keep_images=True)
    async with client:
        assert client.session["options"]["mode"] == "keypoints"
        report = await client.play(1.5 * len(frames) / FPS)  # the clip loops
        stats = (await client.stats())["stats"]

    received = [r for r in report.frames if r.image is not None]
    assert len(received) >= 10
    assert all(r.image is not None and r.image.shape == (256, 256, 3) for r in received)

    # What the stream cost, as the server counted it: one keyframe, then a few kbit/s.
    keypoints = stats["keypoints"]
    assert keypoints["keyframes"] == 1 and 2_000 < keypoints["keyframe_bytes"] < 60_000
    assert 0 < keypoints["kbps"] < 20, keypoints
    assert 50 < keypoints["bits_per_frame"] < 500, keypoints
    assert keypoints["packets"] >= 10 and keypoints["motion_bytes"] > 0
    assert {"track", "encode", "decode", "generate"} <= set(stats["latency"])
    rates = [m["keypoints"]["kbps"] for m in report.telemetry if "keypoints" in m]
    assert len(rates) >= 0.9 * len(report.telemetry) and max(rates) > 0

    # The rebuilt face follows the clip: its mouth opens and closes with the sender's.
    with FaceTracker(video=False) as judge:
        driver_marks = [judge(f) for f in frames]
        pairs = []
        for r in received:
            assert r.image is not None
            index = client.track.clip_index(r.pts)
            rebuilt, driver = judge(r.image), driver_marks[index]
            if rebuilt is not None and driver is not None:
                pairs.append((index, r.image, driver, rebuilt))
    assert len(pairs) >= 0.9 * len(received), "the reconstruction must stay a detectable face"
    driver_mouth = [mouth_open(d) for _, _, d, _ in pairs]
    rebuilt_mouth = [mouth_open(a) for _, _, _, a in pairs]
    assert max(driver_mouth) > 0.3  # the stretch seen contains the opening
    assert float(np.corrcoef(driver_mouth, rebuilt_mouth)[0, 1]) > 0.6
    assert max(rebuilt_mouth) > 0.2

    # ... and it is still the sender: the keyframe is their own picture.
    identity = FaceIdentity()
    for k in np.linspace(0, len(pairs) - 1, 2).astype(int):
        index, image, driver, rebuilt = pairs[k]
        own = identity.embed_landmarks(frames[index], driver)
        assert float(np.linalg.norm(identity.embed_landmarks(image, rebuilt) - own)) < (
            SAME_PERSON_THRESHOLD
        )
