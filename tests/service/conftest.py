"""Fixtures for the service: a real app under uvicorn on a free loopback port.

Apps are built with test settings (256 px only, loopback ICE host candidates); the real
pipeline runs underneath.  Streaming tests use ``service.rtc.client.ClipClient``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from service.app import create_app, serving
from service.hosting import LocalHost
from service.sessions import SessionRegistry
from service.settings import Settings
from service.state import ServiceState


def make_settings(**overrides: Any) -> Settings:
    """Test configuration: one engine size, loopback ICE (aioice skips 127.0.0.1 otherwise)."""
    values: dict[str, Any] = {
        "sizes": [256],
        "ice_host_addresses": ["127.0.0.1"],
        "max_sessions": 4,
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class LiveServer:
    app: FastAPI
    url: str
    http: httpx.AsyncClient

    @property
    def state(self) -> ServiceState:
        state: ServiceState = self.app.state.service
        return state

    @property
    def registry(self) -> SessionRegistry:
        """The in-process sessions (test apps run a LocalHost)."""
        host = self.state.host
        assert isinstance(host, LocalHost)
        return host.registry

    async def create_session(self, **form: str) -> dict[str, Any]:
        response = await self.http.post("/v1/sessions", data=form)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def healthy(self) -> None:
        response = await self.http.get("/healthz")
        assert response.status_code == 200 and response.json()["status"] == "ok"

    async def status(self, session: dict[str, Any]) -> dict[str, Any] | None:
        """GET the session with its own token: its state (``status``, ``ended_reason``, stats),
        or None once the server no longer knows it (404)."""
        response = await self.http.get(
            session["links"]["session"], headers={"Authorization": f"Bearer {session['token']}"}
        )
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def ended(self, session: dict[str, Any]) -> bool:
        """Whether the session is over (ended, failed, or forgotten)."""
        state = await self.status(session)
        return state is None or state["status"] in ("ended", "failed")


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Poll ``condition`` every 0.2 s until it holds (True) or ``timeout`` s pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await condition():
            return True
        await asyncio.sleep(0.2)
    return False


async def run_server(settings: Settings) -> AsyncIterator[LiveServer]:
    app = create_app(settings)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield LiveServer(app, url, http)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[LiveServer]:
    async for live in run_server(make_settings(media_timeout_s=2.0)):
        yield live
