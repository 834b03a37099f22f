"""The launcher's pure parts: ports and names from the environment, database URLs, commands, health answers, and
what `up` prints."""

from __future__ import annotations

from pathlib import Path

import httpx

from scripts.stack import usage_text
from scripts.stacklib.config import DEFAULT_PORTS, StackConfig, database_urls, from_environment, service_specs
from scripts.stacklib.processes import (
    FALLBACK_PORTS,
    free_port,
    gave_up,
    last_line,
    listen_ports,
    read_ephemeral_range,
)
from scripts.stacklib.runner import LocalStack


def test_defaults_are_the_documented_ports() -> None:
    config = from_environment({})
    assert dict(config.ports) == {"s3": 9000, "worker": 8003, "identity": 8001, "content": 8000, "gateway": 8002}
    assert config.rabbitmq_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert config.topology_prefix == ""
    assert config.uses_sqlite("identity") and config.uses_sqlite("content")
    assert config.database_url("content").endswith("/.run/content.db")


def test_environment_overrides_ports_prefix_and_broker() -> None:
    config = from_environment(
        {"VIXEN_GATEWAY_PORT": "18002", "VIXEN_TOPOLOGY_PREFIX": "try", "RABBITMQ_URL": "amqp://u:p@h:1/"}
    )
    assert config.ports["gateway"] == 18002 and config.ports["content"] == DEFAULT_PORTS["content"]
    assert config.topology_prefix == "try" and config.rabbitmq_url == "amqp://u:p@h:1/"


def test_a_lone_postgresql_database_url_is_shared_by_both_services() -> None:
    shared = "postgresql+asyncpg://postgres@127.0.0.1:5432/vixen"
    assert database_urls({"DATABASE_URL": shared}) == (shared, shared)
    specific = "postgresql+asyncpg://postgres@127.0.0.1:5432/mine"
    assert database_urls({"DATABASE_URL": shared, "CONTENT_DATABASE_URL": specific})[1] == specific
    assert database_urls({"DATABASE_URL": "sqlite+aiosqlite:///x.db"}) == (None, None)


def test_free_ports_are_distinct() -> None:
    ports = StackConfig().with_free_ports().ports
    assert len(set(ports.values())) == len(ports)


def test_service_commands_and_environment(tmp_path: Path) -> None:
    config = StackConfig(run_dir=tmp_path, topology_prefix="p1", bucket="vb-p1", model_dir=tmp_path / "m")
    specs = service_specs(config)
    assert list(specs) == ["s3", "worker", "identity", "content", "gateway"]
    worker = specs["worker"]
    assert worker.argv[1:3] == ("-m", "gpu.serve.server") and worker.argv[-2:] == ("--model-dir", str(tmp_path / "m"))
    assert worker.env["WORKER_MODE"] == "local" and worker.health_path == "/healthz"
    gateway = specs["gateway"]
    assert gateway.env["MODAL_ENDPOINT_URL"] == "http://127.0.0.1:8003/generate"
    assert gateway.env["MODAL_MODE"] == "sync" and gateway.env["LORA_PROVIDER"] == "modal_sdxl_lora"
    for spec in specs.values():
        assert spec.env["VIXEN_TOPOLOGY_PREFIX"] == "p1"
        assert spec.env["R2_BUCKET_NAME"] == "vb-p1"
        assert spec.env["R2_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    for name in ("worker", "identity", "content", "gateway"):
        assert "--port" in specs[name].argv and specs[name].marker == specs[name].argv[2]
    assert specs["identity"].env["IDENTITY_DATABASE_URL"] == f"sqlite+aiosqlite:///{tmp_path}/identity.db"
    s3 = specs["s3"]
    assert s3.health_path is None and Path(s3.argv[0]).name == "weed" and s3.argv[1] == "mini"
    # Bound to the stack's host and port with the stack's own key, its data and identities in the run folder.
    assert {"-s3.port=9000", "-ip.bind=127.0.0.1", f"-s3.config={tmp_path}/s3-identities.json"} <= set(s3.argv)
    assert s3.marker == f"-dir={tmp_path}/s3-data" and "-bucket=vb-p1" in s3.argv
    credentials = config.s3_credentials()
    assert s3.env["R2_ACCESS_KEY_ID"] == credentials.access_key_id
    assert StackConfig(run_dir=tmp_path / "other").s3_credentials() != credentials  # one key per stack


def test_a_health_answer_that_gives_up_stops_the_wait() -> None:
    assert gave_up(httpx.Response(503, json={"status": "unavailable", "reason": "could not load the base model"}))
    assert not gave_up(httpx.Response(503, json={"status": "unavailable", "reason": "loading"}))
    assert not gave_up(httpx.Response(503, text="<html>starting</html>"))


def test_free_ports_lie_below_the_ephemeral_range_so_no_outgoing_connection_takes_one_first() -> None:
    low, _ = read_ephemeral_range()
    for _ in range(50):
        port = free_port()
        assert 1024 <= port < low
    assert listen_ports((32768, 60999)) == range(20000, 32768)
    assert listen_ports((1024, 65535)) == FALLBACK_PORTS  # no room below: a fixed band instead


def test_a_start_failure_names_the_last_log_line_on_its_first_line() -> None:
    tail = "INFO: loading\nERROR: [Errno 98] address already in use\n\n"
    assert last_line(tail) == "ERROR: [Errno 98] address already in use"
    assert last_line("") == "(empty log)"


def test_up_names_the_playground_and_how_to_mint_its_token() -> None:
    text = usage_text(LocalStack(from_environment({})))

    assert "playground http://127.0.0.1:8000/playground" in text
    assert "python -m services.tools.token mint --sub" in text
