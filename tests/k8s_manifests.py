"""The rendered Kubernetes manifests of k8s/, for the tests: the infrastructure (k8s/infra), the app
of an environment (k8s/overlays/<env>) and its RayJobs (k8s/jobs/<env>/<job>), each rendered with
`kubectl kustomize` as `kubectl apply -k` would, and helpers to walk their pod templates."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
ENVS = ("dev", "gpu")
K8S_VERSION = "1.32.0"  # the Kubernetes API version the schemas are checked against
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}

sys.path.insert(0, str(K8S))
import render  # noqa: E402  (k8s/render.py: the one source of the Ray manifests)

sys.path.remove(str(K8S))


@functools.cache
def kustomize(path: str) -> tuple[dict, ...]:
    """`kubectl kustomize k8s/<path>`: the objects `kubectl apply -k k8s/<path>` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: nothing renders the kustomizations")
    out = subprocess.run([kubectl, "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize k8s/{path} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def kustomizations() -> list[str]:
    """Every kustomization under k8s/ that is applied (not a Component, not a base used by others)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        doc = yaml.safe_load(path.read_text())
        rel = path.parent.relative_to(K8S).as_posix()
        if doc.get("kind") == "Component" or rel == "base" or rel.startswith("jobs/base"):
            continue
        found.append(rel)
    return found


def infra() -> list[dict]:
    return list(kustomize("infra"))


def app(env: str) -> list[dict]:
    return list(kustomize(f"overlays/{env}"))


def jobs(env: str) -> list[dict]:
    return [d for name in render.JOBS for d in kustomize(f"jobs/{env}/{name}")]


def everything(env: str) -> list[dict]:
    return infra() + app(env) + jobs(env)


def secret_templates() -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()) if d]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def cluster_specs(doc: dict) -> list[dict]:
    """The RayClusterSpecs inside a Ray kind (none for a RayJob submitted to an existing cluster)."""
    spec = doc["spec"]
    found = {"RayCluster": spec, "RayService": spec.get("rayClusterConfig"), "RayJob": spec.get("rayClusterSpec")}
    return [found[doc["kind"]]] if found[doc["kind"]] else []


def pod_templates(doc: dict) -> dict[str, dict]:
    """Every core PodTemplateSpec of an object (a workload's, or each inside a Ray kind), by where it sits."""
    if doc["kind"] in WORKLOADS:
        return {"template": doc["spec"]["template"]}
    out = {}
    if doc["kind"] not in RAY_KINDS:
        return out
    for spec in cluster_specs(doc):
        out["head"] = spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            out[f"worker group {group['groupName']}"] = group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out["submitter"] = doc["spec"]["submitterPodTemplate"]
    return out


def ray_pod_templates(doc: dict) -> dict[str, dict]:
    return {k: v for k, v in pod_templates(doc).items() if k != "submitter"} if doc["kind"] in RAY_KINDS else {}


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def cpu(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def gib(quantity) -> float:
    q = str(quantity)
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}
    m = re.fullmatch(r"([\d.]+)([KMGT]i)?", q)
    assert m, f"unexpected memory quantity {q}"
    return float(m[1]) * (units[m[2]] if m[2] else 2**-30)


def env_of(container: dict, docs: list[dict]) -> dict[str, str | tuple]:
    """A container's environment: literal values, ConfigMap values resolved, Secret keys as ("secret", name, key)."""
    env: dict = {}
    maps = {d["metadata"]["name"]: d["data"] for d in of_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in secret_templates()}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(maps[src["configMapRef"]["name"]])
        else:
            sname = src["secretRef"]["name"]
            assert sname in secrets, f"Secret {sname} is not in k8s/secrets.example.yaml"
            env.update({k: ("secret", sname, k) for k in secrets[sname]})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = maps[ref["name"]][ref["key"]]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets.get(ref["name"], {}), f"Secret {ref['name']}/{ref['key']} has no template"
            env[item["name"]] = ("secret", ref["name"], ref["key"])
    return env
