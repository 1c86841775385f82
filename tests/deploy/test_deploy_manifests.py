"""Checks deploy/ with the real tools, offline: Helm (embedded Go SDK) renders and lints the chart,
kubernetes-validate checks every rendered object against the Kubernetes API schemas (strict: unknown
fields fail), the prometheus-operator CRD models check the ServiceMonitor, promtool checks and
unit-tests the rules and the scrape config and parses every dashboard query, hadolint lints the
Dockerfile. Run by scripts/test.sh; the tools come from scripts/setup.sh and tests/requirements.txt.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import deploy_lib as d  # noqa: E402

sys.path.insert(0, str(d.REPO / "tests"))
from required_tools import find  # noqa: E402

# Kubernetes versions the chart supports (Chart.yaml kubeVersion >= 1.27) and the newest schemas.
K8S_VERSIONS = ["1.27.0", "1.37.0"]


def run(*cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", params=sorted(d.VALUE_SETS))
def rendered(request):
    return request.param, d.render_chart(d.VALUE_SETS[request.param])


# ---------------------------------------------------------------- Helm chart


@pytest.mark.parametrize("label", sorted(d.VALUE_SETS))
def test_helm_lint_strict(label):
    import helm_python as helm

    for kube_version in ["v" + v for v in K8S_VERSIONS]:
        report = helm.lint(str(d.CHART), d.VALUE_SETS[label], strict=True, namespace="serving",
                           kube_version=kube_version)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


def test_rendered_objects_pass_kubernetes_schemas(rendered):
    import kubernetes_validate

    label, out = rendered
    docs = d.manifests(out)
    assert docs, f"{label}: nothing rendered"
    checked = 0
    for path, doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRD: checked by test_service_monitor_matches_crd
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{label}: {path} {doc['kind']} (k8s {version}): "
                            f"{'.'.join(map(str, e.path))}: {e.message}")
        checked += 1
    assert checked >= 5, f"{label}: only {checked} objects validated"


def _unknown_fields(given, known, path=""):
    """Keys of `given` that the CRD model dropped (the models ignore unknown fields silently)."""
    if isinstance(given, dict):
        assert isinstance(known, dict), path
        for key, value in given.items():
            if key not in known:
                yield f"{path}.{key}"
            else:
                yield from _unknown_fields(value, known[key], f"{path}.{key}")
    elif isinstance(given, list):
        for i, (a, b) in enumerate(zip(given, known)):
            yield from _unknown_fields(a, b, f"{path}[{i}]")


def test_service_monitor_matches_crd(rendered):
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    label, out = rendered
    monitors = [doc for _, doc in d.manifests(out) if doc["kind"] == "ServiceMonitor"]
    if d.VALUE_SETS[label].get("serviceMonitor", {}).get("enabled", True) is False:
        assert not monitors
        return
    assert len(monitors) == 1
    model = monitoring.ServiceMonitor.model_validate(monitors[0])
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert list(_unknown_fields(monitors[0], dumped)) == []
    typo = {**monitors[0], "spec": {**monitors[0]["spec"], "endpoint": []}}
    typo_dump = monitoring.ServiceMonitor.model_validate(typo).model_dump(
        by_alias=True, exclude_none=True, mode="json")
    assert list(_unknown_fields(typo, typo_dump)) == [".spec.endpoint"]
    # It selects the metrics Service, by port name.
    services = {doc["metadata"]["name"]: doc for _, doc in d.manifests(out) if doc["kind"] == "Service"}
    selected = [s for s in services.values()
                if monitors[0]["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"]["labels"].items()]
    assert [s["spec"]["ports"][0]["name"] for s in selected] == ["metrics"]


def test_prometheus_rule_matches_crd_and_rules_file(rendered):
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    label, out = rendered
    rules = [doc for _, doc in d.manifests(out) if doc["kind"] == "PrometheusRule"]
    assert len(rules) == 1, label
    model = monitoring.PrometheusRule.model_validate(rules[0])
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert list(_unknown_fields(rules[0], dumped)) == []
    # The same rules promtool tests (the chart's files/ links to deploy/prometheus/).
    assert rules[0]["spec"] == yaml.safe_load(d.RULES.read_text())


def test_deployment_contract(rendered):
    label, out = rendered
    values = d.VALUE_SETS[label]
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in d.manifests(out)}
    deploy = next(doc for (kind, _), doc in docs.items() if kind == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = d.container(out)
    # GPUs requested as the extended resource, request == limit.
    gpus = values.get("gpus", 1)
    if gpus:
        assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    else:
        assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    # The kubelet must not kill kbitd while it drains.
    kbitd_yaml = yaml.safe_load(d.config_map_yaml(out))
    pre_stop = values.get("preStopSeconds", 5)
    assert pod["terminationGracePeriodSeconds"] > kbitd_yaml["shutdown_grace_seconds"] + pre_stop
    # Readiness asks about the configured models: per-model health when there is one model.
    models = values.get("config", {}).get("models", [{"name": "default"}])
    ready = c["readinessProbe"]
    if values.get("tls", {}).get("enabled"):
        cmd = ready["exec"]["command"]
        assert cmd[0] == "/usr/local/bin/kbitctl" and "--tls_ca=/etc/kbitd/tls/ca.crt" in cmd
        assert cmd[-1] == ("kbitd.v1.InferenceService" if len(models) > 1 else models[0]["name"])
        assert kbitd_yaml["tls"]["cert_file"] == "/etc/kbitd/tls/tls.crt"
    else:
        expected = models[0]["name"] if len(models) == 1 else "kbitd.v1.InferenceService"
        assert ready["grpc"] == {"port": 50051, "service": expected}
        assert c["livenessProbe"]["grpc"]["service"] == ""
        assert c["startupProbe"]["grpc"]["service"] == ""
    # Config, model root and secrets are mounted where kbitd.yaml says.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "/etc/kbitd/kbitd.yaml" in mounts and "/models" in mounts
    assert kbitd_yaml["model_root"] == "/models"
    if "admin_token_file" in kbitd_yaml:
        assert Path(kbitd_yaml["admin_token_file"]).parent.as_posix() in mounts
    assert kbitd_yaml["listen_address"].endswith(":50051")
    assert kbitd_yaml["metrics_address"].endswith(":9400")
    # HPA xor fixed replicas; PDB; Services for gRPC and metrics.
    hpa = [doc for (kind, _), doc in docs.items() if kind == "HorizontalPodAutoscaler"]
    assert bool(hpa) == values.get("autoscaling", {}).get("enabled", False)
    assert ("replicas" in deploy["spec"]) != bool(hpa)
    ports = sorted(p["name"] for (kind, _), doc in docs.items() if kind == "Service"
                   for p in doc["spec"]["ports"])
    assert ports == ["grpc", "metrics"]
    assert any(kind == "PodDisruptionBudget" for kind, _ in docs) == \
        values.get("podDisruptionBudget", {}).get("enabled", True)


@pytest.mark.parametrize("values, message", [
    ({"config": {"listen_address": "0.0.0.0:1"}}, "config.listen_address is set by the chart"),
    ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
    ({"tls": {"enabled": True, "existingSecret": "x", "clientCA": True}}, "tls.clientCA"),
    # values.schema.json: typos, unknown enum values, bad model names, out-of-range numbers.
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"modelRoot": {"type": "nfs"}}, "at '/modelRoot/type': value must be one of"),
    ({"config": {"models": [{"name": "a b", "path": "x"}]}}, "at '/config/models/0/name'"),
    ({"config": {"models": [{"name": "a", "path": "x", "kv_cache_bytes": "2 GiB"}]}},
     "at '/config/models/0/kv_cache_bytes'"),
    ({"terminationMarginSeconds": 0}, "at '/terminationMarginSeconds'"),
])
def test_chart_refuses_bad_values(values, message):
    with pytest.raises(Exception, match=re.escape(message)):
        d.render_chart(values)


# ---------------------------------------------------------------- KServe


def _container_validator():
    """A validator for the Kubernetes Container schema bundled with kubernetes-validate (strict)."""
    import importlib.resources

    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    base = importlib.resources.files(kubernetes_validate) / "kubernetes-json-schema"
    defs = json.loads((base / f"v{K8S_VERSIONS[-1]}-local-strict" / "_definitions.json").read_text())
    registry = Resource.from_contents(defs) @ Registry()
    schema = {"$ref": defs["$id"] + "#/$defs/io.k8s.api.core.v1.Container"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_kserve_manifests():
    validator = _container_validator()
    # Strict: a misspelt field is an error, not silently dropped.
    assert list(validator.iter_errors({"name": "x", "imagePullPolicyy": "Always"}))
    runtime = yaml.safe_load((d.KSERVE / "servingruntime.yaml").read_text())
    isvc = yaml.safe_load((d.KSERVE / "inferenceservice.yaml").read_text())
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    for c in runtime["spec"]["containers"]:
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(c)]
        assert errors == [], errors
    # The InferenceService picks this runtime and a format it supports.
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    # predictor.model is a Container plus KServe's fields.
    container_part = {k: v for k, v in model.items()
                      if k not in ("modelFormat", "runtime", "storageUri", "protocolVersion")}
    container_part.setdefault("name", "kserve-container")
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(container_part)]
    assert errors == [], errors
    # KServe sends gRPC to the port named h2c.
    assert [p["name"] for p in runtime["spec"]["containers"][0]["ports"]] == ["h2c"]


# ---------------------------------------------------------------- Prometheus


def test_promtool_check_rules():
    result = run(find("promtool"), "check", "rules", str(d.RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules():
    result = run(find("promtool"), "test", "rules", "kbitd-rules.test.yml", cwd=d.RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config():
    result = run(find("promtool"), "check", "config", "prometheus.yml", cwd=d.RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_issue():
    rules = yaml.safe_load(d.RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for needed in ["KbitdModelLoadFailed", "KbitdQueueSaturated", "KbitdQueueRejecting",
                   "KbitdTimeToFirstTokenHigh", "KbitdGpuMemoryNearLimit"]:
        assert needed in alerts
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in alerts.values())


def test_every_query_parses_with_promtool(tmp_path):
    """Dashboard, adapter and rule expressions through Prometheus' own parser."""
    rules = [{"record": f"check:q{i}", "expr": d.grafana_to_promql(expr)}
             for i, (_, expr) in enumerate(d.promql_expressions())]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = run(find("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Grafana


def test_dashboard_structure():
    dash = json.loads(d.DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ["tokens/s", "time to first token", "inter-token", "queue", "batch",
                  "memory by device and category", "saved by quantization", "step latency"]:
        assert topic in titles, topic
    # No two panels overlap on the 24-column grid.
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]


# ---------------------------------------------------------------- Dockerfile


def test_hadolint():
    result = run(find("hadolint"), str(d.DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_matches_the_tree():
    """The image is built with the same steps and paths as CI's native build."""
    text = d.DOCKERFILE.read_text()
    assert "KBITD_SETUP_PROFILE=build bash scripts/setup.sh" in text
    setup = (d.REPO / "scripts" / "setup.sh").read_text()
    assert "KBITD_SETUP_PROFILE" in setup and "BUILD_PACKAGES" in setup
    # Files the image copies exist and are not excluded by .dockerignore.
    ignored = [line.strip() for line in (d.REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for src in ["scripts/setup.sh", "deploy/docker/kbitd.yaml", "models/default"]:
        assert f"COPY {src}" in text or f" {src} " in text, src
        assert (d.REPO / src).exists(), src
        assert not any(src == i or src.startswith(i + "/") for i in ignored), src
    # The binaries come from the CMake targets where the build puts them.
    assert "--target kbitd kbitctl" in text
    assert "build/server/kbitd build/tools/kbitctl/kbitctl" in text
    assert "add_executable(kbitd " in (d.REPO / "server" / "CMakeLists.txt").read_text()
    kbitctl_cmake = d.REPO / "tools" / "kbitctl" / "CMakeLists.txt"
    if kbitctl_cmake.exists():
        assert "add_executable(kbitctl " in kbitctl_cmake.read_text()
    # The baked config serves the model the image ships, from the model root volume.
    baked = yaml.safe_load((d.DEPLOY / "docker" / "kbitd.yaml").read_text())
    assert baked["model_root"] == "/models" and 'VOLUME ["/models"]' in text
    assert {m["path"] for m in baked["models"]} == {"default"}
    assert "COPY --chown=kbitd:kbitd models/default /models/default" in text
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/kbitd"\]$', text, re.M)
    assert re.search(r'^CMD \["--config", "/etc/kbitd/kbitd.yaml"\]$', text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    for label in ["title", "description", "version", "revision", "licenses"]:
        assert f"org.opencontainers.image.{label}=" in text, label


def test_image_binaries_report_the_build_args_version():
    """The build stage hands VERSION and REVISION to CMake (the context has no .git for `git
    rev-parse`), and the version CMake falls back to is the chart's appVersion."""
    text = d.DOCKERFILE.read_text()
    build_stage = text.split("\nFROM ")[1]
    assert re.search(r'-DKBITD_VERSION="\$\{VERSION\}" -DKBITD_REVISION="\$\{REVISION\}"',
                     build_stage)
    assert re.search(r"^ARG VERSION", build_stage, re.M)
    assert re.search(r"^ARG REVISION", build_stage, re.M)
    project = re.search(r"^project\(kbitd VERSION ([0-9.]+)",
                        (d.REPO / "CMakeLists.txt").read_text(), re.M)
    chart = yaml.safe_load((d.CHART / "Chart.yaml").read_text())
    assert project and project.group(1) == chart["appVersion"]
