"""The two ends of a keypoint stream: an Encoder fed landmarks, a Decoder fed packets.

The bitstream itself (messages, quantization, the rules a receiver enforces) is specified in
:mod:`models.codec`; this module holds the state each end keeps: the sender's keyframe,
sequence counter and speaker-adapted basis, the receiver's keyframe, recent motion and
playout (what to show for a frame whose packet was lost or is late).  No I/O, no clocks: the
caller feeds frames and bytes and moves the bytes (:mod:`service.compression` for files and
rendering, :mod:`service.peer` for WebRTC; the web service can drive the same two classes).
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.codec import (
    EPOCH_MODULO,
    EXPRESSION_STEP,
    IMAGE_FORMATS,
    MAX_BASIS,
    MAX_IMAGE_SIDE,
    MAX_JITTER_MS,
    NO_EPOCH,
    SEQ_MODULO,
    Basis,
    BasisAck,
    Heartbeat,
    ImageFormat,
    Keyframe,
    KeyframeRequest,
    Message,
    MessageType,
    Motion,
    MotionPacket,
    UnknownBasisError,
    dequantize,
    encode_picture,
    measure,
    message_type,
    nominal_ms,
    quantize,
    quantize_landmarks,
    seq_difference,
)
from models.contour_basis import NUM_COEFFICIENTS
from models.crop import CropBox, cut, face_box
from models.errors import BadInputError
from models.landmarks import Landmarks
from models.motion import MotionTransfer
from models.pose import FaceState, face_state

log = logging.getLogger(__name__)

# --- speaker-adapted basis ----------------------------------------------------------------------


def learn_basis(expressions: np.ndarray, max_rank: int = 8, energy: float = 0.99) -> np.ndarray:
    """Principal directions (K, NUM_COEFFICIENTS) of a speaker's own expression history.

    ``expressions`` is (T, NUM_COEFFICIENTS) contour coefficients (``Motion.expression``).
    Uncentred, because the keyframe's neutral face is the origin every packet is coded from;
    K is the fewest directions holding ``energy`` of the history, at most ``max_rank``.  Learned
    by the sender from its own frames only, then sent (a BASIS message): nothing is learned
    from other people's faces.
    """
    y = np.asarray(expressions, dtype=np.float64) / EXPRESSION_STEP
    if y.ndim != 2 or y.shape[1] != NUM_COEFFICIENTS or len(y) < 2:
        raise BadInputError(f"need (T>=2, {NUM_COEFFICIENTS}) expressions, got {y.shape}")
    _, s, vt = np.linalg.svd(y, full_matrices=False)
    total = float((s**2).sum())
    if total == 0.0:
        return np.zeros((0, NUM_COEFFICIENTS))
    rank = int(np.searchsorted(np.cumsum(s**2) / total, energy)) + 1
    return vt[: min(rank, max_rank, MAX_BASIS)]


# --- sender -------------------------------------------------------------------------------------

REGION_SCALE = 1.4  # a keyframe picture spans the avatar crop (face_box) grown by up to this


@dataclass
class EncoderStats:
    frames: int = 0
    packets: int = 0
    packet_bits: int = 0
    keyframes: int = 0
    keyframe_bytes: int = 0
    bases: int = 0
    basis_bytes: int = 0
    no_face: int = 0
    skipped: int = 0  # camera frames the sender never saw (:meth:`Encoder.skip_to`)

    @property
    def bits_per_packet(self) -> float:
        return self.packet_bits / self.packets if self.packets else 0.0


def keyframe_region(landmarks: Landmarks, width: int, height: int) -> CropBox:
    """The square of the camera frame a keyframe shows.

    The avatar crop (:func:`models.crop.face_box`) with margin, so the receiver finds the face
    and can place its own crop; but no more than the frame holds, and slid inside it where it
    fits, because what lies outside the frame would be a mirror image (the receiver would
    animate a mirrored shoulder).
    """
    box = face_box(landmarks)
    side = max(box.size, min(box.size * REGION_SCALE, float(min(width, height))))
    cx, cy = box.cx, box.cy
    if side <= width:
        cx = min(max(cx, side / 2), width - side / 2)
    if side <= height:
        cy = min(max(cy, side / 2), height - side / 2)
    return CropBox(cx, cy, side)


class Encoder:
    """Sender side: a keyframe, then one motion packet per camera frame.

    Fed landmarks (from :class:`models.tracking.FaceTracker`, a browser, anything that gives the
    478-point mesh in camera pixels) and, for keyframes, the camera frame.  Pure computation:
    the caller moves the bytes (reliably for keyframes and bases, unreliably for motion).
    """

    def __init__(
        self,
        fps: float = 25.0,
        *,
        image_format: ImageFormat = "webp",
        quality: int = 90,
        max_side: int = 384,  # the receiver's 256 px crop, with REGION_SCALE around it
        history: int = 1500,
    ) -> None:
        if not 1 <= fps <= 240:
            raise BadInputError(f"frame rate {fps} out of range")
        if not 64 <= max_side <= MAX_IMAGE_SIDE:
            raise BadInputError(f"keyframe side must be in [64, {MAX_IMAGE_SIDE}], not {max_side}")
        if image_format not in IMAGE_FORMATS:
            raise BadInputError(f"image format must be one of {IMAGE_FORMATS}")
        self.fps = fps
        self.image_format: ImageFormat = image_format
        self.quality = quality
        self.max_side = max_side
        self.keyframe: Keyframe | None = None
        self.stats = EncoderStats()
        self._seq = 0  # of the next frame
        self._epoch = -1
        self._matrix = np.eye(2, 3)  # camera pixels -> keyframe picture pixels
        self._side = 0
        self._bases: dict[int, Basis] = {}
        self._active: Basis | None = None
        self._next_basis = 1
        self._keyframe_time = 0.0  # seconds, the caller's clock
        # Measured expressions since the keyframe, for learning a basis (about a minute).
        self.history: deque[np.ndarray] = deque(maxlen=history)

    @property
    def seq(self) -> int:
        """Sequence number the next frame will get."""
        return self._seq

    @property
    def basis(self) -> Basis | None:
        """The basis motion packets use now (acknowledged by the receiver)."""
        return self._active

    def make_keyframe(
        self, rgb: np.ndarray, landmarks: Landmarks, timestamp: float, seq: int | None = None
    ) -> Keyframe:
        """Start a new epoch with this camera frame; send the result reliably.

        The picture is the frame's :func:`keyframe_region`, at most ``max_side`` pixels
        square.  ``seq`` is the frame's sequence
        number, by default the next one (:attr:`seq`): the frame is then also encoded as usual.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BadInputError(f"expected an RGB uint8 frame, got {rgb.dtype} {rgb.shape}")
        region = keyframe_region(landmarks, rgb.shape[1], rgb.shape[0])
        side = int(np.clip(round(region.size), 64, self.max_side))
        self._matrix = region.matrix(side)
        self._side = side
        picture = cut(rgb, region, side)
        self._epoch = (self._epoch + 1) % 256
        self.keyframe = Keyframe(
            epoch=self._epoch,
            seq=self._seq if seq is None else seq % SEQ_MODULO,
            timestamp_ms=round(timestamp * 1000) % (1 << 32),
            fps=round(self.fps * 100) / 100,
            image_format=self.image_format,
            region=CropBox(*(float(np.float32(v)) for v in (region.cx, region.cy, region.size))),
            image_size=(side, side),
            landmarks=quantize_landmarks(self.to_picture(landmarks)),
            image=encode_picture(picture, self.image_format, self.quality),
        )
        self._keyframe_time = timestamp
        self.history.clear()  # expressions are measured from the keyframe's face
        self.stats.keyframes += 1
        self.stats.keyframe_bytes += len(self.keyframe.to_bytes())
        return self.keyframe

    def to_picture(self, landmarks: Landmarks) -> np.ndarray:
        """(478, 3) camera-pixel landmarks in keyframe-picture pixels (float32)."""
        return landmarks.transformed(self._matrix, (self._side, self._side)).points

    def analyse(self, landmarks: Landmarks) -> Motion:
        """The exact motion of a frame relative to the current keyframe (nothing is sent)."""
        if self.keyframe is None:
            raise BadInputError("no keyframe yet: call make_keyframe first")
        state = face_state(self.to_picture(landmarks).astype(np.float64))
        return measure(state, self.keyframe.reference)

    def encode(self, landmarks: Landmarks | None, timestamp: float) -> MotionPacket | None:
        """This frame's packet; None before the first keyframe or without a face.

        Every call is one camera frame and advances the sequence number, so the receiver sees
        frames without a face as gaps and conceals them.
        """
        seq = self._seq
        self._seq = (seq + 1) % SEQ_MODULO
        self.stats.frames += 1
        if self.keyframe is None or landmarks is None:
            self.stats.no_face += landmarks is None
            return None
        motion = self.analyse(landmarks)
        self.history.append(motion.expression)
        fields, _ = quantize(motion, self._active)
        packet = MotionPacket(
            seq=seq,
            epoch=self._epoch % EPOCH_MODULO,
            jitter_ms=self._jitter(seq, timestamp),
            **fields,  # type: ignore[arg-type]
        )
        self.stats.packets += 1
        self.stats.packet_bits += packet.bits
        return packet

    def skip_to(self, timestamp: float) -> int:
        """Advance the sequence number to the camera frame due at ``timestamp``; returns how
        many frames were skipped.

        For a sender that does not see every camera frame (a server that drops frames when
        tracking is slower than the camera): the frames it never saw become gaps, as frames
        without a face do, which the receiver conceals.  Without this, each packet's timestamp
        would drift further from the one its sequence number predicts, and the jitter field
        would grow by a few bits every second until it clipped.  Call it before :meth:`encode`
        with that frame's timestamp; a no-op before the first keyframe.
        """
        if self.keyframe is None:
            return 0
        frame = round((timestamp - self._keyframe_time) * self.fps)  # since the keyframe's
        ahead = seq_difference((self.keyframe.seq + frame) % SEQ_MODULO, self._seq)
        if ahead <= 0:
            return 0
        self._seq = (self._seq + ahead) % SEQ_MODULO
        self.stats.frames += ahead
        self.stats.skipped += ahead
        return ahead

    def _jitter(self, seq: int, timestamp: float) -> int:
        assert self.keyframe is not None
        jitter = round(timestamp * 1000) - nominal_ms(self.keyframe, seq)
        if abs(jitter) > MAX_JITTER_MS // 2:
            log.warning(
                "frame timestamps drift %d ms from %.2f fps: send a keyframe", jitter, self.fps
            )
            jitter = int(np.clip(jitter, -MAX_JITTER_MS // 2, MAX_JITTER_MS // 2))
        return jitter

    def propose_basis(self, vectors: np.ndarray | None = None) -> Basis | None:
        """A BASIS message for these directions, or None if there are none.

        Without ``vectors``, they are learned (:func:`learn_basis`) from :attr:`history`, the
        frames encoded since the keyframe.
        Packets keep using the old basis until :meth:`acknowledge` says the receiver has the
        new one, so no packet ever needs a basis still in flight.
        """
        if vectors is None:
            if len(self.history) < 2:
                return None
            vectors = learn_basis(np.stack(self.history))
        if len(vectors) == 0:
            return None
        basis = Basis.from_vectors(self._next_basis, vectors)
        self._next_basis = self._next_basis % 3 + 1
        self._bases[basis.id] = basis
        self.stats.bases += 1
        self.stats.basis_bytes += len(basis.to_bytes())
        return basis

    def acknowledge(self, ack: BasisAck) -> None:
        """The receiver holds basis ``ack.id``: use it from the next packet on."""
        if ack.id in self._bases:
            self._active = self._bases[ack.id]

    def wants_new_keyframe(self, request: KeyframeRequest) -> bool:
        """True: make a new keyframe; False: resend the current one (``self.keyframe``)."""
        return self.keyframe is None or request.fresh or request.epoch == self._epoch


# --- receiver -----------------------------------------------------------------------------------

Status = Literal["decoded", "interpolated", "held"]


@dataclass
class DecoderStats:
    """What the receiver saw; every rejected message is counted in exactly one bucket."""

    motion: int = 0  # motion packets decoded and stored
    corrupt: int = 0  # failed CRC, truncated, out of range, unknown type or version
    stale: int = 0  # coded against a keyframe the receiver does not hold
    unknown_basis: int = 0  # coded with a basis not received (yet)
    duplicate: int = 0
    late: int = 0  # arrived after its frame was played
    keyframes: int = 0
    bases: int = 0
    decoded: int = 0  # frames played from their own packet
    interpolated: int = 0  # frames played between two packets
    held: int = 0  # frames played as a copy of a neighbour
    requests: int = 0  # keyframe requests issued


@dataclass(frozen=True)
class Played:
    """One output frame's motion, decided by the receiver's playout."""

    seq: int  # unwrapped sequence number
    timestamp: float  # seconds, sender clock
    motion: Motion
    state: FaceState  # the sender's face, keyframe-picture pixels
    status: Status


class Decoder:
    """Receiver side: validates messages, keeps the keyframe and recent motion, conceals gaps.

    ``receive`` never raises on bad input: it counts the reason in ``stats`` and returns None.
    Replies the sender needs (basis acknowledgements, keyframe requests) queue up in ``outbox``;
    the transport sends them reliably.
    """

    def __init__(self, window: int = 256, max_gap: int = 12, request_after: int = 12) -> None:
        self.window = window  # packets kept for playout
        self.max_gap = max_gap  # longest run of missing frames filled by interpolation
        self.request_after = request_after  # undecodable packets in a row before asking again
        self.keyframe: Keyframe | None = None
        self.stats = DecoderStats()
        self.outbox: list[bytes] = []
        self._bases: dict[int, Basis] = {}
        self._store: dict[int, tuple[int, Motion]] = {}  # unwrapped seq -> (jitter, motion)
        self._seqs: list[int] = []  # the keys of _store, sorted
        self._high: int | None = None  # highest unwrapped seq seen
        self._keyframe_seq = 0  # unwrapped
        self._played: int | None = None
        self._last: Played | None = None
        self._undecodable = 0
        self._transfer: tuple[FaceState, int, MotionTransfer] | None = None

    # -- input

    def receive(self, data: bytes) -> Message | None:
        """Take one message (any type); returns it parsed, or None when rejected."""
        try:
            kind = message_type(data)
            if kind == MessageType.MOTION:
                return self._motion(data)
            if kind == MessageType.KEYFRAME:
                return self._keyframe(Keyframe.from_bytes(data))
            if kind == MessageType.BASIS:
                basis = Basis.from_bytes(data)
                self._bases[basis.id] = basis
                self.stats.bases += 1
                self.outbox.append(BasisAck(basis.id).to_bytes())
                return basis
            if kind == MessageType.KEYFRAME_REQUEST:
                return KeyframeRequest.from_bytes(data)
            if kind == MessageType.HEARTBEAT:
                return Heartbeat.from_bytes(data)
            return BasisAck.from_bytes(data)
        except UnknownBasisError as e:
            self.stats.unknown_basis += 1
            log.debug("dropped: %s", e)
            self._undecodable_packet()
        except BadInputError as e:
            self.stats.corrupt += 1
            log.debug("rejected message: %s", e)
        return None

    def _keyframe(self, keyframe: Keyframe) -> Keyframe:
        self.keyframe = keyframe
        self._keyframe_seq = self._unwrap(keyframe.seq, advance=False)
        self._store.clear()  # motion of another epoch has another reference
        self._seqs.clear()
        self._undecodable = 0
        self.stats.keyframes += 1
        return keyframe

    def _unwrap(self, seq: int, advance: bool = True) -> int:
        if self._high is None:
            value = seq
        else:
            d = (seq - self._high) % SEQ_MODULO
            value = self._high + (d - SEQ_MODULO if d >= SEQ_MODULO // 2 else d)
        if advance and (self._high is None or value > self._high):
            self._high = value
        return value

    def _motion(self, data: bytes) -> MotionPacket | None:
        sizes = {i: len(b.rows) for i, b in self._bases.items()}
        packet = MotionPacket.from_bytes(data, sizes)
        if self.keyframe is None or packet.epoch != self.keyframe.epoch % EPOCH_MODULO:
            self.stats.stale += 1
            self._undecodable_packet()
            return None
        motion = dequantize(packet, self._bases.get(packet.basis_id))
        seq = self._unwrap(packet.seq)
        self._undecodable = 0
        if seq in self._store:
            self.stats.duplicate += 1
            return None
        if self._played is not None and seq <= self._played:
            self.stats.late += 1
            return None
        self._store[seq] = (packet.jitter_ms, motion)
        bisect.insort(self._seqs, seq)
        while len(self._seqs) > self.window:
            del self._store[self._seqs.pop(0)]
        self.stats.motion += 1
        return packet

    def _undecodable_packet(self) -> None:
        """Motion we cannot use: after a run of them, ask for the keyframe (again).

        Also when no keyframe has come yet: on separate channels a small motion packet
        overtakes the large reliable keyframe sent just before it, so asking at the first
        one would have the sender resend a keyframe that is already on its way.
        """
        self._undecodable += 1
        if self._undecodable % self.request_after == 0:
            epoch = self.keyframe.epoch if self.keyframe is not None else NO_EPOCH
            request = KeyframeRequest(epoch).to_bytes()
            if request not in self.outbox:
                self.outbox.append(request)
                self.stats.requests += 1

    def request_keyframe(self, fresh: bool = False) -> bytes:
        """A KEYFRAME_REQUEST to send: the current keyframe again, or (fresh) a new picture."""
        self.stats.requests += 1
        epoch = self.keyframe.epoch if self.keyframe is not None else NO_EPOCH
        return KeyframeRequest(epoch, fresh).to_bytes()

    # -- playout

    @property
    def keyframe_seq(self) -> int:
        """The keyframe's sequence number, unwrapped like the packets'."""
        return self._keyframe_seq

    @property
    def oldest(self) -> int | None:
        """The oldest sequence number with decoded motion still held, unwrapped."""
        return self._seqs[0] if self._seqs else None

    @property
    def newest(self) -> int | None:
        """The newest sequence number with decoded motion, unwrapped."""
        return self._seqs[-1] if self._seqs else None

    def play(self, seq: int) -> Played | None:
        """The motion to show for frame ``seq`` (unwrapped); None before any motion.

        Its own packet if it arrived; else the two nearest packets interpolated, when they are
        at most ``max_gap`` frames apart; else the nearest packet held.  Packets for frames
        already played are then late and dropped.
        """
        if self.keyframe is None or not self._store:
            return None
        self._played = seq if self._played is None else max(self._played, seq)
        if seq in self._store:
            jitter, motion = self._store[seq]
            self.stats.decoded += 1
            return self._emit(seq, motion, "decoded", jitter)
        i = bisect.bisect(self._seqs, seq)  # _seqs[i - 1] < seq < _seqs[i]
        if 0 < i < len(self._seqs) and self._seqs[i] - self._seqs[i - 1] <= self.max_gap:
            a, b = self._seqs[i - 1], self._seqs[i]
            motion = Motion.between(self._store[a][1], self._store[b][1], (seq - a) / (b - a))
            self.stats.interpolated += 1
            return self._emit(seq, motion, "interpolated", 0)
        nearest = self._seqs[i - 1] if i > 0 else self._seqs[0]
        self.stats.held += 1
        return self._emit(seq, self._store[nearest][1], "held", 0)

    def latest(self) -> Played | None:
        """The newest decoded frame, for a renderer that shows whatever is freshest."""
        newest = self.newest
        if newest is None:
            return None
        if self._last is not None and self._last.seq == newest:
            return self._last
        return self.play(newest)

    def _emit(self, seq: int, motion: Motion, status: Status, jitter: int) -> Played:
        assert self.keyframe is not None
        frames = seq - self._keyframe_seq
        ms = self.keyframe.timestamp_ms + round(1000 * frames / self.keyframe.fps) + jitter
        played = Played(seq, ms / 1000, motion, motion.state(self.keyframe.reference), status)
        self._last = played
        return played

    def transfer(self, source: FaceState) -> MotionTransfer:
        """Maps played states onto a source face (the receiver's own embedding of the keyframe
        picture, or any other portrait): relative motion with the keyframe as reference."""
        assert self.keyframe is not None
        epoch = self.keyframe.epoch
        cached = self._transfer
        if cached is None or cached[0] is not source or cached[1] != epoch:
            reference = self.keyframe.reference
            cached = (source, epoch, MotionTransfer(source, mode="relative", reference=reference))
            self._transfer = cached
        return cached[2]
