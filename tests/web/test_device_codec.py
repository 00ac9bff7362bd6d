"""The browser's keypoint encoder (web/keypoints/) against the Python one, bit for bit.

Session mode ``keypoints-device`` trusts the page to code motion exactly as
:mod:`models.codec` specifies.  Here headless Chromium runs the page's own ES modules on
landmarks that Python's FaceTracker measured on real frames of lp_d18.mp4; Python's Decoder
must accept every message the JavaScript produced (CRCs, ranges, canonical encoding), and the
values must be Python's own encoder's for the same landmarks.  The speaker basis too: given
Python's directions, the page's BASIS and the packets coded with it are Python's bytes; learning
its own, the page finds the subspace numpy finds and Python's receiver decodes what it codes.
No server: Playwright serves web/ from disk.
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

from models.codec import (
    DEAD_ZONE,
    EXPRESSION_STEP,
    Basis,
    BasisAck,
    Keyframe,
    KeyframeRequest,
    MessageType,
    MotionPacket,
    dequantize,
    message_type,
)
from models.codec_stream import Decoder, Encoder, learn_basis
from models.tracking import FaceTracker
from service import web_codec
from service.compression import Sender, encode_landmarks
from tests.conftest import load_clip
from tests.web.test_browser import CHROMIUM

WEB = Path(__file__).resolve().parents[2] / "web"
ORIGIN = "http://reenact.test"
FPS = 30.0
FRAMES = 216  # all 7.2 s of lp_d18: the speaker talks, the mouth opens wide and closes

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


ENCODE = """async ({points, times, fps, width, height, picture, events}) => {
  const {Encoder} = await import('/keypoints/codec.js');
  const {parseBasisAck} = await import('/keypoints/basis.js');
  const {cutPicture, encodePicture} = await import('/keypoints/picture.js');
  const image = new Image();
  image.src = picture;
  await image.decode();
  const encoder = new Encoder(fps);
  const toBase64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const all = new Float64Array(fromBase64(points).buffer);
  const messages = [];
  for (let i = 0; i < times.length; i++) {
    const marks = all.slice(1434 * i, 1434 * (i + 1));
    if (i === 0) {
      const plan = encoder.plan(marks, width, height);
      const canvas = cutPicture(image, width, height, plan.region, plan.side);
      const encoded = await encodePicture(canvas, encoder.imageFormat, encoder.quality);
      messages.push(toBase64(encoder.makeKeyframe(marks, plan, times[i], encoded)));
    }
    const packet = encoder.encode(marks, times[i]);
    if (packet !== null) messages.push(toBase64(packet));
    const event = events?.[i];  // after this frame: send a basis, or take an acknowledgement
    if (event?.propose) messages.push(toBase64(encoder.proposeBasis(event.propose)));
    if (event?.ack) encoder.acknowledge(parseBasisAck(fromBase64(event.ack)));
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


def _clip_input(
    tracked: tuple[list[np.ndarray], list[Any], list[float]],
) -> dict[str, Any]:
    """The tracked clip as the page's scripts take it: landmarks, times, the first frame."""
    frames, marks, times = tracked
    png = io.BytesIO()
    Image.fromarray(frames[0]).save(png, format="PNG")
    height, width = frames[0].shape[:2]
    return {
        # float64 bytes (a list of lists would take Playwright seconds to serialise)
        "points": _b64(np.stack([m.points for m in marks]).astype("<f8").tobytes()),
        "times": times,
        "fps": FPS,
        "width": width,
        "height": height,
        "picture": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_browser_encoder_matches_the_python_encoder(
    page: Page, tracked: tuple[list[np.ndarray], list[Any], list[float]]
) -> None:
    frames, marks, times = tracked
    encoded = await page.evaluate(ENCODE, _clip_input(tracked))
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


# --- the speaker basis ----------------------------------------------------------------------

PROPOSE = (60, 120)  # frames after which Python's encoder learns and sends a basis
ACK_AFTER = 6  # frames until the receiver's acknowledgement comes back


async def test_browser_codes_with_a_given_basis_as_python_does(
    page: Page, tracked: tuple[list[np.ndarray], list[Any], list[float]]
) -> None:
    """Given the directions Python learned, the page's BASIS messages and every packet after
    them are Python's bytes: the basis used only once acknowledged, the old one until then."""
    frames, marks, times = tracked
    encoder = Encoder(FPS)
    python = [encoder.make_keyframe(frames[0], marks[0], times[0]).to_bytes()]
    events: dict[str, dict[str, Any]] = {}
    acks: dict[int, BasisAck] = {}
    for i, (m, t) in enumerate(zip(marks, times, strict=True)):
        packet = encoder.encode(m, t)
        assert packet is not None
        python.append(packet.to_bytes())
        if i in acks:
            encoder.acknowledge(acks[i])
            events[str(i)] = {"ack": _b64(acks[i].to_bytes())}
        if i in PROPOSE:
            vectors = learn_basis(np.stack(encoder.history))
            basis = encoder.propose_basis(vectors)
            assert basis is not None
            python.append(basis.to_bytes())
            events[str(i)] = {"propose": vectors.tolist()}
            acks[i + ACK_AFTER] = BasisAck(basis.id)

    encoded = await page.evaluate(ENCODE, {**_clip_input(tracked), "events": events})
    js = [base64.b64decode(m) for m in encoded]
    assert len(js) == len(python) == 1 + FRAMES + len(PROPOSE)

    # What Python sent uses basis 1, then 2, each from the frame after its acknowledgement.
    sizes: dict[int, int] = {}
    used = []
    for data in python[1:]:
        if message_type(data) == MessageType.BASIS:
            basis = Basis.from_bytes(data)
            sizes[basis.id] = len(basis.rows)
        else:
            used.append(MotionPacket.from_bytes(data, sizes).basis_id)
    first, second = (p + ACK_AFTER for p in PROPOSE)
    assert used == [0] * (first + 1) + [1] * (second - first) + [2] * (FRAMES - second - 1)

    # Byte for byte (but the keyframe, whose picture the browser encodes itself: see above).
    differing = [i for i, (a, b) in enumerate(zip(js, python, strict=True)) if i and a != b]
    assert differing == [], [(i, message_type(python[i]).name) for i in differing[:5]]
    with_basis = [8 * len(m) for m, u in zip(python[-len(used) :], used, strict=True) if u]
    print(
        f"given basis: {len(differing)} of {len(js) - 1} messages differ; bases of "
        f"K = {sorted(sizes.values())}, {np.mean(with_basis):.1f} bits/frame once acknowledged"
    )


BASIS_AFTER = 2.0  # s: the product waits 10 s, longer than the clip
RECENTRE = 140  # the receiver asks for a fresh keyframe before this frame: the history restarts


SEND = """async ({points, times, fps, width, height, picture, basisAfter, control, ackAfter}) => {
  const {Sender} = await import('/keypoints/sender.js');
  const {Encoder} = await import('/keypoints/codec.js');
  const {learnBasis} = await import('/keypoints/basis.js');
  const image = new Image();
  image.src = picture;
  await image.decode();
  const toBase64 = (bytes) => btoa(String.fromCharCode(...bytes));
  const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const all = new Float64Array(fromBase64(points).buffer);
  const frames = times.map((_, i) => all.slice(1434 * i, 1434 * (i + 1)));

  const sender = new Sender(fps, {basisAfter, basisEvery: basisAfter});
  const plain = new Sender(fps, {basisAfter: 0});  // the same frames, no basis, one keyframe
  const messages = [];
  const plainBits = [];
  const due = {[control.at]: [control.request]};  // frame -> the receiver's replies before it
  for (let i = 0; i < times.length; i++) {
    for (const reply of due[i] ?? []) sender.control(fromBase64(reply));
    const out = await sender.frame(frames[i], times[i], image, width, height);
    for (const data of [...out.reliable, ...out.unreliable]) {
      messages.push([i, toBase64(data)]);
      if (data[0] >> 4 === 4) (due[i + ackAfter] ??= []).push(control.acks[data[1]]);
    }
    const other = await plain.frame(frames[i], times[i], image, width, height);
    plainBits.push(8 * other.unreliable.reduce((sum, data) => sum + data.length, 0));
  }

  // Two passes, as a file encoder may: the basis learned from the whole clip, used throughout.
  const history = plain.encoder.history;
  const start = performance.now();
  const learned = learnBasis(history);
  const learnMs = performance.now() - start;
  const whole = new Encoder(fps);
  const {keyframe, region, side} = plain.encoder;
  const twoPass = [whole.makeKeyframe(frames[0], {region, side}, times[0],
                                      {format: keyframe.imageFormat, bytes: keyframe.image})];
  twoPass.push(whole.proposeBasis(learned));
  whole.acknowledge(1);
  frames.forEach((marks, i) => twoPass.push(whole.encode(marks, times[i])));
  return {messages, plainBits, history, learned, learnMs, twoPass: twoPass.map(toBase64),
          recentred: sender.encoder.history.length};
}"""


def _captured(reference: np.ndarray, span: np.ndarray) -> np.ndarray:
    """The length of each unit row of ``reference`` projected onto the row space of ``span``."""
    q, _ = np.linalg.qr(np.asarray(span, dtype=np.float64).T)
    return np.asarray(np.linalg.norm(q.T @ reference.T, axis=0))


def _schedule(messages: list[tuple[int, bytes]]) -> list[tuple[Any, ...]]:
    """Frame, type and basis (id, K; or the id a packet uses) of each message, in order."""
    sizes: dict[int, int] = {}
    out: list[tuple[Any, ...]] = []
    for i, data in messages:
        kind = message_type(data)
        if kind == MessageType.BASIS:
            basis = Basis.from_bytes(data)
            sizes[basis.id] = len(basis.rows)
            out.append((i, kind.name, basis.id, len(basis.rows)))
        elif kind == MessageType.MOTION:
            out.append((i, kind.name, MotionPacket.from_bytes(data, sizes).basis_id))
        else:
            out.append((i, kind.name))
    return out


def _decoded(messages: list[tuple[int, bytes]]) -> dict[int, tuple[MotionPacket, np.ndarray]]:
    """Frame -> (packet, the contour coefficients a receiver rebuilds from it)."""
    bases: dict[int, Basis] = {}
    out = {}
    for i, data in messages:
        kind = message_type(data)
        if kind == MessageType.BASIS:
            basis = Basis.from_bytes(data)
            bases[basis.id] = basis
        elif kind == MessageType.MOTION:
            packet = MotionPacket.from_bytes(data, {k: len(b.rows) for k, b in bases.items()})
            out[i] = (packet, dequantize(packet, bases.get(packet.basis_id)).expression)
    return out


async def test_browser_learns_the_basis_python_learns(
    page: Page, tracked: tuple[list[np.ndarray], list[Any], list[float]]
) -> None:
    """The page's Sender learns its own basis on schedule, as service.compression.Sender does
    (and starts over with a fresh keyframe): the same subspace as numpy's SVD, and Python's
    Decoder takes the BASIS messages and the packets coded with them, which decode as closely
    to the measured face as Python's own."""
    frames, marks, times = tracked
    request = KeyframeRequest(0, fresh=True).to_bytes()
    control = {
        "at": RECENTRE,
        "request": _b64(request),
        "acks": {i: _b64(BasisAck(i).to_bytes()) for i in (1, 2, 3)},
    }
    result = await page.evaluate(
        SEND,
        {
            **_clip_input(tracked),
            "basisAfter": BASIS_AFTER,
            "control": control,
            "ackAfter": ACK_AFTER,
        },
    )
    js = [(int(i), base64.b64decode(m)) for i, m in result["messages"]]

    # Python's Sender, fed the same landmarks and replies; and the face each frame measured
    # (relative to the keyframe of its time).
    sender = Sender(FPS, encoder=Encoder(FPS), basis_after=BASIS_AFTER, basis_every=BASIS_AFTER)
    python: list[tuple[int, bytes]] = []
    exact = []
    due: dict[int, list[bytes]] = {RECENTRE: [request]}
    try:
        for i, (frame, m, t) in enumerate(zip(frames, marks, times, strict=True)):
            for reply in due.pop(i, []):
                sender.control(reply)
            out = sender.landmarks(m, t, frame)
            exact.append(sender.encoder.analyse(m).expression)
            for data in out.reliable + out.unreliable:
                python.append((i, data))
                if message_type(data) == MessageType.BASIS:
                    due.setdefault(i + ACK_AFTER, []).append(BasisAck(data[1]).to_bytes())
    finally:
        sender.close()

    # The same messages at the same frames: bases 1, 2 every 2 s from the keyframe, then 3 two
    # seconds after the fresh one; of the same rank, each used from the frame after its
    # acknowledgement.  The history restarted with the fresh keyframe.
    schedule = _schedule(js)
    assert schedule == _schedule(python)
    third = next(i for i, t in enumerate(times) if t >= times[RECENTRE] + BASIS_AFTER)
    bases = [s for s in schedule if s[1] == "BASIS"]
    assert [(i, basis_id) for i, _, basis_id, _ in bases] == [(60, 1), (120, 2), (third, 3)]
    assert [i for i, kind, *_ in schedule if kind == "KEYFRAME"] == [0, RECENTRE]
    assert result["recentred"] == len(sender.encoder.history) == FRAMES - RECENTRE

    # The history (every frame since the keyframe) is Python's, and what is learned from it
    # spans numpy's subspace: before quantization, and in the BASIS messages.
    _, plain = encode_landmarks(marks, times, FPS, frames[0], two_pass_basis=False)
    history = np.stack(plain.history)
    assert np.array(result["history"]).shape == history.shape == (FRAMES, 76)
    difference = np.abs(np.array(result["history"]) - history).max()
    assert difference <= 1e-6, difference  # the pose fit differs in the last digits
    ours, theirs = np.array(result["learned"]), learn_basis(history)
    assert ours.shape == theirs.shape and len(ours) >= 2
    assert np.allclose(ours @ ours.T, np.eye(len(ours)), atol=1e-9)  # unit, orthogonal
    learned = _captured(theirs, ours)
    assert learned.min() >= 0.999, learned
    sent = [
        _captured(Basis.from_bytes(b).vectors, Basis.from_bytes(a).vectors)
        for (_, a), (_, b) in zip(js, python, strict=True)
        if message_type(a) == MessageType.BASIS
    ]
    assert len(sent) == 3 and min(c.min() for c in sent) >= 0.999, sent

    # Python's receiver takes all of it, and acknowledges each basis.
    decoder = Decoder()
    for _, data in js:
        assert decoder.receive(data) is not None
    assert decoder.outbox == [BasisAck(i).to_bytes() for i in (1, 2, 3)]
    stats = decoder.stats
    assert (stats.corrupt, stats.unknown_basis, stats.bases, stats.motion) == (0, 0, 3, FRAMES)

    # Each packet decodes within the dead zone of the face measured (as Python's do); the pose
    # is coded without the basis, identically.
    tolerance = DEAD_ZONE * EXPRESSION_STEP + 1e-9
    mine, reference = _decoded(js), _decoded(python)
    assert sorted(mine) == sorted(reference) == list(range(FRAMES))
    for i in range(FRAMES):
        (pa, a), (pb, b) = mine[i], reference[i]
        assert (pa.rotation, pa.scale, pa.translation) == (pb.rotation, pb.scale, pb.translation)
        assert np.abs(a - exact[i]).max() <= tolerance, (i, np.abs(a - exact[i]).max())
        assert np.abs(b - exact[i]).max() <= tolerance
        assert np.abs(a - b).max() <= 2 * tolerance

    # The page's basis of the whole clip (two passes, as a file encoder may), from the first
    # frame on: every packet decodes, within the dead zone.
    two_pass = [(i - 2, base64.b64decode(m)) for i, m in enumerate(result["twoPass"])]
    whole = _decoded(two_pass)  # frame -> packet; the keyframe and basis come first
    assert [message_type(d) for _, d in two_pass[:2]] == [MessageType.KEYFRAME, MessageType.BASIS]
    assert sorted(whole) == list(range(FRAMES))
    for i, m in enumerate(marks):
        error = np.abs(whole[i][1] - plain.analyse(m).expression).max()
        assert whole[i][0].basis_id == 1 and error <= tolerance, (i, error)

    # The bits: as many as Python's encoder spends, live once the first basis is acknowledged
    # (until the fresh keyframe), and with the whole clip's basis, which saves many.
    after = range(bases[0][0] + ACK_AFTER + 1, RECENTRE)
    live = np.mean([8 * len(mine[i][0].to_bytes()) for i in after])
    python_live = np.mean([8 * len(reference[i][0].to_bytes()) for i in after])
    live_without = np.mean([result["plainBits"][i] for i in after])
    whole_bits = np.mean([8 * len(d) for _, d in two_pass[2:]])
    python_whole, _ = encode_landmarks(marks, times, FPS, frames[0], encoder=Encoder(FPS))
    python_whole_bits = np.mean([8 * len(d) for d in python_whole[2:]])
    without = np.mean(result["plainBits"])
    print(
        f"page's bits/frame on lp_d18: basis after {BASIS_AFTER:.0f} s and every "
        f"{BASIS_AFTER:.0f} s (K = {[b[3] for b in bases]}, "
        f"{sum(len(d) for _, d in js if message_type(d) == MessageType.BASIS)} bytes), "
        f"frames {after.start}-{after.stop - 1}: {live:.1f} (Python {python_live:.1f}), "
        f"{live_without:.1f} without ({live / live_without - 1:+.0%}); basis of all "
        f"{FRAMES} frames (K = {len(ours)}): {whole_bits:.1f} (Python {python_whole_bits:.1f}), "
        f"{without:.1f} without ({whole_bits / without - 1:+.0%}); learning took "
        f"{result['learnMs']:.0f} ms; "
        f"spans captured >= {min(c.min() for c in [learned, *sent]):.6f}"
    )
    assert abs(live - python_live) <= 0.03 * python_live  # learned from 2 s: no saving
    assert abs(whole_bits - python_whole_bits) <= 0.03 * python_whole_bits
    assert whole_bits < 0.8 * without
