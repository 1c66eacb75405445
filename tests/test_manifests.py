"""The deployment manifests on paper, offline: nothing here needs a cluster or a cloud account.

Every Kubernetes overlay and container host's files against their schemas and their own rules, every
target against .env.example, and the task worker on every target. What each host's check covers: the
"Checked by the test command" section of its page in docs/.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import botocore.session
import jsonschema
import kubernetes_validate
import pytest
import yaml
from botocore.validate import ParamValidator
from kubernetes_validate import utils as schemas
from referencing import Registry, Resource

from tests.hosts import (
    DEPLOY,
    LOADERS,
    OVERLAYS,
    ROOT,
    Target,
    Workload,
    autoscalers,
    find,
    gateway_duration,
    is_custom_resource,
    pod_templates,
    read_by_the_image,
    registry,
    secrets_in_the_code,
    target,
    views_constant,
)

# The oldest release the manifests are written for (docs/kubernetes.md: preStop
# sleep and Job podReplacementPolicy are stable from 1.34), and the newest known.
KUBERNETES_VERSIONS = ("1.34.0", schemas.latest_version())
OVERLAY_IDS = [overlay.name for overlay in OVERLAYS]
KUBERNETES_TARGETS = [f"kubernetes-{overlay.name}" for overlay in OVERLAYS]
# Postgres' default max_connections, less its superuser_reserved_connections.
POSTGRES_AVAILABLE_CONNECTIONS = 100 - 3
MIGRATE = ["python", "manage.py", "migrate", "--noinput"]
WORKER = ["python", "manage.py", "run_worker"]
WORKER_CHECK = ["python", "/srv/deploy/worker/healthcheck.py"]


@pytest.fixture(scope="module", params=OVERLAYS, ids=OVERLAY_IDS)
def overlay(request: pytest.FixtureRequest) -> Path:
    return request.param


@pytest.fixture(scope="module")
def rendered(overlay: Path) -> list[dict[str, Any]]:
    """The overlay through `kubectl kustomize` (tests.hosts.render_overlay), once."""
    return target(f"kubernetes-{overlay.name}").notes["docs"]


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In) against labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression  # the only operator used here
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def graceful_timeout(workload: Workload) -> int:
    default = registry()["GUNICORN_GRACEFUL_TIMEOUT"].default
    return int(workload.env.get("GUNICORN_GRACEFUL_TIMEOUT", default))


# --- Kubernetes ----------------------------------------------------------------------------
def test_both_overlays_exist():
    assert {"production", "trial"} <= set(OVERLAY_IDS)


def test_overlays_validate_against_kubernetes_schemas(rendered: list[dict[str, Any]]):
    errors = []
    # Custom resources have no schema here: tests/test_k8s_crds.py checks them against their CRDs.
    for doc in (d for d in rendered if not is_custom_resource(d)):
        for version in KUBERNETES_VERSIONS:
            label = f"{doc['kind']}/{doc['metadata']['name']} on {version}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{label}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(f"{label}: {exc.message}")
    assert not errors, "\n".join(errors)
    kinds = {doc["kind"] for doc in rendered}
    wanted = {"Namespace", "ConfigMap", "Deployment", "Service", "HTTPRoute", "PodDisruptionBudget", "Job"}
    assert wanted | {"NetworkPolicy"} <= kinds
    assert "Ingress" not in kinds, "the Gateway API's HTTPRoutes serve the app (ingress-nginx is retired)"


def test_example_secret_is_valid_and_holds_no_secret():
    secret = yaml.safe_load((DEPLOY / "k8s" / "base" / "secret.example.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    assert secret["stringData"] and all(value == "" for value in secret["stringData"].values())
    assert "data" not in secret


def test_no_overlay_carries_a_secret(rendered: list[dict[str, Any]]):
    # The Secret is created once per cluster; applied from an overlay, it would be in git.
    assert not find(rendered, "Secret")


def test_overlay_wiring(rendered: list[dict[str, Any]]):
    (deployment,) = find(rendered, "Deployment", "app")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    (app,) = [c for c in pod["containers"] if c["name"] == "app"]
    assert labels_match(deployment["spec"]["selector"], pod_labels)
    # No replica count: the HPA owns it, and apply would reset it.
    assert "replicas" not in deployment["spec"]

    (service,) = find(rendered, "Service", "app")
    assert labels_match({"matchLabels": service["spec"]["selector"]}, pod_labels)
    port_names = {port["name"] for port in app["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names

    config = next(d["data"] for d in find(rendered, "ConfigMap") if d["metadata"]["name"].startswith("app-config"))
    allowed_hosts = config["DJANGO_ALLOWED_HOSTS"].split(",")
    service_ports = {p["port"] for p in service["spec"]["ports"]}
    for route in find(rendered, "HTTPRoute"):
        name = route["metadata"]["name"]
        for host in route["spec"].get("hostnames", []):
            assert host in allowed_hosts, (name, host, allowed_hosts)
        # Each overlay names its Gateway; the base's placeholder never reaches a cluster.
        assert route["spec"]["parentRefs"] and all(ref["name"] != "gateway" for ref in route["spec"]["parentRefs"])
        for rule in route["spec"]["rules"]:
            for backend in rule["backendRefs"]:
                assert backend.get("kind", "Service") == "Service" and backend["name"] == "app", (name, backend)
                assert backend["port"] in service_ports, (name, backend)  # the Service's port, not the pod's
    # A Gateway in the overlay itself (the trial's) has the listener the routes name and admits them.
    for gateway in find(rendered, "Gateway"):
        listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
        for route in find(rendered, "HTTPRoute"):
            for ref in route["spec"]["parentRefs"]:
                if ref["name"] == gateway["metadata"]["name"] and "namespace" not in ref:
                    listener = listeners[ref["sectionName"]]
                    assert listener["allowedRoutes"]["namespaces"]["from"] in {"Same", "All"}

    # One autoscaler owns the app's count: the CPU HPA, or KEDA's ScaledObject in its place.
    (scaler,) = autoscalers(rendered, "app")
    reference = scaler["spec"]["scaleTargetRef"]
    assert (reference.get("apiVersion", "apps/v1"), reference.get("kind", "Deployment")) == ("apps/v1", "Deployment")

    # Everything in the app's namespace (a component's resources get it only from the overlay).
    (namespace,) = find(rendered, "Namespace")
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace["metadata"]["name"], (doc["kind"], doc["metadata"])
    (pdb,) = find(rendered, "PodDisruptionBudget", "app")
    assert labels_match(pdb["spec"]["selector"], pod_labels)

    # Every NetworkPolicy selects pods that exist (a typo in a label would select nothing).
    all_pod_labels = [template["metadata"]["labels"] for _, template in pod_templates(rendered)]
    for policy in find(rendered, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert not selector or any(labels_match(selector, labels) for labels in all_pod_labels), policy

    # One image for the app, its gate, the migrations and the task worker (and its gate).
    (job,) = find(rendered, "Job", "migrate")
    (worker,) = find(rendered, "Deployment", "worker")
    worker_pod = worker["spec"]["template"]["spec"]
    containers = pod["containers"] + pod["initContainers"] + job["spec"]["template"]["spec"]["containers"]
    containers += worker_pod["containers"] + worker_pod.get("initContainers", [])
    images = {c["image"] for c in containers}
    assert len(images) == 1, images


def test_secret_files_are_the_example_secrets_keys(rendered: list[dict[str, Any]]):
    keys = set(yaml.safe_load((DEPLOY / "k8s" / "base" / "secret.example.yaml").read_text())["stringData"])
    used = set()
    for label, template in pod_templates(rendered):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            # Volumes from claim templates (a StatefulSet's data) are not in `volumes`.
            mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in container.get("volumeMounts", [])}
            for var in container.get("env", []):
                if not var["name"].endswith("_FILE"):
                    continue
                directory, _, key = var["value"].rpartition("/")
                assert mounts[directory].get("secret", {}).get("secretName") == "app-secrets", (label, var)
                used.add(key)
    assert used == keys, f"files read: {sorted(used)}; keys in secret.example.yaml: {sorted(keys)}"


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: list[dict[str, Any]]):
    (namespace,) = find(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    problems = []
    for label, template in pod_templates(rendered):
        spec = template["spec"]
        context = spec.get("securityContext", {})
        if not context.get("runAsNonRoot") or context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{label}: runAsNonRoot and seccomp RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False or spec.get("enableServiceLinks") is not False:
            problems.append(f"{label}: no service account token, no service links")
        for container in spec["containers"] + spec.get("initContainers", []):
            name = f"{label} {container['name']}"
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation: false")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: readOnlyRootFilesystem: true")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}: capabilities drop ALL")
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            if not {"cpu", "memory"} <= set(requests) or "memory" not in limits:
                problems.append(f"{name}: cpu and memory requests, a memory limit")
    assert not problems, "\n".join(problems)


def test_app_probes_and_stopping(overlay: Path, rendered: list[dict[str, Any]]):
    (deployment,) = find(rendered, "Deployment", "app")
    pod = deployment["spec"]["template"]["spec"]
    (app,) = [c for c in pod["containers"] if c["name"] == "app"]
    assert app["startupProbe"]["httpGet"]["path"] == PROBES.LIVENESS
    # Liveness never depends on the database; readiness does.
    assert app["livenessProbe"]["httpGet"]["path"] == PROBES.LIVENESS
    assert app["readinessProbe"]["httpGet"]["path"] == PROBES.READINESS
    # The kubelet asks the pod on its own port, never through the public route.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert app[probe]["httpGet"]["port"] == "http" and "host" not in app[probe]["httpGet"], probe
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    topology_keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= topology_keys
    kubernetes_target = target(f"kubernetes-{overlay.name}")
    assert kubernetes_target.pause_before_stop > 0, "a preStop pause lets endpoints drop the pod first"
    budget = kubernetes_target.pause_before_stop + graceful_timeout(kubernetes_target.web)
    assert pod["terminationGracePeriodSeconds"] > budget


def test_worker_deployment(rendered: list[dict[str, Any]]):
    """Its own pods: probed by its check, drained one at a time, never sent traffic, reaching Postgres."""
    (deployment,) = find(rendered, "Deployment", "worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert labels_match(deployment["spec"]["selector"], pod_labels)
    assert pod_labels["app.kubernetes.io/component"] == "worker"
    assert worker["livenessProbe"]["exec"]["command"] == WORKER_CHECK
    assert "readinessProbe" not in worker, "no traffic to withhold"
    # A rolling update never runs more worker pods than TASK_WORKER_REPLICAS counts.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    # New task code waits for its migrations, as the web does.
    (web_deployment,) = find(rendered, "Deployment", "app")
    web_gate = web_deployment["spec"]["template"]["spec"]["initContainers"]
    assert [c["command"] for c in pod["initContainers"]] == [c["command"] for c in web_gate]

    assert [p for p in find(rendered, "PodDisruptionBudget") if labels_match(p["spec"]["selector"], pod_labels)]
    for service in find(rendered, "Service"):
        assert not labels_match({"matchLabels": service["spec"]["selector"]}, pod_labels), service["metadata"]["name"]
    egress = [
        p
        for p in find(rendered, "NetworkPolicy")
        if "Egress" in p["spec"]["policyTypes"] and labels_match(p["spec"]["podSelector"], pod_labels)
    ]
    ports = {port["port"] for p in egress for rule in p["spec"]["egress"] for port in rule.get("ports", [])}
    assert 5432 in ports, "the worker reaches Postgres"


# The live updates (docs/live-updates.md): a stream that stays open, and its long-poll fallback.
LIVE_PATHS = ("/books/stream/", "/books/updates/")
STREAM_PATHS = ("/events/", *LIVE_PATHS)


def serving_rule(rendered: list[dict[str, Any]], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(HTTPRoute, rule) a Gateway sends a request path to: the longest PathPrefix that matches, over all routes."""
    candidates = [
        (match["path"]["value"], route, rule)
        for route in find(rendered, "HTTPRoute")
        for rule in route["spec"]["rules"]
        for match in rule["matches"]
        if match["path"]["type"] == "PathPrefix" and path.startswith(match["path"]["value"])
    ]
    assert candidates, f"no HTTPRoute serves {path}"
    _, route, rule = max(candidates, key=lambda candidate: len(candidate[0]))
    return route, rule


def test_routes_bound_ordinary_requests_and_let_streams_last(rendered: list[dict[str, Any]]):
    """Every rule says how long a response may last: ordinary ones bounded, each stream as long as the app lets it."""
    for route in find(rendered, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            timeouts = rule.get("timeouts", {})
            # Unset, it is the implementation's choice: 15 s on Envoy, which would cut the streams.
            assert "request" in timeouts, (route["metadata"]["name"], rule.get("name"))
            # The CRD's CEL rule, which schema validation does not evaluate.
            if "backendRequest" in timeouts and gateway_duration(timeouts["request"]) != float("inf"):
                assert gateway_duration(timeouts["backendRequest"]) <= gateway_duration(timeouts["request"])
    _, pages = serving_rule(rendered, "/books/")
    ordinary = gateway_duration(pages["timeouts"]["request"])
    # Bounded, and longer than the slowest ordinary demo (/async/?seconds=MAX_SLEEP_SECONDS).
    assert views_constant("MAX_SLEEP_SECONDS") < ordinary <= 60
    lives = {"/events/": views_constant("MAX_EVENTS"), "/books/updates/": views_constant("MAX_WAIT_SECONDS")}
    for path, life in lives.items():
        _, rule = serving_rule(rendered, path)
        assert life < gateway_duration(rule["timeouts"]["request"]) < float("inf"), (path, rule["timeouts"])
    # The live stream has no end of its own: the app ends it (docs/live-updates.md).
    _, stream = serving_rule(rendered, "/books/stream/")
    assert gateway_duration(stream["timeouts"]["request"]) == float("inf")


def test_streams_have_a_route_of_their_own(rendered: list[dict[str, Any]]):
    """One HTTPRoute for the streams and long-polls only: an implementation's policy (buffering off) can target it."""
    routes = {serving_rule(rendered, path)[0]["metadata"]["name"] for path in STREAM_PATHS}
    assert len(routes) == 1, routes
    assert serving_rule(rendered, "/")[0]["metadata"]["name"] not in routes


def test_database_is_reachable_only_from_the_app(rendered: list[dict[str, Any]]):
    policies = find(rendered, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
    component = "app.kubernetes.io/component"
    databases = [t for _, t in pod_templates(rendered) if t["metadata"]["labels"].get(component) == "database"]
    config = next(d["data"] for d in find(rendered, "ConfigMap") if d["metadata"]["name"].startswith("app-config"))
    if not databases:  # a managed Postgres: the network path is outside the cluster, encrypted
        assert config["POSTGRES_SSLMODE"] in {"require", "verify-ca", "verify-full"}
        return
    (database,) = databases
    selecting = [p for p in policies if p["spec"]["podSelector"]]
    (policy,) = [p for p in selecting if labels_match(p["spec"]["podSelector"], database["metadata"]["labels"])]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not policy["spec"].get("egress")
    pods = {label: t["metadata"]["labels"] for label, t in pod_templates(rendered)}
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [5432]
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, peer  # no namespace or address range
            admitted = sorted(label for label, labels in pods.items() if labels_match(peer["podSelector"], labels))
            assert admitted == ["Deployment/app", "Deployment/worker", "Job/migrate"], admitted


# Namespace labels the NetworkPolicies admit (docs/kubernetes.md): where the Gateway's proxies run,
# and where Prometheus runs.
GATEWAY_NAMESPACE_LABEL = {"gateway-data-plane": "true"}
PROMETHEUS_NAMESPACE_LABEL = {"metrics-scraper": "true"}


def admitted(rendered: list[dict[str, Any]], namespace_labels: dict[str, str]) -> dict[str, set[int]]:
    """The pods (kind/name) a pod in a namespace with these labels may reach, and on which ports."""
    reach: dict[str, set[int]] = {}
    for policy in find(rendered, "NetworkPolicy"):
        if "Ingress" not in policy["spec"]["policyTypes"]:
            continue
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from", [])
            if not any(
                labels_match(p.get("namespaceSelector", {"matchLabels": {"-": "-"}}), namespace_labels) for p in peers
            ):
                continue
            ports = {port["port"] for port in rule["ports"]}
            for label, template in pod_templates(rendered):
                if labels_match(policy["spec"]["podSelector"], template["metadata"]["labels"]):
                    reach.setdefault(label, set()).update(ports)
    return reach


def declared_port(rendered: list[dict[str, Any]], workload: str, container: str, name: str) -> int:
    kind, _, workload_name = workload.partition("/")
    (doc,) = find(rendered, kind, workload_name)
    (found,) = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == container]
    (port,) = [p["containerPort"] for p in found.get("ports", []) if p["name"] == name]
    return port


def test_metrics_port_is_declared_and_open_to_prometheus_only(rendered: list[dict[str, Any]]):
    metrics_port = int(registry()["METRICS_PORT"].default)
    web = declared_port(rendered, "Deployment/app", "app", "metrics")
    worker = declared_port(rendered, "Deployment/worker", "worker", "metrics")
    assert web == worker == metrics_port
    # Prometheus reaches the metrics port of the app and the worker, nothing else of theirs.
    assert admitted(rendered, PROMETHEUS_NAMESPACE_LABEL) == {"Deployment/app": {web}, "Deployment/worker": {worker}}
    # The Gateway's proxies reach the app's own port only: never the metrics.
    http = declared_port(rendered, "Deployment/app", "app", "http")
    assert admitted(rendered, GATEWAY_NAMESPACE_LABEL) == {"Deployment/app": {http}}
    # Nor does the Service route to it, so no HTTPRoute can.
    (service,) = find(rendered, "Service", "app")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}
    # Discoverable by annotation too (Prometheus' kubernetes-pods job).
    for kind_name in ("app", "worker"):
        (deployment,) = find(rendered, "Deployment", kind_name)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port), kind_name


# --- Scaling: the CPU HPA, or KEDA on the work in flight ----------------------------------------
# The Prometheus scaler's settings (https://keda.sh/docs/2.20/scalers/prometheus/): a misspelt one
# is no schema error (its metadata is a map of strings), so they are checked here.
PROMETHEUS_SCALER_KEYS = {
    "serverAddress",
    "query",
    "queryParameters",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "unsafeSsl",
    "timeout",
}


def gauges_the_app_exports() -> set[str]:
    """The Prometheus metric names app/core/metrics.py defines."""
    text = (ROOT / "app" / "core" / "metrics.py").read_text()
    return set(re.findall(r"""\b(?:Gauge|Counter|Histogram)\(\s*["'](\w+)["']""", text))


def test_the_keda_scaler_scales_on_what_the_app_exports_within_the_database_budget(overlay: Path):
    rendered = target(f"kubernetes-{overlay.name}").notes["docs"]
    scaled = find(rendered, "ScaledObject")
    if not scaled:
        (hpa,) = find(rendered, "HorizontalPodAutoscaler", "app")
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        return
    (scaler,) = scaled
    assert not find(rendered, "HorizontalPodAutoscaler"), "KEDA makes its own HPA: two would fight over the count"
    spec = scaler["spec"]
    web = target(f"kubernetes-{overlay.name}").web
    defaults = registry()
    # The same bounds as the CPU HPA's: at least two pods, at most APP_REPLICAS (the connection sum).
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= int(web.env["APP_REPLICAS"])
    workers = int(web.env["GUNICORN_WORKERS"])
    shed_at = int(web.env.get("WORKER_MAX_REQUESTS_IN_FLIGHT", defaults["WORKER_MAX_REQUESTS_IN_FLIGHT"].default))
    (namespace,) = find(rendered, "Namespace")
    queried = set()
    for trigger in spec["triggers"]:
        if trigger["type"] != "prometheus":
            continue
        metadata = trigger["metadata"]
        assert set(metadata) <= PROMETHEUS_SCALER_KEYS, set(metadata) - PROMETHEUS_SCALER_KEYS
        assert trigger.get("metricType", "AverageValue") == "AverageValue", "a threshold per pod"
        names = set(re.findall(r"\b(app_\w+)\{", metadata["query"]))
        assert names and names <= gauges_the_app_exports(), names
        assert f'namespace="{namespace["metadata"]["name"]}"' in metadata["query"], "the app's own pods only"
        queried |= names
        if "app_requests_in_flight" in names:
            # New pods start well before a pod's workers begin to turn requests away.
            assert float(metadata["threshold"]) <= workers * shed_at / 2, (metadata["threshold"], workers, shed_at)
    assert {"app_requests_in_flight", "app_streams_open"} <= queried
    # CPU stays a signal: the Prometheus triggers fail together when Prometheus does.
    assert any(t["type"] == "cpu" for t in spec["triggers"])


# --- The container hosts -----------------------------------------------------------------------
def container_schema_errors(container: dict[str, Any], version: str) -> list[str]:
    """Errors of `container` against the strict Kubernetes core/v1 Container schema."""
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schemas.schema_contents(f"{directory}/container-v1.json", version)
    definitions = schemas.schema_contents(f"{directory}/_definitions.json", version)
    refs = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=refs)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(container)]


def test_cloud_run_containers_match_the_kubernetes_container_schema():
    cloud_run = target("cloud-run")
    service, job = cloud_run.notes["service"], cloud_run.notes["job"]
    assert (service["apiVersion"], service["kind"]) == ("serving.knative.dev/v1", "Service")
    assert (job["apiVersion"], job["kind"]) == ("run.googleapis.com/v1", "Job")
    pool = cloud_run.notes["worker_pool"]
    assert (pool["apiVersion"], pool["kind"]) == ("run.googleapis.com/v1", "WorkerPool")
    containers = service["spec"]["template"]["spec"]["containers"]
    containers += job["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    containers += pool["spec"]["template"]["spec"]["containers"]
    errors = [f"{c['name']}: {e}" for c in containers for e in container_schema_errors(c, KUBERNETES_VERSIONS[-1])]
    assert not errors, "\n".join(errors)
    # Cloud Run sets PORT itself and refuses a service that sets it.
    assert all(var["name"] != "PORT" for c in containers for var in c.get("env", []))
    assert {c["image"] for c in containers} == {containers[0]["image"]}
    # Its probes ask the instance on the container's own port, not the public URL.
    web = service["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe"):
        assert web[probe]["httpGet"]["port"] == cloud_run.port, probe


def test_a_typo_fails_the_container_schema():
    container = dict(target("cloud-run").notes["service"]["spec"]["template"]["spec"]["containers"][0])
    container["livenessProbes"] = container.pop("livenessProbe")
    assert any("livenessProbes" in error for error in container_schema_errors(container, KUBERNETES_VERSIONS[-1]))


@pytest.mark.parametrize(
    ("file", "operation"),
    [
        ("task-definition.yaml", "RegisterTaskDefinition"),
        ("service.yaml", "CreateService"),
        ("migrate-task.yaml", "RunTask"),
        ("worker-task-definition.yaml", "RegisterTaskDefinition"),
        ("worker-service.yaml", "CreateService"),
    ],
)
def test_ecs_files_match_the_ecs_api_model(file: str, operation: str):
    model = botocore.session.get_session().get_service_model("ecs")
    data = yaml.safe_load((DEPLOY / "ecs" / file).read_text())
    report = ParamValidator().validate(data, model.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


def test_ecs_task_fits_fargate():
    ecs = target("ecs")
    task, container = ecs.notes["task"], ecs.notes["container"]
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    assert 0 < container["stopTimeout"] <= 120  # Fargate's limit
    service, migrate_task = ecs.notes["service"], ecs.notes["migrate_task"]
    assert service["taskDefinition"] == migrate_task["taskDefinition"] == task["family"]
    assert service["loadBalancers"][0]["containerPort"] == ecs.port
    assert service["deploymentConfiguration"]["minimumHealthyPercent"] == 100


def test_ecs_worker_service():
    ecs = target("ecs")
    task, service, container = ecs.notes["worker_task"], ecs.notes["worker_service"], ecs.notes["worker_container"]
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    assert 0 < container["stopTimeout"] <= 120  # Fargate's limit
    assert service["taskDefinition"] == task["family"] != ecs.notes["task"]["family"]
    assert service["cluster"] == ecs.notes["service"]["cluster"]
    assert service["networkConfiguration"] == ecs.notes["service"]["networkConfiguration"]
    assert not service.get("loadBalancers") and not container.get("portMappings"), "nothing sends it requests"
    # A deploy never runs more worker tasks than TASK_WORKER_REPLICAS counts.
    assert service["deploymentConfiguration"]["maximumPercent"] == 100


def test_ecs_load_balancer_attributes_match_the_elbv2_api_model():
    model = botocore.session.get_session().get_service_model("elbv2")
    data = target("ecs").notes["load_balancer"]
    report = ParamValidator().validate(data, model.operation_model("ModifyLoadBalancerAttributes").input_shape)
    assert not report.has_errors(), report.generate_report()


@pytest.mark.parametrize("name", ["fly", "ecs"])
def test_the_proxy_closes_idle_connections_before_gunicorn(name: str):
    """The proxy in front, not gunicorn, ends an idle connection: else it may send a request down one just closed."""
    t = target(name)
    keepalive = int(t.web.env.get("GUNICORN_KEEPALIVE", registry()["GUNICORN_KEEPALIVE"].default))
    assert "/" in t.idle_timeouts, f"{name}: its files set the proxy's idle timeout"
    idle = t.idle_timeouts["/"]
    assert idle < keepalive, f"{name}: the proxy's idle timeout is {idle} s, GUNICORN_KEEPALIVE {keepalive} s"


def test_fly_config():
    fly = target("fly")
    config = fly.notes["config"]
    port = int(fly.web.env.get("PORT", registry()["PORT"].default))
    assert fly.port == port, "internal_port must be the port gunicorn binds"
    assert config["http_service"]["force_https"] is True
    assert fly.web.secrets, "docs/fly.md sets the secrets with `fly secrets set`"
    # Requests go to the web's Machines only, never to the worker's.
    assert set(config["processes"]) == {"app", "worker"}
    assert config["http_service"]["processes"] == ["app"]


def test_render_blueprint():
    render = target("render")
    blueprint, service = render.notes["blueprint"], render.notes["service"]
    assert service["runtime"] == "image"  # the image built and tested here, not a rebuild
    databases = {db["name"]: db for db in blueprint["databases"]}
    for var in service["envVars"]:
        if "fromDatabase" in var:
            assert var["fromDatabase"]["name"] in databases, var
    for database in databases.values():
        assert database["ipAllowList"] == [], "reachable from Render's private network only"
    worker = render.notes["worker_service"]
    assert worker["runtime"] == "image" and worker["image"] == service["image"]
    assert worker["region"] == service["region"] and "healthCheckPath" not in worker
    assert 1 <= worker["maxShutdownDelaySeconds"] <= 300  # Render's bounds


def postgres_major_of_the_stack() -> str:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return re.match(r"postgres:(\d+)", compose["services"]["db"]["image"]).group(1)


def test_every_postgres_is_the_stacks_major_version():
    major = postgres_major_of_the_stack()
    assert {db["postgresMajorVersion"] for db in target("render").notes["blueprint"]["databases"]} == {major}
    for name in KUBERNETES_TARGETS:
        for _, template in pod_templates(target(name).notes["docs"]):
            for container in template["spec"]["containers"]:
                if container["image"].startswith("postgres:"):
                    assert container["image"].split(":")[1].split("-")[0] == major


# --- Every target ----------------------------------------------------------------------------------
HOST_CONFIG_DIRS = ("k8s", "cloudrun", "fly", "render", "ecs")


def test_every_config_file_opens_with_a_comment():
    files = [f for d in HOST_CONFIG_DIRS for f in sorted((DEPLOY / d).rglob("*")) if f.is_file()]
    assert len(files) > 10
    silent = [str(f.relative_to(ROOT)) for f in files if not f.read_text().startswith("#")]
    assert not silent, f"say what it is, who reads it and what to change: {silent}"


def test_env_example_documents_every_variable_the_image_reads():
    documented = registry()
    undocumented = read_by_the_image() - set(documented)
    assert not undocumented, f"read by the app image, missing from .env.example: {sorted(undocumented)}"
    assert secrets_in_the_code() == {name for name, var in documented.items() if var.secret}
    assert {name for name, var in documented.items() if var.required}, "(required) marks at least one variable"


def workloads(t: Target) -> list[tuple[str, Workload]]:
    found = [("web", t.web), ("migrate", t.migrate)]
    found += [("worker", t.worker.workload)] if t.worker else []
    return found + ([("gate", t.gate)] if t.gate else [])


@pytest.mark.parametrize("name", list(LOADERS))
def test_sets_only_known_variables_and_every_required_one(name: str):
    documented = registry()
    secrets = {v for v, var in documented.items() if var.secret}
    known = (set(documented) & read_by_the_image()) | {f"{v}_FILE" for v in secrets}
    problems = []
    for label, workload in workloads(target(name)):
        names = workload.names()
        if unknown := names - known:
            problems.append(f"{label}: not in .env.example, or not read by the app image: {sorted(unknown)}")
        required = [v for v, var in documented.items() if var.required]
        if missing := [v for v in required if v not in names and f"{v}_FILE" not in names]:
            problems.append(f"{label}: (required) but not set: {missing}")
        if both := [v for v in secrets if v in names and f"{v}_FILE" in names]:
            problems.append(f"{label}: both NAME and NAME_FILE: {both}")
        if literal := [v for v in secrets if v in workload.env or f"{v}_FILE" in workload.env]:
            problems.append(f"{label}: a secret written into the manifest: {literal}")
        if workload.env.get("DJANGO_DEBUG", "false").lower() not in {"false", "0", "no", "off"}:
            problems.append(f"{label}: DJANGO_DEBUG on")
    assert not problems, "\n".join(problems)


def _core_module(name: str) -> ModuleType:
    """app/core/<name>.py, plain Python, loaded on its own (no Django on the host)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "app" / "core" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _sizing() -> ModuleType:
    return _core_module("sizing")


# The probe paths the app answers (app/core/probes.py): every host probes these and no other.
PROBES = _core_module("probes")


SIZING = ("APP_REPLICAS", "GUNICORN_WORKERS", "DB_POOL_MAX_SIZE", "DB_SPARE_CONNECTIONS", "TASK_WORKER_REPLICAS")


@pytest.mark.parametrize("name", list(LOADERS))
def test_database_connections_fit_postgres(name: str):
    """The sum the check core.E003 makes at run time, made on paper with the same code."""
    t, defaults = target(name), registry()
    # The migrate step's check must count what the app runs: the same sizing.
    assert {v: t.migrate.env.get(v) for v in SIZING} == {v: t.web.env.get(v) for v in SIZING}
    # Without a CPU limit these hosts' containers see all the machine's cores: the count is set.
    assert "GUNICORN_WORKERS" in t.web.env
    value = {v: int(t.web.env.get(v) or defaults[v].default) for v in SIZING}
    if t.most_instances is not None:
        assert value["APP_REPLICAS"] >= t.most_instances, "APP_REPLICAS must be the most instances the host runs"
    # Where a host's files set the app's count, they set the worker's beside it.
    if "APP_REPLICAS" in t.web.env:
        assert "TASK_WORKER_REPLICAS" in t.web.env, "set beside APP_REPLICAS: the worker's most instances"
    if t.worker.most_instances is not None:
        assert value["TASK_WORKER_REPLICAS"] >= t.worker.most_instances, (
            f"TASK_WORKER_REPLICAS {value['TASK_WORKER_REPLICAS']}, the host runs {t.worker.most_instances} workers"
        )
    budget = _sizing().ConnectionBudget(
        replicas=value["APP_REPLICAS"],
        workers=value["GUNICORN_WORKERS"],
        pool_max=value["DB_POOL_MAX_SIZE"],
        spare=value["DB_SPARE_CONNECTIONS"],
        worker_replicas=value["TASK_WORKER_REPLICAS"],
    )
    # The workers are in the sum: 2 connections each at least (app/core/sizing.py holds the exact term).
    without_workers = replace(budget, worker_replicas=0)
    assert budget.total - without_workers.total >= 2 * value["TASK_WORKER_REPLICAS"] > 0, budget.explain()
    assert budget.total <= POSTGRES_AVAILABLE_CONNECTIONS, budget.explain()


# The seconds gunicorn's arbiter needs after its drain: the rule lives in gunicorn.conf.py.
STOP_MARGIN = int(re.search(r"^STOP_MARGIN = (\d+)$", (DEPLOY / "gunicorn" / "gunicorn.conf.py").read_text(), re.M)[1])


@pytest.mark.parametrize("name", list(LOADERS))
def test_stopping_drains_within_the_hosts_grace_period(name: str):
    t = target(name)
    # SIGTERM is gunicorn's graceful stop; it documents SIGINT and SIGQUIT as quick shutdown.
    assert t.stop_signal == "SIGTERM"
    # What the app is told of its grace period (APP_STOP_GRACE) is no more than the host gives it
    # after the pause, and gunicorn.conf.py's rule holds for it: the drain, then the margin.
    stop_grace = int(t.web.env.get("APP_STOP_GRACE", registry()["APP_STOP_GRACE"].default))
    assert t.pause_before_stop + stop_grace <= t.grace, f"{name}: APP_STOP_GRACE {stop_grace} s, grace {t.grace} s"
    assert graceful_timeout(t.web) + STOP_MARGIN <= stop_grace


def image_command() -> list[str]:
    """The app image's CMD: the last CMD of the Dockerfile's `app` stage."""
    stage = re.search(r"^FROM \S+ AS app$(.*?)(?=^FROM |\Z)", (ROOT / "Dockerfile").read_text(), re.M | re.S)
    assert stage, "the Dockerfile has an `app` stage"
    return json.loads(re.findall(r"^CMD (\[.*\])$", stage.group(1), re.M)[-1])


@pytest.mark.parametrize("name", list(LOADERS))
def test_probes_and_migrations(name: str):
    t = target(name)
    assert t.probes or t.check_command, "the host needs some way to tell a dead instance"
    assert set(t.probes) <= set(PROBES.PATHS)
    # Migrations: a command of their own, never part of starting the app.
    assert t.migrate.command == MIGRATE
    # The app runs the image's CMD (gunicorn), which never migrates; Fly's process groups write it out.
    assert t.web.command in (None, image_command())
    assert "migrate" not in image_command()


# --- The task worker ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LOADERS))
def test_every_host_runs_the_worker_from_the_webs_image(name: str):
    t = target(name)
    assert t.worker, f"{name}: no task worker"
    assert t.worker.workload.command == WORKER
    assert t.image and t.worker.image == t.image, (t.worker.image, t.image)
    # Where the host runs an exec check, it is the worker's own; elsewhere the host restarts it when it exits.
    assert t.worker.check in (None, WORKER_CHECK)
    if name.startswith("kubernetes") or name == "ecs":
        assert t.worker.check == WORKER_CHECK, "the host runs exec checks: it runs the worker's"


@pytest.mark.parametrize("name", list(LOADERS))
def test_worker_gets_the_webs_settings_and_confinement(name: str):
    """One list: whatever the web is given (settings, secrets, secret files), the worker is given alike."""
    t = target(name)
    web, worker = t.web, t.worker.workload
    assert worker.env == web.env, {k: (web.env.get(k), worker.env.get(k)) for k in set(web.env) ^ set(worker.env)}
    assert worker.secrets == web.secrets
    assert worker.secret_files == web.secret_files
    # Host-set values (Render's database) alike; PORT only where the host routes requests.
    assert {k: v for k, v in worker.host_env.items() if k != "PORT"} == {
        k: v for k, v in web.host_env.items() if k != "PORT"
    }
    confinement = ("read_only", "tmpfs", "user", "drop_all_capabilities")
    assert {c: getattr(worker, c) for c in confinement} == {c: getattr(web, c) for c in confinement}


@pytest.mark.parametrize("name", list(LOADERS))
def test_worker_stops_within_the_hosts_grace_period(name: str):
    """SIGTERM: no new task; TASK_WORKER_GRACE is the host's grace period, which the worker keeps within (run.py)."""
    t = target(name)
    assert t.worker.stop_signal == "SIGTERM"
    grace = int(t.worker.workload.env.get("TASK_WORKER_GRACE", registry()["TASK_WORKER_GRACE"].default))
    assert grace > 0
    assert grace <= t.worker.grace, f"{name}: TASK_WORKER_GRACE is {grace} s, the host kills after {t.worker.grace} s"


# --- Long responses: the live stream, its long-poll, the /events/ demo -------------------------------
# Where the files set a timeout (Render's Blueprint has none to set: docs/render.md).
TIMEOUT_TARGETS = [*KUBERNETES_TARGETS, "cloud-run", "fly", "ecs"]


def limit_for(limits: dict[str, float], path: str) -> float | None:
    """The limit on a request path: that of the longest prefix matching it, as a Gateway picks."""
    matching = [prefix for prefix in limits if path.startswith(prefix)]
    return limits[max(matching, key=len)] if matching else None


@pytest.mark.parametrize("name", TIMEOUT_TARGETS)
def test_long_responses_outlast_the_hosts_timeouts(name: str):
    """No host cuts the demo stream or a long-poll, nor the live stream for its silences (docs/<host>.md)."""
    t = target(name)
    assert t.response_timeouts or t.idle_timeouts, f"{name}: its files set no timeout on responses any more"
    keepalive = registry().get("LIVE_KEEPALIVE")
    assert keepalive and keepalive.default, "LIVE_KEEPALIVE and its default are documented in .env.example"
    events = views_constant("MAX_EVENTS")  # /events/ sends one a second: its longest stream, in seconds
    wait = views_constant("MAX_WAIT_SECONDS")  # the long-poll's longest wait
    # The longest silence of each: the live stream sends a comment after LIVE_KEEPALIVE seconds.
    silences = {"/books/stream/": float(keepalive.default), "/books/updates/": wait, "/events/": 1}
    # The longest each lasts. The live stream has none of its own: a host that ends it anyway must
    # let it outlast the others (it then resumes from Last-Event-ID).
    lives = {"/books/stream/": max(events, wait), "/books/updates/": wait, "/events/": events}
    problems = []
    for path, silence in silences.items():
        whole = limit_for(t.response_timeouts, path)
        if whole is not None and whole <= lives[path]:
            problems.append(f"{path}: ended after {whole} s, and it may last {lives[path]} s")
        idle = limit_for(t.idle_timeouts, path)
        if idle is not None and idle <= silence:
            problems.append(f"{path}: cut after {idle} s of silence, and it may be silent for {silence} s")
    assert not problems, "\n".join(problems)
