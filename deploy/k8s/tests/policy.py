"""The rules a rendered Trellis overlay must keep, as a checker that names each violation.

`violations(objects, context)` takes the objects of `kubectl kustomize <overlay>` and
returns one line per broken rule, naming the object and the rule, e.g.
`Deployment/user container service: no readinessProbe`. An empty list means the overlay
passes. Run on its own:

    kubectl kustomize deploy/k8s/overlays/prod | python3 deploy/k8s/tests/policy.py -

The rules (docs/operating/kubernetes.md):
- every container of a Trellis service has gRPC startup, liveness and readiness probes on
  its `grpc` port; startup and liveness ask the `liveness` health name (SERVING while the
  process serves, whatever the database does), readiness the service's own name or "".
  Under TLS (`TRELLIS_<SERVICE>__TLS__CERT` set) the kubelet's gRPC probes cannot connect,
  so they are HTTP probes on the `metrics` port instead: `/livez` for startup and
  liveness, `/readyz` for readiness;
- requests and limits for cpu and memory; the restricted security context (non-root
  65532:65532, read-only root, no privilege escalation, every capability dropped,
  RuntimeDefault seccomp); an image set by the overlay, never the base's placeholder
  (and in prod never `latest`); every container port named;
- a preStop sleep (the image has no shell) and a grace period longer than the preStop
  plus the drain bound (`server.drain_timeout_ms`) plus the 1 s connection close;
- no secret value inlined: no `value:` for a variable whose name says SECRET, PASSWORD
  or DATABASE__URL, and no Secret object with data;
- every Deployment has a PodDisruptionBudget, an autoscaling/v2 HorizontalPodAutoscaler
  on cpu and memory (and no `replicas` of its own), a headless Service for DNS discovery
  and a ClusterIP Service with appProtocol grpc, all selecting its pods;
- rolling updates with maxUnavailable 0; spread over nodes and zones;
- settings carry the service's own prefix, peers are addressed at a headless Service's
  port, local development is off;
- a default-deny NetworkPolicy.
"""

import re
import sys
from dataclasses import dataclass, field

import yaml

# Probes that must exist, and the health name the first two must ask.
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
LIVENESS_HEALTH_NAME = "liveness"
# Under TLS: the metrics port's paths that answer as those health names do.
HTTP_PROBE_PATHS = {
    "startupProbe": "/livez",
    "livenessProbe": "/livez",
    "readinessProbe": "/readyz",
}
# The image's user and group (deploy/docker/Dockerfile: USER 65532:65532).
IMAGE_UID = 65532
# After the drain bound the server gives connections this long to close
# (platform/src/server/mod.rs, CLOSE_GRACE).
CLOSE_GRACE_S = 1
# Variables whose value is a secret: they must come from a Secret.
SECRET_WORDS = ("SECRET", "PASSWORD", "DATABASE__URL")
HEALTH_NAME = re.compile(r"^trellis\.[a-z]+\.v1\.[A-Za-z]+Service$")


@dataclass
class Context:
    """What the rules need besides the rendered objects."""

    # Default of server.drain_timeout_ms, ms (read from the platform's source).
    drain_default_ms: int
    # Image names of the base, which an overlay must replace.
    placeholder_images: set = field(default_factory=set)
    # Whether this is a production overlay (stricter image rule).
    production: bool = False


def violations(objects, context):
    """Every broken rule in `objects` (the documents of one rendered overlay)."""
    found = []
    index = _Index(objects)
    for deployment in index.of_kind("Deployment"):
        found += _deployment(deployment, index, context)
    for secret in index.of_kind("Secret"):
        if secret.get("data") or secret.get("stringData"):
            found.append(f"{_name(secret)}: a Secret with data in the manifests")
    if not any(_is_default_deny(p) for p in index.of_kind("NetworkPolicy")):
        found.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress)")
    return found


class _Index:
    def __init__(self, objects):
        self.objects = [o for o in objects if isinstance(o, dict)]

    def of_kind(self, kind):
        return [o for o in self.objects if o.get("kind") == kind]

    def named(self, kind, name):
        return next((o for o in self.of_kind(kind) if _meta(o).get("name") == name), None)


def _meta(obj):
    return obj.get("metadata") or {}


def _name(obj):
    return f"{obj.get('kind')}/{_meta(obj).get('name')}"


def selects(selector, labels):
    """Whether a Service/PDB selector (a map, or a LabelSelector with matchLabels) picks
    pods labelled `labels`."""
    if not selector:
        return False
    match = selector["matchLabels"] if "matchLabels" in selector else selector
    return all(labels.get(k) == v for k, v in match.items())


def _is_default_deny(policy):
    spec = policy.get("spec") or {}
    return (
        spec.get("podSelector") in ({}, None)
        and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def _deployment(deployment, index, context):
    found = []
    name = _name(deployment)
    spec = deployment.get("spec") or {}
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    pod = template.get("spec") or {}
    service = labels.get("app.kubernetes.io/name", "")

    if "replicas" in spec:
        found.append(f"{name}: sets replicas, which its HorizontalPodAutoscaler owns")
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    if rolling.get("maxUnavailable") != 0:
        found.append(f"{name}: rollingUpdate.maxUnavailable is not 0")
    keys = {c.get("topologyKey") for c in pod.get("topologySpreadConstraints") or []}
    for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
        if key not in keys:
            found.append(f"{name}: no topologySpreadConstraint on {key}")
    if pod.get("automountServiceAccountToken") is not False:
        found.append(f"{name}: automountServiceAccountToken is not false")

    found += _companions(deployment, labels, index)
    found += _annotations(name, template, pod)

    grace = pod.get("terminationGracePeriodSeconds", 30)
    for container in pod.get("containers") or []:
        where = f"{name} container {container.get('name')}"
        env = _environment(container, index)
        tls = bool(env.get(f"TRELLIS_{service.upper()}__TLS__CERT"))
        found += _http_probes(where, container) if tls else _probes(where, container)
        found += _resources(where, container)
        found += _security(where, pod, container)
        found += _image(where, container, context)
        found += _ports(where, container)
        found += _secrets(where, container)
        found += _settings(where, service, env, container, index)
        found += _shutdown(where, container, env, grace, service, context)
    return found


def _companions(deployment, labels, index):
    """The PDB, HPA and Services every Deployment needs."""
    found = []
    name = _name(deployment)
    own = _meta(deployment).get("name")
    if not any(
        selects((p.get("spec") or {}).get("selector"), labels)
        for p in index.of_kind("PodDisruptionBudget")
    ):
        found.append(f"{name}: no PodDisruptionBudget selects its pods")
    hpas = [
        h
        for h in index.of_kind("HorizontalPodAutoscaler")
        if ((h.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == own
        and ((h.get("spec") or {}).get("scaleTargetRef") or {}).get("kind") == "Deployment"
    ]
    if not hpas:
        found.append(f"{name}: no HorizontalPodAutoscaler targets it")
    for hpa in hpas:
        if hpa.get("apiVersion") != "autoscaling/v2":
            found.append(f"{_name(hpa)}: not autoscaling/v2")
        resources = {
            ((m.get("resource") or {}).get("name"))
            for m in (hpa.get("spec") or {}).get("metrics") or []
            if m.get("type") == "Resource"
        }
        for resource in ("cpu", "memory"):
            if resource not in resources:
                found.append(f"{_name(hpa)}: does not scale on {resource}")
    services = [
        s for s in index.of_kind("Service") if selects((s.get("spec") or {}).get("selector"), labels)
    ]
    if not any((s.get("spec") or {}).get("clusterIP") == "None" for s in services):
        found.append(f"{name}: no headless Service (clusterIP: None) selects its pods")
    if not any(
        (s.get("spec") or {}).get("clusterIP") != "None"
        and any(p.get("appProtocol") == "grpc" for p in (s.get("spec") or {}).get("ports") or [])
        for s in services
    ):
        found.append(f"{name}: no ClusterIP Service with an appProtocol grpc port selects its pods")
    return found


def _annotations(name, template, pod):
    """Prometheus's scrape annotations, on the metrics port."""
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    found = []
    for key in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"):
        if key not in annotations:
            found.append(f"{name}: no {key} annotation")
    metrics_ports = {
        str(p.get("containerPort"))
        for c in pod.get("containers") or []
        for p in c.get("ports") or []
        if p.get("name") == "metrics"
    }
    port = annotations.get("prometheus.io/port")
    if port is not None and port not in metrics_ports:
        found.append(f"{name}: prometheus.io/port {port} is not a port named metrics")
    return found


def _grpc_port(container):
    return next(
        (p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == "grpc"),
        None,
    )


def _probes(where, container):
    found = []
    grpc_port = _grpc_port(container)
    for probe_name in PROBES:
        probe = container.get(probe_name)
        if not probe:
            found.append(f"{where}: no {probe_name}")
            continue
        grpc = probe.get("grpc")
        if not grpc:
            found.append(f"{where}: {probe_name} is not a native gRPC probe (grpc:)")
            continue
        if grpc.get("port") != grpc_port:
            found.append(f"{where}: {probe_name} is not on the port named grpc ({grpc_port})")
        health = grpc.get("service", "")
        if probe_name == "readinessProbe":
            if health != "" and not HEALTH_NAME.match(health):
                found.append(
                    f"{where}: readinessProbe asks {health!r}, not the service's own name or \"\""
                )
        elif health != LIVENESS_HEALTH_NAME:
            found.append(
                f"{where}: {probe_name} asks {health!r}, not {LIVENESS_HEALTH_NAME!r} "
                "(it would fail while the database is down)"
            )
    return found


def _http_probes(where, container):
    """Probes of a container whose gRPC port speaks TLS: the kubelet's gRPC probes speak
    plaintext only, so HTTP probes on the plaintext metrics port."""
    found = []
    metrics = {"metrics"} | {
        p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == "metrics"
    }
    for probe_name, path in HTTP_PROBE_PATHS.items():
        probe = container.get(probe_name)
        if not probe:
            found.append(f"{where}: no {probe_name}")
            continue
        if "grpc" in probe:
            found.append(f"{where}: {probe_name} is a gRPC probe, which cannot speak TLS")
            continue
        http = probe.get("httpGet")
        if not http:
            found.append(f"{where}: {probe_name} is not an HTTP probe (httpGet:) on metrics")
            continue
        if http.get("port") not in metrics or http.get("scheme", "HTTP") != "HTTP":
            found.append(f"{where}: {probe_name} is not on the plaintext port named metrics")
        if http.get("path") != path:
            found.append(f"{where}: {probe_name} asks {http.get('path')!r}, not {path!r}")
    return found


def _resources(where, container):
    resources = container.get("resources") or {}
    return [
        f"{where}: no resources.{kind}.{resource}"
        for kind in ("requests", "limits")
        for resource in ("cpu", "memory")
        if resource not in (resources.get(kind) or {})
    ]


def _security(where, pod, container):
    found = []
    pod_context = pod.get("securityContext") or {}
    own = container.get("securityContext") or {}

    def effective(key):
        return own.get(key, pod_context.get(key))

    expected = {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
    }
    for key, value in expected.items():
        if effective(key) != value:
            found.append(f"{where}: securityContext.{key} is not {value}")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        found.append(f"{where}: securityContext.seccompProfile is not RuntimeDefault")
    if own.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}: securityContext.allowPrivilegeEscalation is not false")
    if own.get("readOnlyRootFilesystem") is not True:
        found.append(f"{where}: securityContext.readOnlyRootFilesystem is not true")
    if "ALL" not in ((own.get("capabilities") or {}).get("drop") or []):
        found.append(f"{where}: securityContext.capabilities.drop does not include ALL")
    return found


def _image(where, container, context):
    image = container.get("image") or ""
    found = []
    if image in context.placeholder_images:
        found.append(f"{where}: image {image!r} is the base's placeholder, not set by the overlay")
    if context.production:
        repository, _, tag = image.rpartition(":")
        has_tag = bool(repository) and "/" not in tag
        if "@sha256:" not in image and (not has_tag or tag == "latest"):
            found.append(f"{where}: image {image!r} has no fixed tag or digest")
    return found


def _ports(where, container):
    return [
        f"{where}: port {p.get('containerPort')} has no name"
        for p in container.get("ports") or []
        if not p.get("name")
    ]


def _secrets(where, container):
    return [
        f"{where}: {e.get('name')} is inlined (value:), not taken from a Secret"
        for e in container.get("env") or []
        if "value" in e and any(word in e.get("name", "").upper() for word in SECRET_WORDS)
    ]


def _environment(container, index):
    """The container's variables: its ConfigMaps' (envFrom) under its own env entries'
    literal values; variables from Secrets or fields map to None."""
    env = {}
    for source in container.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        config_map = index.named("ConfigMap", ref) if ref else None
        env.update((config_map or {}).get("data") or {})
    for entry in container.get("env") or []:
        env[entry.get("name")] = entry.get("value")
    return env


def _settings(where, service, env, container, index):
    found = []
    prefix = f"TRELLIS_{service.upper()}__"
    for variable, value in env.items():
        if variable.startswith("TRELLIS_") and not variable.startswith(prefix):
            found.append(f"{where}: {variable} is not one of this service's ({prefix}…)")
        if variable.endswith("__LOCAL_DEVELOPMENT") and str(value).lower() != "false":
            found.append(f"{where}: {variable} is not false")
    # $(VAR) in a value expands only variables defined before it in `env`.
    defined = set()
    for entry in container.get("env") or []:
        for reference in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", entry.get("value") or ""):
            if reference not in defined:
                found.append(f"{where}: {entry.get('name')} uses $({reference}) before it is defined")
        defined.add(entry.get("name"))
    if env.get(f"{prefix}DISCOVERY__BACKEND") == "dns":
        found += _peers(where, prefix, env, index)
    return found


def _peers(where, prefix, env, index):
    """With DNS discovery every peer address must be a headless Service's port."""
    found = []
    pattern = re.compile(rf"^{re.escape(prefix)}PEERS__([A-Z0-9_]+)__ADDRESSES$")
    for variable, value in env.items():
        if not pattern.match(variable):
            continue
        for address in (value or "").split(","):
            match = re.match(r"^https?://([a-z0-9-]+)\.[^:/]+:(\d+)$", address.strip())
            headless = index.named("Service", match.group(1)) if match else None
            spec = (headless or {}).get("spec") or {}
            ports = {p.get("port") for p in spec.get("ports") or []}
            if not match or spec.get("clusterIP") != "None" or int(match.group(2)) not in ports:
                found.append(f"{where}: {variable} {address!r} is not a headless Service's port")
    return found


def _shutdown(where, container, env, grace, service, context):
    found = []
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "exec" in pre_stop:
        found.append(f"{where}: preStop runs a command, but the image has no shell or tools")
    seconds = (pre_stop.get("sleep") or {}).get("seconds")
    if seconds is None:
        found.append(f"{where}: no preStop sleep (endpoints must drop the pod before SIGTERM)")
        seconds = 0
    drain_ms = int(
        env.get(f"TRELLIS_{service.upper()}__SERVER__DRAIN_TIMEOUT_MS") or context.drain_default_ms
    )
    needed = seconds + drain_ms / 1000 + CLOSE_GRACE_S
    if grace <= needed:
        found.append(
            f"{where}: terminationGracePeriodSeconds {grace} is not longer than preStop "
            f"{seconds} s + drain bound {drain_ms / 1000:g} s + close {CLOSE_GRACE_S} s"
        )
    return found


def main(argv):
    """`policy.py FILE|- [--production] [--drain-default-ms N]`: prints each violation;
    exit 1 when there is any."""
    production = "--production" in argv
    drain = 10_000
    if "--drain-default-ms" in argv:
        drain = int(argv[argv.index("--drain-default-ms") + 1])
    path = next((a for a in argv[1:] if not a.startswith("--") and not a.isdigit()), "-")
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    found = violations(list(yaml.safe_load_all(text)), Context(drain, production=production))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
