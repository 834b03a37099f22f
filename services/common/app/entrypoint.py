"""The one `main()` every service shares: parse --host/--port, load settings, set up redacted logs and tracing,
serve."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from fastapi import FastAPI

from logsafe.logs import setup_logging
from services.common.app.settings import load_settings
from services.common.observability import telemetry


class ServiceSettings(Protocol):
    """What serving needs of a service's settings."""

    log_level: str
    log_json: bool

    def secret_values(self) -> list[str]: ...


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def serve(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    settings_type: type[SettingsT],
    create_app: Callable[[SettingsT], FastAPI],
    default_port: int,
    service_name: str,
) -> int:
    """Run the service until stopped; a bad setting exits 2 with one line naming it. Tracing is set up here, for
    the process (`service_name` is its OTel service.name unless OTEL_SERVICE_NAME says otherwise)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args(argv)
    # A pydantic-settings class that also satisfies ServiceSettings (a TypeVar cannot say both).
    settings = load_settings(settings_type)  # type: ignore[type-var]
    setup_logging(
        settings.log_level, json_lines=settings.log_json, secrets=settings.secret_values(), service=service_name
    )
    telemetry.configure_tracing(service_name)
    app = create_app(settings)
    telemetry.instrument_app(app)

    import uvicorn

    from services.common.http.edge import EdgeLimits, EdgeSettings
    from services.common.http.edge_protocol import server_config

    limits = EdgeLimits.from_settings(settings) if isinstance(settings, EdgeSettings) else EdgeLimits()
    try:
        uvicorn.Server(server_config(app, host=args.host, port=args.port, limits=limits)).run()
    finally:
        telemetry.shutdown_tracing()
    return 0
