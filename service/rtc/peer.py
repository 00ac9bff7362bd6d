"""Peer connections: ICE configuration and non-trickle offer/answer.

The browser (or any WHIP-style client) sends a complete offer; the answer is returned once the
server's candidates are gathered, so no trickle channel is needed.  Candidates come from the
configured host addresses and STUN/TURN servers only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from models.errors import BadInputError
from service.settings import IceServer

log = logging.getLogger(__name__)

# aiortc's SDP parser signals malformed input with any of these (asserts included).
_SDP_ERRORS = (ValueError, AssertionError, IndexError, KeyError, TypeError, AttributeError)


def peer_connection(ice_servers: Sequence[IceServer]) -> RTCPeerConnection:
    """A peer connection using exactly the configured ICE servers (aiortc's default would reach
    out to a public STUN server)."""
    servers = [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in ice_servers
    ]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def use_host_addresses(addresses: Sequence[str]) -> Callable[[], None]:
    """Gather host candidates on ``addresses`` only, process-wide; returns the undo function.

    aioice drops 127.0.0.1 when it lists interfaces and has no per-connection option, so the
    loopback case (a browser on the same machine, the tests, the loopback benchmark) is served
    by replacing its interface lister.  An empty list changes nothing.
    """
    if not addresses:
        return lambda: None
    original = aioice.ice.get_host_addresses
    fixed = list(addresses)

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = configured

    def undo() -> None:
        aioice.ice.get_host_addresses = original

    return undo


def check_offer(sdp: str, sends_video: bool = True) -> None:
    """Raise BadInputError unless ``sdp`` parses and sends video we can receive (or, with
    ``sends_video=False``, has a video section that can receive ours)."""
    try:
        parsed = SessionDescription.parse(sdp)
    except _SDP_ERRORS as e:
        raise BadInputError(f"malformed SDP offer: {e or type(e).__name__}") from e
    videos = [m for m in parsed.media if m.kind == "video"]
    if not videos:
        raise BadInputError("the SDP offer has no video section")
    if sends_video and not any(m.direction in (None, "sendrecv", "sendonly") for m in videos):
        raise BadInputError("the SDP offer sends no video (direction must be sendrecv or sendonly)")
    if not sends_video and not any(m.direction in (None, "sendrecv", "recvonly") for m in videos):
        raise BadInputError("the SDP offer receives no video (direction must be recvonly)")


async def answer(
    pc: RTCPeerConnection, offer_sdp: str, outbound: MediaStreamTrack | None = None
) -> str:
    """Apply a remote offer and return the complete local answer (candidates included).

    Tracks must be attached in the peer's ``track`` handler, which runs during
    setRemoteDescription, so the answer already negotiates the outbound avatar video.  An offer
    that sends no video (session mode ``keypoints-device``) fires no such event: ``outbound``
    is then the track to send, attached to the offer's receiving video section here.
    """
    check_offer(offer_sdp, sends_video=outbound is None)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except (*_SDP_ERRORS, InvalidAccessError, InternalError) as e:
        raise BadInputError(f"unusable SDP offer: {e or type(e).__name__}") from e
    except InvalidStateError as e:
        raise BadInputError(f"offer not acceptable now: {e}") from e
    if outbound is not None:
        pc.addTrack(outbound)
    local = await pc.createAnswer()
    await pc.setLocalDescription(local)  # gathers candidates: the answer is complete
    return pc.localDescription.sdp
