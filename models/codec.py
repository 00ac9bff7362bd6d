"""Keypoint video codec: face motion instead of pixels.  This docstring is the bitstream spec.

A talking-head call needs only a few numbers per frame once the receiver holds a picture of the
sender: the generator rebuilds every frame from that picture and the sender's motion.  This
module turns face landmarks into small, independently decodable packets and back.  It does no
I/O and runs no network; :mod:`service.compression` (files, rendering) and :mod:`service.peer`
(WebRTC) carry the bytes.  Units: pixels, canonical units of :mod:`models.pose` (1 = the RMS
radius of the rigid landmarks, about 48 px in a 256 px avatar crop), radians, milliseconds.

Bitstream version 1
===================

Six messages.  Every message starts with one byte ``type << 4 | version`` (version = 1).
Keyframe and basis messages travel reliably, in order (a reliable data channel, or the file);
motion packets travel unordered and unreliably and each one decodes on its own; a keyframe
request goes from receiver to sender, reliably.  Multi-byte fields are little-endian.

**KEYFRAME** (type 2): the sender's picture and the reference every motion packet is coded
against.  Sent at call start, when the receiver asks, and whenever the sender wants a new look.

=======  ==================  ============================================================
bytes    field               meaning
=======  ==================  ============================================================
1        type, version       ``0x21``
1        epoch               keyframe counter, mod 256; motion packets carry it mod 4
2        seq                 the motion sequence number of the frame this picture shows
4        timestamp           ms, sender clock, of that frame
2        fps                 nominal frame rate x 100 (``2500`` = 25 fps)
1        image format        0 = JPEG, 1 = WebP, 2 = PNG
12       region              3 x float32: centre x, centre y, side of the square the
                             picture shows, in the sender camera's pixels
4        image size          2 x uint16: width, height of the decoded picture
2868     reference           478 x 3 int16: the face's landmarks in picture pixels x 16
                             (x, y, z as in :class:`models.landmarks.Landmarks`)
4        image length        uint32 ``n``
n        image               the encoded picture
4        CRC-32              zlib CRC-32 of all bytes before it
=======  ==================  ============================================================

**MOTION** (type 1): one frame, a bit string padded with zero bits to whole bytes, then one
CRC-8 byte (polynomial 0x07, initial value 0) over the padded bytes.  ``ue(k)`` is an order-k
Exp-Golomb code, ``se(k)`` the same of the zig-zag mapped signed value (0, 1, -1, 2, -2 ... ->
0, 1, 2, 3, 4 ...: ``2v - 1`` for v > 0, ``-2v`` otherwise).

=========  ====================  ==========================================================
bits       field                 meaning
=========  ====================  ==========================================================
8          type, version         ``0x11``
16         seq                   frame counter mod 65536, +1 per camera frame (also for
                                 frames that send nothing, e.g. no face)
2          epoch                 keyframe epoch mod 4 this packet is coded against
se(2)      jitter                ms; timestamp = keyframe timestamp + round(1000 d / fps)
                                 + jitter, d = seq - keyframe seq as a signed 16-bit
                                 difference (-32768..32767)
2          basis                 0 = contour basis only; 1..3 = that BASIS message's
                                 coefficients follow
se(4) x 2  rotation x, y          ``round(r / 0.003)``, r = rotation vector (rad) of
se(3)      rotation z            ``R R_ref^T``, camera axes (x right, y down, z away)
se(2)      scale                 ``round(ln(s / s_ref) / 0.003)``
se(3) x 2  translation           ``round((t - t_ref)_xy / s_ref / 0.005)``
K x se(2)  basis coefficients    only when basis != 0; K from that BASIS message
per part   1 flag, coefficients  for each part of :data:`models.contour_basis.PARTS` in
                                 order: flag 1 = ``part.size`` values se(0) follow (not
                                 all 0), flag 0 = all zero
=========  ====================  ==========================================================

``R, s, t`` are the head pose of :func:`models.pose.face_state` of the frame's landmarks, ``_ref``
that of the keyframe's reference landmarks, both in keyframe-picture pixels.  Expression: the
canonical shape change of the 146 warp keypoints, ``d = (shape - shape_ref)[CODED_POINTS]``,
is written ``y = analyse(d) / 0.05`` in the contour basis (x and y only, see
:mod:`models.contour_basis`); with a basis ``V`` (K x 76, rows of unit length), ``c = round(V y)``
is sent and the parts carry ``round(y - V^T c)``, otherwise they carry ``round(y)``.  The decoder
rebuilds ``shape = shape_ref`` with the warp keypoints moved by ``synthesise(0.05 y_hat)``: every
other landmark keeps the keyframe's shape, depth changes are not coded.  How the encoder rounds
(here: a dead zone of 0.65 steps for expression values, nearest integer for the rest) and when
it sends a basis are its own business.

A receiver rejects, and counts, any motion packet whose CRC fails, that ends early, whose
Exp-Golomb prefix exceeds 24 zeros, whose values are out of range, or that is not the canonical
encoding of the values it parsed (serialising them again must give the same bytes): so a packet
is either decoded exactly as sent or not at all.

**BASIS** (type 4): an optional speaker-adapted basis for the contour coefficients, learned by
the sender from its own past frames and sent reliably; motion packets may use it once the
receiver has acknowledged it.  ``1`` type/version, ``1`` id (1..3), ``1`` K (1..16), then K rows
of 76 int8 ``v`` with one float32 scale each (row = scale x v, then normalised to unit length),
``4`` CRC-32.

**KEYFRAME_REQUEST** (type 3), receiver -> sender: ``1`` type/version, ``1`` the epoch the
receiver holds (255 = none), ``1`` flags (bit 0: want a fresh picture, not a resend), ``1`` CRC-8.
The sender resends its current keyframe when the epochs differ, and makes a new one otherwise.

**BASIS_ACK** (type 5), receiver -> sender: ``1`` type/version, ``1`` basis id, ``1`` CRC-8.

**HEARTBEAT** (type 6), either way, reliably: ``1`` type/version, ``1`` CRC-8.  Sent about once
a second while there is no motion to send (no face in view): silence then means a vanished peer.

Files
-----
A ``.rkp`` file is ``RKP\x01`` followed by the messages a live sender would send, in order, each
preceded by its length as an unsigned LEB128 varint.  A file has no back channel: a BASIS in a
file applies to the motion records after it.

Rate
----
Measured on the 11 evaluation clips (docs/compression.md): a motion packet is 4 bytes of header
and CRC, about 5 of pose and 15-25 of expression; 179-287 bits per frame, mean 233 (5.8 kbit/s at
25 fps) with the contour basis alone, 136-206, mean 166 (4.2 kbit/s), with a speaker basis (its
~650 bytes counted).  The keyframe is sent once: ~3 kB of header and landmarks plus a 384 px
WebP picture (~10-20 kB).  Transport overhead (SCTP/DTLS/UDP/IP, ~60-80 bytes per packet) is
not included; it is the same for any codec sending one packet per frame.

Loss
----
Every motion packet is coded against the keyframe (a reference both ends hold reliably), never
against the previous packet, so a lost packet costs exactly one frame, which the receiver
conceals by interpolating its neighbours (when it can wait for the next one) or holding the last
frame.  Measured on the clips, prediction from the previous *intra* packet saved nothing
(motion one second apart is as large as motion since the keyframe), and prediction from the
previous packet would turn one loss into a run of broken frames.
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from models import contour_basis
from models.contour_basis import CODED_POINTS, NUM_COEFFICIENTS, PARTS
from models.crop import CropBox
from models.errors import BadInputError
from models.landmarks import NUM_LANDMARKS
from models.pose import FaceState, HeadPose, face_state

log = logging.getLogger(__name__)

VERSION = 1
SEQ_MODULO = 1 << 16
EPOCH_MODULO = 4  # motion packets carry the keyframe epoch mod 4
NO_EPOCH = 255  # "I hold no keyframe", in a KEYFRAME_REQUEST

ROTATION_STEP = 0.003  # rad
SCALE_STEP = 0.003  # natural log of the scale ratio
TRANSLATION_STEP = 0.005  # canonical units (reference scales)
EXPRESSION_STEP = 0.05  # canonical units, per contour-basis coefficient
DEAD_ZONE = 0.65  # encoder only: values below this many steps round to 0

_K_JITTER = 2
_K_ROTATION = (4, 4, 3)  # about x, y (the big nods and turns), z
_K_SCALE = 2
_K_TRANSLATION = 3
_K_BASIS = 2
_K_PART = 0  # every part: most coefficients are 0 or +-1 steps
_MAX_PREFIX = 24  # Exp-Golomb prefix zeros: anything longer is corrupt
MAX_BASIS = 16
_MAX_ROTATION = math.pi  # rad: a rotation vector longer than a half turn is not a head
_MAX_LOG_SCALE = 2.0  # the face got 7x bigger or smaller: not a frame of the same call
_MAX_TRANSLATION = 50.0  # reference scales
_MAX_EXPRESSION = 40.0  # canonical units (the face is ~3 across)
MAX_IMAGE_SIDE = 1024  # landmarks in 1/16 px must fit int16 with room outside the picture
LANDMARK_UNITS = 16  # keyframe landmarks travel in 1/16 pixel
MAX_JITTER_MS = 60_000
IMAGE_FORMATS = ("jpeg", "webp", "png")
_IMAGE_EXTENSIONS = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}
_CODED = np.array(CODED_POINTS)

ImageFormat = Literal["jpeg", "webp", "png"]


class MessageType(IntEnum):
    MOTION = 1
    KEYFRAME = 2
    KEYFRAME_REQUEST = 3
    BASIS = 4
    BASIS_ACK = 5
    HEARTBEAT = 6


# --- bits ---------------------------------------------------------------------------------------


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8 = _crc8_table()


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07, init 0, no reflection): catches every 1-bit error and burst <= 8."""
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


class BitWriter:
    """Most significant bit first."""

    def __init__(self) -> None:
        self._value = 0
        self._bits = 0

    def write(self, value: int, bits: int) -> None:
        if value < 0 or value >= 1 << bits:
            raise ValueError(f"{value} does not fit in {bits} bits")
        self._value = (self._value << bits) | value
        self._bits += bits

    def ue(self, value: int, k: int) -> None:
        """Order-k Exp-Golomb code of value >= 0."""
        w = value + (1 << k)
        n = w.bit_length() - 1
        self.write(0, n - k)
        self.write(w, n + 1)

    def se(self, value: int, k: int) -> None:
        """Order-k Exp-Golomb code of a signed value, zig-zag mapped."""
        self.ue(2 * value - 1 if value > 0 else -2 * value, k)

    @property
    def bits(self) -> int:
        return self._bits

    def to_bytes(self) -> bytes:
        """The bits so far, padded with zero bits to whole bytes."""
        pad = -self._bits % 8
        return (self._value << pad).to_bytes((self._bits + pad) // 8, "big")


class BitReader:
    """Reads what :class:`BitWriter` wrote; running past the end raises BadInputError."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = 8 * len(data)

    def read(self, bits: int) -> int:
        if bits > self._left:
            raise BadInputError("truncated packet")
        self._left -= bits
        return (self._value >> self._left) & ((1 << bits) - 1)

    def ue(self, k: int) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
            if zeros > _MAX_PREFIX:
                raise BadInputError("corrupt packet: Exp-Golomb prefix too long")
        rest = self.read(zeros + k)
        return ((1 << (zeros + k)) | rest) - (1 << k)

    def se(self, k: int) -> int:
        u = self.ue(k)
        return (u + 1) // 2 if u & 1 else -(u // 2)

    @property
    def left(self) -> int:
        return self._left


# --- messages -----------------------------------------------------------------------------------


def _type_byte(kind: MessageType) -> int:
    return (int(kind) << 4) | VERSION


def message_type(data: bytes) -> MessageType:
    """The type of a message, checking its version; BadInputError for anything unknown."""
    if not data:
        raise BadInputError("empty message")
    kind, version = data[0] >> 4, data[0] & 0x0F
    if version != VERSION:
        raise BadInputError(f"unsupported bitstream version {version} (this is {VERSION})")
    try:
        return MessageType(kind)
    except ValueError:
        raise BadInputError(f"unknown message type {kind}") from None


@dataclass(frozen=True, eq=False)
class Keyframe:
    """The picture the receiver animates, and the reference landmarks motion is coded against."""

    epoch: int  # 0..255
    seq: int  # motion sequence number of the frame shown, 0..65535
    timestamp_ms: int  # sender clock, 0..2^32-1
    fps: float  # nominal frame rate; packet timestamps are predicted from it
    image_format: ImageFormat
    region: CropBox  # the square of the sender's camera frame the picture shows
    image_size: tuple[int, int]  # (width, height) of the decoded picture
    landmarks: np.ndarray  # (478, 3) float32 picture pixels, multiples of 1 / LANDMARK_UNITS
    image: bytes  # the encoded picture
    _state: list[FaceState] = field(default_factory=list, repr=False, compare=False)

    @property
    def reference(self) -> FaceState:
        """The reference face state (pose + canonical shape), computed once."""
        if not self._state:
            self._state.append(face_state(self.landmarks.astype(np.float64)))
        return self._state[0]

    def decode_image(self) -> np.ndarray:
        """The picture as (H, W, 3) uint8 RGB; BadInputError when it does not decode."""
        bgr = cv2.imdecode(np.frombuffer(self.image, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise BadInputError("keyframe picture does not decode")
        if (bgr.shape[1], bgr.shape[0]) != self.image_size:
            raise BadInputError(
                f"keyframe picture is {bgr.shape[1]}x{bgr.shape[0]}, header says "
                f"{self.image_size[0]}x{self.image_size[1]}"
            )
        return np.ascontiguousarray(bgr[:, :, ::-1])

    def to_camera(self, box: CropBox) -> CropBox:
        """A box in picture pixels as a box in the sender camera's pixels."""
        side = self.image_size[0]
        k = self.region.size / side
        return CropBox(
            self.region.cx + (box.cx - side / 2) * k,
            self.region.cy + (box.cy - side / 2) * k,
            box.size * k,
        )

    def to_bytes(self) -> bytes:
        head = struct.pack(
            "<BBHIHB3f2H",
            _type_byte(MessageType.KEYFRAME),
            self.epoch,
            self.seq,
            self.timestamp_ms,
            round(self.fps * 100),
            IMAGE_FORMATS.index(self.image_format),
            self.region.cx,
            self.region.cy,
            self.region.size,
            *self.image_size,
        )
        body = (
            head
            + np.round(self.landmarks * LANDMARK_UNITS).astype("<i2").tobytes()
            + struct.pack("<I", len(self.image))
            + self.image
        )
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Keyframe:
        head = struct.calcsize("<BBHIHB3f2H")
        points = NUM_LANDMARKS * 3 * 2
        if len(data) < head + points + 8:
            raise BadInputError("truncated keyframe")
        if message_type(data) != MessageType.KEYFRAME:
            raise BadInputError("not a keyframe")
        if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            raise BadInputError("corrupt keyframe: CRC mismatch")
        _, epoch, seq, ts, fps, fmt, cx, cy, side, w, h = struct.unpack_from("<BBHIHB3f2H", data)
        landmarks = np.frombuffer(data, "<i2", NUM_LANDMARKS * 3, head).reshape(NUM_LANDMARKS, 3)
        (n,) = struct.unpack_from("<I", data, head + points)
        image = data[head + points + 4 : -4]
        if n != len(image):
            raise BadInputError("corrupt keyframe: image length mismatch")
        if fmt >= len(IMAGE_FORMATS) or fps == 0 or not 0 < w <= MAX_IMAGE_SIDE or w != h:
            raise BadInputError("corrupt keyframe: bad header values")
        if not (math.isfinite(cx + cy + side) and side > 0):
            raise BadInputError("corrupt keyframe: non-finite geometry")
        return cls(
            epoch=epoch,
            seq=seq,
            timestamp_ms=ts,
            fps=fps / 100,
            image_format=IMAGE_FORMATS[fmt],  # type: ignore[arg-type]
            region=CropBox(cx, cy, side),
            image_size=(w, h),
            landmarks=(landmarks / LANDMARK_UNITS).astype(np.float32),
            image=bytes(image),
        )


@dataclass(frozen=True)
class MotionPacket:
    """One frame's motion, quantized: exactly the integers the bitstream carries."""

    seq: int  # 0..65535
    epoch: int  # 0..3, keyframe epoch mod 4
    jitter_ms: int  # timestamp minus the one predicted from seq and the keyframe
    rotation: tuple[int, int, int]
    scale: int
    translation: tuple[int, int]
    expression: tuple[int, ...]  # NUM_COEFFICIENTS contour-basis values, in steps
    basis_id: int = 0  # 0: none; 1..3: the BASIS message whose coefficients follow
    basis: tuple[int, ...] = ()

    def to_bytes(self) -> bytes:
        w = BitWriter()
        w.write(_type_byte(MessageType.MOTION), 8)
        w.write(self.seq, 16)
        w.write(self.epoch, 2)
        w.se(self.jitter_ms, _K_JITTER)
        w.write(self.basis_id, 2)
        for v, k in zip(self.rotation, _K_ROTATION, strict=True):
            w.se(v, k)
        w.se(self.scale, _K_SCALE)
        for v in self.translation:
            w.se(v, _K_TRANSLATION)
        for v in self.basis:
            w.se(v, _K_BASIS)
        for where in contour_basis.part_slices():
            values = self.expression[where]
            w.write(int(any(values)), 1)
            if any(values):
                for v in values:
                    w.se(v, _K_PART)
        data = w.to_bytes()
        return data + bytes([crc8(data)])

    @property
    def bits(self) -> int:
        """Size on the wire, in bits (whole bytes, CRC included)."""
        return 8 * len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, basis_sizes: dict[int, int] | None = None) -> MotionPacket:
        """Parse and validate a packet; ``basis_sizes`` maps basis ids to their K.

        Raises BadInputError for anything but the canonical encoding of in-range values.
        """
        if len(data) < 5:
            raise BadInputError("truncated motion packet")
        if message_type(data) != MessageType.MOTION:
            raise BadInputError("not a motion packet")
        if crc8(data[:-1]) != data[-1]:
            raise BadInputError("corrupt motion packet: CRC mismatch")
        r = BitReader(data[:-1])
        r.read(8)
        seq, epoch = r.read(16), r.read(2)
        jitter = r.se(_K_JITTER)
        basis_id = r.read(2)
        rotation = (r.se(_K_ROTATION[0]), r.se(_K_ROTATION[1]), r.se(_K_ROTATION[2]))
        scale = r.se(_K_SCALE)
        translation = (r.se(_K_TRANSLATION), r.se(_K_TRANSLATION))
        k = 0
        if basis_id:
            if basis_sizes is None or basis_id not in basis_sizes:
                raise UnknownBasisError(f"motion packet uses basis {basis_id}, not received")
            k = basis_sizes[basis_id]
        basis = tuple(r.se(_K_BASIS) for _ in range(k))
        expression: list[int] = []
        for part in PARTS:
            if r.read(1):
                expression += [r.se(_K_PART) for _ in range(part.size)]
            else:
                expression += [0] * part.size
        if r.left >= 8:
            raise BadInputError("corrupt motion packet: trailing bytes")
        packet = cls(
            seq,
            epoch,
            jitter,
            rotation,
            scale,
            translation,
            tuple(expression),
            basis_id,
            basis,
        )
        packet.check()
        if packet.to_bytes() != data:
            raise BadInputError("corrupt motion packet: not canonically encoded")
        return packet

    def check(self) -> None:
        """BadInputError unless every value is in its range (the parser's last line)."""
        if np.linalg.norm(self.rotation) * ROTATION_STEP > _MAX_ROTATION:
            raise BadInputError("corrupt motion packet: rotation out of range")
        if abs(self.scale) * SCALE_STEP > _MAX_LOG_SCALE:
            raise BadInputError("corrupt motion packet: scale out of range")
        if max(map(abs, self.translation)) * TRANSLATION_STEP > _MAX_TRANSLATION:
            raise BadInputError("corrupt motion packet: translation out of range")
        if max(map(abs, self.expression + self.basis), default=0) * EXPRESSION_STEP > (
            _MAX_EXPRESSION
        ):
            raise BadInputError("corrupt motion packet: expression out of range")
        if abs(self.jitter_ms) > MAX_JITTER_MS:
            raise BadInputError("corrupt motion packet: timestamp out of range")


class UnknownBasisError(BadInputError):
    """A motion packet refers to a basis the receiver does not hold (yet)."""


@dataclass(frozen=True)
class KeyframeRequest:
    """Receiver -> sender: send me your keyframe (or a fresh one)."""

    epoch: int = NO_EPOCH  # the epoch the receiver holds
    fresh: bool = False  # a new picture even if the epochs agree

    def to_bytes(self) -> bytes:
        data = bytes([_type_byte(MessageType.KEYFRAME_REQUEST), self.epoch, int(self.fresh)])
        return data + bytes([crc8(data)])

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyframeRequest:
        if len(data) != 4 or message_type(data) != MessageType.KEYFRAME_REQUEST:
            raise BadInputError("not a keyframe request")
        if crc8(data[:3]) != data[3] or data[2] > 1:
            raise BadInputError("corrupt keyframe request")
        return cls(data[1], bool(data[2]))


@dataclass(frozen=True, eq=False)
class Basis:
    """A speaker-adapted basis over the contour coefficients (K x NUM_COEFFICIENTS)."""

    id: int  # 1..3
    rows: np.ndarray  # (K, NUM_COEFFICIENTS) int8
    scales: np.ndarray  # (K,) float32

    @property
    def vectors(self) -> np.ndarray:
        """(K, NUM_COEFFICIENTS) float64 unit rows, exactly what both ends use."""
        v = self.rows.astype(np.float64) * self.scales.astype(np.float64)[:, None]
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    @classmethod
    def from_vectors(cls, basis_id: int, vectors: np.ndarray) -> Basis:
        """Quantize unit rows to int8, one scale per row."""
        v = np.asarray(vectors, dtype=np.float64)
        scales = np.maximum(np.abs(v).max(axis=1), 1e-12) / 127
        rows = np.round(v / scales[:, None]).astype(np.int8)
        return cls(basis_id, rows, scales.astype(np.float32))

    def to_bytes(self) -> bytes:
        k = len(self.rows)
        body = (
            bytes([_type_byte(MessageType.BASIS), self.id, k])
            + np.ascontiguousarray(self.scales, dtype="<f4").tobytes()
            + np.ascontiguousarray(self.rows, dtype=np.int8).tobytes()
        )
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Basis:
        if len(data) < 7 or message_type(data) != MessageType.BASIS:
            raise BadInputError("not a basis message")
        if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            raise BadInputError("corrupt basis: CRC mismatch")
        basis_id, k = data[1], data[2]
        if not 1 <= basis_id <= 3 or not 1 <= k <= MAX_BASIS:
            raise BadInputError("corrupt basis: bad id or size")
        if len(data) != 3 + 4 * k + k * NUM_COEFFICIENTS + 4:
            raise BadInputError("corrupt basis: wrong length")
        scales = np.frombuffer(data, "<f4", k, 3).astype(np.float32)
        rows = np.frombuffer(data, np.int8, k * NUM_COEFFICIENTS, 3 + 4 * k)
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise BadInputError("corrupt basis: bad scales")
        return cls(basis_id, rows.reshape(k, NUM_COEFFICIENTS).copy(), scales)


@dataclass(frozen=True)
class BasisAck:
    """Receiver -> sender: basis ``id`` arrived; motion may use it."""

    id: int

    def to_bytes(self) -> bytes:
        data = bytes([_type_byte(MessageType.BASIS_ACK), self.id])
        return data + bytes([crc8(data)])

    @classmethod
    def from_bytes(cls, data: bytes) -> BasisAck:
        if len(data) != 3 or message_type(data) != MessageType.BASIS_ACK:
            raise BadInputError("not a basis acknowledgement")
        if crc8(data[:2]) != data[2] or not 1 <= data[1] <= 3:
            raise BadInputError("corrupt basis acknowledgement")
        return cls(data[1])


@dataclass(frozen=True)
class Heartbeat:
    """ "Still here": sent when there is no motion to send (no face), so the other end can tell
    a sender without a face from one that vanished."""

    def to_bytes(self) -> bytes:
        data = bytes([_type_byte(MessageType.HEARTBEAT)])
        return data + bytes([crc8(data)])

    @classmethod
    def from_bytes(cls, data: bytes) -> Heartbeat:
        if (
            len(data) != 2
            or message_type(data) != MessageType.HEARTBEAT
            or crc8(data[:1]) != data[1]
        ):
            raise BadInputError("corrupt heartbeat")
        return cls()


Message = Keyframe | MotionPacket | KeyframeRequest | Basis | BasisAck | Heartbeat


# --- motion <-> numbers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Motion:
    """A frame's motion relative to the keyframe, dequantized: what decoders interpolate."""

    rotation: np.ndarray  # (3,) rotation vector of R R_ref^T, rad
    log_scale: float
    translation: np.ndarray  # (2,) image-plane shift in reference scales
    expression: np.ndarray  # (NUM_COEFFICIENTS,) contour-basis coefficients, canonical units

    def state(self, reference: FaceState) -> FaceState:
        """The face state this motion stands for, in keyframe-picture pixels."""
        rotation = Rotation.from_rotvec(self.rotation).as_matrix() @ reference.pose.rotation
        scale = reference.pose.scale * math.exp(self.log_scale)
        translation = reference.pose.translation.copy()
        translation[:2] += self.translation * reference.pose.scale
        shape = reference.shape.copy()
        shape[_CODED, :2] += contour_basis.synthesise(self.expression)
        return FaceState(HeadPose(rotation, scale, translation), shape)

    @staticmethod
    def between(a: Motion, b: Motion, t: float) -> Motion:
        """Linear blend, ``t`` = 0 gives a, 1 gives b (rotation vectors are blended linearly,
        fine for the few frames between two packets)."""
        return Motion(
            (1 - t) * a.rotation + t * b.rotation,
            (1 - t) * a.log_scale + t * b.log_scale,
            (1 - t) * a.translation + t * b.translation,
            (1 - t) * a.expression + t * b.expression,
        )


def measure(state: FaceState, reference: FaceState) -> Motion:
    """The exact (unquantized) motion of a face state relative to the reference."""
    rel = state.pose.rotation @ reference.pose.rotation.T
    return Motion(
        rotation=Rotation.from_matrix(rel).as_rotvec(),
        log_scale=math.log(state.pose.scale / reference.pose.scale),
        translation=(state.pose.translation - reference.pose.translation)[:2]
        / reference.pose.scale,
        expression=contour_basis.analyse((state.shape - reference.shape)[_CODED]),
    )


def _round(values: np.ndarray, dead_zone: float = 0.5) -> np.ndarray:
    """Round to integers, with a dead zone: |x| < dead_zone -> 0, else nearest integer above."""
    a = np.abs(values)
    return (np.sign(values) * np.where(a < dead_zone, 0.0, np.floor(a + 0.5))).astype(np.int64)


def quantize(motion: Motion, basis: Basis | None = None) -> tuple[dict[str, object], Motion]:
    """The packet fields of a motion, and the motion the receiver will decode from them."""
    rotation = _round(motion.rotation / ROTATION_STEP)
    scale = int(_round(np.array([motion.log_scale / SCALE_STEP]))[0])
    translation = _round(motion.translation / TRANSLATION_STEP)
    y = motion.expression / EXPRESSION_STEP
    coefficients = np.zeros(0, np.int64)
    if basis is not None:
        coefficients = _round(basis.vectors @ y, DEAD_ZONE)
        y = y - basis.vectors.T @ coefficients
    expression = _round(y, DEAD_ZONE)
    fields: dict[str, object] = {
        "rotation": tuple(int(v) for v in rotation),
        "scale": scale,
        "translation": tuple(int(v) for v in translation),
        "expression": tuple(int(v) for v in expression),
        "basis_id": basis.id if basis is not None else 0,
        "basis": tuple(int(v) for v in coefficients),
    }
    return fields, dequantize_fields(rotation, scale, translation, expression, coefficients, basis)


def dequantize_fields(
    rotation: np.ndarray | tuple[int, ...],
    scale: int,
    translation: np.ndarray | tuple[int, ...],
    expression: np.ndarray | tuple[int, ...],
    coefficients: np.ndarray | tuple[int, ...] = (),
    basis: Basis | None = None,
) -> Motion:
    y = np.asarray(expression, dtype=np.float64)
    if basis is not None and len(coefficients):
        y = y + basis.vectors.T @ np.asarray(coefficients, dtype=np.float64)
    return Motion(
        np.asarray(rotation, dtype=np.float64) * ROTATION_STEP,
        scale * SCALE_STEP,
        np.asarray(translation, dtype=np.float64) * TRANSLATION_STEP,
        y * EXPRESSION_STEP,
    )


def dequantize(packet: MotionPacket, basis: Basis | None = None) -> Motion:
    """The motion a packet carries (``basis``: the one its ``basis_id`` names, if any)."""
    if packet.basis_id and (basis is None or basis.id != packet.basis_id):
        raise UnknownBasisError(f"packet {packet.seq} needs basis {packet.basis_id}")
    return dequantize_fields(
        packet.rotation,
        packet.scale,
        packet.translation,
        packet.expression,
        packet.basis,
        basis if packet.basis_id else None,
    )


def encode_picture(rgb: np.ndarray, image_format: ImageFormat, quality: int) -> bytes:
    """An RGB picture as JPEG / WebP / PNG bytes."""
    params = {
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
        "png": [],
    }[image_format]
    ok, buf = cv2.imencode(_IMAGE_EXTENSIONS[image_format], rgb[:, :, ::-1], params)
    if not ok:
        raise BadInputError(f"cannot encode a {image_format} picture")
    return buf.tobytes()


def seq_difference(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in [-32768, 32767]."""
    return (a - b + SEQ_MODULO // 2) % SEQ_MODULO - SEQ_MODULO // 2


def nominal_ms(keyframe: Keyframe, seq: int) -> int:
    """Where a packet's timestamp is predicted to be, from its sequence number."""
    return keyframe.timestamp_ms + round(1000 * seq_difference(seq, keyframe.seq) / keyframe.fps)


# --- files --------------------------------------------------------------------------------------

STREAM_MAGIC = b"RKP\x01"  # .rkp files: magic, then records of (LEB128 length, message)


def pack_stream(messages: list[bytes]) -> bytes:
    """A .rkp file's bytes: the magic, then each message with its length (LEB128)."""
    out = bytearray(STREAM_MAGIC)
    for m in messages:
        n = len(m)
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                break
        out += m
    return bytes(out)


def unpack_stream(data: bytes) -> list[bytes]:
    """The messages of a .rkp file, in order; BadInputError when the framing is broken."""
    if not data.startswith(STREAM_MAGIC):
        raise BadInputError("not a keypoint stream (.rkp): bad magic")
    messages, i = [], len(STREAM_MAGIC)
    while i < len(data):
        n = shift = 0
        while True:
            if i >= len(data) or shift > 28:
                raise BadInputError("truncated keypoint stream")
            byte = data[i]
            i += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if i + n > len(data):
            raise BadInputError("truncated keypoint stream")
        messages.append(data[i : i + n])
        i += n
    return messages


def quantize_landmarks(points: np.ndarray) -> np.ndarray:
    """Landmarks as a keyframe carries them: (478, 3) float32 multiples of 1/16 pixel.

    The sender must code motion against exactly these values, the ones the receiver gets.
    """
    q = np.round(np.asarray(points, dtype=np.float64) * LANDMARK_UNITS)
    if np.abs(q).max() >= 1 << 15:
        raise BadInputError("keyframe landmarks lie too far outside the picture")
    return (q / LANDMARK_UNITS).astype(np.float32)
