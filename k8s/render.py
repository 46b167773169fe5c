"""Write the KubeRay manifests, the generated Kubernetes objects and the images' pins from one place.

The Ray kinds repeat the same pod templates (head, CPU workers, GPU workers) in the RayCluster and
in the RayService, and every Ray pod must get the same environment and security settings; the
RayService's `serveConfigV2` is `serve/config.yaml` with the pod's settings; each RayJob has its own
kustomization per environment; the images install the versions this project's virtualenv resolved
from pyproject.toml. Kept by hand, these copies drift apart, so this script writes them and the tests
check that the committed files are what it writes:

    python k8s/render.py                      # rewrite every generated file (list: `outputs()`)
    python k8s/render.py --check              # exit 1, naming the stale files, when they differ
    python k8s/render.py --tag                # the image tag of this checkout: <version>-<git sha>[-dirty]
    python k8s/render.py --set-images [REG/]  # point k8s/images at REG/mvimpute:<tag>-{cpu,gpu} and
                                              # REG/mvimpute-mlflow:<tag> (the images you just built)
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from copy import deepcopy
from functools import partial
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SERVE_CONFIG = ROOT / "serve" / "config.yaml"

KUBERAY_VERSION = "1.7.0"  # the operator (Helm chart kuberay-operator) the ray.io/v1 kinds are written for
APP_DIR = "/home/ray/mvimpute"  # where the image keeps jobs/, serve/ and tune_spaces/ (on PYTHONPATH)
CLUSTER = "mvimpute"  # the long-lived RayCluster the RayJobs are submitted to
BUCKET = "mvimpute"
STORAGE = f"s3://{BUCKET}/ray_results"  # Ray Train checkpoints and Tune results
MODEL_URI = "models:/mvimpute-jpvae@champion"
IMAGE_CPU = "mvimpute-cpu"  # image names k8s/images maps to a registry and tag
IMAGE_GPU = "mvimpute-gpu"
IMAGE_MLFLOW = "mvimpute-mlflow"
MC_IMAGE = "quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z"  # the bucket Job's MinIO client

# Where each environment variable of a Ray pod comes from. ConfigMap k8s/base/config.yaml:
# MLFLOW_TRACKING_URI, MVIMPUTE_MODEL_URI, AWS_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL,
# AWS_DEFAULT_REGION, MVIMPUTE_BUCKET. Secrets (templates in k8s/secrets.example.yaml):
ENV_CONFIGMAP = "mvimpute-env"
S3_SECRET = "mvimpute-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: the bucket's own user (not MinIO's root)
MLFLOW_WRITER_SECRET = "mlflow-writer"  # MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD: runs, models, aliases
MLFLOW_READER_SECRET = "mlflow-reader"  # the same keys: a user that can only read (the endpoint)
RAY_AUTH_SECRET = "mvimpute-ray-auth"  # auth_token: Ray's token authentication (RAY_AUTH_MODE=token)
MINIO_ROOT_SECRET = "minio-root"  # MINIO_ROOT_USER, MINIO_ROOT_PASSWORD: MinIO and the bucket Job only

# Pod labels the NetworkPolicies select on (k8s/base/networkpolicy.yaml, k8s/infra/networkpolicy.yaml)
RAY_LABEL = "mvimpute.io/ray"  # "jobs": the RayCluster's pods; "serve": the RayService's
ROLE_LABEL = "mvimpute.io/role"  # "ray-submitter": RayJob submitters; "bucket-setup": the bucket Job

# The Ray image's user (rayproject/ray: ray, uid 1000, group users, gid 100)
RAY_UID, RAY_GID = 1000, 100

# What the Serve proxy needs inside a pod, applied over serve/config.yaml: a proxy on every node
# (KubeRay's readiness check of RayService workers asks each pod's proxy on 8000), listening on the
# pod's address for the Serve Service's traffic.
SERVE_K8S_OVERRIDES = {"proxy_location": "EveryNode", "http_options": {"host": "0.0.0.0"}}
# Per deployment, on the cluster: one replica per node, so a lost node takes one replica, not all.
SERVE_DEPLOYMENT_OPTIONS = {"max_replicas_per_node": 1}
# The endpoint's floor of replicas on the cluster (two nodes); the dev overlay keeps one.
SERVE_MIN_REPLICAS = {"base": 2, "dev": 1}

# The image installs, pinned to the versions in this virtualenv (which pip resolved from
# pyproject.toml), everything the package needs at run time with its `omics` extra, and Ray's
# dashboard and autoscaler (`ray[default]`), each with its own dependencies.
IMAGE_ROOTS = ("mvimpute[omics]", "ray[default,train,tune,serve,data]")
# The MLflow server's image: the tracking server with its basic-auth app (the `auth` extra: Flask-WTF),
# the PostgreSQL driver SQLAlchemy 2.1 picks for postgresql:// URIs (psycopg 3) and the S3 client.
MLFLOW_SERVER_PACKAGES = ("mlflow[auth]", "psycopg[binary]", "boto3")

GENERATED = "# Written by k8s/render.py{source}: edit there, then run `python k8s/render.py`.\n"


def version(name: str) -> str:
    return metadata.version(name).split("+")[0]


# ----------------------------------------------------------------------------- security


def pod_security(uid: int, gid: int) -> dict:
    """The pod-level settings of Pod Security's `restricted` level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(read_only_root: bool) -> dict:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
    }


# Ray writes under the image's home directory (~/.cache, runtime environments) besides /tmp/ray, so
# its root filesystem stays writable; everything else in these pods runs read-only.
RAY_CONTAINER_SECURITY = container_security(read_only_root=False)


# ----------------------------------------------------------------------------- pod templates


def ray_env(role: str) -> tuple[list[dict], list[dict]]:
    """(envFrom, env) of a Ray container: the ConfigMap, the MLflow user of its role, the bucket's keys
    for the jobs' cluster only, and Ray's token (KubeRay would add the same two variables from
    authOptions; written out so every pod's environment can be read from the manifests)."""
    mlflow_user = MLFLOW_WRITER_SECRET if role == "jobs" else MLFLOW_READER_SECRET
    env_from = [{"configMapRef": {"name": ENV_CONFIGMAP}}]
    if role == "jobs":
        env_from.append({"secretRef": {"name": S3_SECRET}})
    env_from.append({"secretRef": {"name": mlflow_user}})
    env = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        secret_env("RAY_AUTH_TOKEN", RAY_AUTH_SECRET, "auth_token"),
    ]
    return env_from, env


def ray_container(name: str, image: str, cpu: str, memory: str, role: str, gpus: int = 0) -> dict:
    resources = {"cpu": cpu, "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    env_from, env = ray_env(role)
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",  # tags change with the code (render.py --tag)
        "envFrom": env_from,
        "env": env,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": deepcopy(RAY_CONTAINER_SECURITY),
        "volumeMounts": [{"name": "ray-logs", "mountPath": "/tmp/ray"}],
    }


def pod_template(container: dict, role: str, gpu: bool = False, head: bool = False, spread: bool = False) -> dict:
    if head:
        container = deepcopy(container)
        container["ports"] = [
            {"containerPort": 6379, "name": "gcs"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": 8000, "name": "serve"},
        ]
    spec: dict = {
        "securityContext": pod_security(RAY_UID, RAY_GID),
        "containers": [container],
        "volumes": [{"name": "ray-logs", "emptyDir": {}}],
    }
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    labels = {"app.kubernetes.io/part-of": "mvimpute", RAY_LABEL: role}
    if spread:  # the endpoint's workers on different nodes where there are several
        spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {RAY_LABEL: role, "ray.io/node-type": "worker"}},
            }
        ]
    return {"metadata": {"labels": labels}, "spec": spec}


def head_group(role: str) -> dict:
    return {
        # no tasks or actors on the head: it runs the GCS, the dashboard, the job drivers and the
        # Serve controller, and a busy head stalls the whole cluster. The dashboard (the Jobs API,
        # 8265) listens on the pod's address for the submitters and the operator; Ray's token and
        # the NetworkPolicies keep everyone else out.
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": pod_template(ray_container("ray-head", IMAGE_CPU, "2", "8Gi", role), role, head=True),
    }


def cpu_group(role: str, replicas: int = 0, min_replicas: int = 0, max_replicas: int = 8) -> dict:
    return {
        "groupName": "cpu",
        "replicas": replicas,
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "rayStartParams": {},
        # a Ray Train worker takes 1 CPU (plan_worker_resources on an autoscaling cluster); the
        # other three run the Ray Data tasks that read and shard its input
        "template": pod_template(ray_container("ray-worker", IMAGE_CPU, "4", "16Gi", role), role),
    }


# A GPU node of 8 vCPU / 32 GiB / 1 GPU keeps about 0.5 CPU and 3-4 GiB for the kubelet, the system
# and its daemons (CNI, device plugin, log agent): the pod asks for what is left with some margin.
GPU_POD = {"cpu": "6", "memory": "24Gi"}


def gpu_group(role: str, max_replicas: int = 4) -> dict:
    return {
        "groupName": "gpu",
        "replicas": 0,
        "minReplicas": 0,
        "maxReplicas": max_replicas,
        "rayStartParams": {},
        # one GPU and 1 CPU per Ray Train worker; five CPUs left for Ray Data on the same node
        "template": pod_template(
            ray_container("ray-worker", IMAGE_GPU, GPU_POD["cpu"], GPU_POD["memory"], role, gpus=1), role, gpu=True
        ),
    }


def serve_group() -> dict:
    """The endpoint's workers: one Serve replica (1 CPU) and its proxy per pod, spread over nodes."""
    return {
        "groupName": "serve",
        "replicas": SERVE_MIN_REPLICAS["base"],
        "minReplicas": SERVE_MIN_REPLICAS["base"],
        "maxReplicas": 4,
        "rayStartParams": {},
        "template": pod_template(ray_container("ray-worker", IMAGE_CPU, "2", "4Gi", "serve"), "serve", spread=True),
    }


def cluster_spec(role: str, groups: list[dict]) -> dict:
    return {
        "rayVersion": version("ray"),
        # Ray's token authentication: KubeRay hands the token of this Secret to the submitters and
        # uses it itself to reach the dashboard
        "authOptions": {"mode": "token", "secretName": RAY_AUTH_SECRET},
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 120,
            "resources": {
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
            "securityContext": container_security(read_only_root=False),
        },
        "headGroupSpec": head_group(role),
        "workerGroupSpecs": groups,
    }


def meta(name: str, component: str) -> dict:
    return {"name": name, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component}}


# ----------------------------------------------------------------------------- the Ray kinds


def raycluster() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta(CLUSTER, "ray-cluster"),
        "spec": cluster_spec("jobs", [cpu_group("jobs"), gpu_group("jobs")]),
    }


def submitter() -> dict:
    """The pod that runs `ray job submit` for a RayJob (KubeRay fills in the command and the token)."""
    container = {
        "name": "ray-job-submitter",
        "image": IMAGE_CPU,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "requests": {"cpu": "200m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": deepcopy(RAY_CONTAINER_SECURITY),
    }
    return {
        "metadata": {"labels": {"app.kubernetes.io/part-of": "mvimpute", ROLE_LABEL: "ray-submitter"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security(RAY_UID, RAY_GID),
            "containers": [container],
        },
    }


def app(path: str) -> str:
    return f"{APP_DIR}/{path}"


JOBS = {
    # name: (entry point arguments, what it does, deadline in seconds)
    "train": (
        [
            "python", app("jobs/train.py"),
            "--config", app("jobs/train.yaml"),
            "--data", "digits-halves",
            "--num-workers", "2",
            f"cluster.storage_path={STORAGE}",
            # the autoscaler adds the nodes the workers ask for: wait for them (up to the deadline)
            "cluster.wait_for_resources=true",
        ],
        "Ray Train run; registers mvimpute-jpvae and sets its champion alias",
        4 * 3600,
    ),
    "tune": (
        [
            "python", app("jobs/tune.py"),
            "--space", app("tune_spaces/jpvae.yaml"),
            "--data", "digits-halves",
            f"cluster.storage_path={STORAGE}",
            "cluster.wait_for_resources=true",
        ],
        "Ray Tune sweep; moves the champion alias to the best trial's model",
        12 * 3600,
    ),
    "impute": (
        [
            "python", app("jobs/impute.py"),
            "--model-uri", MODEL_URI,
            "--input", f"s3://{BUCKET}/data/input",
            "--output", f"s3://{BUCKET}/data/imputed",
        ],
        "Ray Data batch imputation, Parquet in and out",
        4 * 3600,
    ),
}  # fmt: skip


def rayjob(name: str) -> dict:
    args, what, deadline = JOBS[name]
    out = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": meta(f"mvimpute-{name}", "ray-job"),
        "spec": {
            # submitted to the shared, autoscaling RayCluster: workers (GPU ones included) come and go
            # with the load, so there is no cluster of the job's own to shut down after it
            "clusterSelector": {"ray.io/cluster": CLUSTER},
            "entrypoint": " ".join(args),
            "submissionMode": "K8sJobMode",
            # the job fails (and its Ray job is stopped) once it has run this long, waiting for nodes included
            "activeDeadlineSeconds": deadline,
            "submitterPodTemplate": submitter(),
            "submitterConfig": {"backoffLimit": 2},
        },
    }
    out["metadata"]["annotations"] = {"mvimpute/description": what}
    return out


# The overlays' entry points for the train job: the same arguments with their overlay's settings.
TRAIN_OVERLAYS = {"dev": ["--num-workers", "1"], "gpu": ["--num-workers", "2", "--use-gpu"]}
OVERLAYS = tuple(TRAIN_OVERLAYS)


def train_args(overlay: str) -> list[str]:
    args = list(JOBS["train"][0])
    i = args.index("--num-workers")
    del args[i : i + 2]
    return args[:i] + TRAIN_OVERLAYS[overlay] + args[i:]


def train_patch(overlay: str) -> list[dict]:
    return [{"op": "replace", "path": "/spec/entrypoint", "value": " ".join(train_args(overlay))}]


# The dev overlay: CPU only and small (a laptop's kind or minikube cluster: 4 CPUs and 8 GiB at most
# requested while no job runs).
DEV_HEAD = {"cpu": "500m", "memory": "2Gi"}
DEV_WORKER = {"cpu": "2", "memory": "3Gi"}
DEV_SERVE_WORKER = {"cpu": "1", "memory": "2Gi"}
DEV_MAX_WORKERS = 2


def dev_patch(prefix: str, serve: bool) -> list[dict]:
    """JSON patch for a RayClusterSpec at `prefix` (`/spec` or `/spec/rayClusterConfig`): shrink the
    pods, cap the workers; the RayCluster also loses its GPU group (the last)."""
    resources = "template/spec/containers/0/resources"
    head = {"requests": DEV_HEAD, "limits": DEV_HEAD}
    worker = DEV_SERVE_WORKER if serve else DEV_WORKER
    ops = [] if serve else [{"op": "remove", "path": f"{prefix}/workerGroupSpecs/1"}]
    ops += [
        {"op": "replace", "path": f"{prefix}/headGroupSpec/{resources}", "value": head},
        {"op": "replace", "path": f"{prefix}/workerGroupSpecs/0/{resources}",
         "value": {"requests": worker, "limits": worker}},
        {"op": "replace", "path": f"{prefix}/workerGroupSpecs/0/maxReplicas", "value": DEV_MAX_WORKERS},
    ]  # fmt: skip
    if serve:
        n = SERVE_MIN_REPLICAS["dev"]
        ops += [
            {"op": "replace", "path": f"{prefix}/workerGroupSpecs/0/replicas", "value": n},
            {"op": "replace", "path": f"{prefix}/workerGroupSpecs/0/minReplicas", "value": n},
            {"op": "replace", "path": "/spec/serveConfigV2", "value": serve_config_text("dev")},
        ]
    return ops


def serve_config(env: str = "base") -> dict:
    """`serve/config.yaml` with the cluster's settings applied (SERVE_K8S_OVERRIDES, one replica per
    node, the environment's floor of replicas)."""
    if not SERVE_CONFIG.is_file():
        raise FileNotFoundError(f"{SERVE_CONFIG.relative_to(ROOT)} is missing: the RayService is written from it")
    cfg = yaml.safe_load(SERVE_CONFIG.read_text())
    for key, value in SERVE_K8S_OVERRIDES.items():
        cfg[key] = {**(cfg.get(key) or {}), **value} if isinstance(value, dict) else value
    for application in cfg["applications"]:
        args = application.setdefault("args", {}) or {}
        application["args"] = args
        args["min_replicas"] = SERVE_MIN_REPLICAS[env]
        args["max_replicas"] = max(args.get("max_replicas") or 1, 2 * SERVE_MIN_REPLICAS[env])
        name = args.get("name") or "Imputer"  # mvimpute.endpoint.AppArgs.name
        application["deployments"] = [{"name": name, **SERVE_DEPLOYMENT_OPTIONS}]
    return cfg


def serve_config_text(env: str) -> str:
    return yaml.safe_dump(serve_config(env), sort_keys=False)


def rayservice() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": meta("mvimpute-serve", "ray-service"),
        "spec": {
            # a new image or cluster spec starts a second cluster, moves the Service to it once its
            # application is healthy, then removes the old one: no downtime, twice the pods meanwhile
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": serve_config_text("base"),
            "rayClusterConfig": cluster_spec("serve", [serve_group()]),
        },
    }


# ----------------------------------------------------------------------------- the RayJobs' kustomizations


def job_base_kustomization(name: str) -> dict:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "mvimpute",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "mvimpute"}}],
        "resources": ["rayjob.yaml"],
    }


def job_overlay_kustomization(overlay: str, name: str) -> dict:
    out: dict = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"../../base/{name}"],
        "components": ["../../../images"],
    }
    if name == "train":
        out["patches"] = [
            {
                "patch": dump(train_patch(overlay)).rstrip("\n"),
                "target": {"group": "ray.io", "version": "v1", "kind": "RayJob", "name": "mvimpute-train"},
            }
        ]
    return out


# ----------------------------------------------------------------------------- the bucket Job

BUCKET_POLICY = "mvimpute-bucket"
BUCKET_SCRIPT = """\
set -eu
# MinIO's root, from MC_HOST_minio (env): the bucket, a policy limited to it, and its own user
mc mb --ignore-existing "minio/$MVIMPUTE_BUCKET"
cat > /tmp/policy.json <<POLICY
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
   "Resource": ["arn:aws:s3:::$MVIMPUTE_BUCKET"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
   "s3:ListMultipartUploadParts"], "Resource": ["arn:aws:s3:::$MVIMPUTE_BUCKET/*"]}]}
POLICY
mc admin policy create minio {policy} /tmp/policy.json
# the secret key on stdin, never in the arguments; adding an existing user sets its key again
printf '%s\\n' "$AWS_SECRET_ACCESS_KEY" | mc admin user add minio "$AWS_ACCESS_KEY_ID"
mc admin policy attach minio {policy} --user "$AWS_ACCESS_KEY_ID" \\
  || mc admin user info minio "$AWS_ACCESS_KEY_ID" | grep -q {policy}
echo "bucket ready: $MVIMPUTE_BUCKET (user $AWS_ACCESS_KEY_ID, policy {policy})"
""".replace("{policy}", BUCKET_POLICY)


def secret_env(name: str, secret: str, key: str | None = None) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key or name}}}


def bucket_job() -> dict:
    env = [
        secret_env("MINIO_ROOT_USER", MINIO_ROOT_SECRET),
        secret_env("MINIO_ROOT_PASSWORD", MINIO_ROOT_SECRET),
        # mc's alias `minio` from the environment (the kubelet expands $(VAR) from the variables above)
        {"name": "MC_HOST_minio", "value": "http://$(MINIO_ROOT_USER):$(MINIO_ROOT_PASSWORD)@minio:9000"},
        {"name": "MC_CONFIG_DIR", "value": "/tmp/.mc"},
        {"name": "MVIMPUTE_BUCKET", "value": BUCKET},
        secret_env("AWS_ACCESS_KEY_ID", S3_SECRET),
        secret_env("AWS_SECRET_ACCESS_KEY", S3_SECRET),
    ]  # fmt: skip
    spec = {
        "backoffLimit": 10,
        # finished Jobs go away; the name changes with the spec (below), so a changed Job is a new one
        "ttlSecondsAfterFinished": 86400,
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "mvimpute-bucket", ROLE_LABEL: "bucket-setup"}},
            "spec": {
                "restartPolicy": "OnFailure",
                "securityContext": pod_security(1000, 1000),
                "containers": [
                    {
                        "name": "bucket",
                        "image": MC_IMAGE,
                        "command": ["/bin/sh", "-c", BUCKET_SCRIPT],
                        "env": env,
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "64Mi"},
                            "limits": {"cpu": "500m", "memory": "256Mi"},
                        },
                        "securityContext": container_security(read_only_root=True),
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    }
    digest = hashlib.sha256(yaml.safe_dump(spec, sort_keys=True).encode()).hexdigest()[:10]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            # a Job's template cannot change: a new spec is a new name, and `apply` runs it again
            "name": f"mvimpute-bucket-{digest}",
            "labels": {"app.kubernetes.io/name": "mvimpute-bucket"},
        },
        "spec": spec,
    }


# ----------------------------------------------------------------------------- image pins


def serving_requirements() -> list[str]:
    """The pins a logged model carries: the image must install exactly these."""
    from mvimpute.tracking import pinned_requirements

    return pinned_requirements()


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """Every distribution `roots` need at run time as installed in this virtualenv (environment
    markers evaluated here, extras followed), by canonical name, with its version."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # a dependency for another platform or Python
        pins[name] = dist.version.split("+")[0]
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return pins


def requirement_lines(roots: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = closure(roots)
    extras = {canonicalize_name(Requirement(r).name): sorted(Requirement(r).extras) for r in roots}
    lines = []
    for name, ver in sorted(pins.items()):
        if name in exclude:
            continue
        spec = f"{name}[{','.join(extras[name])}]" if extras.get(name) else name
        lines.append(f"{spec}=={ver}")
    return lines


def image_requirements() -> str:
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(r.split("==")[0]): r.split("==")[1] for r in serving_requirements()}
    lines = requirement_lines(IMAGE_ROOTS, exclude=("mvimpute",))
    for line in lines:  # a logged model pins the same versions (both read this virtualenv)
        name, ver = re.split(r"\[.*\]", line.split("==")[0])[0], line.split("==")[1]
        assert name not in pins or pins[name] == ver, (line, pins[name])
    head = [
        "# every distribution mvimpute[omics] and ray[default,...] need at run time, at the version this",
        "# project's virtualenv resolved from pyproject.toml (a logged model pins the same: pinned_requirements)",
    ]
    return "\n".join(head + lines) + "\n"


def mlflow_requirements() -> str:
    head = ["# the MLflow server, its PostgreSQL driver and S3 client, at this virtualenv's versions"]
    return "\n".join(head + requirement_lines(MLFLOW_SERVER_PACKAGES)) + "\n"


# ----------------------------------------------------------------------------- image tags


def image_tag() -> str:
    """<package version>-<12 hex of the commit>, with -dirty when tracked files differ from it."""
    pkg = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"no git commit to tag the images with: {sha.stderr.strip()}")
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode != 0
    return f"{pkg}-{sha.stdout.strip()}" + ("-dirty" if dirty else "")


IMAGES_COMPONENT = K8S / "images" / "kustomization.yaml"


def images_component(prefix: str, tag: str) -> str:
    images = [
        {"name": IMAGE_CPU, "newName": f"{prefix}mvimpute", "newTag": f"{tag}-cpu"},
        {"name": IMAGE_GPU, "newName": f"{prefix}mvimpute", "newTag": f"{tag}-gpu"},
        {"name": IMAGE_MLFLOW, "newName": f"{prefix}mvimpute-mlflow", "newTag": tag},
    ]
    doc = {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component", "images": images}
    return (
        "# The images of every kustomization of the app and the jobs; written by\n"
        "# `python k8s/render.py --set-images [REGISTRY/]` with the tag of the checkout the images are built from.\n"
        + dump(doc)
    )


# ----------------------------------------------------------------------------- files


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, scripts) as literal blocks, as they are written by hand."""

    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def dump(*docs: dict | list) -> str:
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in docs)


def outputs() -> dict[Path, Callable[[], str]]:
    """Every file this script writes, by path, with the function that makes its content."""
    out: dict[Path, Callable[[], str]] = {
        K8S / "base/ray/raycluster.yaml": lambda: dump(raycluster()),
        K8S / "base/ray/rayservice.yaml": lambda: dump(rayservice()),
        K8S / "infra/bucket-job.yaml": lambda: dump(bucket_job()),
        K8S / "overlays/dev/patch-raycluster.yaml": lambda: dump(dev_patch("/spec", serve=False)),
        K8S / "overlays/dev/patch-rayservice.yaml": lambda: dump(dev_patch("/spec/rayClusterConfig", serve=True)),
    }
    for name in JOBS:
        out[K8S / f"jobs/base/{name}/rayjob.yaml"] = partial(lambda n: dump(rayjob(n)), name)
        out[K8S / f"jobs/base/{name}/kustomization.yaml"] = partial(lambda n: dump(job_base_kustomization(n)), name)
        for overlay in OVERLAYS:
            out[K8S / f"jobs/{overlay}/{name}/kustomization.yaml"] = partial(
                lambda o, n: dump(job_overlay_kustomization(o, n)), overlay, name
            )
    out[K8S / "image/requirements.txt"] = image_requirements
    out[K8S / "image/requirements-mlflow.txt"] = mlflow_requirements
    return out


def content(path: Path) -> str:
    """What this script writes to `path` (one of `outputs()`), with its header."""
    source = " from serve/config.yaml" if path.name in ("rayservice.yaml", "patch-rayservice.yaml") else ""
    return GENERATED.format(source=source) + outputs()[path]()


def stale() -> list[Path]:
    return [p for p in outputs() if not p.is_file() or p.read_text() != content(p)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    p.add_argument("--tag", action="store_true", help="print the image tag of this checkout and exit")
    p.add_argument(
        "--set-images",
        metavar="PREFIX",
        nargs="?",
        const="",
        default=None,
        help="write k8s/images/kustomization.yaml for PREFIXmvimpute:<tag>-cpu etc. (PREFIX: 'registry/' or none)",
    )
    args = p.parse_args(argv)
    if args.tag:
        print(image_tag())
        return 0
    if args.set_images is not None:
        prefix = args.set_images if not args.set_images or args.set_images.endswith("/") else args.set_images + "/"
        IMAGES_COMPONENT.write_text(images_component(prefix, image_tag()))
        print(f"wrote {IMAGES_COMPONENT.relative_to(ROOT)} ({prefix}mvimpute:{image_tag()}-cpu, ...)")
        return 0
    if args.check:
        bad = stale()
        for path in bad:
            print(f"stale: {path.relative_to(ROOT)} (run python k8s/render.py)", file=sys.stderr)
        return 1 if bad else 0
    for path in outputs():
        text = content(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
