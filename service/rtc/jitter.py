"""Release each received video frame when its last packet arrives, not one frame later.

aiortc's jitter buffer only knows a video frame is complete when the first packet of the *next*
frame arrives (a new RTP timestamp).  Every received frame therefore waits one whole frame
interval (33 ms for a 30 fps camera) before it is even decoded, on top of everything else.
Senders mark the last packet of each frame with the RTP marker bit (RFC 3550 section 5.1, and
the VP8/H.264 payload formats); a frame whose packets are all present up to a marked packet is
complete and can go to the decoder immediately.
"""

from __future__ import annotations

from collections.abc import Callable

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket


class FrameEndJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, plus release at the marker bit for video."""

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)
        self._released: int | None = None  # RTP timestamp of the last frame released early

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if self._is_video and packet.timestamp == self._released:
            return False, None  # a late duplicate or padding of a frame already decoded
        pli, frame = super().add(packet)
        if frame is None and self._is_video:
            frame = self._release_complete()
        return pli, frame

    def _release_complete(self) -> JitterFrame | None:
        """The oldest frame held, if all its packets up to a marked one are here.

        Checked on every packet, so a frame completed by a retransmission goes out at once.
        One frame leaves per packet (aiortc's interface): after a loss, a single-packet frame
        can stay one frame behind until a multi-packet frame catches up.
        """
        if self._origin is None:
            return None
        first = self._packets[self._origin % self._capacity]
        if first is None:
            return None  # the frame's first packet is missing
        data = []
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None or packet.timestamp != first.timestamp:
                return None  # a gap, or the next frame began without a marker: base rule
            data.append(packet._data)  # type: ignore[attr-defined]  # set by the receiver
            if packet.marker:
                self.remove(count + 1)
                self._released = first.timestamp
                return JitterFrame(data=b"".join(data), timestamp=first.timestamp)
        return None


def release_frames_at_marker() -> Callable[[], None]:
    """Make every RTCRtpReceiver created from now on use FrameEndJitterBuffer; returns undo.

    Process-wide, like aiortc's own module-level choice of buffer.
    """
    original = aiortc.rtcrtpreceiver.JitterBuffer
    aiortc.rtcrtpreceiver.JitterBuffer = FrameEndJitterBuffer  # type: ignore[misc]

    def undo() -> None:
        aiortc.rtcrtpreceiver.JitterBuffer = original  # type: ignore[misc]

    return undo
