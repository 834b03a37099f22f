"""deploy/k8s rendered by `kubectl kustomize` (base and the production overlay), each built-in resource validated
against the Kubernetes schemas (kubernetes-validate), and the manifests checked against the code: commands,
ports, probes, the services' real settings loading from the ConfigMap and the mounted secret files, secrets only
referenced and never in the environment, migrations before each pod starts, Jobs named after the release, network
policies, disruption budgets, the KEDA triggers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from contracts.topology import GATEWAY_GENERATION_REQUESTED, topology
from services.common.app.secret_files import SECRETS_DIR_VARIABLE
from services.common.app.settings import load_settings
from services.common.auth.settings import production_auth_problem
from services.common.messaging.broker_declare import DeclareStepSettings
from services.content.settings import ContentDatabaseSettings, ContentSettings
from services.identity.settings import IdentityDatabaseSettings, IdentitySettings
from services.inference_gateway.metrics import JOBS_OPEN
from services.inference_gateway.settings import GatewayDatabaseSettings, GatewaySettings
from tests.support.settings_env import settings_env
from tests.unit.deploy.test_images import TARGETS

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"
VERSION_LABEL = "app.kubernetes.io/version"
NAME_LABEL = "app.kubernetes.io/name"
# Deployment → (module, settings class, its migrate command's settings class, its secret)
SERVICES: dict[str, tuple[str, type[BaseSettings], type[BaseSettings], str]] = {
    "identity": ("services.identity", IdentitySettings, IdentityDatabaseSettings, "vixenbliss-identity"),
    "content": ("services.content", ContentSettings, ContentDatabaseSettings, "vixenbliss-content"),
    "inference-gateway": (
        "services.inference_gateway",
        GatewaySettings,
        GatewayDatabaseSettings,
        "vixenbliss-inference-gateway",
    ),
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
# A value of the right shape for each key, as an operator's secret store would hold it (each with a newline at the
# end, as `kubectl create secret --from-file` keeps it).
SAMPLE_SECRET_VALUES = {
    "R2_ENDPOINT_URL": "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",
    "R2_ACCESS_KEY_ID": "3f9c2a7d8e1b4c6f9a0d2e4b6c8a1f3e",
    "R2_SECRET_ACCESS_KEY": "b7e4c1a9d3f6e8b2a5c7d9e1f3a6b8c0d2e4f6a8b1c3d5e7f9a2b4c6d8e0f1a3",
    "AUTH_JWT_SECRET": "R5q1x9ZpV3mK7tB2nW8cY4hJ6dF0gL1sA9eU3oI7rT5",
    "RABBITMQ_URL": "amqp://vixenbliss-service:Qm7xT2vR9pL4@rabbitmq.broker:5672/vixenbliss",
    "IDENTITY_DATABASE_URL": "postgresql+asyncpg://identity:Hq3nV8cZ1k@postgres.db:5432/identity",
    "CONTENT_DATABASE_URL": "postgresql+asyncpg://content:Wd6pS2fJ9y@postgres.db:5432/content",
    "GATEWAY_DATABASE_URL": "postgresql+asyncpg://gateway:Nb4tG7rM1x@postgres.db:5432/gateway",
    "MODAL_ENDPOINT_URL": "https://acme--vixenbliss-sdxl-lora-sdxl-lora-generate.modal.run",
    "MODAL_API_KEY": "wk-8Zr3Tq6Vb1Nc",
    "RABBITMQ_ADMIN_URL": "amqp://vixenbliss-operator:Ky5wE9uP2h@rabbitmq.broker:5672/vixenbliss",
}
# KEDA's: the autoscaler's broker user (no permission: it reads the queue's depth with a passive declare).
AUTOSCALER_SECRET = ("vixenbliss-autoscaler-broker", "host")
# Who may open a connection to each workload (namespaces; docs/deploy.md § Network policies): the public API through
# the ingress controller, /metrics for Prometheus. Nobody else: the services never call each other.
INGRESS_CONTROLLER_NAMESPACE = "ingress-nginx"
CALLERS = {
    "content": {INGRESS_CONTROLLER_NAMESPACE, "monitoring"},
    "identity": {INGRESS_CONTROLLER_NAMESPACE, "monitoring"},
    "inference-gateway": {"monitoring"},
    "broker-topology": set(),
}
DNS = {("UDP", 53), ("TCP", 53)}
BROKER = {("TCP", 5672), ("TCP", 5671)}
DATABASE = {("TCP", 5432)}
HTTPS = {("TCP", 443)}
# What each workload's code connects to: DNS, the broker, its database, R2 (and Modal, the IdP's JWKS) over HTTPS, the
# OpenTelemetry collector (its port and namespace checked against the ConfigMap below).
SERVICE_EGRESS = ["dns", "broker", "database", "https", "collector"]
EGRESS = {name: SERVICE_EGRESS for name in SERVICES} | {"broker-topology": ["dns", "broker"]}
# Never "outside": private, carrier-grade NAT and link-local addresses (the cloud's metadata endpoint among them).
NOT_OUTSIDE = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

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


def config_of(resources: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = of_kind(resources, "ConfigMap").values()
    data: dict[str, str] = config["data"]
    return data


def workloads(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template, by its app.kubernetes.io/name: the Deployments' and the Jobs'."""
    found = {}
    for kind in ("Deployment", "Job"):
        for resource in of_kind(resources, kind).values():
            template = resource["spec"]["template"]
            found[template["metadata"]["labels"][NAME_LABEL]] = template
    return found


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = pod.get("initContainers", []) + pod["containers"]
    return containers


def mounted_secrets(pod: dict[str, Any], container: dict[str, Any], folder: str) -> list[str]:
    """The secrets whose keys `container` sees as files in `folder` (a secret volume, or a projected one)."""
    (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == folder]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if "secret" in volume:
        assert volume["secret"]["defaultMode"] == 0o440
        return [volume["secret"]["secretName"]]
    assert volume["projected"]["defaultMode"] == 0o440
    return [source["secret"]["name"] for source in volume["projected"]["sources"]]


def load_as_mounted(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    settings_type: type[BaseSettings],
    config: dict[str, str],
    secrets: list[str],
) -> BaseSettings:
    """`settings_type` loaded as the container would: the ConfigMap as its environment, the secrets' keys as files in
    a folder that VIXEN_SECRETS_DIR (from the ConfigMap) names, here moved to a temporary folder."""
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    for secret in secrets:
        for key in SECRET_KEYS[secret]:
            (folder / key).write_text(SAMPLE_SECRET_VALUES[key] + "\n", encoding="utf-8")
    settings_env(monkeypatch, settings_type, {**config, SECRETS_DIR_VARIABLE: str(folder)})
    return load_settings(settings_type)


def test_every_built_in_resource_is_valid_against_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    for resource in rendered:
        if resource["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked below against KEDA's documented fields
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_no_secret_is_defined_only_referenced_as_files(rendered: list[dict[str, Any]]) -> None:
    assert not of_kind(rendered, "Secret")
    folder = config_of(rendered)[SECRETS_DIR_VARIABLE]
    referenced = {
        secret
        for pod in workloads(rendered).values()
        for container in all_containers(pod["spec"])
        for secret in mounted_secrets(pod["spec"], container, folder)
    }
    assert referenced == set(SECRET_KEYS)
    documented = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for secret, keys in {**SECRET_KEYS, AUTOSCALER_SECRET[0]: {AUTOSCALER_SECRET[1]}}.items():
        assert secret in documented and all(f"`{key}`" in documented for key in keys), secret


def test_no_secret_reaches_a_containers_environment(rendered: list[dict[str, Any]]) -> None:
    # Files only: a variable would sit in the process's environment, which every child process inherits.
    for name, pod in workloads(rendered).items():
        for container in all_containers(pod["spec"]):
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, (name, container["name"])
            for variable in container.get("env", []):
                assert "secretKeyRef" not in variable.get("valueFrom", {}), (name, container["name"])
        # Only the two groups of files they need: group-readable, by the pod's own group.
        security = pod["spec"]["securityContext"]
        assert security["fsGroup"] == security["runAsGroup"] == 10001, name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_deployment_runs_its_service_with_probes_limits_and_a_budget(
    rendered: list[dict[str, Any]], name: str
) -> None:
    module, _, _, _ = SERVICES[name]
    deployment = of_kind(rendered, "Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    _, _, port = TARGETS[name]
    assert container["command"] == ["python", "-m", module, "--host", "0.0.0.0", "--port", str(port)]
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for each in all_containers(pod):
        assert {"cpu", "memory"} <= set(each["resources"]["requests"]) and {"cpu", "memory"} <= set(
            each["resources"]["limits"]
        )
        assert each["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001

    service = of_kind(rendered, "Service")[name]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == port
    budget = of_kind(rendered, "PodDisruptionBudget")[name]
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_starts_with_the_config_and_its_mounted_secrets(
    rendered: list[dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The service's real settings class, on exactly what the pod gives it: a missing or misnamed key would stop it.
    _, settings_type, _, secret = SERVICES[name]
    config = config_of(rendered)
    pod = of_kind(rendered, "Deployment")[name]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": "vixenbliss-config"}}]
    secrets = mounted_secrets(pod, container, config[SECRETS_DIR_VARIABLE])
    assert secrets == ["vixenbliss-shared", secret]
    settings = load_as_mounted(monkeypatch, tmp_path, settings_type, config, secrets)
    assert settings.rabbitmq_url.get_secret_value() == SAMPLE_SECRET_VALUES["RABBITMQ_URL"]  # type: ignore[attr-defined]
    assert settings.rabbitmq_declare == "check"  # type: ignore[attr-defined]
    assert settings.migrate_on_start is False  # type: ignore[attr-defined]  # its init container migrated


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_pod_migrates_its_database_first_with_its_own_image_and_only_its_secret(
    rendered: list[dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An init container, not a Job: every rollout migrates before the new code serves, with nothing to rename.
    module, _, database_settings_type, secret = SERVICES[name]
    config = config_of(rendered)
    pod = of_kind(rendered, "Deployment")[name]["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    assert migrate["command"] == ["python", "-m", module, "migrate"]
    assert migrate["image"] == pod["containers"][0]["image"]
    assert migrate["envFrom"] == [{"configMapRef": {"name": "vixenbliss-config"}}]
    secrets = mounted_secrets(pod, migrate, config[SECRETS_DIR_VARIABLE])
    assert secrets == [secret]
    settings = load_as_mounted(monkeypatch, tmp_path, database_settings_type, config, secrets)
    assert settings.database_url == SAMPLE_SECRET_VALUES[env_prefix(name) + "_DATABASE_URL"]  # type: ignore[attr-defined]


def env_prefix(deployment: str) -> str:
    return {"inference-gateway": "GATEWAY"}.get(deployment, deployment.upper())


def test_no_job_migrates_a_database(rendered: list[dict[str, Any]]) -> None:
    for job in of_kind(rendered, "Job").values():
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[-1] != "migrate", job["metadata"]["name"]


def test_every_job_is_named_after_the_release_of_its_image(rendered: list[dict[str, Any]]) -> None:
    jobs = of_kind(rendered, "Job")
    assert jobs
    versions = {resource["metadata"]["labels"][VERSION_LABEL] for resource in rendered}
    (release,) = versions  # one release for everything rendered
    for name, job in jobs.items():
        template = job["spec"]["template"]
        assert name == f"{template['metadata']['labels'][NAME_LABEL]}-{release}"
        assert template["metadata"]["labels"][VERSION_LABEL] == release
        # The `job-name` label the Job controller gives its pods holds the name: a label value's 63 characters.
        assert len(name) <= 63 and DNS_LABEL.match(name), name
        for container in template["spec"]["containers"]:
            tag = image_tag(container["image"])
            assert tag in (None, release), f"{name} runs {container['image']}, release {release}"
    for deployment in of_kind(rendered, "Deployment").values():
        assert image_tag(deployment["spec"]["template"]["spec"]["containers"][0]["image"]) in (None, release)


def image_tag(image: str) -> str | None:
    """The tag of an image reference (`registry:5000/a/b:tag@sha256:…` → tag), None when it has only a digest."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_the_next_release_gets_new_jobs_so_an_apply_runs_them_again(tmp_path: Path) -> None:
    # What `kubectl apply -k` of a new release sees: the production overlay with another tag and version. The same
    # Job name with another pod template would be refused ("field is immutable"); a new name is a new Job, which runs.
    overlay = K8S / "overlays" / "production"
    production = render(overlay)
    (release,) = {resource["metadata"]["labels"][VERSION_LABEL] for resource in production}
    following_release = release + ".1"
    next_release = tmp_path / "next"
    next_release.mkdir()
    images = [
        {"name": container["image"].split("@")[0].rsplit(":", 1)[0], "newTag": following_release}
        for deployment in of_kind(production, "Deployment").values()
        for container in deployment["spec"]["template"]["spec"]["containers"]
    ]
    (next_release / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                # kustomize takes no absolute path to another kustomization.
                "resources": [os.path.relpath(overlay, next_release)],
                "images": images,
                "labels": [{"pairs": {VERSION_LABEL: following_release}, "includeTemplates": True}],
                "replacements": yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))[
                    "replacements"
                ],
            }
        ),
        encoding="utf-8",
    )
    following = render(next_release)
    before, after = set(of_kind(production, "Job")), set(of_kind(following, "Job"))
    assert before and not before & after
    assert after == {name.removesuffix(release) + following_release for name in before}


def test_a_job_declares_the_broker_topology_with_the_operators_user_and_the_services_only_check(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = config_of(rendered)
    assert config["RABBITMQ_DECLARE"] == "check"
    (job,) = [
        job
        for job in of_kind(rendered, "Job").values()
        if job["spec"]["template"]["spec"]["containers"][0]["command"]
        == ["python", "-m", "services.common.messaging.broker_declare"]
    ]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in of_kind(rendered, "Deployment").values()}
    assert container["image"] in images
    assert container["envFrom"] == [{"configMapRef": {"name": "vixenbliss-config"}}]
    secrets = mounted_secrets(pod, container, config[SECRETS_DIR_VARIABLE])
    assert secrets == ["vixenbliss-broker-admin"]
    settings = load_as_mounted(monkeypatch, tmp_path, DeclareStepSettings, config, secrets)
    assert isinstance(settings, DeclareStepSettings)
    assert settings.rabbitmq_admin_url.get_secret_value() == SAMPLE_SECRET_VALUES["RABBITMQ_ADMIN_URL"]
    # The operator's credential reaches that Job only.
    for name, deployment in of_kind(rendered, "Deployment").items():
        for volume in deployment["spec"]["template"]["spec"]["volumes"]:
            assert "vixenbliss-broker-admin" not in yaml.safe_dump(volume), name


def test_the_config_marks_a_production_deployment_and_names_the_audience_and_issuer(
    rendered: list[dict[str, Any]],
) -> None:
    config = config_of(rendered)
    # What identity and content check at start (AuthSettings), on the values the ConfigMap gives them.
    environment, audience, issuer = (config.get(name) for name in ("VIXEN_ENVIRONMENT", "AUTH_AUDIENCE", "AUTH_ISSUER"))
    assert environment == "production"
    problem = production_auth_problem(environment, audience, issuer)
    assert problem is None, problem


def test_keda_scales_the_gateway_on_its_open_jobs_and_its_queue(rendered: list[dict[str, Any]]) -> None:
    (scaled,) = of_kind(rendered, "ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] in of_kind(rendered, "Deployment")
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    triggers = {trigger["type"]: trigger for trigger in scaled["spec"]["triggers"]}
    config = config_of(rendered)
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


def test_the_namespace_denies_every_connection_no_policy_allows(rendered: list[dict[str, Any]]) -> None:
    policy = of_kind(rendered, "NetworkPolicy")["default-deny"]["spec"]
    assert policy == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_each_workload_has_its_network_policy_and_accepts_only_its_callers(rendered: list[dict[str, Any]]) -> None:
    policies = of_kind(rendered, "NetworkPolicy")
    pods = workloads(rendered)
    assert set(pods) == set(CALLERS)
    for name, pod in pods.items():
        selecting = [
            policy_name
            for policy_name, policy in policies.items()
            if policy["spec"]["podSelector"]
            and policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        ]
        assert selecting == [name], f"{name} is selected by {selecting}"
        spec = policies[name]["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        callers: set[str] = set()
        for rule in spec.get("ingress", []):
            assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
            for peer in rule["from"]:
                # Whole namespaces, never the pods of this one: the services never call each other.
                assert set(peer) == {"namespaceSelector"}, peer
                callers.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
        assert callers == CALLERS[name], name
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert ports == ({"http"} if callers else set()), name


def test_each_workload_reaches_only_what_its_code_connects_to(rendered: list[dict[str, Any]]) -> None:
    config = config_of(rendered)
    policies = of_kind(rendered, "NetworkPolicy")
    # The collector's namespace and port, and Prometheus's namespace, as the ConfigMap and KEDA address them.
    collector = urlsplit(config["OTEL_EXPORTER_OTLP_ENDPOINT"])
    collector_namespace = (collector.hostname or "").split(".")[1]
    (scaled,) = of_kind(rendered, "ScaledObject").values()
    prometheus = {t["type"]: t for t in scaled["spec"]["triggers"]}["prometheus"]["metadata"]["serverAddress"]
    assert (urlsplit(prometheus).hostname or "").split(".")[1] in CALLERS["inference-gateway"]
    for name, expected in EGRESS.items():
        found = []
        for rule in policies[name]["spec"]["egress"]:
            ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
            peers = rule.get("to", [])
            if ports == DNS:
                assert peers == [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ]
                found.append("dns")
            elif ports == BROKER and not peers:
                found.append("broker")
            elif ports == DATABASE and not peers:
                found.append("database")
            elif ports == HTTPS:
                assert [peer["ipBlock"]["cidr"] for peer in peers] == ["0.0.0.0/0", "::/0"]
                assert set(peers[0]["ipBlock"]["except"]) == NOT_OUTSIDE
                assert set(peers[1]["ipBlock"]["except"]) == {"fc00::/7", "fe80::/10"}
                found.append("https")
            elif ports == {("TCP", collector.port)}:
                assert peers == [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": collector_namespace}}}
                ]
                found.append("collector")
            else:
                pytest.fail(f"{name} may also reach {peers or 'anywhere'} on {sorted(ports)}")
        assert found == expected, name
