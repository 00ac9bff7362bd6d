"""The browser's keypoint encoder (web/keypoints/) against the Python one, bit for bit.

Session mode ``keypoints-device`` trusts the page to code motion exactly as
:mod:`models.codec` specifies.  Here headless Chromium runs the page's own ES modules on
landmarks that Python's FaceTracker measured on real frames of lp_d18.mp4; Python's Decoder
must accept every message the JavaScript produced (CRCs, ranges, canonical encoding), and the
values must be Python's own encoder's for the same landmarks.  No server: Playwright serves
web/ from disk.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image
from playwright.async_api import Page, Route, async_playwright

from models.codec import Keyframe, MotionPacket, dequantize
from models.codec_stream import Decoder, Encoder
from models.tracking import FaceTracker
from service import web_codec
from service.compression import encode_landmarks
from tests.conftest import load_clip
from tests.web.test_browser import CHROMIUM

WEB = Path(__file__).resolve().parents[2] / "web"
ORIGIN = "http://reenact.test"
FPS = 30.0
FRAMES = 90  # 3 s of lp_d18: the mouth opens wide and closes

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed"),
]


def test_generated_spec_matches_the_python() -> None:
    """web/keypoints/spec.js is what service.web_codec generates from the Python today."""
    committed = (WEB / "keypoints" / "spec.js").read_text(encoding="utf-8")
    assert committed == web_codec.render(), "regenerate: .venv/bin/python -m service.web_codec"


async def _serve_web(route: Route) -> None:
    path = route.request.url.removeprefix(ORIGIN + "/").split("?")[0] or "index.html"
    file = (WEB / path).resolve()
    if WEB not in file.parents or not file.is_file():
        await route.fulfill(status=404)
        return
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if file.suffix == ".js":
        content_type = "text/javascript"
    await route.fulfill(path=str(file), content_type=content_type)


@pytest_asyncio.fixture
async def page() -> AsyncIterator[Page]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            await page.route(ORIGIN + "/**", _serve_web)
            await page.goto(ORIGIN + "/keypoints/spec.js")  # any page of the origin
            yield page
        finally:
            await browser.close()


ENCODE = """async ({points, times, fps, width, height, picture}) => {
  const {Encoder} = await import('/keypoints/codec.js');
  const {cutPicture, encodePicture} = await import('/keypoints/picture.js');
  const image = new Image();
  image.src = picture;
  await image.decode();
  const encoder = new Encoder(fps);
  const toBase64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const messages = [];
  for (let i = 0; i < points.length; i++) {
    const marks = points[i] === null ? null : Float64Array.from(points[i]);
    if (i === 0) {
      const plan = encoder.plan(marks, width, height);
      const canvas = cutPicture(image, width, height, plan.region, plan.side);
      const encoded = await encodePicture(canvas, encoder.imageFormat, encoder.quality);
      messages.push(toBase64(encoder.makeKeyframe(marks, plan, times[i], encoded)));
    }
    const packet = encoder.encode(marks, times[i]);
    if (packet !== null) messages.push(toBase64(packet));
  }
  return messages;
}"""


@pytest.fixture(scope="module")
def tracked() -> tuple[list[np.ndarray], list[Any], list[float]]:
    frames = load_clip("lp_d18.mp4", FRAMES)
    with FaceTracker(video=True) as tracker:
        times = [k / FPS for k in range(len(frames))]
        marks = [tracker(f, t) for f, t in zip(frames, times, strict=True)]
    assert all(m is not None for m in marks)
    return frames, marks, times


async def test_browser_encoder_matches_the_python_encoder(
    page: Page, tracked: tuple[list[np.ndarray], list[Any], list[float]]
) -> None:
    frames, marks, times = tracked
    png = io.BytesIO()
    Image.fromarray(frames[0]).save(png, format="PNG")
    height, width = frames[0].shape[:2]
    encoded = await page.evaluate(
        ENCODE,
        {
            "points": [m.points.astype(np.float64).ravel().tolist() for m in marks],
            "times": times,
            "fps": FPS,
            "width": width,
            "height": height,
            "picture": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
        },
    )
    js = [base64.b64decode(m) for m in encoded]
    python, _ = encode_landmarks(
        marks, times, FPS, frames[0], two_pass_basis=False, encoder=Encoder(FPS)
    )
    assert len(js) == len(python) == FRAMES + 1

    # The keyframe: every header field and reference landmark as Python writes them; the
    # picture (the browser's WebP encoder, not libwebp via OpenCV) decodes to the same crop.
    ours, theirs = Keyframe.from_bytes(js[0]), Keyframe.from_bytes(python[0])
    for name in ("epoch", "seq", "timestamp_ms", "fps", "image_format", "region", "image_size"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert np.array_equal(ours.landmarks, theirs.landmarks)
    difference = np.abs(ours.decode_image().astype(int) - theirs.decode_image().astype(int))
    assert difference.mean() < 3.0, difference.mean()

    # Every motion packet parses (CRC, ranges, canonical encoding) and a decoder takes it.
    decoder = Decoder()
    for message in js:
        assert decoder.receive(message) is not None
    assert decoder.stats.corrupt == 0 and decoder.stats.motion == FRAMES

    # Field by field against Python's packet for the same frame: within one step, and counted.
    fields = differing = 0
    for a, b in zip(js[1:], python[1:], strict=True):
        pa, pb = MotionPacket.from_bytes(a), MotionPacket.from_bytes(b)
        assert (pa.seq, pa.epoch, pa.jitter_ms, pa.basis_id) == (pb.seq, pb.epoch, pb.jitter_ms, 0)
        va = np.array([*pa.rotation, pa.scale, *pa.translation, *pa.expression])
        vb = np.array([*pb.rotation, pb.scale, *pb.translation, *pb.expression])
        assert np.abs(va - vb).max() <= 1, (pa.seq, va - vb)
        fields += len(va)
        differing += int((va != vb).sum())
        ma, mb = dequantize(pa), dequantize(pb)
        assert np.allclose(ma.expression, mb.expression, atol=0.05 + 1e-9)
    same = sum(a == b for a, b in zip(js[1:], python[1:], strict=True))
    print(
        f"parity: {differing} of {fields} fields differ, {same} of {FRAMES} packets "
        f"byte-identical; {sum(map(len, js[1:]))} vs {sum(map(len, python[1:]))} motion bytes; "
        f"keyframe picture mean |diff| {difference.mean():.2f}"
    )
    assert differing <= 0.001 * fields
