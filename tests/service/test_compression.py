"""Keypoint streams end to end: files (encode -> decode, the CLI) and a live call between two
aiortc peers on loopback, with real clips.  The rebuilt avatar must follow the sender: its mouth
opens when the sender's does."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.contrib.signaling import TcpSocketSignaling

from engines import Engine, create_engine
from models.codec import MessageType, message_type, pack_stream
from models.landmarks import WARP_KEYPOINTS, Landmarks
from models.tracking import FaceTracker
from service import compression, peer
from service.cli import main
from service.rtc.peer import use_host_addresses
from tests.conftest import data_path, mouth_open

_WARP = list(WARP_KEYPOINTS)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with create_engine("onnxruntime", 256, threads=1) as e:
        yield e


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _mouths(images: list[np.ndarray]) -> list[float | None]:
    with FaceTracker(video=False) as judge:
        marks = [judge(image) for image in images]
    return [mouth_open(m) if m is not None else None for m in marks]


def test_file_round_trip_with_loss(tmp_path: Path) -> None:
    clip = data_path("driving", "lp_d0.mp4")  # 78 frames, 25 fps
    stream = tmp_path / "d0.rkp"
    stats = compression.encode_file(clip, stream, progress=False)
    assert stats["frames"] == 78 and stats["packets"] == 78
    assert stats["bits_per_frame"] < 320  # under 8 kbit/s at 25 fps
    assert stats["file_bytes"] == stream.stat().st_size
    messages = compression.read_stream(stream)
    assert message_type(messages[0]) == MessageType.KEYFRAME
    lossy = compression.simulate_loss(messages, 0.2)
    assert len(messages) - len(lossy) > 5  # motion packets lost, never the keyframe or basis
    assert sum(message_type(m) != MessageType.MOTION for m in lossy) == sum(
        message_type(m) != MessageType.MOTION for m in messages
    )
    out = tmp_path / "d0.mp4"
    result = compression.decode_file(stream, out, loss=0.2, progress=False)
    assert result["packets_lost"] > 5 and result["rejected"] == 0
    assert result["interpolated"] + result["held"] >= result["packets_lost"] - 2
    frames = _frames(out)
    assert len(frames) == result["frames"] >= 70 and frames[0].shape == (256, 256, 3)
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1  # it moves


def test_playout_of_a_stream_without_loss_is_exact(tmp_path: Path) -> None:
    clip = data_path("driving", "lp_d0.mp4")
    marks, times, fps, picture = compression.track_video(clip)
    messages, encoder = compression.encode_landmarks(marks, times, fps, picture)
    _, played = compression.playout(messages)
    assert [p.status for p in played] == ["decoded"] * len(marks)
    errors = [
        np.linalg.norm(p.state.points()[_WARP, :2] - encoder.to_picture(m)[_WARP, :2], axis=1)
        for p, m in zip(played, marks, strict=True)
        if m is not None
    ]
    assert float(np.mean(errors)) < 1.0  # pixels of a ~384 px keyframe picture


def test_cli_encode_decode_and_bad_streams(tmp_path: Path) -> None:
    stream, out = tmp_path / "d0.rkp", tmp_path / "d0.mp4"
    clip = str(data_path("driving", "lp_d0.mp4"))
    assert main(["encode", clip, "--out", str(stream)]) == 0
    assert main(["decode", str(stream), "--out", str(out), "--loss", "0.1"]) == 0
    assert out.stat().st_size > 0
    data = stream.read_bytes()
    (tmp_path / "cut.rkp").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.rkp").write_bytes(b"RKP\x01" + bytes(range(256)))
    (tmp_path / "empty.rkp").write_bytes(pack_stream([]))
    for name in ("cut.rkp", "junk.rkp", "empty.rkp", "missing.rkp"):
        assert main(["decode", str(tmp_path / name), "--out", str(out)]) == 2, name
    assert main(["decode", str(stream), "--out", str(out), "--loss", "1.5"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_two_peers_call_and_the_avatar_follows(tmp_path: Path, engine: Engine) -> None:
    # The offerer's camera is lp_d18: mouth closed, then wide open from ~2 s (frames 55-90).
    port = _free_port()
    out = tmp_path / "seen_by_answerer.mp4"
    undo = use_host_addresses(["127.0.0.1"])
    try:
        offer, answer = await asyncio.gather(
            peer.call(
                "offer",
                data_path("driving", "lp_d18.mp4"),
                TcpSocketSignaling("127.0.0.1", port),
                4.0,
                engine=None,  # the offerer only sends (and decodes nothing): halves the CPU
            ),
            peer.call(
                "answer",
                data_path("driving", "lp_d10.mp4"),
                TcpSocketSignaling("127.0.0.1", port),
                4.0,
                engine=engine,
                out=out,
            ),
        )
    finally:
        undo()
    assert offer.ended_early is None and answer.ended_early is None
    assert offer.packets_sent >= 10 and answer.packets_sent >= 10
    assert answer.decoder["keyframes"] == 1 and answer.decoder["corrupt"] == 0
    assert answer.decoder["motion"] >= 0.8 * offer.packets_sent
    # Decoded motion matches what the sender's tracker saw, frame by frame.
    common = [p for p in answer.played if p.seq in offer.sent]
    assert len(common) >= 8
    errors = []
    for p in common:
        truth = Landmarks(offer.sent[p.seq], (1, 1))
        error = np.linalg.norm(p.state.points()[_WARP, :2] - truth.xy[_WARP], axis=1).mean()
        errors.append(error / truth.interocular())
    assert float(np.median(errors)) < 0.02
    sent_mouth = [mouth_open(Landmarks(offer.sent[p.seq], (1, 1))) for p in common]
    assert max(sent_mouth) > 0.3, "the call should have reached the wide-open mouth"
    # And the avatar the answerer rendered opens its mouth with the sender.
    frames = _frames(out)
    assert len(frames) == answer.remote_frames_written >= 8
    mouths = [m for m in _mouths(frames) if m is not None]
    assert len(mouths) >= 0.8 * len(frames)
    assert max(mouths) - min(mouths) > 0.2
