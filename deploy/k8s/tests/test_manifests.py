"""The Kubernetes manifests as tests: every overlay renders with `kubectl kustomize`,
validates strictly and offline against Kubernetes's OpenAPI schemas
(`kubernetes-validate`), passes `yamllint` and the policy of `policy.py`; and the policy
is shown to catch what it should, on rendered overlays with a probe, a limit or a
PodDisruptionBudget taken out. Prod's mutual TLS (components/mtls) has checks of its own,
each shown to find a break of what it checks.

Run from anywhere (the README's `cargo xtask test` runs it through xtask):

    python3 deploy/k8s/tests/test_manifests.py -v

A missing tool (kubectl, kubernetes-validate, yamllint) skips what needs it, saying so,
unless the CI variable is set: then it fails. Install the Python tools with
`python3 -m pip install -r deploy/k8s/requirements.txt`.
"""

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# No __pycache__ left in the tree by a test run.
sys.dont_write_bytecode = True

import policy  # noqa: E402  (after the path above)

K8S = os.path.dirname(HERE)
ROOT = os.path.dirname(os.path.dirname(K8S))
OVERLAYS = ("dev", "prod")
# Where the prod overlay is rendered with the optional service-monitor component.
SERVICE_MONITOR_FIXTURE = os.path.join(HERE, "with-service-monitor")
# Where the dev overlay is rendered with the mtls component (prod has it already), in a
# namespace other than the base's.
MTLS_FIXTURE = os.path.join(HERE, "dev-with-mtls")
# The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by
# default from 1.30 (beta; GA in 1.34); native gRPC probes from 1.24 (GA 1.27).
KUBERNETES_VERSION = "1.30.0"
# Kinds without a schema in kubernetes-validate: custom resources.
CRD_KINDS = {"ServiceMonitor", "Certificate", "Issuer", "ClusterIssuer"}
SERVICES = ("user", "auth", "notification")
# The files of a cert-manager Certificate's Secret, by the `tls` setting that names each.
TLS_FILES = {"CERT": "tls.crt", "KEY": "tls.key", "CA": "ca.crt"}
# tls.trust_domain's default (platform/src/tls/config.rs, DEFAULT_TRUST_DOMAIN).
DEFAULT_TRUST_DOMAIN = "trellis.local"


def tool(program, why):
    """The path of `program`, or a skip (a failure under CI) saying what goes unchecked."""
    path = shutil.which(program)
    if path:
        return path
    message = f"`{program}` is not installed: {why} is not checked"
    if os.environ.get("CI"):
        raise AssertionError(f"{message}, and CI is set")
    raise unittest.SkipTest(message)


def run(command):
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


@functools.lru_cache(maxsize=None)
def rendered_text(directory):
    kubectl = tool("kubectl", f"rendering {os.path.relpath(directory, ROOT)}")
    return run([kubectl, "kustomize", directory])


def rendered(directory):
    """A fresh copy of the objects `kubectl kustomize directory` renders."""
    return [o for o in yaml.safe_load_all(rendered_text(directory)) if o]


def overlay(name):
    return os.path.join(K8S, "overlays", name)


# Where the server's settings and their defaults are declared.
SERVER_CONFIG = "platform/src/server/config.rs"


@functools.lru_cache(maxsize=None)
def drain_default_ms():
    """The default of server.drain_timeout_ms, read from the platform's source: a count
    of milliseconds, or a `Duration::from_millis(..)`/`from_secs(..)`."""
    with open(os.path.join(ROOT, SERVER_CONFIG), encoding="utf-8") as source:
        text = source.read()
    match = re.search(
        r"drain_timeout(?:_ms)?:\s*(?:Duration::from_(millis|secs)\()?([\d_]+)\)?,", text
    )
    assert match, f"no drain_timeout_ms default in {SERVER_CONFIG}"
    value = int(match.group(2).replace("_", ""))
    return value * 1000 if match.group(1) == "secs" else value


@functools.lru_cache(maxsize=None)
def placeholder_images():
    """The images the base names, which the overlays must replace."""
    return frozenset(
        c["image"]
        for o in rendered(os.path.join(K8S, "base"))
        if o.get("kind") == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    )


def context(name):
    return policy.Context(drain_default_ms(), set(placeholder_images()), name == "prod")


# Settings whose next level is a key of the user's choosing (a map), not a field.
MAP_SECTIONS = {"peers", "service_clients", "rate_limits"}


@functools.lru_cache(maxsize=None)
def config_fields():
    """Every field name of a deserialized struct in the platform and the services: the
    names a TRELLIS_ variable's levels may use (serde's deny_unknown_fields refuses the
    others at start-up with exit code 78)."""
    names = set()
    for top in ("platform/src", "services"):
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            for file in files:
                if file.endswith(".rs"):
                    with open(os.path.join(directory, file), encoding="utf-8") as source:
                        text = source.read()
                    names.update(re.findall(r"^\s*pub (\w+):", text, re.M))
                    # A field read under another key (`#[serde(rename = "drain_timeout_ms")]
                    # pub drain_timeout: Duration`) answers to that key.
                    names.update(re.findall(r'#\[serde\([^]]*\brename = "(\w+)"', text))
    return names


def unknown_settings(objects):
    """The TRELLIS_ variables of the rendered objects with a level that is no config
    field, as `(variable, level)`."""
    unknown = []
    variables = set()
    for o in objects:
        if o["kind"] == "ConfigMap":
            variables.update(o.get("data") or {})
        if o["kind"] == "Deployment":
            for c in o["spec"]["template"]["spec"]["containers"]:
                variables.update(e["name"] for e in c.get("env") or [])
    for variable in sorted(v for v in variables if v.startswith("TRELLIS_")):
        levels = variable.lower().split("__")[1:]
        for i, level in enumerate(levels):
            if i > 0 and levels[i - 1] in MAP_SECTIONS:
                continue
            if level not in config_fields():
                unknown.append((variable, level))
    return unknown


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects, deployment):
    return find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


# === mutual TLS: each check returns what it finds wrong, naming the object ===


def service_containers(objects):
    """`(Deployment, its service's name, container)` for every service container."""
    for o in objects:
        labels = o["metadata"].get("labels") or {}
        if o["kind"] != "Deployment" or labels.get("app.kubernetes.io/component") != "grpc-service":
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            yield o, labels["app.kubernetes.io/name"], c


def environment(objects, c):
    """The container's literal variables: its ConfigMaps' (envFrom) under its own `env`."""
    env = {}
    for source in c.get("envFrom") or []:
        name = (source.get("configMapRef") or {}).get("name")
        for o in objects:
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name:
                env.update(o.get("data") or {})
    env.update((e["name"], e.get("value")) for e in c.get("env") or [])
    return env


def secret_mounts(deployment, c):
    """`(Secret name, volumeMount)` for each Secret volume the container mounts."""
    secrets = {
        v["name"]: v["secret"].get("secretName")
        for v in deployment["spec"]["template"]["spec"].get("volumes") or []
        if "secret" in v
    }
    return [(secrets[m["name"]], m) for m in c.get("volumeMounts") or [] if m["name"] in secrets]


def tls_mount_problems(objects):
    """Each service container mounts its `<service>-tls` Secret whole (a subPath mount
    never sees a renewal) and read-only, and names its three files in that directory."""
    problems = []
    for deployment, service, c in service_containers(objects):
        where = f"Deployment/{deployment['metadata']['name']}"
        secret = f"{service}-tls"
        mounts = [m for name, m in secret_mounts(deployment, c) if name == secret]
        if not mounts:
            problems.append(f"{where}: Secret {secret} is not mounted as a volume")
        for m in mounts:
            if m.get("subPath") or m.get("subPathExpr"):
                problems.append(f"{where}: Secret {secret} is mounted by subPath, never updated")
            if not m.get("readOnly"):
                problems.append(f"{where}: Secret {secret} is mounted writable")
        directories = [m["mountPath"].rstrip("/") for m in mounts if not m.get("subPath")]
        env = environment(objects, c)
        for setting, file in TLS_FILES.items():
            variable = f"TRELLIS_{service.upper()}__TLS__{setting}"
            if env.get(variable) not in [f"{d}/{file}" for d in directories]:
                value = env.get(variable)
                problems.append(f"{where}: {variable} {value!r} is not {secret}'s {file}")
    return problems


def spiffe_problems(objects):
    """Each workload Certificate (not a CA) is mounted by a service, usable as server and
    as client, and carries one URI SAN: the SPIFFE ID the service's pods claim, from
    their tls settings (which must name the pod's own namespace) and ServiceAccount."""
    problems = []
    certificates = [o for o in objects if o["kind"] == "Certificate" and not o["spec"].get("isCA")]
    issued = {c["spec"]["secretName"] for c in certificates}
    mounted_by = {}
    for deployment, service, c in service_containers(objects):
        for secret, _ in secret_mounts(deployment, c):
            mounted_by.setdefault(secret, []).append((deployment, service, c))
        if f"{service}-tls" not in issued:
            problems.append(
                f"Deployment/{deployment['metadata']['name']}: no Certificate issues {service}-tls"
            )
    for certificate in certificates:
        where = f"Certificate/{certificate['metadata']['name']}"
        spec = certificate["spec"]
        for usage in ("server auth", "client auth"):
            if usage not in (spec.get("usages") or []):
                problems.append(f"{where}: no {usage} usage")
        if spec["secretName"] not in mounted_by:
            problems.append(f"{where}: Secret {spec['secretName']} is mounted by no service")
        for deployment, service, c in mounted_by.get(spec["secretName"], []):
            pod = deployment["spec"]["template"]["spec"]
            namespace = deployment["metadata"].get("namespace")
            settings = environment(objects, c)
            prefix = f"TRELLIS_{service.upper()}__TLS__"
            trust_domain = settings.get(f"{prefix}TRUST_DOMAIN") or DEFAULT_TRUST_DOMAIN
            expected = f"spiffe://{trust_domain}/ns/{namespace}/sa/{pod.get('serviceAccountName')}"
            if spec.get("uris") != [expected]:
                problems.append(f"{where}: URI SANs {spec.get('uris')} are not [{expected!r}]")
            # The namespace the service expects in IDs: the pod's, literally or from the
            # downward API.
            from_pod = [
                f"$({e['name']})"
                for e in c.get("env") or []
                if ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                == "metadata.namespace"
            ]
            claimed = settings.get(f"{prefix}NAMESPACE")
            if claimed not in [namespace] + from_pod:
                problems.append(
                    f"Deployment/{deployment['metadata']['name']}: {prefix}NAMESPACE {claimed!r}"
                    f" is not the pod's namespace {namespace!r}"
                )
    return problems


def peer_addresses(objects):
    """`(Deployment name, variable, address)` for every peer address of every service."""
    return [
        (deployment["metadata"]["name"], variable, address.strip())
        for deployment, service, c in service_containers(objects)
        for variable, value in environment(objects, c).items()
        if re.match(rf"^TRELLIS_{service.upper()}__PEERS__[A-Z0-9_]+__ADDRESSES$", variable)
        for address in (value or "").split(",")
    ]


def plaintext_peers(objects):
    """The peer addresses that are not TLS."""
    return [a for a in peer_addresses(objects) if not a[2].startswith("https://")]


def grpc_probes(objects):
    """`(Deployment name, probe)` for every gRPC probe of a service container."""
    return [
        (deployment["metadata"]["name"], probe)
        for deployment, _, c in service_containers(objects)
        for probe in policy.PROBES
        if "grpc" in (c.get(probe) or {})
    ]


def issuer_problems(objects):
    """Each Certificate's issuer is rendered (an Issuer in its namespace, or a
    ClusterIssuer), and a CA Issuer's key pair is a CA Certificate's Secret: no
    Certificate waits for an issuer nobody applies."""
    problems = []
    for certificate in (o for o in objects if o["kind"] == "Certificate"):
        where = f"Certificate/{certificate['metadata']['name']}"
        namespace = certificate["metadata"].get("namespace")
        ref = certificate["spec"].get("issuerRef") or {}
        kind = ref.get("kind", "Issuer")
        issuer = next(
            (
                o
                for o in objects
                if o["kind"] == kind
                and o["apiVersion"].split("/")[0] == ref.get("group", "cert-manager.io")
                and o["metadata"]["name"] == ref.get("name")
                and (kind == "ClusterIssuer" or o["metadata"].get("namespace") == namespace)
            ),
            None,
        )
        if issuer is None:
            problems.append(f"{where}: its issuer {kind}/{ref.get('name')} is not rendered")
            continue
        ca_secret = (issuer["spec"].get("ca") or {}).get("secretName")
        if ca_secret and not any(
            o["kind"] == "Certificate"
            and o["spec"].get("isCA")
            and o["spec"].get("secretName") == ca_secret
            and o["metadata"].get("namespace") == issuer["metadata"].get("namespace")
            for o in objects
        ):
            problems.append(f"{where}: {kind}/{ref['name']}'s CA {ca_secret} has no Certificate")
    return problems


# === rendering and schemas ===


class Rendering(unittest.TestCase):
    def test_every_overlay_renders_every_service(self):
        for name in OVERLAYS:
            with self.subTest(overlay=name):
                objects = rendered(overlay(name))
                kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
                for service in SERVICES:
                    for kind, object_name in (
                        ("Deployment", service),
                        ("ServiceAccount", service),
                        ("Service", service),
                        ("Service", f"{service}-headless"),
                        ("PodDisruptionBudget", service),
                        ("HorizontalPodAutoscaler", service),
                        ("NetworkPolicy", service),
                    ):
                        self.assertIn((kind, object_name), kinds)
                namespaced = [o for o in objects if o["kind"] != "Namespace"]
                self.assertEqual(
                    {o["metadata"].get("namespace") for o in namespaced},
                    {"trellis-dev" if name == "dev" else "trellis"},
                )

    def test_overlays_validate_strictly_against_the_kubernetes_schemas_offline(self):
        validate = tool("kubernetes-validate", "the OpenAPI schemas")
        fixtures = [SERVICE_MONITOR_FIXTURE, MTLS_FIXTURE]
        for directory in [overlay(n) for n in OVERLAYS] + fixtures:
            with self.subTest(overlay=os.path.relpath(directory, K8S)):
                objects = rendered(directory)
                # A custom resource has no schema in kubernetes-validate (it ships the
                # built-in API's only); the ServiceMonitor and cert-manager's objects are
                # checked by their own tests below instead.
                builtin = [o for o in objects if o["kind"] not in CRD_KINDS]
                with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
                    yaml.safe_dump_all(builtin, out)
                try:
                    run([validate, "--strict", "--quiet", "-k", KUBERNETES_VERSION, out.name])
                finally:
                    os.unlink(out.name)

    def test_the_schema_check_rejects_an_unknown_field(self):
        validate = tool("kubernetes-validate", "the OpenAPI schemas")
        objects = rendered(overlay("prod"))
        container(objects, "user")["securityContext"]["readOnlyRootFilesytem"] = True
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
            yaml.safe_dump_all(objects, out)
        try:
            result = subprocess.run(
                [validate, "--strict", "--quiet", "-k", KUBERNETES_VERSION, out.name],
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            os.unlink(out.name)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("readOnlyRootFilesytem", result.stdout + result.stderr)

    def test_yaml_passes_yamllint(self):
        yamllint = tool("yamllint", "YAML style")
        run([yamllint, "--strict", "-c", os.path.join(K8S, ".yamllint"), K8S])


# === the policy on every overlay ===


class Policy(unittest.TestCase):
    def test_every_overlay_keeps_the_policy(self):
        for name in OVERLAYS:
            with self.subTest(overlay=name):
                self.assertEqual(policy.violations(rendered(overlay(name)), context(name)), [])

    def test_every_setting_names_config_fields(self):
        for name in OVERLAYS:
            with self.subTest(overlay=name):
                self.assertEqual(unknown_settings(rendered(overlay(name))), [])

    def test_a_mistyped_setting_is_found(self):
        objects = rendered(overlay("dev"))
        container(objects, "auth")["env"].append(
            {"name": "TRELLIS_AUTH__SERVER__DRAIN_TIMEOUT_MSS", "value": "1"}
        )
        self.assertEqual(
            unknown_settings(objects), [("TRELLIS_AUTH__SERVER__DRAIN_TIMEOUT_MSS", "drain_timeout_mss")]
        )

    def test_the_base_alone_fails_for_its_placeholder_images(self):
        objects = rendered(os.path.join(K8S, "base"))
        found = policy.violations(objects, context("prod"))
        for service in SERVICES:
            self.assertTrue(
                any(f"Deployment/{service}" in v and "placeholder" in v for v in found), found
            )

    def test_the_dev_postgres_databases_are_those_of_the_compose_init_script(self):
        init = find(rendered(overlay("dev")), "ConfigMap", "postgres-init")["data"]
        with open(os.path.join(ROOT, "deploy/postgres-init.sql"), encoding="utf-8") as source:
            expected = source.read()
        self.assertEqual(init["10-databases.sql"], expected)

    def test_the_service_monitor_scrapes_each_service_under_its_job(self):
        objects = rendered(SERVICE_MONITOR_FIXTURE)
        monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
        self.assertEqual(len(monitors), 1)
        spec = monitors[0]["spec"]
        # The rules and the dashboard select job="user|auth|notification".
        self.assertEqual(spec["jobLabel"], "app.kubernetes.io/name")
        ports = {e["port"] for e in spec["endpoints"]}
        for service in SERVICES:
            with self.subTest(service=service):
                scraped = [
                    s
                    for s in objects
                    if s["kind"] == "Service"
                    and s["metadata"]["labels"].get("app.kubernetes.io/name") == service
                    and policy.selects(spec["selector"], s["metadata"]["labels"])
                    and any(p["name"] in ports for p in s["spec"]["ports"])
                ]
                # Exactly one Service per service has the port: each pod is one target.
                self.assertEqual([s["metadata"]["name"] for s in scraped], [f"{service}-headless"])
                pod = find(objects, "Deployment", service)["spec"]["template"]["metadata"]
                # Not scraped twice: the annotation-based job is told to leave the pod.
                self.assertEqual(pod["annotations"]["prometheus.io/scrape"], "false")
        self.assertEqual(policy.violations(objects, context("prod")), [])

    def test_scrape_annotations_match_the_kubernetes_prometheus_config(self):
        with open(
            os.path.join(ROOT, "deploy/observability/prometheus/prometheus.kubernetes.yml"),
            encoding="utf-8",
        ) as source:
            config = source.read()
        for needed in (
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
            "__meta_kubernetes_pod_annotation_prometheus_io_port",
            "__meta_kubernetes_pod_annotation_prometheus_io_path",
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
        ):
            self.assertIn(needed, config)
        objects = rendered(overlay("prod"))
        for service in SERVICES:
            with self.subTest(service=service):
                pod = find(objects, "Deployment", service)["spec"]["template"]["metadata"]
                self.assertEqual(pod["annotations"]["prometheus.io/scrape"], "true")
                self.assertEqual(pod["labels"]["app.kubernetes.io/name"], service)


# === mutual TLS between the services ===


class MutualTls(unittest.TestCase):
    """Prod runs every hop between the services over mutual TLS with cert-manager's
    certificates (components/mtls), as does dev with the component (MTLS_FIXTURE) in a
    namespace of its own. The last tests show each check finds what it looks for."""

    def test_prod_mounts_each_services_tls_secret_whole_and_reads_its_files_from_it(self):
        self.assertEqual(tls_mount_problems(rendered(overlay("prod"))), [])

    def test_certificates_carry_the_spiffe_id_of_the_pods_namespace_and_account(self):
        for directory in (overlay("prod"), MTLS_FIXTURE):
            with self.subTest(overlay=os.path.relpath(directory, K8S)):
                objects = rendered(directory)
                # One per service and the CA.
                certificates = [o for o in objects if o["kind"] == "Certificate"]
                self.assertEqual(len(certificates), len(SERVICES) + 1)
                self.assertEqual(spiffe_problems(objects), [])

    def test_no_peer_address_in_prod_is_plaintext(self):
        objects = rendered(overlay("prod"))
        # user → auth, notification; auth → user, notification; notification → auth.
        self.assertEqual(len(peer_addresses(objects)), 5)
        self.assertEqual(plaintext_peers(objects), [])

    def test_no_probe_in_prod_is_a_grpc_probe(self):
        # The kubelet's gRPC probes speak plaintext only: they would fail on a TLS port.
        self.assertEqual(grpc_probes(rendered(overlay("prod"))), [])

    def test_prod_certificates_reference_issuers_it_renders(self):
        self.assertEqual(issuer_problems(rendered(overlay("prod"))), [])

    def test_dev_with_the_component_passes_every_check(self):
        objects = rendered(MTLS_FIXTURE)
        self.assertEqual(policy.violations(objects, context("dev")), [])
        self.assertEqual(unknown_settings(objects), [])
        for check in (tls_mount_problems, grpc_probes, issuer_problems, plaintext_peers):
            self.assertEqual(check(objects), [], check.__name__)

    def test_a_sub_path_mount_and_a_file_outside_the_secret_are_found(self):
        objects = rendered(overlay("prod"))
        container(objects, "user")["volumeMounts"][0]["subPath"] = "tls.crt"
        ca = next(e for e in container(objects, "auth")["env"] if e["name"].endswith("TLS__CA"))
        ca["value"] = "/etc/ssl/certs/ca.crt"
        found = tls_mount_problems(objects)
        for problem in (
            "Deployment/user: Secret user-tls is mounted by subPath, never updated",
            "Deployment/auth: TRELLIS_AUTH__TLS__CA '/etc/ssl/certs/ca.crt' is not auth-tls's ca.crt",
        ):
            self.assertIn(problem, found)

    def test_a_spiffe_id_of_another_namespace_or_account_and_a_missing_usage_are_found(self):
        objects = rendered(overlay("prod"))
        auth = find(objects, "Certificate", "auth")["spec"]
        auth["uris"] = ["spiffe://trellis.local/ns/default/sa/auth"]
        notification = find(objects, "Deployment", "notification")["spec"]["template"]["spec"]
        notification["serviceAccountName"] = "default"
        find(objects, "Certificate", "user")["spec"]["usages"].remove("client auth")
        found = spiffe_problems(objects)
        for words in (
            ("Certificate/auth", "ns/default/sa/auth", "ns/trellis/sa/auth"),
            ("Certificate/notification", "ns/trellis/sa/default"),
            ("Certificate/user", "no client auth usage"),
        ):
            self.assertTrue(any(all(w in p for w in words) for p in found), (words, found))

    def test_a_plaintext_peer_is_found(self):
        objects = rendered(overlay("prod"))
        env = container(objects, "notification")["env"]
        peer = next(e for e in env if e["name"] == "TRELLIS_NOTIFICATION__PEERS__AUTH__ADDRESSES")
        peer["value"] = peer["value"].replace("https://", "http://")
        self.assertEqual(plaintext_peers(objects), [("notification", peer["name"], peer["value"])])

    def test_a_grpc_probe_is_found(self):
        objects = rendered(overlay("prod"))
        container(objects, "auth")["readinessProbe"] = {"grpc": {"port": 50052}}
        self.assertEqual(grpc_probes(objects), [("auth", "readinessProbe")])

    def test_an_issuer_not_rendered_and_a_ca_without_its_certificate_are_found(self):
        objects = rendered(overlay("prod"))
        find(objects, "Certificate", "user")["spec"]["issuerRef"]["name"] = "vault"
        objects.remove(find(objects, "Certificate", "trellis-ca"))
        found = issuer_problems(objects)
        for problem in (
            "Certificate/user: its issuer Issuer/vault is not rendered",
            "Certificate/auth: Issuer/trellis-ca's CA trellis-ca has no Certificate",
        ):
            self.assertIn(problem, found)


# === the policy catches what it should ===


class PolicyCatches(unittest.TestCase):
    """Each test breaks one rule in a rendered overlay and expects the policy to name it."""

    def assertViolation(self, objects, *words, overlay_name="dev"):
        found = policy.violations(objects, context(overlay_name))
        self.assertTrue(
            any(all(word in line for word in words) for line in found),
            f"no violation naming {words}; found: {found}",
        )

    def test_a_missing_readiness_probe(self):
        objects = rendered(overlay("dev"))
        del container(objects, "user")["readinessProbe"]
        self.assertViolation(objects, "Deployment/user", "no readinessProbe")

    def test_a_liveness_probe_that_follows_the_database(self):
        objects = rendered(overlay("dev"))
        container(objects, "auth")["livenessProbe"]["grpc"]["service"] = "trellis.auth.v1.AuthService"
        self.assertViolation(objects, "Deployment/auth", "livenessProbe", "'liveness'")

    def test_an_http_probe_instead_of_grpc(self):
        objects = rendered(overlay("dev"))
        container(objects, "notification")["startupProbe"] = {"tcpSocket": {"port": 50053}}
        self.assertViolation(objects, "Deployment/notification", "startupProbe", "gRPC")

    def test_a_grpc_probe_on_a_tls_port_and_an_http_probe_on_the_wrong_path(self):
        objects = rendered(overlay("prod"))
        container(objects, "user")["livenessProbe"] = {"grpc": {"port": 50051}}
        container(objects, "auth")["readinessProbe"]["httpGet"]["path"] = "/livez"
        self.assertViolation(
            objects, "Deployment/user", "livenessProbe", "cannot speak TLS", overlay_name="prod"
        )
        self.assertViolation(
            objects, "Deployment/auth", "readinessProbe", "not '/readyz'", overlay_name="prod"
        )

    def test_a_missing_memory_limit(self):
        objects = rendered(overlay("dev"))
        del container(objects, "user")["resources"]["limits"]["memory"]
        self.assertViolation(objects, "Deployment/user", "resources.limits.memory")

    def test_a_missing_pod_disruption_budget(self):
        objects = rendered(overlay("prod"))
        objects.remove(find(objects, "PodDisruptionBudget", "auth"))
        self.assertViolation(objects, "Deployment/auth", "PodDisruptionBudget", overlay_name="prod")

    def test_a_missing_autoscaler_and_a_replica_count(self):
        objects = rendered(overlay("prod"))
        objects.remove(find(objects, "HorizontalPodAutoscaler", "user"))
        find(objects, "Deployment", "user")["spec"]["replicas"] = 3
        self.assertViolation(objects, "Deployment/user", "HorizontalPodAutoscaler", overlay_name="prod")
        self.assertViolation(objects, "Deployment/user", "replicas", overlay_name="prod")

    def test_a_missing_headless_service(self):
        objects = rendered(overlay("dev"))
        objects.remove(find(objects, "Service", "notification-headless"))
        self.assertViolation(objects, "Deployment/notification", "headless")
        # And the peers addressed at it.
        self.assertViolation(objects, "Deployment/user", "NOTIFICATION__ADDRESSES")

    def test_a_root_user_and_a_writable_root(self):
        objects = rendered(overlay("dev"))
        find(objects, "Deployment", "user")["spec"]["template"]["spec"]["securityContext"][
            "runAsUser"
        ] = 0
        del container(objects, "user")["securityContext"]["readOnlyRootFilesystem"]
        self.assertViolation(objects, "Deployment/user", "runAsUser")
        self.assertViolation(objects, "Deployment/user", "readOnlyRootFilesystem")

    def test_a_grace_period_shorter_than_pre_stop_and_drain(self):
        objects = rendered(overlay("dev"))
        find(objects, "Deployment", "auth")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ] = 20
        self.assertViolation(objects, "Deployment/auth", "terminationGracePeriodSeconds 20")

    def test_a_longer_drain_bound_in_the_config_map(self):
        objects = rendered(overlay("dev"))
        config_map = next(
            o
            for o in objects
            if o["kind"] == "ConfigMap" and "TRELLIS_USER__SERVER__DRAIN_TIMEOUT_MS" in o.get("data", {})
        )
        config_map["data"]["TRELLIS_USER__SERVER__DRAIN_TIMEOUT_MS"] = "25000"
        self.assertViolation(objects, "Deployment/user", "drain bound 25 s")

    def test_an_inlined_secret_and_a_secret_object(self):
        objects = rendered(overlay("prod"))
        env = container(objects, "user")["env"]
        url = next(e for e in env if e["name"] == "TRELLIS_USER__DATABASE__URL")
        url.pop("valueFrom")
        url["value"] = "postgres://trellis:hunter2@db/trellis_user"
        objects.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "dg=="}}
        )
        self.assertViolation(objects, "Deployment/user", "DATABASE__URL", "inlined", overlay_name="prod")
        self.assertViolation(objects, "Secret/x", "data", overlay_name="prod")

    def test_a_latest_image_in_prod_and_the_base_placeholder(self):
        objects = rendered(overlay("prod"))
        container(objects, "user")["image"] = "registry.example.com/trellis/user-service:latest"
        container(objects, "auth")["image"] = "auth-service"
        self.assertViolation(objects, "Deployment/user", "fixed tag", overlay_name="prod")
        self.assertViolation(objects, "Deployment/auth", "placeholder", overlay_name="prod")

    def test_an_unnamed_port_and_another_services_setting(self):
        objects = rendered(overlay("dev"))
        user = container(objects, "user")
        user["ports"].append({"containerPort": 9000})
        user["env"].append({"name": "TRELLIS_AUTH__TELEMETRY__LOG_FORMAT", "value": "json"})
        self.assertViolation(objects, "Deployment/user", "port 9000 has no name")
        self.assertViolation(objects, "Deployment/user", "TRELLIS_AUTH__TELEMETRY__LOG_FORMAT")

    def test_a_missing_default_deny_policy(self):
        objects = rendered(overlay("dev"))
        objects.remove(find(objects, "NetworkPolicy", "default-deny"))
        self.assertViolation(objects, "default-deny")


if __name__ == "__main__":
    unittest.main()
