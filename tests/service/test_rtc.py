"""The live media path end to end: an aiortc client streams a real clip to a real server.

What comes back is judged like a viewer would: a fresh face tracker on the returned frames
(the avatar's mouth must open when the driver's does), dlib's face embedding for identity (it
must be the avatar, not the driver), and the client's own clock for frame rate and latency.
Faults (crashing sessions, vanished peers, corrupt telemetry, shutdown) are in test_faults.py.
"""

from __future__ import annotations

import time

import numpy as np

from models.identity import SAME_PERSON_THRESHOLD, FaceIdentity
from models.landmarks import Landmarks
from models.tracking import FaceTracker, detect
from service.builtin import AvatarCatalog
from service.images import decode_image
from service.rtc.client import ClipClient, Received
from tests.conftest import load_clip, mouth_open
from tests.service.conftest import LiveServer

FPS = 30.0


def track_all(images: list[np.ndarray]) -> list[Landmarks | None]:
    with FaceTracker(video=False) as judge:
        return [judge(image) for image in images]


def images_of(frames: list[Received]) -> list[np.ndarray]:
    images = [r.image for r in frames if r.image is not None]
    assert len(images) == len(frames), "the client was asked to keep every image"
    return images


async def test_avatar_follows_the_driver_live(server: LiveServer) -> None:
    # lp_d18 from 1.3 s to 3.8 s: mouth closed (the neutral reference), open wide, closed.
    frames = load_clip("lp_d18.mp4", 115)[40:]
    client = ClipClient(server.url, frames, FPS, keep_images=True)
    async with client:
        report = await client.play(1.5 * len(frames) / FPS)  # the clip loops
        # Signalling stays responsive while frames are being computed.
        t0 = time.monotonic()
        await server.healthy()
        health_s = time.monotonic() - t0
        stats = (await client.stats())["stats"]
        latencies = client.latencies_ms()
    assert await server.ended(client.session)
    assert len(server.registry) == 0

    received = report.frames
    images = images_of(received)
    assert report.started_at is not None and len(received) >= 10
    # A video rate, not a trickle.  How fast is for the benchmark to say (these machines are
    # shared: with other jobs on both cores this has measured 3.4 fps, alone ~15).
    fps = len(received) / (received[-1].at - report.started_at)
    assert fps >= 3, f"only {fps:.1f} fps came back"
    assert all(image.shape == (256, 256, 3) for image in images)
    assert health_s < 1.0

    # Latest frame wins: latency does not build up over the run.  Queueing every frame would
    # add (1 - fps out / fps in) s per s, over 1.5 s between these thirds; a shared CPU makes
    # the rest noisy.
    assert len(latencies) >= 0.9 * len(received)
    third = len(latencies) // 3
    early, late = np.median(latencies[:third]), np.median(latencies[-third:])
    assert late < early + 500, (early, late)

    assert stats["frames_in"] > stats["frames_out"] > 0
    assert stats["face_present"] is True
    assert {"track", "generate", "added", "queue"} <= set(stats["latency"])

    # Landmarks move with the driver: the avatar's mouth opens and closes with the clip's.
    driver_marks = track_all(frames)
    matched = [
        (image, index, driver, avatar)
        for image, index, avatar in zip(
            images, [client.track.clip_index(r.pts) for r in received], track_all(images),
            strict=True,
        )
        if (driver := driver_marks[index]) is not None and avatar is not None
    ]  # fmt: skip
    assert len(matched) >= 0.9 * len(received), "the avatar must stay a detectable face"
    driver_mouth = [mouth_open(d) for _, _, d, _ in matched]
    avatar_mouth = [mouth_open(a) for _, _, _, a in matched]
    assert max(driver_mouth) > 0.3  # the stretch we saw contains the opening
    assert float(np.corrcoef(driver_mouth, avatar_mouth)[0, 1]) > 0.6
    assert max(avatar_mouth) > 0.2

    # Identity: the returned face is the avatar, not the person driving it.
    identity = FaceIdentity()
    photo = AvatarCatalog().get("astronaut").path.read_bytes()
    avatar_rgb = decode_image(photo, max_bytes=len(photo), max_pixels=10**7)
    avatar = identity.embed_landmarks(avatar_rgb, detect(avatar_rgb))
    for k in np.linspace(0, len(matched) - 1, 4).astype(int):
        image, index, driver, marks = matched[k]
        out = identity.embed_landmarks(image, marks)
        to_driver = float(np.linalg.norm(out - identity.embed_landmarks(frames[index], driver)))
        to_avatar = float(np.linalg.norm(out - avatar))
        assert to_avatar < SAME_PERSON_THRESHOLD
        assert to_avatar < to_driver


def grey_distance(image: np.ndarray) -> float:
    return float(np.abs(image.astype(np.float32) - 128).mean())


async def test_face_lost_holds_fades_and_recovers(server: LiveServer) -> None:
    face = load_clip("lp_d10.mp4", 36)
    empty = np.zeros_like(face[0])
    empty[:, :, 0] = np.linspace(20, 200, empty.shape[1])[None, :]  # a wall, no face
    frames = face[:24] + [empty] * 54 + face[:36]
    segments = {"before": range(0, 24), "lost": range(24, 78), "after": range(78, 114)}
    client = ClipClient(server.url, frames, FPS, keep_images=True)
    async with client:
        report = await client.play(len(frames) / FPS + 0.3)

    def segment(r: Received) -> str:
        i = client.track.clip_index(r.pts)
        return next(name for name, span in segments.items() if i in span)

    by_segment: dict[str, list[Received]] = {"before": [], "lost": [], "after": []}
    for r in report.frames:
        if client.track.number_of(r.pts) < len(frames):  # the first pass through the clip
            by_segment[segment(r)].append(r)
    # The output keeps its cadence while the face is away.
    assert len(by_segment["lost"]) >= 10
    faces = [bool(m["face"]) for m in report.telemetry]
    first_lost = faces.index(False)  # face, then none, then the face again
    assert first_lost > 0 and True in faces[first_lost:]
    # Held, then faded towards grey, then back to full strength when the face returns.
    lost = [grey_distance(image) for image in images_of(by_segment["lost"])]
    before = [grey_distance(image) for image in images_of(by_segment["before"])]
    after = [grey_distance(image) for image in images_of(by_segment["after"])]
    assert lost[-1] < 0.8 * lost[0], (lost[0], lost[-1])
    assert abs(after[-1] - np.median(before)) < 0.15 * np.median(before)
