"""The keypoint bitstream (models.codec) and its two ends (models.codec_stream), on real faces.

Packets must round-trip bit-exactly, every corrupt / truncated / stale / duplicate / late packet
must be rejected with a counted reason (never an exception), and decoded motion must land
within a pixel of what the sender's tracker saw.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from models import codec, contour_basis
from models.codec import (
    Basis,
    BasisAck,
    BitReader,
    BitWriter,
    Heartbeat,
    Keyframe,
    KeyframeRequest,
    MotionPacket,
    pack_stream,
    unpack_stream,
)
from models.codec_stream import Decoder, Encoder, learn_basis
from models.errors import BadInputError
from models.landmarks import WARP_KEYPOINTS, Landmarks
from models.tracking import FaceTracker
from tests.conftest import load_clip

FRAMES = 40
_WARP = list(WARP_KEYPOINTS)


@pytest.fixture(scope="module")
def clip() -> tuple[list[np.ndarray], list[Landmarks]]:
    """The first frames of a talking clip and their tracked landmarks (all with a face)."""
    frames = load_clip("lp_d10.mp4", max_frames=FRAMES)
    with FaceTracker(video=True) as tracker:
        marks = [tracker(f, i / 30) for i, f in enumerate(frames)]
    assert all(m is not None for m in marks)
    return frames, [m for m in marks if m is not None]


@pytest.fixture(scope="module")
def stream(clip: tuple[list[np.ndarray], list[Landmarks]]) -> tuple[Encoder, list[bytes]]:
    """The clip encoded: keyframe first, then one motion packet per frame."""
    frames, marks = clip
    encoder = Encoder(30.0)
    messages = [encoder.make_keyframe(frames[0], marks[0], 0.0).to_bytes()]
    for i, m in enumerate(marks):
        packet = encoder.encode(m, i / 30)
        assert packet is not None
        messages.append(packet.to_bytes())
    return encoder, messages


def _random_packet(rng: random.Random, basis: int = 0) -> MotionPacket:
    def small(n: int, spread: int) -> tuple[int, ...]:
        return tuple(rng.choice((0, 0, 0, rng.randint(-spread, spread))) for _ in range(n))

    return MotionPacket(
        seq=rng.randrange(1 << 16),
        epoch=rng.randrange(4),
        jitter_ms=rng.randint(-40, 40),
        rotation=(rng.randint(-300, 300), rng.randint(-300, 300), rng.randint(-100, 100)),
        scale=rng.randint(-50, 50),
        translation=(rng.randint(-500, 500), rng.randint(-500, 500)),
        expression=small(contour_basis.NUM_COEFFICIENTS, 30),
        basis_id=basis,
        basis=small(5, 200) if basis else (),
    )


# --- bits and basis -----------------------------------------------------------------------------


def test_exp_golomb_round_trips_every_order() -> None:
    values = [0, 1, -1, 2, -2, 7, -8, 100, -1000, 65535, -65536]
    w = BitWriter()
    for k in range(5):
        for v in values:
            w.se(v, k)
            w.ue(abs(v), k)
    r = BitReader(w.to_bytes())
    for k in range(5):
        for v in values:
            assert r.se(k) == v
            assert r.ue(k) == abs(v)
    assert r.left < 8  # only the zero padding is left


def test_reader_refuses_to_run_past_the_end() -> None:
    with pytest.raises(BadInputError, match="truncated"):
        BitReader(b"\x00").ue(0)  # eight zeros: a prefix that never ends


def test_contour_basis_is_orthonormal_and_covers_the_warp_keypoints() -> None:
    rows = contour_basis.basis().reshape(contour_basis.NUM_COEFFICIENTS, -1)
    assert np.allclose(rows @ rows.T, np.eye(len(rows)), atol=1e-12)
    assert contour_basis.CODED_POINTS == WARP_KEYPOINTS
    c = np.random.default_rng(0).normal(size=contour_basis.NUM_COEFFICIENTS)
    assert np.allclose(contour_basis.analyse(contour_basis.synthesise(c)), c)


# --- packets ------------------------------------------------------------------------------------


def test_random_packets_round_trip_bit_exactly() -> None:
    rng = random.Random(1)
    for i in range(300):
        basis = i % 4
        packet = _random_packet(rng, basis)
        data = packet.to_bytes()
        parsed = MotionPacket.from_bytes(data, {basis: 5} if basis else None)
        assert parsed == packet
        assert parsed.to_bytes() == data


def test_real_motion_round_trips_within_a_pixel(
    clip: tuple[list[np.ndarray], list[Landmarks]], stream: tuple[Encoder, list[bytes]]
) -> None:
    _, marks = clip
    encoder, messages = stream
    decoder = Decoder()
    parsed = [decoder.receive(m) for m in messages]
    assert isinstance(parsed[0], Keyframe)
    assert all(isinstance(p, MotionPacket) for p in parsed[1:])
    assert [p.to_bytes() for p in parsed[1:]] == messages[1:]  # type: ignore[union-attr]
    errors = []
    for seq, m in enumerate(marks):
        played = decoder.play(seq)
        assert played is not None and played.status == "decoded" and played.seq == seq
        truth = encoder.to_picture(m)[_WARP, :2]
        errors.append(np.linalg.norm(played.state.points()[_WARP, :2] - truth, axis=1).mean())
    assert played is not None
    # Keyframe pictures here are 384 px for a face ~200 px wide: 1 px is ~0.5 % of the face.
    assert np.mean(errors) < 1.0, errors
    assert encoder.stats.bits_per_packet <= 320  # 8 kbit/s at 25 fps, the budget
    assert played.timestamp == pytest.approx((len(marks) - 1) / 30, abs=1e-3)


def test_every_bit_flip_and_truncation_is_rejected_and_counted(
    stream: tuple[Encoder, list[bytes]],
) -> None:
    _, messages = stream
    decoder = Decoder()
    decoder.receive(messages[0])
    tried = 0
    for data in messages[1:6]:
        for bit in range(8 * len(data)):
            broken = bytearray(data)
            broken[bit // 8] ^= 0x80 >> (bit % 8)
            assert decoder.receive(bytes(broken)) is None
            tried += 1
        for end in range(len(data)):
            assert decoder.receive(data[:end]) is None
            tried += 1
        assert decoder.receive(data + b"\x00") is None
        tried += 1
    assert decoder.stats.corrupt == tried
    assert decoder.stats.motion == 0


def test_random_garbage_never_raises() -> None:
    rng = np.random.default_rng(3)
    decoder = Decoder()
    for n in range(2000):
        data = rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        if n % 2:  # a valid motion type byte, so the parser gets further
            data = b"\x11" + data
        assert decoder.receive(data) is None
    s = decoder.stats
    assert s.motion == 0
    # A few pass the CRC-8 by chance (1 in 256) and then name a basis never sent: still
    # rejected, just counted under that reason.
    assert s.corrupt + s.unknown_basis == 2000 and s.unknown_basis < 20


def test_small_control_messages_round_trip() -> None:
    decoder = Decoder()
    for message in (Heartbeat(), KeyframeRequest(7, fresh=True), BasisAck(2)):
        data = message.to_bytes()
        assert decoder.receive(data) == message
        assert decoder.receive(data[:-1] + bytes([data[-1] ^ 1])) is None
    assert decoder.stats.corrupt == 3


def test_unknown_version_and_type_are_rejected() -> None:
    packet = _random_packet(random.Random(4)).to_bytes()
    with pytest.raises(BadInputError, match="version"):
        MotionPacket.from_bytes(bytes([0x12]) + packet[1:])
    with pytest.raises(BadInputError, match="unknown message type"):
        codec.message_type(bytes([0xF1]))


# --- playout ------------------------------------------------------------------------------------


def test_out_of_order_duplicate_and_late_packets(stream: tuple[Encoder, list[bytes]]) -> None:
    _, messages = stream
    ordered = Decoder()
    for m in messages:
        ordered.receive(m)
    shuffled = Decoder()
    shuffled.receive(messages[0])
    motion = messages[1:]
    order = list(range(len(motion)))
    random.Random(5).shuffle(order)
    for i in order:
        shuffled.receive(motion[i])
    shuffled.receive(motion[3])  # a duplicate
    assert shuffled.stats.duplicate == 1
    newest = shuffled.latest()
    assert newest is not None and newest.seq == len(motion) - 1 and newest.status == "decoded"
    for seq in range(len(motion)):
        a, b = ordered.play(seq), shuffled.play(seq)
        assert a is not None and b is not None
        assert np.array_equal(a.state.points(), b.state.points())
    late = Decoder()
    late.receive(messages[0])
    late.receive(motion[0])
    late.receive(motion[2])
    late.play(1)  # shown before its packet came
    assert late.receive(motion[1]) is None
    assert late.stats.late == 1


def test_lost_packets_are_interpolated_or_held(stream: tuple[Encoder, list[bytes]]) -> None:
    _, messages = stream
    decoder = Decoder(max_gap=4)
    lost = {5, 10, 11, 12, 13, 14, 15}  # one alone, then a run longer than max_gap
    decoder.receive(messages[0])
    for seq, m in enumerate(messages[1:]):
        if seq not in lost:
            decoder.receive(m)
    statuses = {seq: decoder.play(seq) for seq in range(20)}
    five, four, six = statuses[5], statuses[4], statuses[6]
    assert five is not None and four is not None and six is not None
    assert five.status == "interpolated"
    expected = (four.motion.expression + six.motion.expression) / 2
    assert np.allclose(five.motion.expression, expected)
    for seq in range(10, 16):
        held = statuses[seq]
        assert held is not None and held.status == "held"
    assert decoder.stats.interpolated == 1 and decoder.stats.held == 6


# --- keyframes, epochs, bases -------------------------------------------------------------------


def test_keyframe_round_trip_and_corruption(stream: tuple[Encoder, list[bytes]]) -> None:
    encoder, messages = stream
    keyframe = Keyframe.from_bytes(messages[0])
    assert keyframe.to_bytes() == messages[0]
    assert encoder.keyframe is not None
    assert np.array_equal(keyframe.landmarks, encoder.keyframe.landmarks)
    picture = keyframe.decode_image()
    assert (picture.shape[1], picture.shape[0]) == keyframe.image_size
    broken = bytearray(messages[0])
    broken[len(broken) // 2] ^= 1
    for bad in (bytes(broken), messages[0][:-1], messages[0][:100]):
        with pytest.raises(BadInputError):
            Keyframe.from_bytes(bad)
    # The picture's centre maps back to the region's centre in camera pixels.
    side = keyframe.image_size[0]
    box = keyframe.to_camera(codec.CropBox(side / 2, side / 2, side))
    assert box.cx == pytest.approx(keyframe.region.cx)
    assert box.size == pytest.approx(keyframe.region.size)


def test_motion_of_an_unknown_epoch_is_stale_and_asks_for_the_keyframe(
    clip: tuple[list[np.ndarray], list[Landmarks]], stream: tuple[Encoder, list[bytes]]
) -> None:
    frames, marks = clip
    _, messages = stream
    decoder = Decoder(request_after=3)
    for m in messages[1:3]:  # motion before any keyframe: it may be overtaking the keyframe
        assert decoder.receive(m) is None
    assert decoder.outbox == []  # so it is not asked for at once
    assert decoder.receive(messages[3]) is None  # but after request_after of them
    assert decoder.stats.stale == 3 and decoder.stats.requests == 1
    request = KeyframeRequest.from_bytes(decoder.outbox.pop(0))
    assert request.epoch == codec.NO_EPOCH
    # The sender resends when the receiver's epoch differs, makes a new one when asked fresh.
    encoder = Encoder(30.0)
    encoder.make_keyframe(frames[0], marks[0], 0.0)
    assert not encoder.wants_new_keyframe(request)
    assert encoder.wants_new_keyframe(KeyframeRequest(epoch=0, fresh=True))
    # A new keyframe: packets of the old epoch become stale.
    decoder.receive(messages[0])
    assert isinstance(decoder.receive(messages[5]), MotionPacket)
    second = encoder.make_keyframe(frames[1], marks[1], 1 / 30)
    assert second.epoch == 1
    decoder.receive(second.to_bytes())
    assert decoder.receive(messages[6]) is None
    assert decoder.stats.stale == 4


def test_basis_is_used_only_after_acknowledgement(
    clip: tuple[list[np.ndarray], list[Landmarks]],
) -> None:
    frames, marks = clip
    encoder = Encoder(30.0)
    decoder = Decoder()
    decoder.receive(encoder.make_keyframe(frames[0], marks[0], 0.0).to_bytes())
    plain = [encoder.encode(m, i / 30) for i, m in enumerate(marks)]
    basis = encoder.propose_basis()
    assert basis is not None and 1 <= len(basis.rows) <= 8
    assert Basis.from_bytes(basis.to_bytes()).to_bytes() == basis.to_bytes()
    assert encoder.encode(marks[1], 1.0).basis_id == 0  # type: ignore[union-attr]
    early = encoder.encode(marks[2], 1.1)
    encoder.acknowledge(BasisAck(basis.id))
    coded = [encoder.encode(m, 2 + i / 30) for i, m in enumerate(marks)]
    assert all(p is not None and p.basis_id == basis.id for p in coded)
    # Before the basis arrives, packets using it are counted, not decoded.
    assert decoder.receive(coded[0].to_bytes()) is None  # type: ignore[union-attr]
    assert decoder.stats.unknown_basis == 1
    decoder.receive(basis.to_bytes())
    assert BasisAck.from_bytes(decoder.outbox.pop(0)).id == basis.id
    assert early is not None and decoder.receive(early.to_bytes()) is not None
    for p in coded[1:]:
        assert isinstance(decoder.receive(p.to_bytes()), MotionPacket)  # type: ignore[union-attr]
    # The speaker's own basis makes packets smaller at the same precision.
    bits_plain = np.mean([p.bits for p in plain if p is not None])
    bits_basis = np.mean([p.bits for p in coded if p is not None])
    assert bits_basis < bits_plain


def test_learn_basis_refuses_bad_shapes() -> None:
    with pytest.raises(BadInputError):
        learn_basis(np.zeros((5, 3)))
    assert len(learn_basis(np.zeros((5, contour_basis.NUM_COEFFICIENTS)))) == 0


def test_stream_framing_round_trips_and_rejects_truncation(
    stream: tuple[Encoder, list[bytes]],
) -> None:
    _, messages = stream
    data = pack_stream(messages)
    assert unpack_stream(data) == messages
    with pytest.raises(BadInputError):
        unpack_stream(data[:-1])
    with pytest.raises(BadInputError):
        unpack_stream(b"NOPE" + data[4:])
