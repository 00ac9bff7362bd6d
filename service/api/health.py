"""Liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import ApiKeyDep, StateDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(state: StateDep) -> dict[str, object]:
    """200 while the app serves; also says how full it is."""
    load = await state.host.load()
    return {
        "status": "ok",
        "sessions": load.sessions,
        "max_sessions": load.capacity,
        "sizes": list(load.sizes),
    }


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep, _key: ApiKeyDep) -> Response:
    """Prometheus text format: sessions, frames in/out/dropped, per-stage latency histograms.

    Needs an API key when keys are configured (Prometheus sends one with its scrape config's
    ``authorization: {credentials: ...}``): the numbers describe every integrator's traffic,
    which is not for anyone who can reach the port.  /healthz stays open for probes.

    In cluster mode the workers' registries are merged in, their samples labelled
    ``worker="<name>"`` (service.metrics.merge); a worker that does not answer in time is left
    out of this scrape rather than failing or stalling it.
    """
    others = await state.host.metrics()
    return Response(state.metrics.render(others), media_type=CONTENT_TYPE_LATEST)
