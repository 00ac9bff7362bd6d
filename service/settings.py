"""The service's one configuration class, read from ``REENACT_*`` environment variables.

Built once by :func:`service.app.run` (or by whoever calls :func:`service.app.create_app`),
never at import time, so tests can build as many differently-configured apps as they need.
List and mapping values are JSON in the environment: ``REENACT_SIZES='[256]'``,
``REENACT_API_KEYS='{"acme": "<secret>"}'``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigurationError
from service.system import cpu_quota

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_SECRET_CHARS = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1,
    localhost).  Wildcards ("0.0.0.0", "::", "") and other names are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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

    # Access.  API keys, key id -> secret (JSON object in REENACT_API_KEYS).  The key id names
    # the integrator in logs and quotas; the secret is what clients send, as
    # `Authorization: Bearer <secret>` or `X-API-Key: <secret>`.  No keys: local/dev mode, which
    # only serves a loopback host (see check_exposure).
    api_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # Requests per API key: a token bucket refilled at this rate, holding up to burst requests.
    # None: no rate limit.  Dev mode has no keys, hence no per-key limits.
    rate_limit_per_minute: int | None = 60
    rate_limit_burst: int = 20
    max_sessions_per_key: int | None = None  # None: only max_sessions bounds a key
    # Failed authentications (missing or unknown API key, wrong or expired session token) per
    # client address: a token bucket of this many, refilled at this rate.  An address with none
    # left gets 429 on every route that takes a credential, a right one included.  None: no
    # limit.  Applies in dev mode too (session tokens).
    auth_failures_per_minute: int | None = 10
    # Browser origins allowed to call the API from other pages (CORS); empty: same origin only.
    cors_origins: list[str] = Field(default_factory=list)

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
    # The driver's face tracker: "mediapipe" (its CPU graph, one per session) or "mesh" (the
    # same face-mesh network run by the backend's engine and shared by all sessions, batched
    # like the generator: models/mesh_tracking.py).  "mesh" frees a GPU server's CPUs; on a
    # CPU it costs about the same as mediapipe (docs/benchmarks.md).
    tracker: Literal["mediapipe", "mesh"] = "mediapipe"

    # Sessions.
    max_sessions: int = 4
    retry_after_s: int = 10  # Retry-After sent with 503 when max_sessions are live
    idle_ttl_s: float = 60.0  # a session that receives no video for this long is ended
    # Once video has flowed, this long without a frame means the peer is gone (ICE only reports
    # `failed` after ~30 s).
    media_timeout_s: float = 5.0
    max_session_s: float = 3600.0  # hard cap on a session's life; its token expires with it
    connect_timeout_s: float = 15.0  # offer answered but the peer never connects: end it
    # Once a client has sent a telemetry heartbeat (ping), this long without one ends the
    # session: a vanished peer is freed in seconds even when no video flowed.
    heartbeat_timeout_s: float = 6.0
    ended_keep_s: float = 60.0  # how long an ended session's status and reason stay readable
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
    # ICE host candidates bind only to UDP ports in rtc_port_min..rtc_port_max (both or
    # neither), so a container or firewall can publish one fixed range; None: any port.  Each
    # live session holds one port per host address.  Process-wide (service/rtc/ports.py).
    rtc_port_min: int | None = None
    rtc_port_max: int | None = None
    # TURN with short-lived credentials (coturn's use-auth-secret, service/turn.py): each
    # session's JSON carries a credential valid turn_ttl_s, derived from this shared secret,
    # for the turn_urls, e.g. '["turn:turn.example.org:3478?transport=udp"]'.
    turn_secret: SecretStr | None = None
    turn_urls: list[str] = Field(default_factory=list)
    turn_ttl_s: int = 600

    # Where sessions run (docs/cluster.md): "local", in this process; "ray", on worker actors
    # of a Ray cluster, each a LocalHost, so max_sessions, sizes and inference_workers then
    # apply per worker.  ray_address None starts a private local cluster; "auto" or
    # "host:6379" joins a running one.
    cluster: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_workers: int = 2
    ray_cpus_per_worker: float = 1.0
    ray_gpus_per_worker: float = 0.0

    web_dir: Path | None = REPO_ROOT / "web"  # the browser client; None: do not serve it

    @field_validator(
        "max_sessions",
        "max_fps",
        "max_upload_bytes",
        "max_image_pixels",
        "batch_max_size",
        "rate_limit_per_minute",
        "rate_limit_burst",
        "max_sessions_per_key",
        "auth_failures_per_minute",
        "max_session_s",
        "connect_timeout_s",
        "heartbeat_timeout_s",
        "turn_ttl_s",
        "ray_workers",
        "ray_cpus_per_worker",
    )
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        secrets = [secret.get_secret_value() for secret in keys.values()]
        for key_id, secret in zip(keys, secrets, strict=True):
            if not key_id.strip():
                raise ValueError("an API key id is empty")
            if len(secret) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"API key {key_id!r} is shorter than {MIN_SECRET_CHARS} characters; make one "
                    "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
        if len(set(secrets)) != len(secrets):
            raise ValueError("two API key ids share one secret")
        return keys

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        if (self.rtc_port_min is None) != (self.rtc_port_max is None):
            raise ValueError("set both rtc_port_min and rtc_port_max, or neither")
        low, high = self.rtc_port_min, self.rtc_port_max
        if low is not None and high is not None and not 1 <= low <= high <= 65535:
            raise ValueError(f"bad RTC port range {low}-{high}")
        if (self.turn_secret is None) != (not self.turn_urls):
            raise ValueError("set turn_secret and turn_urls together, or neither")
        return self

    @property
    def dev_mode(self) -> bool:
        """No API keys: anyone who can reach the port may create sessions."""
        return not self.api_keys

    def check_exposure(self) -> None:
        """Refuse dev mode (no API keys) on anything but a loopback address.

        Raises ConfigurationError saying what to do instead.
        """
        if self.dev_mode and not is_loopback(self.host):
            raise ConfigurationError(
                f"refusing to serve on {self.host!r} without API keys: anyone who can reach it "
                'could use the server.  Set REENACT_API_KEYS=\'{"<key id>": "<secret>"}\' '
                "(see docs/service.md), or serve on 127.0.0.1 (local/dev mode, no keys)"
            )

    @property
    def workers(self) -> int:
        return self.inference_workers or cpu_quota()
