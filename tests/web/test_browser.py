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

from models.tracking import FaceTracker
from tests.conftest import data_path
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


async def frames_decoded(page: Page) -> int:
    value = await page.evaluate("() => window.reenact.stats?.framesDecoded ?? 0")
    return int(value)


async def test_page_starts_a_call_and_shows_the_avatar(
    live: LiveServer, browser: BrowserContext
) -> None:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(live.url + "/")
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
