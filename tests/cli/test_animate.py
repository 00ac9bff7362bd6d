"""``reenact animate``: the offline path a new user tries first."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from service.cli import EXIT_BAD_INPUT, main
from tests.conftest import data_path, load_clip, load_photo


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 25, audio: bool = True) -> None:
    """An mp4 of real frames, with a 440 Hz tone as its soundtrack when ``audio``."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height = frames[0].shape[1], frames[0].shape[0]
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=16000) if audio else None
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
        if sound is not None:
            t = np.arange(int(16000 * len(frames) / fps)) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            af.sample_rate, af.pts = 16000, 0
            for chunk in av.AudioResampler(format="fltp", layout="mono", rate=16000).resample(af):
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))


def probe(path: Path) -> tuple[int, tuple[int, int], bool]:
    with av.open(str(path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
        v = c.streams.video[0]
        return frames, (v.width, v.height), bool(c.streams.audio)


def test_animate_keeps_frame_count_size_and_audio(tmp_path: Path) -> None:
    clip = tmp_path / "drive.mp4"
    write_clip(clip, load_clip("lp_d0.mp4", max_frames=20))
    out = tmp_path / "out.mp4"
    photo = str(data_path("source", "az_detection5_a.jpg"))
    argv = ["animate", "--source", photo, "--driving", str(clip), "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    assert probe(out) == (20, (256, 256), True)
    side = tmp_path / "side.mp4"
    assert main([*argv, "--out", str(side), "--side-by-side", "--size", "512"]) == 0
    assert probe(side) == (20, (1024, 512), True)


def test_lost_face_holds_the_last_pose(tmp_path: Path) -> None:
    frames = load_clip("lp_d5.mp4", max_frames=16)
    empty = np.ascontiguousarray(np.repeat(np.repeat(frames[0][-60:, :60], 8, 0), 8, 1))
    frames[8:12] = [empty[:480, :480]] * 4  # the face leaves the picture for four frames
    clip = tmp_path / "lost.mp4"
    write_clip(clip, frames, audio=False)
    out = tmp_path / "out.mp4"
    photo = str(data_path("source", "fomm_11.jpg"))
    argv = ["animate", "--source", photo, "--driving", str(clip), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    with av.open(str(out)) as c:
        rendered = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    assert len(rendered) == 16
    held = [np.abs(rendered[i] - rendered[7]).mean() for i in range(8, 12)]
    assert max(held) < 2.0  # the last good frame, up to encoder noise
    assert np.abs(rendered[0] - rendered[7]).mean() > max(held)  # it did move before


def bomb() -> bytes:
    """A tiny PNG that declares a 30000 x 30000 canvas."""
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("no-face", "no face"),
        (b"definitely not an image", "not a supported image"),
        ("bomb", "pixels"),
        ("missing", "cannot read"),
    ],
)
def test_bad_photo_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: object, message: str
) -> None:
    photo = tmp_path / "photo.png"
    if content == "no-face":
        Image.fromarray(load_photo("lp_d2_frame0.jpg")[-160:, :160]).save(photo)
    elif content == "bomb":
        photo.write_bytes(bomb())
    elif isinstance(content, bytes):
        photo.write_bytes(content)
    clip = str(data_path("driving", "lp_d0.mp4"))
    out = tmp_path / "out.mp4"
    argv = ["animate", "--source", str(photo), "--driving", clip, "--out", str(out), "--quiet"]
    assert main(argv) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unreadable_driving_video_exits_2(tmp_path: Path) -> None:
    clip = tmp_path / "broken.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    photo = str(data_path("source", "fomm_11.jpg"))
    argv = ["animate", "--source", photo, "--driving", str(clip), "--out", str(tmp_path / "o.mp4")]
    assert main([*argv, "--quiet"]) == EXIT_BAD_INPUT
