"""A peer in a process of its own, for test_faults: it calls, then the test freezes it.

``python -m tests.service.vanishing_peer URL`` opens two sessions on the server at URL, one
streaming a clip and one whose camera never delivers a frame (no video ever flows), both sending
telemetry heartbeats like the page does.  Once both are connected and heard back, it prints one
JSON line, ``{"sessions": [<POST /v1/sessions response>, ...]}``, and waits.  The test then
stops the process (SIGSTOP): from then on it sends nothing at all (no video, no RTCP, no STUN
consent answers, no heartbeats) and says no goodbye, like a laptop closed mid-call.
"""

from __future__ import annotations

import asyncio
import json
import sys

from service.rtc.client import ClipClient
from service.rtc.peer import use_host_addresses
from tests.conftest import load_clip


async def call(url: str) -> None:
    use_host_addresses(["127.0.0.1"])  # as the test server does: loopback ICE
    frames = load_clip("lp_d0.mp4", 30)
    streaming = ClipClient(url, frames, 30.0, max_fps=10)
    silent = ClipClient(url, frames, 30.0)
    silent.track.pause()  # its camera never delivers a frame
    async with streaming, silent:
        await streaming.play(0.5)
        while not (streaming.report.pongs and silent.report.pongs):
            await asyncio.sleep(0.1)
        print(json.dumps({"sessions": [streaming.session, silent.session]}), flush=True)
        await asyncio.sleep(3600)  # the test stops, then kills, this process


if __name__ == "__main__":
    asyncio.run(call(sys.argv[1]))
