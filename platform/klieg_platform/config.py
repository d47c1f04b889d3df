"""Frozen settings. ``Settings.from_env()`` is the only place environment variables are read.

Every process (gateway, worker, ``klieg up``) builds one ``Settings`` at start and passes it down.
"""

from __future__ import annotations

import configparser
import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from klieg_platform.scheduler import DEFAULT_TIERS, Tier, parse_tiers

HISTORY_MAX = 1_000_000
"""Default of ``Settings.history_max``: a tenant's history index costs about 130 bytes per id,
a small part of the records it points to (which are kept as long anyway)."""
HISTORY_GRACE_S = 3600
"""How much longer than ``result_ttl_s`` after its enqueue a request stays in its tenant's
history: time for it to wait and run before its record's TTL starts."""
MEMORY_SHARE = 0.75
"""Default of ``Settings.worker_memory_mb``: this share of the machine's memory (the worker, its
uploads and the page cache keep the rest)."""


def machine_memory_bytes(
    meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")
) -> int:
    """The memory this machine (or container) has: ``MemTotal``, or the cgroup's limit where
    that is lower (v2 ``memory.max``, v1 ``memory.limit_in_bytes``); 0 when none is readable."""
    total = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    for limit in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        with contextlib.suppress(OSError):
            text = limit.read_text().strip()
            if text.isdigit() and (not total or int(text) < total):
                total = int(text)
    return total


def default_worker_memory_mb() -> int:
    """``MEMORY_SHARE`` of the machine's memory, in MiB (0, no budget, when it is unknown)."""
    return int(machine_memory_bytes() * MEMORY_SHARE) >> 20


@dataclass(frozen=True)
class PipSettings:
    """Index settings of the machine's pip, handed to uv (which does not read pip's config)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()

    def uv_args(self) -> list[str]:
        """Command-line flags that give uv the same view of packages as pip."""
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        return args


@dataclass(frozen=True)
class Settings:
    """Configuration of one Klieg process. Paths default under ``home`` (``$KLIEG_HOME``)."""

    home: Path = field(default_factory=lambda: Path("~/.klieg").expanduser())
    redis_url: str | None = None
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    lease_s: float = 30.0
    drain_s: float = 300.0
    """How long a stopping worker keeps serving what it runs (renewing its leases) before it
    hands the rest back to the queue (``KLIEG_DRAIN_S``); what stops a worker waits this long
    and a little more (Kubernetes' ``terminationGracePeriodSeconds``, compose's
    ``stop_grace_period``, ``klieg up``)."""
    max_attempts: int = 3
    result_ttl_s: int = 24 * 3600
    history_max: int = HISTORY_MAX
    """Request ids kept in each tenant's history (``GET /requests``): at most this many, the
    newest (0: no count limit); and none enqueued more than ``result_ttl_s`` plus
    ``HISTORY_GRACE_S`` ago, when their records have expired (unless the request took longer
    than that grace to complete). Both are trimmed as requests are enqueued."""
    blob_retention_s: float | None = None
    """Age after which media, uploads and orphaned payloads/results are swept from the blob
    store; None: ``result_ttl_s`` plus an hour (their URLs are signed for ``result_ttl_s``)."""
    sweep_interval_s: float = 600.0
    """How often one gateway of the cluster sweeps the blob store; 0 turns sweeping off."""
    worker_slots: int = 4
    worker_pools: tuple[str, ...] = ()
    probe_dir: Path | None = None
    """Where a worker touches ``alive`` every housekeeping round and ``ready`` after each
    heartbeat Redis took (Kubernetes exec probes read their age); None: nowhere."""
    setup_backoff_s: float = 5.0
    zygotes: int = 2
    """Zygotes a worker keeps at most (``worker/zygotes.py``): preloaded processes its cold
    starts fork runners from; 0: every runner starts its own interpreter. A bound on processes
    beside the memory budget's bound on bytes."""
    worker_memory_mb: int = field(default_factory=default_worker_memory_mb)
    """The memory a worker's runners and zygotes may keep, in MiB (``worker/memory.py``): idle
    ones are stopped, least recently used first, to stay under it; 0: no budget. Default:
    ``MEMORY_SHARE`` of the machine's (or its cgroup's) memory (``KLIEG_WORKER_MEMORY_MB``)."""
    inline_payload_bytes: int = 256 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    queue_port: int | None = None
    webhook_max_attempts: int = 8
    webhook_backoff_s: float = 2.0
    webhook_allow_private: bool = True
    """Deliver webhooks to loopback/private addresses too (a single-machine setup); a shared
    deployment turns this off so tenants cannot make the gateway call internal services."""
    signing_key: str = ""
    max_upload_bytes: int = 512 * 1024 * 1024
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    default_tier: str = "free"
    pip: PipSettings = field(default_factory=PipSettings)
    log_level: str = "info"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_prefix: str = ""
    s3_presign: bool = False
    docker_host: str | None = None
    """``DOCKER_HOST``, which the Docker SDK reads too (``klieg images`` names it when no engine
    answers); None: the engine's default socket."""
    instance: str = ""
    """A token ``klieg up`` gives the gateway it starts, read back from ``/health``."""
    secrets_key: str = field(default="", repr=False)
    """The key app secrets are sealed with (``vault.py``): ``KLIEG_SECRETS_KEY``, else
    ``$KLIEG_HOME/secrets-key``; empty: this platform stores no secrets."""
    fleet_sample_s: float = 10.0
    """How often the fleet is sampled for the console's charts, which keep an hour of samples
    (``KLIEG_FLEET_SAMPLE_S``)."""
    dev_ttl_s: float = 30.0
    """How long a ``klieg run`` session's revision lives without a renewal
    (``KLIEG_DEV_TTL_S``); the CLI renews it every third of this."""

    @property
    def effective_blob_retention_s(self) -> float:
        if self.blob_retention_s is not None:
            return self.blob_retention_s
        return self.result_ttl_s + 3600.0

    @property
    def env_dir(self) -> Path:
        return self.home / "envs"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def code_dir(self) -> Path:
        return self.home / "code"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def redis_socket(self) -> Path:
        return self.run_dir / "redis.sock"

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"unix://{self.redis_socket}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def tls(self) -> bool:
        """The gateway serves HTTPS (both a certificate and its key are set)."""
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("KLIEG_HOME", "~/.klieg")).expanduser().resolve()
        pools = tuple(p for p in env.get("KLIEG_WORKER_POOLS", "").split(",") if p)
        return cls(
            home=home,
            redis_url=env.get("KLIEG_REDIS_URL") or None,
            database_url=env.get("KLIEG_DATABASE_URL") or None,
            host=env.get("KLIEG_HOST", "127.0.0.1"),
            port=int(env.get("KLIEG_PORT", "8000")),
            public_url=env.get("KLIEG_PUBLIC_URL") or None,
            max_body_bytes=int(env.get("KLIEG_MAX_BODY_BYTES", str(10 * 1024 * 1024))),
            lease_s=float(env.get("KLIEG_LEASE_S", "30")),
            drain_s=float(env.get("KLIEG_DRAIN_S", "300")),
            max_attempts=int(env.get("KLIEG_MAX_ATTEMPTS", "3")),
            result_ttl_s=int(env.get("KLIEG_RESULT_TTL_S", str(24 * 3600))),
            history_max=_count(env.get("KLIEG_HISTORY_MAX"), "KLIEG_HISTORY_MAX", HISTORY_MAX),
            blob_retention_s=(
                float(env["KLIEG_BLOB_RETENTION_S"]) if env.get("KLIEG_BLOB_RETENTION_S") else None
            ),
            sweep_interval_s=float(env.get("KLIEG_SWEEP_INTERVAL_S", "600")),
            worker_slots=int(env.get("KLIEG_WORKER_SLOTS", "4")),
            worker_pools=pools,
            probe_dir=Path(env["KLIEG_PROBE_DIR"]) if env.get("KLIEG_PROBE_DIR") else None,
            setup_backoff_s=float(env.get("KLIEG_SETUP_BACKOFF_S", "5")),
            zygotes=int(env.get("KLIEG_ZYGOTES", "2")),
            worker_memory_mb=_count(
                env.get("KLIEG_WORKER_MEMORY_MB"),
                "KLIEG_WORKER_MEMORY_MB",
                default_worker_memory_mb(),
            ),
            inline_payload_bytes=int(env.get("KLIEG_INLINE_PAYLOAD_BYTES", str(256 * 1024))),
            tls_cert=Path(env["KLIEG_TLS_CERT"]) if env.get("KLIEG_TLS_CERT") else None,
            tls_key=Path(env["KLIEG_TLS_KEY"]) if env.get("KLIEG_TLS_KEY") else None,
            queue_port=int(env["KLIEG_QUEUE_PORT"]) if env.get("KLIEG_QUEUE_PORT") else None,
            webhook_max_attempts=int(env.get("KLIEG_WEBHOOK_MAX_ATTEMPTS", "8")),
            webhook_backoff_s=float(env.get("KLIEG_WEBHOOK_BACKOFF_S", "2")),
            webhook_allow_private=_flag(env.get("KLIEG_WEBHOOK_ALLOW_PRIVATE"), default=True),
            tiers=parse_tiers(env["KLIEG_TIERS"]) if env.get("KLIEG_TIERS") else DEFAULT_TIERS,
            default_tier=env.get("KLIEG_DEFAULT_TIER", "free"),
            signing_key=env.get("KLIEG_SIGNING_KEY") or _read_key(home / "signing-key"),
            max_upload_bytes=int(env.get("KLIEG_MAX_UPLOAD_BYTES", str(512 * 1024 * 1024))),
            pip=read_pip_settings(env),
            log_level=env.get("KLIEG_LOG_LEVEL", "info"),
            s3_endpoint_url=env.get("KLIEG_S3_ENDPOINT_URL") or None,
            s3_bucket=env.get("KLIEG_S3_BUCKET") or None,
            s3_region=env.get("KLIEG_S3_REGION") or "us-east-1",
            s3_access_key=env.get("KLIEG_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID") or None,
            s3_secret_key=(
                env.get("KLIEG_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY") or None
            ),
            s3_prefix=env.get("KLIEG_S3_PREFIX", ""),
            s3_presign=_flag(env.get("KLIEG_S3_PRESIGN"), default=False),
            docker_host=env.get("DOCKER_HOST") or None,
            instance=env.get("KLIEG_INSTANCE", ""),
            secrets_key=env.get("KLIEG_SECRETS_KEY") or _read_key(home / "secrets-key"),
            fleet_sample_s=_period(env.get("KLIEG_FLEET_SAMPLE_S"), "KLIEG_FLEET_SAMPLE_S", 10.0),
            dev_ttl_s=_period(env.get("KLIEG_DEV_TTL_S"), "KLIEG_DEV_TTL_S", 30.0),
        )


def touch_probe(probe_dir: Path | None, name: str) -> None:
    """Touch ``probe_dir/name`` (nothing without a ``probe_dir``): a loop tells the Kubernetes
    exec probes of ``infra/k8s`` it ran (``alive``) or reached Redis (``ready``) by the file's
    age. A file that cannot be written is left to the probe to notice."""
    if probe_dir is not None:
        with contextlib.suppress(OSError):
            probe_dir.mkdir(parents=True, exist_ok=True)
            (probe_dir / name).touch()


def _flag(value: str | None, *, default: bool) -> bool:
    """A boolean setting: 1/true/yes/on or 0/false/no/off (any case); ``default`` when unset."""
    if value is None or not value.strip():
        return default
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean setting: {value!r} (use 1/0, true/false, yes/no, on/off)")


def _count(value: str | None, name: str, default: int) -> int:
    """A whole number setting, 0 or more; ``default`` when unset."""
    if value is None or not value.strip():
        return default
    if not value.strip().isdigit():
        raise ValueError(f"{name} must be a whole number, 0 or more: {value!r}")
    return int(value)


def _period(value: str | None, name: str, default: float) -> float:
    """A positive number of seconds; ``default`` when unset."""
    if value is None or not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name} must be a positive number of seconds: {value!r}")
    return seconds


def _read_key(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split() if v)


def read_pip_settings(env: Mapping[str, str]) -> PipSettings:
    """pip's index settings: ``PIP_*`` variables win over pip.conf files (global, then user)."""
    conf = configparser.ConfigParser()
    home = Path(env.get("HOME", "~")).expanduser()
    files = ["/etc/pip.conf", str(home / ".pip/pip.conf"), str(home / ".config/pip/pip.conf")]
    if env.get("PIP_CONFIG_FILE"):
        files.append(env["PIP_CONFIG_FILE"])
    conf.read(files)

    def get(name: str) -> str | None:
        value = env.get("PIP_" + name.upper().replace("-", "_"))
        if value is not None:
            return value
        for section in ("install", "global"):
            if conf.has_option(section, name):
                return conf.get(section, name)
        return None

    return PipSettings(
        index_url=get("index-url"),
        extra_index_urls=_split(get("extra-index-url")),
        find_links=_split(get("find-links")),
    )
