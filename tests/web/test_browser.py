"""End to end in a real headless Chromium: the page, its fake webcam, the server, and back.

Debian's chromium (never a downloaded build) plays ../shared/data/webcam.y4m as its camera.
The test drives the page like a person (pick, click Start) and reads from the page that avatar
frames arrive and show a face.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image
from playwright.async_api import BrowserContext, Page, async_playwright

from models import codec_stream
from models.codec import Basis, Motion, MotionPacket
from models.codec_stream import Played
from models.landmarks import Landmarks
from models.tracking import FaceTracker
from service.device import DeviceKeypoints
from tests.conftest import data_path, mouth_open
from tests.service.conftest import LiveServer, make_settings, run_server

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed"),
]


def chromium_args(webcam: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={webcam.resolve()}",  # must be absolute
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-loopback-in-peer-connection",
    ]


@pytest_asyncio.fixture
async def live() -> AsyncIterator[LiveServer]:
    async for server in run_server(make_settings(max_sessions=1)):
        yield server


@pytest_asyncio.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"),  # new and empty
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(data_path("webcam.y4m")),
        )
        try:
            yield context
        finally:
            await context.close()


SNAPSHOT = """() => {
  const video = document.getElementById('avatar');
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext('2d').drawImage(video, 0, 0);
  return canvas.toDataURL('image/png');
}"""


async def snapshot(page: Page) -> np.ndarray:
    """The remote (avatar) video's current frame, as the page's canvas sees it."""
    data_url = await page.evaluate(SNAPSHOT)
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


async def open_page(browser: BrowserContext, url: str) -> tuple[Page, list[str]]:
    """The page at ``url`` and the list its uncaught JavaScript errors will be appended to."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url + "/")
    return page, errors


async def frames_decoded(page: Page) -> int:
    value = await page.evaluate("() => window.reenact.stats?.framesDecoded ?? 0")
    return int(value)


async def test_page_starts_a_call_and_shows_the_avatar(
    live: LiveServer, browser: BrowserContext
) -> None:
    page, errors = await open_page(browser, live.url)
    await page.wait_for_selector("#avatars input[value=astronaut]", state="attached")
    assert await page.is_checked("#avatars input[value=astronaut]")

    await page.click("#start")
    await page.wait_for_selector("body[data-state=live]", timeout=30_000)
    assert len(live.registry) == 1

    # Avatar frames keep arriving: framesDecoded (from getStats) rises.
    await page.wait_for_function(
        "() => (window.reenact.stats?.framesDecoded ?? 0) > 10", timeout=20_000
    )
    first = await frames_decoded(page)
    await page.wait_for_timeout(2000)
    second = await frames_decoded(page)
    assert second > first + 5, (first, second)
    stats = await page.evaluate("() => window.reenact.stats")
    assert (stats["width"], stats["height"]) == (256, 256)
    assert await page.text_content("#stat-fps-in") not in ("", "–")

    # A snapshot of the remote video shows a face (the project's tracker finds it).
    image = await snapshot(page)
    assert image.shape == (256, 256, 3) and image.std() > 10  # not a blank frame
    with FaceTracker(video=False) as tracker:
        assert tracker(np.ascontiguousarray(image)) is not None
    # ... and it is animated by the speaking driver, not a still: a second later it differs.
    await page.wait_for_timeout(1000)
    later = await snapshot(page)
    assert np.abs(later.astype(np.int16) - image).mean() > 0.5
    assert await page.evaluate("() => window.reenact.call.telemetry.face") is True

    # Stop ends the session on the server too.
    await page.click("#stop")
    await page.wait_for_selector("body[data-state=idle]")
    for _ in range(50):
        if len(live.registry) == 0:
            break
        await page.wait_for_timeout(100)
    assert len(live.registry) == 0
    assert errors == []


async def test_compressed_view_shows_keypoint_and_video_bitrates(
    live: LiveServer, browser: BrowserContext
) -> None:
    page, errors = await open_page(browser, live.url)
    await page.check("input[name=mode][value=keypoints]")
    await page.click("#start")
    await page.wait_for_selector("body[data-state=live]", timeout=30_000)
    assert [s.options.mode for s in live.registry] == ["keypoints"]

    # Both figures appear: the keypoint stream's (server-counted) and the webcam video's
    # (the browser's own outbound-rtp byte counter).
    await page.wait_for_function(
        "() => (window.reenact.keypoints?.kbps ?? 0) > 0"
        " && (window.reenact.stats?.kbpsOut ?? 0) > 0",
        timeout=20_000,
    )
    assert "kbit/s" in (await page.text_content("#stat-keypoint-kbps") or "")
    assert "kbit/s" in (await page.text_content("#stat-video-kbps") or "")
    keypoints = await page.evaluate("() => window.reenact.keypoints")
    video_kbps = await page.evaluate("() => window.reenact.stats.kbpsOut")
    assert 0 < keypoints["kbps"] < 20 and keypoints["keyframe_bytes"] > 1000, keypoints
    assert video_kbps > 5 * keypoints["kbps"], (video_kbps, keypoints)
    assert await page.text_content("#remote-caption") == "You, rebuilt from keypoints"
    await page.click("#stop")
    await page.wait_for_selector("body[data-state=idle]")
    assert errors == []


async def test_page_says_when_the_server_is_full(live: LiveServer, browser: BrowserContext) -> None:
    await live.create_session()  # max_sessions=1: the page's request will be refused
    page = await browser.new_page()
    await page.goto(live.url + "/")
    await page.wait_for_selector("#avatars input[value=astronaut]", state="attached")
    await page.click("#start")
    await page.wait_for_selector("body[data-state=error]", timeout=20_000)
    message = await page.text_content("#message")
    assert message is not None and "server is full" in message and "10 s" in message
    assert await page.evaluate("() => window.reenact.camera") is None  # camera released


async def test_page_says_when_the_photo_has_no_face(
    live: LiveServer, browser: BrowserContext, tmp_path: Path
) -> None:
    blank = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (180, 170, 150)).save(blank)
    page = await browser.new_page()
    await page.goto(live.url + "/")
    await page.set_input_files("#photo", str(blank))
    await page.click("#start")
    await page.wait_for_selector("body[data-state=error]", timeout=20_000)
    message = await page.text_content("#message")
    assert message is not None and "No face found" in message
    assert len(live.registry) == 0


PAGE_KEY = "page-secret-0123456789abcdef"


@pytest_asyncio.fixture
async def keyed_live() -> AsyncIterator[LiveServer]:
    async for server in run_server(make_settings(max_sessions=1, api_keys={"page": PAGE_KEY})):
        yield server


async def test_page_asks_for_an_api_key_and_says_why_a_call_ended(
    keyed_live: LiveServer, browser: BrowserContext
) -> None:
    page, errors = await open_page(browser, keyed_live.url)
    await page.wait_for_selector("#avatars input[value=astronaut]", state="attached")
    assert await page.is_hidden("#apikey-field")  # nothing to ask until the server does
    await page.click("#start")
    await page.wait_for_selector("body[data-state=error]", timeout=20_000)
    assert "needs an API key" in (await page.text_content("#message") or "")
    assert await page.is_visible("#apikey-field")

    await page.fill("#apikey", PAGE_KEY)
    await page.click("#start")
    await page.wait_for_selector("body[data-state=live]", timeout=30_000)
    assert await page.evaluate("() => sessionStorage.getItem('reenact.apiKey')") == PAGE_KEY
    [session] = list(keyed_live.registry)
    assert session.owner == "page"
    for _ in range(50):  # the page's heartbeat starts once its data channel is open
        if session.last_heartbeat_at is not None:
            break
        await page.wait_for_timeout(100)
    assert session.last_heartbeat_at is not None

    # The server ends the call: the page is told why, stops, and says so.
    await keyed_live.registry.end(session.id, "max duration")
    await page.wait_for_function("() => window.reenact.ended?.reason === 'max duration'")
    await page.wait_for_selector("body[data-state=idle]")
    assert "ended this session (max duration)" in (await page.text_content("#message") or "")
    assert await page.evaluate("() => window.reenact.camera") is None
    assert errors == []


DEVICE_SAMPLE = """async () => {
  const call = window.reenact.call;
  let channelBytes = 0;
  (await call.pc.getStats()).forEach((s) => {
    if (s.type === 'data-channel' && s.label.startsWith('keypoints-')) channelBytes += s.bytesSent;
  });
  return {sent: call.stats(), channelBytes, basis: call.sender.encoder.basis?.id ?? null};
}"""

# The page's sender learns a speaker basis this long after its keyframe (the product waits
# 10 s, longer than the test runs): enough tracked frames to learn from at 1-3 fps.
DEVICE_BASIS_AFTER_S = 3
SHORTEN_BASIS = """(after) => {
  const sender = window.reenact.call.sender;
  sender.basisAfter = after;
  return sender.encoder.stats.keyframes;
}"""


async def test_keypoints_from_this_device_send_no_video(
    live: LiveServer, browser: BrowserContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mode keypoints-device: the page tracks and encodes its own face; the server gets only
    data-channel messages, never a video track, and sends back a face whose mouth follows the
    one the page tracked on its webcam.  The page sends a speaker basis; the server
    acknowledges it, and the packets coded with it decode."""
    page, errors = await open_page(browser, live.url)
    await page.check("input[name=mode][value=keypoints-device]")
    await page.click("#start")
    # Before the first keyframe (it needs the data channel open and a tracked face).
    await page.wait_for_function("() => window.reenact.call?.sender !== undefined", polling=10)
    assert await page.evaluate(SHORTEN_BASIS, DEVICE_BASIS_AFTER_S) == 0
    await page.wait_for_selector("body[data-state=live]", timeout=40_000)
    sessions = list(live.registry)
    assert len(sessions) == 1, (live.registry._ended, await page.text_content("#message"))
    [session] = sessions
    assert session.options.mode == "keypoints-device" and session.pc is not None
    # The server only ever sends video: its one video section is sendonly.
    assert [t.currentDirection for t in session.pc.getTransceivers()] == ["sendonly"]

    # Every frame the server renders, with the motion it was rendered from (the sender's face
    # as decoded from the packets the page sent).
    device = session.worker.reenactor
    assert isinstance(device, DeviceKeypoints)
    rendered: list[tuple[np.ndarray, np.ndarray]] = []
    render = device.receiver.render

    def recording(played: Played) -> np.ndarray | None:
        image = render(played)
        if image is not None:
            rendered.append((played.state.points(), image))
        return image

    monkeypatch.setattr(device.receiver, "render", recording)
    # The basis each packet the server decodes was coded with (0: none).
    bases: list[int] = []
    dequantize = codec_stream.dequantize

    def decoding(packet: MotionPacket, basis: Basis | None = None) -> Motion:
        bases.append(packet.basis_id)
        return dequantize(packet, basis)

    monkeypatch.setattr(codec_stream, "dequantize", decoding)
    for _ in range(300):
        if len(rendered) >= 16:
            break
        await page.wait_for_timeout(100)
    await page.wait_for_function("() => (window.reenact.stats?.framesDecoded ?? 0) > 3")
    image = await snapshot(page)  # what the page shows is a face
    with FaceTracker(video=False) as judge:
        assert judge(np.ascontiguousarray(image)) is not None

    # What the page counted is what its data channels sent (getStats), and what arrived.
    sample = await page.evaluate(DEVICE_SAMPLE)
    sent, server = sample["sent"], session.stats.snapshot()["keypoints"]
    assert isinstance(server, dict)
    decoder = device.receiver.decoder.stats
    # One keyframe; resent (not remade) if motion outran it and the receiver asked for it.
    assert sent["keyframes"] == 1 + decoder.requests and decoder.keyframes == sent["keyframes"]
    assert decoder.corrupt == 0 and sent["keyframeBytes"] > 2000 and sent["packets"] > 10
    total = sent["motionBytes"] + sent["keyframeBytes"] + sent["basisBytes"] + sent["otherBytes"]
    assert abs(sample["channelBytes"] - total) <= 0.05 * total, (sample, total)
    assert server["keyframe_bytes"] == sent["keyframeBytes"]
    # A speaker basis (one more after each fresh keyframe), acknowledged: later packets use it,
    # and the server decodes them.
    assert sent["bases"] == decoder.bases >= 1 and sample["basis"] is not None, (sample, decoder)
    assert server["basis_bytes"] == sent["basisBytes"] > 3 + 4 + 76 + 4
    assert decoder.unknown_basis == 0 and sample["basis"] in bases, bases
    assert 0.8 * sent["packets"] <= server["packets"] <= sent["packets"]
    assert 0 < sent["kbps"] < 20 and 50 < sent["bitsPerFrame"] < 500, sent
    assert "sent by this browser" in (await page.text_content("#stat-keypoint-kbps") or "")
    assert "no video leaves" in (await page.text_content("#stat-video-kbps") or "")
    await page.click("#stop")
    await page.wait_for_selector("body[data-state=idle]")
    assert errors == []

    # The rebuilt mouth opens and closes with the one the page tracked and sent.
    assert len(rendered) >= 16, len(rendered)
    with FaceTracker(video=False) as judge:
        pairs = []
        for points, image in rendered:
            rebuilt = judge(np.ascontiguousarray(image))
            if rebuilt is not None:
                side = image.shape[0]
                pairs.append(
                    (
                        mouth_open(Landmarks(points.astype(np.float32), (side, side))),
                        mouth_open(rebuilt),
                    )
                )
    assert len(pairs) >= 0.9 * len(rendered)
    sender, rebuilt_mouth = np.array(pairs).T
    assert sender.max() > 0.2 and sender.min() < 0.1, sender  # the webcam's speaker talks
    correlation = float(np.corrcoef(sender, rebuilt_mouth)[0, 1])
    print(
        f"keypoints-device: page {sent}; server {server}; {decoder}; {len(pairs)} frames, "
        f"mouth correlation {correlation:.2f}"
    )
    assert correlation > 0.6, pairs


async def test_device_mode_says_when_the_tracker_is_not_installed(
    live: LiveServer, browser: BrowserContext
) -> None:
    """A server without web/node_modules (npm never ran) gets a clear message, no session."""
    page = await browser.new_page()
    await page.route("**/node_modules/**", lambda route: route.fulfill(status=404))
    await page.goto(live.url + "/")
    await page.check("input[name=mode][value=keypoints-device]")
    await page.click("#start")
    await page.wait_for_selector("body[data-state=error]", timeout=20_000)
    assert "run make setup" in (await page.text_content("#message") or "")
    assert len(live.registry) == 0
    assert await page.evaluate("() => window.reenact.camera") is None
