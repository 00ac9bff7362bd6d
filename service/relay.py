"""The server relay (session mode ``keypoints``): a webcam rebuilt from its own face motion.

A browser sends its webcam; per frame the server runs both ends of a keypoint call in one
process and sends back what the receiving end would show:

1. **sender** (:class:`service.compression.Sender`): track the face, encode a motion packet
   against the keyframe; the first frame with a face (or the one after a reset) becomes the
   keyframe, a picture of the sender;
2. **the wire**: the packet's *bytes* (and any keyframe's, basis', and the receiver's replies)
   are handed to the receiver exactly as a data channel would deliver them, in order and
   without loss; they are counted here, payload only;
3. **receiver** (:class:`service.compression.Receiver`): parse and validate the bytes, play the
   frame (a frame without a packet is concealed by holding, as a live receiver does), map the
   motion onto its own embedding of the keyframe picture and run the generator.

The reconstruction is the session's outbound video, so a person sees what a peer receiving
only a few kbit/s of keypoints would see, next to their own camera, and the session's stats
say what those kbit/s were (:class:`models.pipeline.StreamCost` per frame).

What this does not show: the raw video still reaches the server (WebRTC, the browser's own
video bitrate); session mode ``keypoints-device`` (:mod:`service.device`) is the one where the
browser extracts and encodes the keypoints itself, so that only they leave it.
The counted bytes are the codec's payload: SCTP/DTLS/UDP/IP headers of a real data channel
(about 60-80 bytes per packet) are not included, and nothing is lost or reordered.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from engines import Engine
from models.codec import MAX_IMAGE_SIDE, MessageType, message_type
from models.codec_stream import Encoder
from models.pipeline import FrameResult, StreamCost
from models.tracking import Tracker
from service.compression import Outgoing, Receiver, Sender, render

log = logging.getLogger(__name__)

GREY = 128  # what is shown before the first keyframe: nothing to rebuild yet
KEYFRAME_SCALE = 1.5  # keyframe picture side per output pixel: the crop plus its margin
REQUEST_EVERY_S = 1.0  # at most one request for a new picture per second of driver time


class KeypointRelay:
    """A :class:`models.pipeline.FrameRenderer` whose output is the sender rebuilt from keypoints.

    ``fps`` is the nominal camera rate the stream's timestamps are coded against (frames the
    server never processed become gaps, see :meth:`models.codec_stream.Encoder.skip_to`).
    ``basis_after`` seconds into the call the sender learns and sends a speaker basis, as a
    live sender does (0: never).  Not thread-safe: one frame at a time (the session worker
    holds a lock around every call).
    """

    def __init__(
        self,
        engine: Engine,
        size: int = 256,
        fps: float = 30.0,
        *,
        basis_after: float = 10.0,
        tracker: Tracker | None = None,
    ) -> None:
        side = max(384, min(MAX_IMAGE_SIDE, round(size * KEYFRAME_SCALE)))
        self.sender = Sender(
            fps, encoder=Encoder(fps, max_side=side), tracker=tracker, basis_after=basis_after
        )
        self.receiver = Receiver(engine, size)
        self._last = np.full((size, size, 3), GREY, np.uint8)
        self._requested: tuple[int, float] | None = None  # (epoch, driver time) last asked
        self._backlog: list[bytes] = []  # the sender's answers to the receiver, not yet sent
        self._clock = time.monotonic()  # for callers that give no timestamp

    def __call__(self, rgb: np.ndarray, timestamp: float | None = None) -> FrameResult:
        t = timestamp if timestamp is not None else time.monotonic() - self._clock
        t0 = time.perf_counter()
        landmarks = self.sender.track(rgb, t)
        t1 = time.perf_counter()
        self.sender.encoder.skip_to(t)
        outgoing = self.sender.landmarks(landmarks, t, rgb)
        t2 = time.perf_counter()
        cost = self._deliver(outgoing)
        decoder = self.receiver.decoder
        timings = {"track": (t1 - t0) * 1e3, "encode": (t2 - t1) * 1e3}
        newest = decoder.newest
        played = decoder.play(newest) if outgoing.unreliable and newest is not None else None
        target = self.receiver.target(played) if played is not None else None
        if self.receiver.keyframe_unusable:
            self._ask_for_picture(t)
        t3 = time.perf_counter()
        timings["decode"] = (t3 - t2) * 1e3
        if target is None or self.receiver.source is None:
            # No face (no packet: the receiver holds its last frame), or nothing to animate yet.
            timings["total"] = (t3 - t0) * 1e3
            return FrameResult(self._last, False, timings, landmarks, cost)
        self._last = render(self.receiver.source, self.receiver.engine, target)
        t4 = time.perf_counter()
        timings.update(generate=(t4 - t3) * 1e3, total=(t4 - t0) * 1e3)
        return FrameResult(self._last, True, timings, landmarks, cost)

    def reset(self) -> None:
        """Re-centre: the receiver asks for a fresh keyframe; the next frame with a face is it.

        Goes through the protocol (a KEYFRAME_REQUEST) rather than poking the sender, so its
        bytes and effects are those of a real call.
        """
        self._to_sender(self.receiver.decoder.request_keyframe(fresh=True))

    def close(self) -> None:
        self.sender.close()

    # -- the wire -----------------------------------------------------------------------------

    def _deliver(self, outgoing: Outgoing) -> StreamCost:
        """Hand the sender's messages to the receiver, and its replies back; count the bytes
        the sender sent (the receiver's few-byte replies travel the other way)."""
        motion = keyframe = basis = 0
        pending = [*self._backlog, *outgoing.reliable, *outgoing.unreliable]
        self._backlog.clear()
        while pending:
            data = pending.pop(0)
            kind = message_type(data)
            if kind == MessageType.MOTION:
                motion += len(data)
            elif kind == MessageType.KEYFRAME:
                keyframe += len(data)
            elif kind == MessageType.BASIS:
                basis += len(data)
            self.receiver.receive(data)
            for reply in self._replies():
                pending.extend(self.sender.control(reply).reliable)
        return StreamCost(motion_bytes=motion, keyframe_bytes=keyframe, basis_bytes=basis)

    def _replies(self) -> list[bytes]:
        outbox = self.receiver.decoder.outbox
        replies = list(outbox)
        outbox.clear()
        return replies

    def _to_sender(self, data: bytes) -> None:
        """A receiver message outside a delivery; what the sender answers (a resent keyframe)
        travels, and is counted, with the next frame's messages."""
        self._backlog.extend(self.sender.control(data).reliable)

    def _ask_for_picture(self, t: float) -> None:
        """The receiver found no face in the keyframe picture: ask for another, not too often."""
        keyframe = self.receiver.decoder.keyframe
        assert keyframe is not None
        last = self._requested
        if last is not None and (last[0] == keyframe.epoch or t - last[1] < REQUEST_EVERY_S):
            return
        self._requested = (keyframe.epoch, t)
        log.info("keyframe %d has no usable face: asking for a new one", keyframe.epoch)
        self.reset()
