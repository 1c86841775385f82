"""Shared helpers of the deploy/ checks (tests/deploy) and the live-daemon check (tests/e2e).

Renders the Helm chart with the real Helm engine (helm-python-sdk embeds Helm's Go SDK, so no helm
binary and no network are needed) and extracts the kbitd metric names that deploy/ refers to.
"""

import json
import os
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "kbitd"
RULES = DEPLOY / "prometheus" / "kbitd-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "kbitd.json"
ADAPTER = DEPLOY / "prometheus" / "prometheus-adapter-values.yaml"
KSERVE = DEPLOY / "kserve"
DOCKERFILE = REPO / "Dockerfile"

# Value sets the chart is rendered with: defaults, and every switch flipped at least once.
VALUE_SETS = {
    "defaults": {},
    "autoscaling-admin-hostpath": {
        "replicaCount": 3,
        "autoscaling": {"enabled": True, "maxReplicas": 8},
        "adminToken": {"value": "s3cret"},
        "modelRoot": {"type": "hostPath"},
        "serviceMonitor": {"labels": {"release": "prometheus"}},
    },
    "tls-existing-claim-two-models": {
        "tls": {"enabled": True, "cert": "CERT", "key": "KEY", "ca": "CA"},
        "adminToken": {"existingSecret": "kbitd-admin", "key": "token"},
        "modelRoot": {"type": "pvc", "existingClaim": "llm-models", "readOnly": True},
        "config": {
            "models": [
                {"name": "llama-nf4", "path": "llama", "kv_cache_bytes": "8GiB",
                 "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
                {"name": "llama-int8", "path": "llama", "quantization": {"load_in_8bit": True},
                 "placement": {"device_map": "auto", "max_memory": {"0": "20GiB", "cpu": "8GiB"}}},
            ],
        },
    },
    "cpu-only-emptydir": {
        "gpus": 0,
        "tolerations": [],
        "modelRoot": {"type": "emptyDir"},
        "serviceMonitor": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "preStopSeconds": 0,
    },
}


def render_chart(values, name="kbitd", namespace="serving"):
    """Renders the chart; returns {template path: text}. Raises helm_python errors on failure."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=name, namespace=namespace)


def manifests(rendered):
    """The Kubernetes objects of a render (NOTES.txt and empty documents left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def config_map_yaml(rendered):
    """The kbitd.yaml text the chart puts into its ConfigMap."""
    for _, doc in manifests(rendered):
        if doc["kind"] == "ConfigMap":
            return doc["data"]["kbitd.yaml"]
    raise AssertionError("the chart rendered no ConfigMap")


def container(rendered, name="kbitd"):
    for _, doc in manifests(rendered):
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] == name:
                    return c
    raise AssertionError(f"no container {name} in the rendered Deployment")


# A kbitd metric name: not part of a recording rule name ("model:kbitd_x:p99") or a longer word.
_METRIC = re.compile(r"(?<![\w:])kbitd_[a-z0-9_]*[a-z0-9](?![\w:])")


def promql_expressions():
    """(source, expression) of every PromQL expression deploy/ evaluates."""
    exprs = []
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            exprs.append((f"{RULES.name}:{rule.get('alert') or rule.get('record')}", rule["expr"]))
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append((f"{DASHBOARD.name}:{panel['title']}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            exprs.append((f"{DASHBOARD.name}:${var['name']}", var["definition"]))
    adapter = yaml.safe_load(ADAPTER.read_text())
    for rule in adapter["rules"]["custom"]:
        exprs.append((f"{ADAPTER.name}:{rule['name']['as']}", rule["seriesQuery"]))
    return exprs


def metric_names_used():
    """{kbitd metric name: [where it is used]} over the rules, dashboard, adapter and the HPA."""
    used = {}
    for source, expr in promql_expressions():
        for name in _METRIC.findall(expr):
            used.setdefault(name, []).append(source)
    hpa_values = VALUE_SETS["autoscaling-admin-hostpath"]
    for _, doc in manifests(render_chart(hpa_values)):
        if doc["kind"] == "HorizontalPodAutoscaler":
            for metric in doc["spec"]["metrics"]:
                name = metric["pods"]["metric"]["name"]
                used.setdefault(name, []).append("helm HorizontalPodAutoscaler")
    return used


def label_matchers_used():
    """{(metric, label, value)} of the equality matchers (label="value") on kbitd metrics."""
    found = set()
    for _, expr in promql_expressions():
        for name, body in re.findall(r"(?<![\w:])(kbitd_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label, value in re.findall(r'(\w+)="([^"$]*)"', body):
                found.add((name, label, value))
    return found


def grafana_to_promql(expr):
    """Replaces Grafana's variables so promtool can parse a dashboard expression."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = re.sub(r"\$\{?(\w+)\}?", ".*", expr)
    # label_values(...) is a Grafana function, not PromQL: check its series selector.
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr.strip())
    return match.group(1) if match else expr


def env_path(name, default):
    return Path(os.environ.get(name, default))
