"""Settings: built-in defaults < TOML file (``--config``) < ``INGEST_*`` environment < CLI flags.

Unknown keys (in the file or as ``INGEST_*`` variables) and bad values stop the server at start
with a message that names the key and where it came from.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigError

ENV_PREFIX = "INGEST_"

# Named limits with their defaults (each is also a setting a deployment may change).
DEFAULT_HTTP_PORT = 8080
DEFAULT_RTMP_PORT = 1935
DEFAULT_RTMP_IDLE_TIMEOUT = 10.0
DEFAULT_RTMP_MAX_CONNECTIONS = 1000
DEFAULT_RTMP_MAX_CONNECTIONS_PER_ADDRESS = 32  # per IPv4 address or IPv6 /64 (NAT, proxies: raise)
DEFAULT_TOKEN_LEEWAY = 5  # seconds of clock skew tolerated on exp / iat
DEFAULT_WEBHOOK_TIMEOUT = 5.0
DEFAULT_WEBHOOK_MAX_ATTEMPTS = 3
DEFAULT_WEBHOOK_QUEUE = 10_000
DEFAULT_HTTP_REQUEST_TIMEOUT = 10.0  # accept / first byte -> request head and body complete
DEFAULT_TURN_CREDENTIAL_TTL = 24 * 3600  # seconds a minted TURN credential is valid
# Seconds an idle keep-alive HTTP connection stays open: longer than the 5 s for which httpx
# (and so most Python clients) reuse a pooled connection, so a client never sends a request
# on a connection the server is closing at that moment (a 'connection reset' under load).
DEFAULT_HTTP_KEEP_ALIVE_TIMEOUT = 15


class Settings(BaseSettings):
    """Every setting of the server. Field names are the TOML keys; ``INGEST_<NAME>`` the env."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, case_sensitive=False
    )

    host: str = Field("0.0.0.0", description="address the HTTP and RTMP listeners bind to")
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535)
    rtmp_port: int = Field(DEFAULT_RTMP_PORT, ge=0, le=65535)
    public_host: str = Field(
        "127.0.0.1", description="host name put in ingress addresses handed to OBS and browsers"
    )
    public_rtmp_port: int | None = Field(None, ge=1, le=65535)
    public_http_url: str | None = Field(
        None, description="base URL of the HTTP API as clients reach it (WHIP/WHEP/HLS links)"
    )
    data_dir: Path = Path("data")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite in the data directory"
    )
    api_key: str | None = None
    api_secret: str | None = None
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|error)$")
    token_leeway: int = Field(DEFAULT_TOKEN_LEEWAY, ge=0, le=300)
    webhook_url: str | None = None
    webhook_timeout: float = Field(DEFAULT_WEBHOOK_TIMEOUT, gt=0, le=60)
    webhook_max_attempts: int = Field(DEFAULT_WEBHOOK_MAX_ATTEMPTS, ge=1, le=20)
    webhook_queue: int = Field(DEFAULT_WEBHOOK_QUEUE, ge=1)
    rtmp_idle_timeout: float = Field(DEFAULT_RTMP_IDLE_TIMEOUT, gt=0, le=600)
    rtmp_max_connections: int = Field(DEFAULT_RTMP_MAX_CONNECTIONS, ge=1)
    rtmp_max_connections_per_address: int = Field(DEFAULT_RTMP_MAX_CONNECTIONS_PER_ADDRESS, ge=1)
    http_request_timeout: float = Field(
        DEFAULT_HTTP_REQUEST_TIMEOUT,
        gt=0,
        le=600,
        description="seconds a request's head and body may take to arrive (slow clients)",
    )
    http_keep_alive_timeout: int = Field(DEFAULT_HTTP_KEEP_ALIVE_TIMEOUT, ge=1, le=600)
    cors_allowed_origins: list[str] = Field(
        default_factory=list,
        description="origins whose pages may call /api/v2 from a browser (comma-separated in "
        "INGEST_CORS_ALLOWED_ORIGINS); '*' is allowed in development mode only, where it is "
        "the default",
    )

    ice_servers: list[str] = Field(
        default_factory=list,
        description="STUN/TURN URLs for WebRTC peers (comma-separated in INGEST_ICE_SERVERS), "
        "e.g. stun:turn.example.org:3478,turn:turn.example.org:3478?transport=udp",
    )
    turn_secret: str | None = Field(
        None, description="coturn's static-auth-secret: short-lived TURN credentials per session"
    )
    turn_username: str | None = Field(None, description="static TURN username (no secret)")
    turn_password: str | None = Field(None, description="static TURN password (no secret)")
    turn_credential_ttl: int = Field(DEFAULT_TURN_CREDENTIAL_TTL, ge=60, le=7 * 86400)
    public_ips: list[str] = Field(
        default_factory=list,
        description="public addresses advertised in WebRTC candidates besides the private ones "
        "(a server behind a 1:1 NAT or a load balancer)",
    )
    webrtc_udp_ports: str | None = Field(
        None,
        pattern=r"^\d{4,5}(-\d{4,5})?$",
        description="UDP port range for WebRTC media, e.g. 50000-50100 (default: any port)",
    )
    rtmps_port: int | None = Field(
        None, ge=0, le=65535, description="TLS RTMP listener (needs tls_cert_file/tls_key_file)"
    )
    public_rtmps_port: int | None = Field(None, ge=1, le=65535)
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) for HTTPS and RTMPS"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key for HTTPS and RTMPS")
    https: bool = Field(
        False, description="serve the HTTP API, WHIP/WHEP and pages over TLS (needs the files)"
    )

    @field_validator("cors_allowed_origins", "ice_servers", "public_ips", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load() merges file, environment and flags itself, so precedence is exactly ours.
        return (init_settings,)

    @property
    def rtmp_public_port(self) -> int:
        return self.public_rtmp_port or self.rtmp_port

    @property
    def http_base_url(self) -> str:
        if self.public_http_url:
            return self.public_http_url.rstrip("/")
        return f"http://{self.public_host}:{self.http_port}"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ingest.db').resolve()}"


def _field_names() -> set[str]:
    return set(Settings.model_fields)


def _check_env(environ: dict[str, str]) -> None:
    known = {ENV_PREFIX + name.upper() for name in _field_names()}
    unknown = sorted(
        k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
    )
    if unknown:
        raise ConfigError(
            f"unknown environment variable {unknown[0]}: known INGEST_* variables are "
            + ", ".join(sorted(known))
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - _field_names())
    if unknown:
        raise ConfigError(
            f"unknown key '{unknown[0]}' in {path}: known keys are "
            + ", ".join(sorted(_field_names()))
        )
    return data


def load(
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings from every layer; raise ConfigError naming the offending key."""
    env = dict(os.environ if environ is None else environ)
    _check_env(env)
    file_values = _read_toml(config_file) if config_file else {}
    cli = {k: v for k, v in overrides.items() if v is not None}
    env_values = {
        name: env[key]
        for name in _field_names()
        for key in (ENV_PREFIX + name.upper(),)
        if key in env
    }
    merged: dict[str, Any] = {**file_values, **env_values, **cli}
    try:
        # Pass everything as init values so the precedence is exactly ours, not pydantic's.
        return Settings.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        origin = (
            "command line"
            if key in cli
            else f"environment {ENV_PREFIX}{key.upper()}"
            if key in env_values
            else f"{config_file}"
            if key in file_values
            else "defaults"
        )
        raise ConfigError(f"bad value for '{key}' (from {origin}): {err['msg']}") from None
