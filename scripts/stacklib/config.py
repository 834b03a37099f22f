"""What a local stack runs: ports, names, database URLs, and each service's command line and environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from services.tools import s3_local
from services.tools.s3_local import LOCAL_REGION, S3Credentials

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_BUCKET = "vixenbliss"
S3_DATA_DIRNAME = s3_local.DATA_DIRNAME

# The base models identity accepts LoRAs for: SDXL, and the tiny random SDXL the local worker serves.
LOCAL_LORA_BASE_MODELS = "sdxl-base-1.0,tiny-sdxl-random"

# Start order; stopped in reverse.
SERVICE_NAMES = ("s3", "worker", "identity", "content", "gateway")
PORT_ENV = {
    "s3": "VIXEN_S3_PORT",
    "worker": "VIXEN_WORKER_PORT",
    "identity": "VIXEN_IDENTITY_PORT",
    "content": "VIXEN_CONTENT_PORT",
    "gateway": "VIXEN_GATEWAY_PORT",
}
DEFAULT_PORTS = {"s3": 9000, "worker": 8003, "identity": 8001, "content": 8000, "gateway": 8002}


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service and how to tell that it is ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    port: int
    # GET this path until it answers 200; None: wait until the port accepts connections.
    health_path: str | None
    ready_timeout: float

    @property
    def marker(self) -> str:
        """The argument that tells this service's process in /proc/PID/cmdline (a recycled PID runs another
        command): the module of `python -m`, else the first argument after the subcommand (weed's -dir)."""
        return self.argv[2]


@dataclass(frozen=True)
class StackConfig:
    """One local stack: where it writes, which ports and names it uses, which databases."""

    root: Path = ROOT
    run_dir: Path = ROOT / ".run"
    python: str = sys.executable
    host: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    rabbitmq_url: str = DEFAULT_RABBITMQ_URL
    topology_prefix: str = ""
    identity_database_url: str | None = None
    content_database_url: str | None = None
    gateway_database_url: str | None = None
    bucket: str = DEFAULT_BUCKET
    model_dir: Path = ROOT / ".cache" / "tiny-sdxl"
    gateway_max_attempts: int = 3
    log_level: str = "INFO"
    # Extra variables for every service (tests use it for short backoffs, deadlines, ...).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Variables for one service, applied last, over what the stack sets (tests: the gateway's worker URL through a
    # proxy, its mode).
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        """Where the PIDs of a running stack are recorded."""
        return self.run_dir / "stack.json"

    def url(self, service: str) -> str:
        """http://host:port of a service."""
        return f"http://{self.host}:{self.ports[service]}"

    def database_url(self, service: str) -> str:
        """The service's database: the one given, else a SQLite file under the run folder."""
        given = {
            "identity": self.identity_database_url,
            "content": self.content_database_url,
            "gateway": self.gateway_database_url,
        }[service]
        return given or f"sqlite+aiosqlite:///{(self.run_dir / f'{service}.db').resolve()}"

    def uses_sqlite(self, service: str) -> bool:
        """Whether the service's database is the embedded SQLite default."""
        return self.database_url(service).startswith("sqlite")

    def auth_secret(self) -> str:
        """The HS256 secret the services verify tokens with: AUTH_JWT_SECRET when the shell sets one, else the
        development secret in the run folder (created on first use; `python -m services.tools.token mint` reads it)."""
        from services.tools.dev_secret import ensure_dev_secret

        return os.environ.get("AUTH_JWT_SECRET") or ensure_dev_secret(self.run_dir)

    def s3_credentials(self) -> S3Credentials:
        """The local S3 endpoint's access key, made for this stack in its run folder on first use (mode 0600)."""
        return s3_local.ensure_credentials(self.run_dir)

    def with_free_ports(self) -> StackConfig:
        """The same stack on free ports, distinct, outside the ephemeral range (tests; two stacks side by side)."""
        from scripts.stacklib.processes import free_port

        ports: dict[str, int] = {}
        for name in SERVICE_NAMES:
            port = free_port(self.host)
            while port in ports.values():
                port = free_port(self.host)
            ports[name] = port
        return replace(self, ports=ports)


def from_environment(env: Mapping[str, str] | None = None, **overrides: object) -> StackConfig:
    """A config from the environment (RABBITMQ_URL, VIXEN_*_PORT, VIXEN_TOPOLOGY_PREFIX, *_DATABASE_URL)."""
    env = os.environ if env is None else env
    ports = dict(DEFAULT_PORTS)
    for name, variable in PORT_ENV.items():
        if env.get(variable):
            ports[name] = int(env[variable])
    identity_db, content_db = database_urls(env)
    config = StackConfig(
        gateway_database_url=env.get("GATEWAY_DATABASE_URL") or _shared_postgres(env),
        ports=ports,
        rabbitmq_url=env.get("RABBITMQ_URL") or DEFAULT_RABBITMQ_URL,
        topology_prefix=env.get("VIXEN_TOPOLOGY_PREFIX", ""),
        identity_database_url=identity_db,
        content_database_url=content_db,
        log_level=env.get("LOG_LEVEL", "INFO"),
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


def database_urls(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """IDENTITY_/CONTENT_DATABASE_URL, else a shared PostgreSQL DATABASE_URL for both (every table carries its
    service's prefix, so they never mix); a SQLite DATABASE_URL is ignored: each service keeps its own file."""
    shared = _shared_postgres(env)
    return env.get("IDENTITY_DATABASE_URL") or shared, env.get("CONTENT_DATABASE_URL") or shared


def _shared_postgres(env: Mapping[str, str]) -> str | None:
    shared = env.get("DATABASE_URL") or None
    return None if shared and shared.startswith("sqlite") else shared


def service_specs(config: StackConfig) -> dict[str, ServiceSpec]:
    """Every service of the stack, in start order."""
    host = config.host
    python = config.python
    common = common_env(config)

    def spec(name: str, module: str, env: Mapping[str, str], health: str | None, timeout: float) -> ServiceSpec:
        port = config.ports[name]
        argv = (python, "-m", module, "--host", host, "--port", str(port))
        return ServiceSpec(name, argv, {**env, **config.service_env.get(name, {})}, port, health, timeout)

    worker_env = {
        **common,
        "MODEL_DIR": str(config.model_dir),
        "WORKER_MODE": "local",
        # The tiny random-weight model is built on first use (a few seconds, offline).
        "WORKER_BUILD_TINY_MODEL": "1",
        "WORKER_DEVICE": common.get("WORKER_DEVICE", "cpu"),
    }
    gateway_env = {
        **common,
        "LORA_PROVIDER": "modal_sdxl_lora",
        "MODAL_ENDPOINT_URL": f"{config.url('worker')}/generate",
        "MODAL_MODE": "sync",
        "GATEWAY_MAX_ATTEMPTS": str(config.gateway_max_attempts),
        "GATEWAY_DATABASE_URL": config.database_url("gateway"),
    }
    worker = spec("worker", "gpu.serve.server", worker_env, "/healthz", 300.0)
    worker = replace(worker, argv=(*worker.argv, "--model-dir", str(config.model_dir)))
    return {
        "s3": s3_spec(config, common),
        "worker": worker,
        "identity": spec(
            "identity",
            "services.identity",
            {
                **common,
                "IDENTITY_DATABASE_URL": config.database_url("identity"),
                "LORA_BASE_MODELS": common.get("LORA_BASE_MODELS", LOCAL_LORA_BASE_MODELS),
            },
            "/readyz",
            90.0,
        ),
        "content": spec(
            "content",
            "services.content",
            {**common, "CONTENT_DATABASE_URL": config.database_url("content")},
            "/readyz",
            90.0,
        ),
        "gateway": spec("gateway", "services.inference_gateway", gateway_env, "/readyz", 90.0),
    }


def s3_spec(config: StackConfig, env: Mapping[str, str]) -> ServiceSpec:
    """SeaweedFS run directly (the PID the stack holds is weed's own), its side ports free now; the runner
    prepares its folder and identities file (s3_local.prepare) before starting it."""
    port = config.ports["s3"]
    argv = s3_local.weed_argv(
        s3_local.weed_binary(),
        data_dir=config.run_dir / S3_DATA_DIRNAME,
        identities_file=config.run_dir / s3_local.IDENTITIES_FILENAME,
        host=config.host,
        port=port,
        side_ports=s3_local.free_side_ports(config.host, exclude=list(config.ports.values())),
        buckets=[config.bucket],
    )
    return ServiceSpec("s3", tuple(argv), env, port, None, 60.0)


def common_env(config: StackConfig) -> dict[str, str]:
    """The environment every child gets: this one, minus what would point a service elsewhere, plus the stack's."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    credentials = config.s3_credentials()
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "RABBITMQ_URL": config.rabbitmq_url,
            "VIXEN_TOPOLOGY_PREFIX": config.topology_prefix,
            "R2_ENDPOINT_URL": config.url("s3"),
            "R2_ACCESS_KEY_ID": credentials.access_key_id,
            "R2_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "R2_BUCKET_NAME": config.bucket,
            "R2_REGION": LOCAL_REGION,
            "LOG_LEVEL": config.log_level,
            "AUTH_JWT_SECRET": config.auth_secret(),
        }
    )
    env.update(config.extra_env)
    return env


# Variables of the caller's shell that must not leak into the stack's services.
_NOT_INHERITED = frozenset(
    {
        "DATABASE_URL",
        "IDENTITY_DATABASE_URL",
        "CONTENT_DATABASE_URL",
        "GATEWAY_DATABASE_URL",
        "R2_PUBLIC_URL",
        "MODAL_API_KEY",
        "MODAL_API_TOKEN",
        "MODAL_SDXL_LORA_ENDPOINT_ID",
        "MODAL_SUBMIT_URL",
        "MODAL_RESULT_URL",
        "WORKER_API_KEY",
    }
)
