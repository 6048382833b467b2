"""The deployment files, each checked with a real parser, renderer or validator that the test
extras install (nothing here relies on a docker or kubectl this machine happens to have):

- Dockerfile: parsed by dockerfile-parse. Checked: the CPU/CUDA stages the GPU build argument
  picks, that the compilers stay in the build stage, the non-root user, EMBER_HOME a volume,
  EMBER_HOST on 0.0.0.0 at the EXPOSEd port (ember's default), `ember serve` as the command,
  and the HEALTHCHECK's own command run against a real ember server (it passes) and a dead
  port (it fails). A real `docker build` runs only with EMBER_TEST_DOCKER_BUILD=1 and a docker
  daemon (it needs the network for base images and pip).
- docker-compose.yml: validated against the compose-spec JSON schema that check-jsonschema
  ships; then its structure (a gateway, three nodes with edge/cloud labels, Redis, the join
  token from the environment, only the gateway published), and every service's environment
  and the gateway's ember.toml read by ember's own Settings, [fleet] and gateway loaders.
  `docker compose config` runs too where the compose plugin is installed.
- deploy/helm/ember: `helm lint --strict` and `helm template` through helm-python-sdk (Helm's
  Go SDK in a wheel); every rendered manifest validated by kubernetes-validate against the
  Kubernetes 1.30 schemas (strict: unknown fields fail); bad values refused by the chart's
  values.schema.json, each naming the value; then the structure (node StatefulSets
  with a volumeClaimTemplate at EMBER_HOME, headless Services, the gateway Deployment, the
  Secret the token comes from, the ConfigMap's ember.toml read by ember's loaders, probes on
  /health at the container's port), with the default values and with overrides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ember.config import DEFAULT_PORT, Settings
from ember.fleet.config import load_fleet_config
from ember.gateway.config import load_gateway_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ember"
KUBE_VERSION = "1.30.0"
ServerHandle = Any  # tests/conftest.py's


# ------------------------------------------------------------------------------ Dockerfile


def _dockerfile() -> Any:
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def _stages(structure: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(the FROM line's value, its instructions) per stage."""
    stages: list[tuple[str, list[dict[str, Any]]]] = []
    for item in structure:
        if item["instruction"] == "FROM":
            stages.append((item["value"], []))
        elif stages:
            stages[-1][1].append(item)
    return stages


def test_dockerfile_stages_user_volume_port_and_command() -> None:
    parser = _dockerfile()
    stages = _stages(parser.structure)
    names = {value.split(" AS ")[-1].strip() for value, _ in stages if " AS " in value}
    assert {"build-cpu", "build-cuda", "runtime-cpu", "runtime-cuda", "build"} <= names
    # GPU=cpu by default; the build and final stages are picked by it.
    args = [i["value"] for i in parser.structure if i["instruction"] == "ARG"]
    assert "GPU=cpu" in args
    assert stages[-2][0] == "build-${GPU} AS build" and stages[-1][0] == "runtime-${GPU}"
    cuda_stage = next(items for value, items in stages if value.endswith("AS build-cuda"))
    cuda = next(i for i in cuda_stage if i["instruction"] == "ENV")
    assert "-DGGML_CUDA=on" in cuda["value"]
    final = stages[-1][1]

    def values(instruction: str) -> list[str]:
        return [i["value"] for i in final if i["instruction"] == instruction]

    # Multi-stage: the final image copies the venv; it installs no compiler.
    assert any("--from=build /opt/ember" in v for v in values("COPY"))
    runtimes = [items for value, items in stages if value.split(" AS ")[-1] in ("runtime-cpu", "runtime-cuda")]
    for items in runtimes:
        for item in items:
            assert not re.search(r"build-essential|cmake|gcc|python3-dev", item["value"]), item
    assert values("USER") == ["ember"]
    assert any("useradd" in v for v in values("RUN"))
    env = parser.envs  # the final stage's environment
    assert env["EMBER_HOME"] == "/data" and json.loads(values("VOLUME")[0]) == ["/data"]
    host = Settings(host=env["EMBER_HOST"])
    assert host.bind == ("0.0.0.0", DEFAULT_PORT)
    assert values("EXPOSE") == [str(DEFAULT_PORT)]
    assert json.loads(values("ENTRYPOINT")[0]) == ["ember"] and json.loads(values("CMD")[0]) == ["serve"]
    assert "/health" in values("HEALTHCHECK")[0]


def _healthcheck_argv() -> list[str]:
    value = next(i["value"] for i in _dockerfile().structure if i["instruction"] == "HEALTHCHECK")
    exec_form = value[value.index("CMD") + 3 :].strip()
    argv = json.loads(exec_form)
    assert argv[0] == "python3"
    return [sys.executable, *argv[1:]]


def test_the_healthcheck_passes_on_a_live_server_and_fails_on_a_dead_one(server: ServerHandle) -> None:
    """The HEALTHCHECK's own command, run as Docker would (exit 0 = healthy), at EMBER_HOST."""
    env = {**os.environ, "EMBER_HOST": server.host}
    env.pop("EMBER_CONFIG", None)
    ok = subprocess.run(_healthcheck_argv(), env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run(_healthcheck_argv(), env={**env, "EMBER_HOST": "127.0.0.1:9"}, capture_output=True,
                          text=True, timeout=60)
    assert dead.returncode != 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EMBER_TEST_DOCKER_BUILD") != "1" or shutil.which("docker") is None,
                    reason="a real image build: set EMBER_TEST_DOCKER_BUILD=1 (needs docker and the network)")
def test_the_image_builds() -> None:
    built = subprocess.run(["docker", "build", "-t", "ember:test", str(ROOT)], capture_output=True, text=True,
                           timeout=3600)
    assert built.returncode == 0, built.stderr[-4000:]
    version = subprocess.run(["docker", "run", "--rm", "ember:test", "version"], capture_output=True, text=True,
                             timeout=120)
    assert "ember version" in version.stdout, version.stderr


# ---------------------------------------------------------------------------- docker compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The validator is real: a misspelt key fails it.
    broken = _compose()
    broken["services"]["gateway"]["enviroment"] = {}
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    refused = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                              str(bad)], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "enviroment" in refused.stdout, refused.stdout


def _interpolate(value: str, token: str) -> str:
    return re.sub(r"\$\{EMBER_FLEET_TOKEN:\?[^}]*\}", token, value)


def _image_env() -> dict[str, str]:
    """The final stage's ENV: what every container of the image starts with."""
    return {key: value for key, value in _dockerfile().envs.items() if key.startswith("EMBER_")}


def _service_env(service: dict[str, Any], token: str) -> dict[str, str]:
    given = {key: _interpolate(str(value), token) for key, value in (service.get("environment") or {}).items()}
    return {**_image_env(), **given}


def _use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's environment becomes the container's (EMBER_* only)."""
    for key in [k for k in os.environ if k.startswith("EMBER_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_compose_has_a_gateway_three_nodes_and_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if name not in ("gateway", "redis")}
    assert len(nodes) == 3 and "redis" in services and "gateway" in services
    tiers = []
    for name, service in nodes.items():
        env = _service_env(service, "t0ken")
        assert env["EMBER_FLEET_JOIN"] == "redis://redis:6379/0"
        assert env["EMBER_FLEET_TOKEN"] == "t0ken"  # from the environment, never written in the file
        assert env["EMBER_FLEET_ADVERTISE_URL"] == f"http://{name}:{DEFAULT_PORT}"
        assert "ports" not in service  # reachable on the compose network alone (they run without keys)
        assert any(v.endswith(":/data") for v in service["volumes"])
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        # What ember itself makes of that environment.
        _use_env(monkeypatch, env)
        settings = Settings()
        fleet = load_fleet_config(settings)
        assert fleet.announces and not fleet.reads_registry and fleet.join_token() == "t0ken"
        assert fleet.advertised(settings) == env["EMBER_FLEET_ADVERTISE_URL"]
        tiers.append(fleet.labels["tier"])
        assert settings.auth == "off" and settings.bind == ("0.0.0.0", DEFAULT_PORT)  # the image's EMBER_HOST
    assert sorted(tiers) == ["cloud", "edge", "edge"]
    assert "${EMBER_FLEET_TOKEN:?" in (ROOT / "docker-compose.yml").read_text()
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    # The gateway: published on the host's loopback only, its ember.toml routes with the fleet strategy.
    gateway = services["gateway"]
    assert gateway["ports"] == [f"127.0.0.1:{DEFAULT_PORT}:{DEFAULT_PORT}"]
    config_file = ROOT / compose["configs"][gateway["configs"][0]["source"]]["file"]
    env = _service_env(gateway, "t0ken")
    assert env["EMBER_CONFIG"] == gateway["configs"][0]["target"]
    _use_env(monkeypatch, {**env, "EMBER_CONFIG": str(config_file)})
    settings = Settings()
    fleet = load_fleet_config(settings)
    assert fleet.reads_registry and not fleet.announces and fleet.join_token() == "t0ken"
    routes = load_gateway_config(settings.config).routes
    assert [(r.strategy, r.targets, r.tiers) for r in routes] == [("fleet", ["fleet/smollm2:135m"], ["edge", "cloud"])]


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed",
)
def test_docker_compose_config_accepts_it() -> None:
    env = {**os.environ, "EMBER_FLEET_TOKEN": "t0ken"}
    done = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------- Helm chart


def _render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name="ember", namespace="ai")
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def _validate(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_is_clean() -> None:
    import helm_python as helm

    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_the_validator_refuses_a_wrong_manifest() -> None:
    import kubernetes_validate

    deployment = _kind(_render(), "Deployment")[0]
    deployment["spec"]["replica"] = 1  # a typo strict validation catches
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def _env(container: dict[str, Any], pod: str = "") -> dict[str, str]:
    """A container's environment as Kubernetes would give it (a secret's value stands in)."""
    out: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            out[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            out[item["name"]] = pod
        else:
            out[item["name"]] = "s3cret"
    return out


def _probe_paths(container: dict[str, Any]) -> set[tuple[str, str]]:
    return {(container[p]["httpGet"]["path"], container[p]["httpGet"]["port"])
            for p in ("startupProbe", "readinessProbe", "livenessProbe")}


def test_helm_chart_renders_valid_manifests_with_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    docs = _render()
    _validate(docs)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Secret", "Service",
                     "StatefulSet"]
    secret = _kind(docs, "Secret")[0]
    assert set(secret["data"]) == {"join-token"} and len(secret["data"]["join-token"]) >= 48
    services = {s["metadata"]["name"]: s for s in _kind(docs, "Service")}
    sets = _kind(docs, "StatefulSet")
    assert [(s["metadata"]["name"], s["spec"]["replicas"]) for s in sets] == [("ember-node-edge", 2),
                                                                          ("ember-node-cloud", 1)]
    for statefulset in sets:
        headless = services[statefulset["spec"]["serviceName"]]
        assert headless["spec"]["clusterIP"] == "None"
        pod = statefulset["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        container = pod["containers"][0]
        assert container["args"] == ["serve"]
        port = container["ports"][0]
        assert port == {"name": "http", "containerPort": DEFAULT_PORT}
        assert _probe_paths(container) == {("/health", "http")}
        claim = statefulset["spec"]["volumeClaimTemplates"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
        name = statefulset["metadata"]["name"] + "-0"
        env = {**_image_env(), **_env(container, pod=name)}
        assert env["EMBER_HOME"] == mount["mountPath"]
        token_ref = next(i for i in container["env"] if i["name"] == "EMBER_FLEET_TOKEN")["valueFrom"]["secretKeyRef"]
        assert token_ref == {"name": secret["metadata"]["name"], "key": "join-token"}
        assert env["EMBER_FLEET_JOIN"] == "redis://ember-redis:6379/0" and "ember-redis" in services
        # What ember makes of it: a member announcing itself at its pod's stable name.
        _use_env(monkeypatch, env)
        settings = Settings()
        fleet = load_fleet_config(settings)
        assert fleet.announces and fleet.join_token() == "s3cret" and fleet.node_name() == name
        assert fleet.advertised(settings) == f"http://{name}.{headless['metadata']['name']}.ai.svc:{DEFAULT_PORT}"
        assert fleet.labels["tier"] in ("edge", "cloud") and settings.bind == ("0.0.0.0", DEFAULT_PORT)
        assert settings.home == Path("/data")
    # The gateway: a Deployment behind a Service, its ember.toml from the ConfigMap.
    gateway = next(d for d in _kind(docs, "Deployment") if d["metadata"]["name"] == "ember-gateway")
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert _probe_paths(container) == {("/health", "http")}
    assert services["ember-gateway"]["spec"]["ports"][0]["targetPort"] == "http"
    config_volume = next(v for v in pod["volumes"] if "configMap" in v)
    mount = next(m for m in container["volumeMounts"] if m["name"] == config_volume["name"])
    configmap = next(c for c in _kind(docs, "ConfigMap") if c["metadata"]["name"] == config_volume["configMap"]["name"])
    env = {**_image_env(), **_env(container)}
    assert env["EMBER_CONFIG"] == mount["mountPath"] + "/ember.toml"
    toml = tmp_path / "ember.toml"
    toml.write_text(configmap["data"]["ember.toml"])
    _use_env(monkeypatch, {**env, "EMBER_CONFIG": str(toml)})
    settings = Settings()
    assert load_fleet_config(settings).reads_registry
    assert [r.strategy for r in load_gateway_config(settings.config).routes] == ["fleet"]
    policy = _kind(docs, "NetworkPolicy")[0]
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == \
        "gateway"


def test_helm_chart_with_overrides() -> None:
    values = {
        "image": {"repository": "registry.example/ember", "tag": "cuda"},
        "fleet": {"existingSecret": "my-fleet", "existingSecretKey": "token"},
        "redis": {"enabled": False, "url": "redis://redis.infra:6379/2"},
        "nodes": {
            "groups": [{"name": "gpu", "replicas": 3, "labels": {"tier": "cloud", "gpu": "h100"},
                        "env": {"EMBER_NUM_GPU": "-1"}, "resources": {"limits": {"nvidia.com/gpu": 1}}}],
            "models": ["gemma3:270m"],
            "networkPolicy": False,
        },
        "gateway": {"persistence": {"enabled": False}, "service": {"type": "LoadBalancer", "port": 80}},
    }
    docs = _render(values)
    _validate(docs)
    assert not _kind(docs, "Secret") and not _kind(docs, "NetworkPolicy") and not _kind(docs, "PersistentVolumeClaim")
    assert all(d["metadata"]["name"] != "ember-redis" for d in docs)
    (statefulset,) = _kind(docs, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/ember:cuda"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    env = _env(container, pod="ember-node-gpu-0")
    assert env["EMBER_NUM_GPU"] == "-1" and env["EMBER_FLEET_JOIN"] == "redis://redis.infra:6379/2"
    assert json.loads(env["EMBER_FLEET_LABELS"]) == {"tier": "cloud", "gpu": "h100"}
    token_ref = next(i for i in container["env"] if i["name"] == "EMBER_FLEET_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token_ref == {"name": "my-fleet", "key": "token"}
    assert pod["initContainers"][0]["args"][-1] == "gemma3:270m"
    gateway = _kind(docs, "Deployment")[0]
    assert {"name": "home", "emptyDir": {}} in gateway["spec"]["template"]["spec"]["volumes"]


def test_helm_chart_refuses_no_redis() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=r"redis\.url is required"):
        _render({"redis": {"enabled": False}})


@pytest.mark.parametrize(("values", "message"), [
    ({"nodes": {"groups": [{"name": "Edge_1", "replicas": 1}]}}, "/nodes/groups/0/name"),
    ({"nodes": {"groups": [{"name": "edge", "replicas": "two"}]}}, "/nodes/groups/0/replicas"),
    ({"gatway": {}}, "'gatway' not allowed"),
    ({"redis": {"enabled": False, "url": "http://redis:6379"}}, "/redis/url"),
])
def test_helm_chart_refuses_bad_values_by_name(values: dict[str, Any], message: str) -> None:
    """values.schema.json: a typo or a wrong type is a clear error before anything renders."""
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        _render(values)
