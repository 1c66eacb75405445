"""The deployment targets in deploy/, read into one shape, and the one list of variables.

Each target (a Kubernetes overlay, Cloud Run, Fly.io, Render, ECS) becomes a :class:`Target`, its task
worker a :class:`Worker`; :func:`registry` reads .env.example. tests/test_manifests.py checks them on
paper; tests/test_container_hosts.py runs the image that way.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import yaml

from harness.stack import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(path.parent for path in (DEPLOY / "k8s" / "overlays").glob("*/kustomization.yaml"))
KUBECTL = Path(sys.executable).parent / "kubectl"

# Cloud Run sends SIGTERM, then SIGKILL ten seconds later; the time is fixed.
# https://cloud.google.com/run/docs/container-contract#instance-shutdown
CLOUD_RUN_SHUTDOWN_SECONDS = 10
# Render's port when the service does not set PORT itself.
# https://render.com/docs/web-services#port-binding
RENDER_DEFAULT_PORT = 10000


# --- The one list of variables: .env.example ---------------------------------------------
@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # the text in brackets, if any
    required: bool  # marked (required): a deployment must set it
    secret: bool  # in the Secrets section: NAME_FILE works too


ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=")
SECTION = re.compile(r"^# -+ (.+?) -+$")


def _bracket_groups(text: str) -> list[str]:
    """The leading [...] groups of a comment, brackets nested: "[2] [10] x" -> ["2", "10"]."""
    groups, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth == 1:
                start = i + 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                groups.append(text[start:i])
        elif depth == 0 and not char.isspace():
            break
    return groups


def registry(path: Path = ROOT / ".env.example") -> dict[str, Variable]:
    """Every variable in .env.example, set or commented out, with what its comment says: its default in brackets,
    ``(required)`` for what a deployment must set, and the "Secrets" section for what may also come as NAME_FILE."""
    variables: dict[str, Variable] = {}
    section, comments, names = "", [], []

    def close_block() -> None:
        text = " ".join(comments)
        groups = _bracket_groups(comments[0]) if comments else []
        for i, name in enumerate(names):
            default = groups[0] if len(groups) == 1 else (groups[i] if i < len(groups) else None)
            variables[name] = Variable(name, default, "(required)" in text, section.startswith("Secrets"))
        comments.clear()
        names.clear()

    for line in path.read_text().splitlines():
        line = line.rstrip()
        if match := SECTION.match(line):
            close_block()
            section = match.group(1)
        elif match := ASSIGNMENT.match(line):
            name = match.group(1)
            # Secrets are listed as the files compose takes them from (NAME_FILE): the variable is NAME.
            names.append(name.removesuffix("_FILE") if section.startswith("Secrets") else name)
        elif line.startswith("#"):
            if names:  # a comment after assignments starts the next block
                close_block()
            comments.append(line.lstrip("#").strip())
        else:
            close_block()
    close_block()
    return variables


def read_by_the_image() -> set[str]:
    """The variables the app image reads: its settings, gunicorn's config and the task worker's, as written."""
    reader = r"(?:\benv(?:\.\w+)?|\bsecret|\b_int|\benviron\.get|os\.getenv)"
    call = re.compile(reader + r"""\(\s*["']([A-Z][A-Z0-9_]+)["']""")
    sources = [
        *(ROOT / "app" / "config").glob("*.py"),
        ROOT / "app" / "core" / "sizing.py",
        *(ROOT / "deploy" / "gunicorn").glob("*.py"),
        *(ROOT / "app" / "worker").rglob("*.py"),
        *(ROOT / "deploy" / "worker").glob("*.py"),
    ]
    return {name for source in sources for name in call.findall(source.read_text())}


def views_constant(name: str) -> int:
    """A limit as app/books/views.py sets it (`NAME = number`)."""
    match = re.search(rf"^{name} = (\d+)$", (ROOT / "app" / "books" / "views.py").read_text(), re.MULTILINE)
    assert match, f"{name} is no longer set in app/books/views.py"
    return int(match.group(1))


def secrets_in_the_code() -> set[str]:
    """The variables settings.py reads through core.env.secret (which accepts NAME_FILE)."""
    return set(re.findall(r"""\bsecret\(\s*["']([A-Z][A-Z0-9_]+)["']""", (ROOT / "app/config/settings.py").read_text()))


# --- The targets ------------------------------------------------------------------------------
@dataclass
class Workload:
    """One container a target starts from the image: its environment and its confinement."""

    env: dict[str, str]  # plain values from the manifest
    secrets: set[str] = field(default_factory=set)  # filled in by the host's secret store
    secret_files: dict[str, str] = field(default_factory=dict)  # NAME_FILE -> a mounted secret file
    host_env: dict[str, str] = field(default_factory=dict)  # put there by the host itself
    command: list[str] | None = None  # None: the image's CMD (gunicorn)
    read_only: bool = False
    tmpfs: list[str] = field(default_factory=list)  # writable mounts on a read-only root
    user: str | None = None  # None: the image's USER
    drop_all_capabilities: bool = False

    def names(self) -> set[str]:
        return set(self.env) | self.secrets | set(self.secret_files) | set(self.host_env)


@dataclass
class Worker:
    """The task worker as a target runs it: a container of the app's image, stopped on its own terms."""

    workload: Workload
    image: str  # as the manifest names it; compared with the web's
    grace: float  # seconds from SIGTERM to SIGKILL
    check: list[str] | None  # the exec health check the host runs in it; None where the host has none
    most_instances: int | None  # where the files say; None where a command (fly scale count) sets it
    stop_signal: str = "SIGTERM"


@dataclass
class Target:
    """A host's way with the image: how it starts it (settings, secrets, user, filesystem), where it sends requests,
    what it probes, how it stops a container, how it runs the migrations and the task worker."""

    name: str
    web: Workload
    migrate: Workload
    port: int  # the container port the host sends requests to
    probes: list[str]  # HTTP paths the host checks
    stop_signal: str
    grace: float  # seconds from the stop signal to SIGKILL
    pause_before_stop: float = 0  # Kubernetes' preStop: the pod serves on, then gets the signal
    check_command: list[str] | None = None  # run inside the container as the host's health check
    gate: Workload | None = None  # Kubernetes' init container that waits for the migrations
    most_instances: int | None = None  # the most app instances the host runs, where the files say
    image: str | None = None  # the web's image, as the manifest names it
    worker: Worker | None = None
    # What may cut a long response, where the files set it, in seconds, by the path prefix it
    # applies to ("/": every path): how long a response may last in all (Cloud Run's request
    # timeout, an HTTPRoute rule's request timeout; infinite where "0s" turns it off), and how
    # long it may stay silent (a proxy's read timeout, an idle timeout).
    response_timeouts: dict[str, float] = field(default_factory=dict)
    idle_timeouts: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def render_overlay(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize`: the overlay as the API server would get it, offline."""
    result = subprocess.run([str(KUBECTL), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template) of every workload in a rendering."""
    kinds = ("Deployment", "StatefulSet", "DaemonSet", "Job")
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]) for d in docs if d["kind"] in kinds]


def _k8s_workload(docs: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any]) -> Workload:
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in find(docs, "ConfigMap")}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
    secret_dirs = [path for path, volume in mounts.items() if "secret" in volume]
    workload = Workload(env={}, command=(container.get("command", []) + container.get("args", [])) or None)
    for source in container.get("envFrom", []):
        workload.env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        name, value_from = var["name"], var.get("valueFrom", {})
        if "secretKeyRef" in value_from:
            workload.secrets.add(name)
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            workload.env[name] = configmaps[ref["name"]][ref["key"]]
        elif name.endswith("_FILE") and any(var["value"].startswith(d + "/") for d in secret_dirs):
            workload.secret_files[name] = var["value"]
        else:
            workload.env[name] = var.get("value", "")
    pod_context, context = pod.get("securityContext", {}), container.get("securityContext", {})
    uid = context.get("runAsUser", pod_context.get("runAsUser"))
    gid = context.get("runAsGroup", pod_context.get("runAsGroup"))
    workload.user = f"{uid}:{gid}" if uid is not None else None
    workload.read_only = bool(context.get("readOnlyRootFilesystem"))
    workload.tmpfs = [path for path, volume in mounts.items() if "emptyDir" in volume]
    workload.drop_all_capabilities = "ALL" in context.get("capabilities", {}).get("drop", [])
    return workload


def _only_set(timeouts: dict[str, Any]) -> dict[str, float]:
    """The timeouts a file sets, as seconds; those it leaves to the host's default are left out."""
    return {path: float(value) for path, value in timeouts.items() if value is not None}


# Custom resources (CRDs) the manifests use: validated against their CRDs' schemas
# (tests/test_k8s_crds.py), not against Kubernetes' own (tests/test_manifests.py).
CUSTOM_RESOURCE_GROUPS = frozenset({"gateway.networking.k8s.io", "keda.sh"})


def is_custom_resource(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].rpartition("/")[0] in CUSTOM_RESOURCE_GROUPS


def gateway_duration(value: str) -> float:
    """A Gateway API duration (GEP-2257: "30s", "1h30m", "500ms") in seconds; "0s" (no timeout) is infinite."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+)(h|ms|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a Gateway API duration: {value!r}"
    seconds = sum(int(number) * units[unit] for number, unit in parts)
    return seconds or float("inf")


def route_timeouts(docs: list[dict[str, Any]]) -> dict[str, float]:
    """Each HTTPRoute path prefix's request timeout: how long the Gateway lets a response last in all."""
    timeouts = {}
    for route in find(docs, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            request = rule.get("timeouts", {}).get("request")
            if request is None:  # the implementation's default, which the files do not set
                continue
            for match in rule.get("matches", [{"path": {"type": "PathPrefix", "value": "/"}}]):
                path = match.get("path", {"type": "PathPrefix", "value": "/"})
                assert path["type"] == "PathPrefix", path  # the only kind used here
                timeouts[path["value"]] = gateway_duration(request)
    return timeouts


def autoscalers(docs: list[dict[str, Any]], deployment: str) -> list[dict[str, Any]]:
    """The HPAs and KEDA ScaledObjects that set a Deployment's replica count."""
    return [
        d
        for d in find(docs, "HorizontalPodAutoscaler") + find(docs, "ScaledObject")
        if d["spec"]["scaleTargetRef"]["name"] == deployment
        and d["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    ]


def most_replicas(docs: list[dict[str, Any]], deployment: str) -> int | None:
    """The most pods its autoscaler runs (an HPA's maxReplicas, a ScaledObject's maxReplicaCount); None without one."""
    found = autoscalers(docs, deployment)
    if not found:
        return None
    (scaler,) = found  # two on one Deployment fight over its count
    spec = scaler["spec"]
    return spec["maxReplicas"] if scaler["kind"] == "HorizontalPodAutoscaler" else spec.get("maxReplicaCount", 100)


def _k8s_worker(docs: list[dict[str, Any]]) -> Worker:
    (deployment,) = find(docs, "Deployment", "worker")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "worker"]
    # An autoscaler on the worker owns its count; without one, the Deployment's replicas.
    most = most_replicas(docs, "worker") or deployment["spec"].get("replicas", 1)
    return Worker(
        workload=_k8s_workload(docs, pod, container),
        image=container["image"],
        grace=pod.get("terminationGracePeriodSeconds", 30),
        check=container.get("livenessProbe", {}).get("exec", {}).get("command"),
        most_instances=most,
    )


def kubernetes(overlay: Path) -> Target:
    docs = render_overlay(overlay)
    (deployment,) = find(docs, "Deployment", "app")
    pod = deployment["spec"]["template"]["spec"]
    (app,) = [c for c in pod["containers"] if c["name"] == "app"]
    (job,) = find(docs, "Job", "migrate")
    job_pod = job["spec"]["template"]["spec"]
    (gate,) = [c for c in pod.get("initContainers", []) if c["name"] == "wait-for-migrations"]
    pre_stop = app.get("lifecycle", {}).get("preStop", {})
    return Target(
        name=f"kubernetes-{overlay.name}",
        image=app["image"],
        worker=_k8s_worker(docs),
        web=_k8s_workload(docs, pod, app),
        migrate=_k8s_workload(docs, job_pod, job_pod["containers"][0]),
        gate=_k8s_workload(docs, pod, gate),
        port=next(p["containerPort"] for p in app["ports"] if p.get("name") == "http"),
        probes=[app[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe") if p in app],
        stop_signal="SIGTERM",
        grace=pod.get("terminationGracePeriodSeconds", 30),
        pause_before_stop=pre_stop.get("sleep", {}).get("seconds", 0),
        most_instances=most_replicas(docs, "app"),
        # The Gateway API has no idle timeout of its own (docs/kubernetes.md: each implementation's).
        response_timeouts=route_timeouts(docs),
        notes={"docs": docs},
    )


def _knative_workload(container: dict[str, Any]) -> Workload:
    workload = Workload(env={}, command=(container.get("command", []) + container.get("args", [])) or None)
    for var in container.get("env", []):
        if "secretKeyRef" in var.get("valueFrom", {}):
            workload.secrets.add(var["name"])
        else:
            workload.env[var["name"]] = var.get("value", "")
    return workload


def cloud_run() -> Target:
    service_file, job_file = DEPLOY / "cloudrun" / "service.yaml", DEPLOY / "cloudrun" / "migrate-job.yaml"
    service, job = yaml.safe_load(service_file.read_text()), yaml.safe_load(job_file.read_text())
    (container,) = service["spec"]["template"]["spec"]["containers"]
    (job_container,) = job["spec"]["template"]["spec"]["template"]["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    web = _knative_workload(container)
    web.host_env["PORT"] = str(port)  # Cloud Run sets PORT to the container port
    pool = yaml.safe_load((DEPLOY / "cloudrun" / "worker-pool.yaml").read_text())
    (pool_container,) = pool["spec"]["template"]["spec"]["containers"]
    worker = Worker(
        workload=_knative_workload(pool_container),
        image=pool_container["image"],
        grace=CLOUD_RUN_SHUTDOWN_SECONDS,  # the same container contract as the service's
        check=None,  # Cloud Run has no exec probe
        most_instances=int(pool["metadata"]["annotations"]["run.googleapis.com/manualInstanceCount"]),
    )
    return Target(
        name="cloud-run",
        image=container["image"],
        worker=worker,
        web=web,
        migrate=_knative_workload(job_container),
        port=port,
        probes=[container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe") if p in container],
        stop_signal="SIGTERM",
        grace=CLOUD_RUN_SHUTDOWN_SECONDS,
        most_instances=int(service["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/maxScale"]),
        response_timeouts=_only_set({"/": service["spec"]["template"]["spec"].get("timeoutSeconds")}),
        notes={"service": service, "job": job, "worker_pool": pool},
    )


def fly_secrets() -> set[str]:
    """The names docs/fly.md sets with `fly secrets set` (fly.toml never holds secrets)."""
    text = (ROOT / "docs" / "fly.md").read_text().replace("\\\n", " ")
    commands = re.findall(r"fly secrets set (.*)", text)
    return {name for command in commands for name in re.findall(r"\b([A-Z][A-Z0-9_]*)=", command)}


def _seconds(value: int | str) -> float:
    """fly.toml durations: 30, "30s" or "1m"."""
    if isinstance(value, int):
        return value
    number, unit = re.fullmatch(r"(\d+)([sm]?)", value).groups()
    return int(number) * (60 if unit == "m" else 1)


def fly() -> Target:
    path = DEPLOY / "fly" / "fly.toml"
    config = tomllib.loads(path.read_text())
    env = {key: str(value) for key, value in config.get("env", {}).items()}
    processes = config.get("processes", {})
    # With [processes], each group runs its own command in place of the image's CMD.
    web = Workload(env=env, secrets=fly_secrets(), command=shlex.split(processes["app"]) if processes else None)
    service = config["http_service"]
    grace = _seconds(config.get("kill_timeout", 5))
    image = config["build"]["image"]
    worker = (
        Worker(
            workload=replace(web, command=shlex.split(processes["worker"])),
            image=image,  # one image per Fly app, for every process group
            grace=grace,  # kill_timeout is the app's, for every process group
            check=None,  # Fly runs no exec check
            most_instances=None,  # `fly scale count worker=N` (docs/fly.md)
            stop_signal=config.get("kill_signal", "SIGINT"),
        )
        if "worker" in processes
        else None
    )
    return Target(
        name="fly",
        image=image,
        worker=worker,
        web=web,
        # The release command runs in a temporary Machine with the app's env and secrets.
        migrate=replace(web, command=shlex.split(config["deploy"]["release_command"])),
        port=service["internal_port"],
        probes=[check["path"] for check in service.get("checks", [])],
        stop_signal=config.get("kill_signal", "SIGINT"),
        grace=grace,
        idle_timeouts=_only_set({"/": service.get("http_options", {}).get("idle_timeout")}),
        notes={"config": config},
    )


def _render_workload(blueprint: dict[str, Any], service: dict[str, Any]) -> Workload:
    """A service's envVars, its environment groups' expanded (fromGroup) and other services' followed (fromService)."""
    groups = {group["name"]: group for group in blueprint.get("envVarGroups", [])}
    workload = Workload(env={})
    for var in service.get("envVars", []):
        if "fromGroup" in var:
            expanded = _render_workload(blueprint, {"envVars": groups[var["fromGroup"]]["envVars"]})
            workload.env.update(expanded.env)
            workload.secrets |= expanded.secrets
            continue
        key = var["key"]
        if "value" in var:
            workload.env[key] = str(var["value"])
        elif "fromDatabase" in var:
            ref = var["fromDatabase"]
            workload.host_env[key] = f"<{ref['property']} of {ref['name']}>"
        elif "fromService" in var:
            ref = var["fromService"]
            (other,) = [s for s in blueprint["services"] if s["name"] == ref["name"] and s["type"] == ref["type"]]
            source = _render_workload(blueprint, other)
            wanted = ref["envVarKey"]
            if wanted in source.env:
                workload.env[key] = source.env[wanted]
            elif wanted in source.secrets:
                workload.secrets.add(key)
            else:
                workload.host_env[key] = source.host_env[wanted]
        else:  # generateValue or sync: false: a secret Render generates or asks for
            workload.secrets.add(key)
    return workload


def render() -> Target:
    path = DEPLOY / "render" / "render.yaml"
    blueprint = yaml.safe_load(path.read_text())
    (service,) = [s for s in blueprint["services"] if s["type"] == "web"]
    web = _render_workload(blueprint, service)
    if "PORT" not in web.env:
        web.host_env["PORT"] = str(RENDER_DEFAULT_PORT)
    workers = [s for s in blueprint["services"] if s["type"] == "worker"]
    worker = None
    if workers:
        (worker_service,) = workers
        workload = _render_workload(blueprint, worker_service)
        workload.command = shlex.split(worker_service["dockerCommand"])
        worker = Worker(
            workload=workload,
            image=worker_service["image"]["url"],
            grace=worker_service.get("maxShutdownDelaySeconds", 30),
            check=None,  # Render checks no background worker
            most_instances=worker_service.get("scaling", {}).get("maxInstances", worker_service.get("numInstances", 1)),
        )
    return Target(
        name="render",
        image=service["image"]["url"],
        worker=worker,
        web=web,
        migrate=replace(web, command=shlex.split(service["preDeployCommand"])),
        port=int(web.env.get("PORT", RENDER_DEFAULT_PORT)),
        probes=[service["healthCheckPath"]],
        stop_signal="SIGTERM",
        grace=service.get("maxShutdownDelaySeconds", 30),
        most_instances=service.get("scaling", {}).get("maxInstances", service.get("numInstances", 1)),
        notes={"blueprint": blueprint, "service": service, "worker_service": workers[0] if workers else None},
    )


def _ecs_workload(task: dict[str, Any], container: dict[str, Any]) -> Workload:
    task_volumes = {v["name"]: v for v in task.get("volumes", [])}
    # A volume with no host path and no EFS or Docker volume is the task's own storage.
    storage_keys = ("host", "efsVolumeConfiguration", "dockerVolumeConfiguration")
    return Workload(
        env={e["name"]: e["value"] for e in container.get("environment", [])},
        secrets={s["name"] for s in container.get("secrets", [])},
        command=container.get("command"),
        read_only=bool(container.get("readonlyRootFilesystem")),
        tmpfs=[
            m["containerPath"]
            for m in container.get("mountPoints", [])
            if not any(key in task_volumes[m["sourceVolume"]] for key in storage_keys)
        ],
        user=container.get("user"),
        drop_all_capabilities="ALL" in container.get("linuxParameters", {}).get("capabilities", {}).get("drop", []),
    )


def _ecs_check(container: dict[str, Any]) -> list[str]:
    check = container["healthCheck"]["command"]
    return check[1:] if check[0] == "CMD" else ["sh", "-c", check[1]]


def ecs() -> Target:
    files = [DEPLOY / "ecs" / name for name in ("task-definition.yaml", "service.yaml", "migrate-task.yaml")]
    task, service, migrate_task = (yaml.safe_load(path.read_text()) for path in files)
    (container,) = [c for c in task["containerDefinitions"] if c["name"] == "app"]
    web = _ecs_workload(task, container)
    worker_files = [DEPLOY / "ecs" / name for name in ("worker-task-definition.yaml", "worker-service.yaml")]
    worker_task, worker_service = (yaml.safe_load(path.read_text()) for path in worker_files)
    (worker_container,) = [c for c in worker_task["containerDefinitions"] if c["name"] == "worker"]
    worker = Worker(
        workload=_ecs_workload(worker_task, worker_container),
        image=worker_container["image"],
        grace=worker_container.get("stopTimeout", 30),
        check=_ecs_check(worker_container),
        most_instances=worker_service["desiredCount"],
    )
    (override,) = [o for o in migrate_task["overrides"]["containerOverrides"] if o["name"] == "app"]
    balancer = yaml.safe_load((DEPLOY / "ecs" / "load-balancer-attributes.yaml").read_text())
    balancer_attributes = {a["Key"]: a["Value"] for a in balancer["Attributes"]}
    return Target(
        name="ecs",
        image=container["image"],
        worker=worker,
        web=web,
        migrate=replace(web, command=override["command"]),
        port=container["portMappings"][0]["containerPort"],
        probes=[],  # the load balancer's target group holds its path (docs/ecs.md)
        check_command=_ecs_check(container),
        stop_signal="SIGTERM",
        grace=container.get("stopTimeout", 30),
        most_instances=service["desiredCount"],
        idle_timeouts=_only_set({"/": balancer_attributes.get("idle_timeout.timeout_seconds")}),
        notes={
            "task": task,
            "service": service,
            "migrate_task": migrate_task,
            "container": container,
            "load_balancer": balancer,
            "worker_task": worker_task,
            "worker_service": worker_service,
            "worker_container": worker_container,
        },
    )


LOADERS: dict[str, Callable[[], Target]] = {
    **{f"kubernetes-{overlay.name}": partial(kubernetes, overlay) for overlay in OVERLAYS},
    "cloud-run": cloud_run,
    "fly": fly,
    "render": render,
    "ecs": ecs,
}


@cache
def target(name: str) -> Target:
    """The target called `name` (a key of LOADERS), read once per test session."""
    return LOADERS[name]()
