"""deploy/k8s rendered by `kubectl kustomize` (base and the production overlay), each built-in resource validated
against the Kubernetes schemas (kubernetes-validate), and the manifests checked against the code: commands,
ports, probes, settings each service requires, secrets only referenced, disruption budgets, the KEDA triggers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from contracts.topology import GATEWAY_GENERATION_REQUESTED, topology
from services.common.auth.settings import production_auth_problem
from services.common.messaging.broker_declare import DeclareStepSettings
from services.content.settings import ContentSettings
from services.identity.settings import IdentitySettings
from services.inference_gateway.metrics import JOBS_OPEN
from services.inference_gateway.settings import GatewaySettings
from tests.unit.deploy.test_images import TARGETS

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
# Deployment → (module, settings class, its secret)
SERVICES = {
    "identity": ("services.identity", IdentitySettings, "vixenbliss-identity"),
    "content": ("services.content", ContentSettings, "vixenbliss-content"),
    "inference-gateway": ("services.inference_gateway", GatewaySettings, "vixenbliss-inference-gateway"),
}
# What each secret must hold (docs/deploy.md says the same): the settings no ConfigMap carries.
SECRET_KEYS = {
    "vixenbliss-shared": {"R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "AUTH_JWT_SECRET"},
    "vixenbliss-identity": {"RABBITMQ_URL", "IDENTITY_DATABASE_URL"},
    "vixenbliss-content": {"RABBITMQ_URL", "CONTENT_DATABASE_URL"},
    "vixenbliss-inference-gateway": {"RABBITMQ_URL", "GATEWAY_DATABASE_URL", "MODAL_ENDPOINT_URL", "MODAL_API_KEY"},
    # The operator's broker user, for the broker-topology Job only.
    "vixenbliss-broker-admin": {"RABBITMQ_ADMIN_URL"},
}
# KEDA's: the autoscaler's broker user (no permission: it reads the queue's depth with a passive declare).
AUTOSCALER_SECRET = ("vixenbliss-autoscaler-broker", "host")

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kubectl kustomize)")


def render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [document for document in yaml.safe_load_all(done.stdout) if document]


@pytest.fixture(scope="module", params=["base", "overlays/production"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(K8S / request.param)


def of_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def test_every_built_in_resource_is_valid_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    for resource in rendered:
        if resource["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked below against KEDA's documented fields
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_no_secret_is_defined_only_referenced(rendered: list[dict[str, Any]]) -> None:
    assert not of_kind(rendered, "Secret")
    referenced = {
        source["secretRef"]["name"]
        for kind in ("Deployment", "Job")
        for resource in of_kind(rendered, kind).values()
        for container in resource["spec"]["template"]["spec"]["containers"]
        for source in container.get("envFrom", [])
        if "secretRef" in source
    }
    assert referenced == set(SECRET_KEYS)
    documented = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for secret, keys in {**SECRET_KEYS, AUTOSCALER_SECRET[0]: {AUTOSCALER_SECRET[1]}}.items():
        assert secret in documented and all(f"`{key}`" in documented for key in keys), secret


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_deployment_runs_its_service_with_probes_limits_a_budget_and_every_required_setting(
    rendered: list[dict[str, Any]], name: str
) -> None:
    module, settings_type, secret = SERVICES[name]
    deployment = of_kind(rendered, "Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    _, _, port = TARGETS[name]
    assert container["command"] == ["python", "-m", module, "--host", "0.0.0.0", "--port", str(port)]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and {"cpu", "memory"} <= set(
        container["resources"]["limits"]
    )
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001

    config = next(iter(of_kind(rendered, "ConfigMap").values()))["data"]
    provided = set(config) | SECRET_KEYS["vixenbliss-shared"] | SECRET_KEYS[secret]
    missing = required_variables(settings_type) - provided
    assert not missing, f"{name} would refuse to start: {sorted(missing)} unset"

    service = of_kind(rendered, "Service")[name]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == port
    budget = of_kind(rendered, "PodDisruptionBudget")[name]
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_has_a_migration_job_with_its_image_and_its_database(
    rendered: list[dict[str, Any]], name: str
) -> None:
    module, _, secret = SERVICES[name]
    jobs = [
        job
        for job in of_kind(rendered, "Job").values()
        if job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", module, "migrate"]
    ]
    (job,) = jobs
    (container,) = job["spec"]["template"]["spec"]["containers"]
    deployment = of_kind(rendered, "Deployment")[name]
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["envFrom"] == [{"secretRef": {"name": secret}}]


def test_keda_scales_the_gateway_on_its_open_jobs_and_its_queue(rendered: list[dict[str, Any]]) -> None:
    (scaled,) = of_kind(rendered, "ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] in of_kind(rendered, "Deployment")
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    triggers = {trigger["type"]: trigger for trigger in scaled["spec"]["triggers"]}
    config = next(iter(of_kind(rendered, "ConfigMap").values()))["data"]
    assert triggers["prometheus"]["metadata"]["query"] == f"max({JOBS_OPEN})"
    assert triggers["prometheus"]["metadata"]["threshold"] == config["GATEWAY_CONCURRENCY"]
    rabbit = triggers["rabbitmq"]
    assert rabbit["metadata"]["queueName"] == topology().queue(GATEWAY_GENERATION_REQUESTED).name
    assert rabbit["metadata"]["mode"] == "QueueLength" and float(rabbit["metadata"]["value"]) > 0
    (auth,) = of_kind(rendered, "TriggerAuthentication").values()
    assert rabbit["authenticationRef"]["name"] == auth["metadata"]["name"]
    # Its own user, never a service's: amqp, the protocol whose passive declare needs no permission and no tag.
    name, key = AUTOSCALER_SECRET
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "host", "name": name, "key": key}]
    assert rabbit["metadata"]["protocol"] == "amqp" and name not in SECRET_KEYS


def test_a_job_declares_the_broker_topology_with_the_operators_user_and_the_services_only_check(
    rendered: list[dict[str, Any]],
) -> None:
    config = next(iter(of_kind(rendered, "ConfigMap").values()))["data"]
    assert config["RABBITMQ_DECLARE"] == "check"
    (job,) = [
        job
        for job in of_kind(rendered, "Job").values()
        if job["spec"]["template"]["spec"]["containers"][0]["command"]
        == ["python", "-m", "services.common.messaging.broker_declare"]
    ]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in of_kind(rendered, "Deployment").values()}
    assert container["image"] in images
    assert container["envFrom"] == [
        {"configMapRef": {"name": "vixenbliss-config"}},
        {"secretRef": {"name": "vixenbliss-broker-admin"}},
    ]
    missing = required_variables(DeclareStepSettings) - set(config) - SECRET_KEYS["vixenbliss-broker-admin"]
    assert not missing, f"the Job would refuse to start: {sorted(missing)} unset"
    # The operator's credential reaches that Job only.
    for name, deployment in of_kind(rendered, "Deployment").items():
        sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"secretRef": {"name": "vixenbliss-broker-admin"}} not in sources, name


def test_the_config_marks_a_production_deployment_and_names_the_audience_and_issuer(
    rendered: list[dict[str, Any]],
) -> None:
    config = next(iter(of_kind(rendered, "ConfigMap").values()))["data"]
    # What identity and content check at start (AuthSettings), on the values the ConfigMap gives them.
    environment, audience, issuer = (config.get(name) for name in ("VIXEN_ENVIRONMENT", "AUTH_AUDIENCE", "AUTH_ISSUER"))
    assert environment == "production"
    problem = production_auth_problem(environment, audience, issuer)
    assert problem is None, problem


def required_variables(settings_type: type[Any]) -> set[str]:
    """The variables a settings class cannot start without (the first alias of each required field), and one of
    the auth key sources where the class has them."""
    required: set[str] = set()
    for name, field in settings_type.model_fields.items():
        if not field.is_required():
            continue
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            alias = alias.choices[0]
        required.add(str(alias or field.alias or name).upper())
    if "auth_jwt_secret" in settings_type.model_fields:
        required.add("AUTH_JWT_SECRET")  # or AUTH_JWKS_URL: a service needs one of them
    return required


def test_keda_alone_sets_the_gateways_replicas_and_every_pod_is_scraped_without_an_api_token(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = of_kind(rendered, "Deployment")
    (scaled,) = of_kind(rendered, "ScaledObject").values()
    # A count in the Deployment would reset KEDA's at every apply.
    assert "replicas" not in deployments[scaled["spec"]["scaleTargetRef"]["name"]]["spec"]
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]
        (port,) = pod["spec"]["containers"][0]["ports"]
        annotations = pod["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port["containerPort"]),
            "prometheus.io/path": "/metrics",
        }
        assert pod["spec"]["automountServiceAccountToken"] is False
