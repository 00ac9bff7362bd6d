"""A fixed UDP port range for the ICE host candidates, so a firewall or container can publish it.

aioice binds every host candidate to port 0 (any port the kernel picks) and has no option for
a range (aioice issue #47; PR #112 is still open).  A container or firewall then has to open
every port.  :func:`use_port_range` narrows those binds to ``min_port..max_port``, process-wide,
like :func:`service.rtc.peer.use_host_addresses`.

How: ``aioice.ice`` reaches the event loop through its module global ``asyncio``.  That global is
replaced by a stand-in whose ``get_running_loop()`` returns the real loop behind a thin wrapper;
the wrapper changes one call, ``create_datagram_endpoint(..., local_addr=(host, 0))``, which in
``aioice.ice`` is only ever the host-candidate bind (its TURN sockets live in ``aioice.turn``
and connect to a remote address; mDNS lives in ``aioice.mdns``).  Everything else goes to the
real loop unchanged.  For that call the wrapper binds a socket itself on each port of the range,
from a random start, until one is free, and hands it to the loop.  When none is, it raises
``OSError`` naming the range: aioice already logs that for the address and gathers no host
candidate on it, rather than binding outside the range.

This leans on aioice 0.13's internals (the version aiortc 1.16 brings); if a later aioice
binds differently, tests/service/test_ports.py fails rather than the range silently leaking.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

import aioice.ice

log = logging.getLogger(__name__)

# A port that is taken (or privileged for this user) is skipped; any other error (a bad
# address, say) would fail on every port alike and is raised at once.
_TRY_NEXT = (errno.EADDRINUSE, errno.EACCES)


class _RangedLoop:
    """The running loop, except that host-candidate binds to port 0 stay inside the range."""

    def __init__(self, loop: asyncio.AbstractEventLoop, min_port: int, max_port: int) -> None:
        self._loop = loop
        self._min, self._max = min_port, max_port

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, protocol_factory: Callable[[], Any], local_addr: Any = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        # aioice's host bind is exactly `(factory, local_addr=(address, 0))`; anything else
        # passes through untouched.
        if kwargs or local_addr is None or tuple(local_addr[1:]) != (0,):
            return await self._loop.create_datagram_endpoint(
                protocol_factory, local_addr=local_addr, **kwargs
            )
        host = local_addr[0]  # a literal address from aioice's interface list
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        count = self._max - self._min + 1
        # A random start spreads sessions over the range, so a port freed a moment ago (whose
        # peer may still be sending to it) is not the first one handed out again.
        start = random.randrange(count)
        for i in range(count):
            port = self._min + (start + i) % count
            # Bound here, not by the loop: uvloop (uvicorn's loop) reports a taken port without
            # its errno and leaves the failed transport for the garbage collector.
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as e:
                sock.close()
                if e.errno in _TRY_NEXT:
                    continue
                raise
            sock.setblocking(False)
            try:
                return await self._loop.create_datagram_endpoint(protocol_factory, sock=sock)
            except BaseException:
                sock.close()
                raise
        # aioice logs the failure at INFO, which the service does not show: say it louder.
        message = f"no free UDP port in the ICE range {self._min}-{self._max} on {host}"
        log.warning("%s: no host candidate there (too many peer connections?)", message)
        raise OSError(errno.EADDRINUSE, message)


class _AsyncioInAioice:
    """Stands in for the ``asyncio`` module inside ``aioice.ice`` only."""

    def __init__(self, real: Any, min_port: int, max_port: int) -> None:
        self._real = real  # asyncio itself, or an earlier stand-in
        self._range = (min_port, max_port)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_running_loop(self) -> Any:
        return _RangedLoop(self._real.get_running_loop(), *self._range)


def use_port_range(min_port: int | None, max_port: int | None) -> Callable[[], None]:
    """Bind ICE host candidates to UDP ports ``min_port..max_port`` only; returns the undo.

    Process-wide, as aioice has no per-connection switch.  Both ``None`` changes nothing.  Each
    peer connection takes one port per host address (aiortc bundles media and data on one ICE
    transport with RTCP multiplexed), so the range bounds the concurrent connections.
    """
    if min_port is None and max_port is None:
        return lambda: None
    if min_port is None or max_port is None:
        raise ValueError("set both ends of the RTC port range, or neither")
    if not 1 <= min_port <= max_port <= 65535:
        raise ValueError(f"bad RTC port range {min_port}-{max_port}")
    original = aioice.ice.asyncio
    aioice.ice.asyncio = _AsyncioInAioice(original, min_port, max_port)  # type: ignore[assignment]
    log.info("ICE host candidates bind to UDP ports %d-%d", min_port, max_port)

    def undo() -> None:
        aioice.ice.asyncio = original

    return undo
