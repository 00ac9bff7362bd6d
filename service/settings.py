"""The service's one configuration class, read from ``REENACT_*`` environment variables.

Built once by :func:`service.app.run` (or by whoever calls :func:`service.app.create_app`),
never at import time, so tests can build as many differently-configured apps as they need.
List values are JSON in the environment: ``REENACT_SIZES='[256]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.system import cpu_quota

REPO_ROOT = Path(__file__).resolve().parents[1]


class IceServer(BaseModel):
    """One STUN or TURN server handed to both peers (same shape as the browser's RTCIceServer)."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REENACT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

    # Inference.  One engine per output size is created at start-up and shared by sessions.
    backend: str = "onnxruntime"
    sizes: list[Literal[256, 512]] = [256, 512]
    # Intra-op threads per engine call.  1 by default: sessions already run in parallel (see
    # inference_workers), and onnxruntime's spinning thread pool fighting the codecs and the
    # face tracker for 2 cores made a 36 ms generator call take 200 ms.  None: engine default.
    engine_threads: int | None = 1
    # Frames processed at once across all sessions; None: the CPU quota.  More than the number
    # of cores only makes every session slower.
    inference_workers: int | None = None
    # Batching across sessions (engines/batching.py): > 1 runs each size's generator through a
    # BatchScheduler that gathers up to this many sessions' frames into one engine call, each
    # frame waiting at most batch_max_wait_ms for company.  Pays on a GPU (set
    # inference_workers to at least the sessions expected, so their frames can meet); on a
    # CPU one frame already fills the cores, so the default is 1 (no scheduler).
    batch_max_size: int = 1
    batch_max_wait_ms: float = 3.0

    # Sessions.
    max_sessions: int = 4
    retry_after_s: int = 10  # Retry-After sent with 503 when max_sessions are live
    idle_ttl_s: float = 60.0  # a session that receives no video for this long is ended
    # Once video has flowed, this long without a frame means the peer is gone (ICE only reports
    # `failed` after ~30 s).
    media_timeout_s: float = 5.0
    max_fps: int = 30
    default_avatar: str = "astronaut"
    # Face lost: hold the last good frame this long, then fade it over fade_s.
    face_lost_hold_s: float = 0.5
    face_lost_fade_s: float = 1.0
    shutdown_timeout_s: float = 5.0

    # Uploads.
    max_upload_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 25_000_000  # declared width*height; larger is refused unread
    max_image_side: int = 1024  # portraits are downscaled to this before any model sees them

    # WebRTC.  No STUN by default: a public STUN server is a network dependency the loopback and
    # LAN cases do not need.  Set e.g.
    # REENACT_ICE_SERVERS='[{"urls": ["stun:stun.l.google.com:19302"]}]'.
    ice_servers: list[IceServer] = Field(default_factory=list)
    # Addresses to gather host candidates on; empty: every interface except loopback (aioice's
    # default).  aioice never offers 127.0.0.1 by itself, so a same-machine browser test sets
    # '["127.0.0.1"]'.  Process-wide (aioice has no per-connection switch).
    ice_host_addresses: list[str] = Field(default_factory=list)
    # Hand a received video frame to the decoder at its RTP marker bit instead of when the next
    # frame starts (aiortc's default): one camera frame interval less latency.  Process-wide.
    rtp_release_at_marker: bool = True
    max_sdp_bytes: int = 64 * 1024

    web_dir: Path | None = REPO_ROOT / "web"  # the browser client; None: do not serve it

    @field_validator(
        "max_sessions", "max_fps", "max_upload_bytes", "max_image_pixels", "batch_max_size"
    )
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @property
    def workers(self) -> int:
        return self.inference_workers or cpu_quota()
