"""Write the KubeRay manifests and the image's pins from one place.

The Ray kinds repeat the same pod templates (head, CPU workers, GPU workers) in the RayCluster and
in the RayService, and every Ray pod must get the same environment; the RayService's
`serveConfigV2` is `serve/config.yaml`; the image installs the versions a logged model pins. Kept
by hand, these copies drift apart, so this script writes them and the tests check that the
committed files are what it writes:

    python k8s/render.py            # rewrite k8s/base/ray/*.yaml, the overlays' patch-*.yaml and
                                    # k8s/image/requirements*.txt
    python k8s/render.py --check    # exit 1, naming the stale files, when they differ
"""

from __future__ import annotations

import argparse
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

APP_DIR = "/home/ray/mvimpute"  # where the image keeps jobs/, serve/ and tune_spaces/ (on PYTHONPATH)
CLUSTER = "mvimpute"  # the long-lived RayCluster the RayJobs are submitted to
ENV_CONFIGMAP = "mvimpute-env"  # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, ... (k8s/base/config.yaml)
S3_SECRET = "mvimpute-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (k8s/secrets.example.yaml)
BUCKET = "mvimpute"
STORAGE = f"s3://{BUCKET}/ray_results"  # Ray Train checkpoints and Tune results
MODEL_URI = "models:/mvimpute-jpvae@champion"
IMAGE_CPU = "mvimpute-cpu"  # image names the overlays map to a registry and tag
IMAGE_GPU = "mvimpute-gpu"

# What the Serve proxy needs inside a pod, applied over serve/config.yaml: there it listens on
# 127.0.0.1 (one machine); in a pod it must accept the Serve Service's traffic.
SERVE_K8S_OVERRIDES = {"http_options": {"host": "0.0.0.0"}}

# The image installs the package and these runtime dependencies beyond the serving pins; each is
# pinned to the version installed here, where the tests run.
RUNTIME_EXTRAS = ("ray", "polars", "typer", "matplotlib", "anndata", "mudata")
RAY_EXTRAS = "default,train,tune,serve,data"
# The MLflow server's own image: the tracking server, the PostgreSQL driver SQLAlchemy 2.1 picks for
# postgresql:// URIs (psycopg 3) and the S3 client.
MLFLOW_SERVER_PACKAGES = ("mlflow", "psycopg[binary]", "boto3")

GENERATED = "# Written by k8s/render.py{source}: edit there, then run `python k8s/render.py`.\n"


def version(name: str) -> str:
    return metadata.version(name).split("+")[0]


# ----------------------------------------------------------------------------- pod templates


def ray_container(name: str, image: str, cpu: str, memory: str, gpus: int = 0) -> dict:
    resources = {"cpu": cpu, "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # every Ray pod reports to the one MLflow server and reaches the bucket the same way
        "envFrom": [{"configMapRef": {"name": ENV_CONFIGMAP}}, {"secretRef": {"name": S3_SECRET}}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": [{"name": "ray-logs", "mountPath": "/tmp/ray"}],
    }


def pod_template(container: dict, gpu: bool = False, head: bool = False) -> dict:
    if head:
        container = deepcopy(container)
        container["ports"] = [
            {"containerPort": 6379, "name": "gcs"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": 8000, "name": "serve"},
        ]
    spec: dict = {"containers": [container], "volumes": [{"name": "ray-logs", "emptyDir": {}}]}
    if gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "mvimpute"}}, "spec": spec}


def head_group() -> dict:
    return {
        # no tasks or actors on the head: it runs the GCS, the dashboard, the job drivers and the
        # Serve controller, and a busy head stalls the whole cluster
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": pod_template(ray_container("ray-head", IMAGE_CPU, "2", "8Gi"), head=True),
    }


def cpu_group(replicas: int = 1, min_replicas: int = 1, max_replicas: int = 8) -> dict:
    return {
        "groupName": "cpu",
        "replicas": replicas,
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "rayStartParams": {},
        # a Ray Train worker takes 1 CPU (plan_worker_resources on an autoscaling cluster); the
        # other three run the Ray Data tasks that read and shard its input
        "template": pod_template(ray_container("ray-worker", IMAGE_CPU, "4", "16Gi")),
    }


def gpu_group(max_replicas: int = 4) -> dict:
    return {
        "groupName": "gpu",
        "replicas": 0,
        "minReplicas": 0,
        "maxReplicas": max_replicas,
        "rayStartParams": {},
        # one GPU and 1 CPU per Ray Train worker; seven CPUs left for Ray Data on the same node
        "template": pod_template(ray_container("ray-worker", IMAGE_GPU, "8", "32Gi", gpus=1), gpu=True),
    }


def cluster_spec(cpu: dict, gpu: dict | None) -> dict:
    return {
        "rayVersion": version("ray"),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 120,
            "resources": {
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
        },
        "headGroupSpec": head_group(),
        "workerGroupSpecs": [cpu] + ([gpu] if gpu else []),
    }


def meta(name: str, component: str) -> dict:
    return {"name": name, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component}}


# ----------------------------------------------------------------------------- the Ray kinds


def raycluster() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta(CLUSTER, "ray-cluster"),
        "spec": cluster_spec(cpu_group(), gpu_group()),
    }


def submitter() -> dict:
    """The pod that runs `ray job submit` for a RayJob (KubeRay fills in the command)."""
    container = {
        "name": "ray-job-submitter",
        "image": IMAGE_CPU,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "requests": {"cpu": "200m", "memory": "512Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
    }
    return {"spec": {"restartPolicy": "Never", "containers": [container]}}


def app(path: str) -> str:
    return f"{APP_DIR}/{path}"


JOBS = {
    # name: (entry point arguments, what it does)
    "train": (
        [
            "python", app("jobs/train.py"),
            "--config", app("jobs/train.yaml"),
            "--data", "digits-halves",
            "--num-workers", "2",
            f"cluster.storage_path={STORAGE}",
            # the autoscaler adds the nodes the workers ask for: wait for them instead of failing fast
            "cluster.wait_for_resources=true",
        ],
        "Ray Train run; registers mvimpute-jpvae and sets its champion alias",
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
    ),
    "impute": (
        [
            "python", app("jobs/impute.py"),
            "--model-uri", MODEL_URI,
            "--input", f"s3://{BUCKET}/data/input",
            "--output", f"s3://{BUCKET}/data/imputed",
        ],
        "Ray Data batch imputation, Parquet in and out",
    ),
}  # fmt: skip


def rayjob(name: str) -> dict:
    args, what = JOBS[name]
    out = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": meta(f"mvimpute-{name}", "ray-job"),
        "spec": {
            # submitted to the shared, autoscaling RayCluster: workers (GPU ones included) come and go with the load
            "clusterSelector": {"ray.io/cluster": CLUSTER},
            "entrypoint": " ".join(args),
            "submissionMode": "K8sJobMode",
            "submitterPodTemplate": submitter(),
            "submitterConfig": {"backoffLimit": 2},
        },
    }
    out["metadata"]["annotations"] = {"mvimpute/description": what}
    return out


# The overlays' entry points for the train job: the same arguments with their overlay's settings.
TRAIN_OVERLAYS = {"dev": ["--num-workers", "1"], "gpu": ["--num-workers", "2", "--use-gpu"]}


def train_args(overlay: str) -> list[str]:
    args = list(JOBS["train"][0])
    i = args.index("--num-workers")
    del args[i : i + 2]
    return args[:i] + TRAIN_OVERLAYS[overlay] + args[i:]


def train_patch(overlay: str) -> list[dict]:
    return [{"op": "replace", "path": "/spec/entrypoint", "value": " ".join(train_args(overlay))}]


# The dev overlay: CPU only and small (a laptop's kind or minikube cluster).
DEV_HEAD = {"cpu": "1", "memory": "4Gi"}
DEV_WORKER = {"cpu": "2", "memory": "4Gi"}
DEV_MAX_WORKERS = 2


def dev_patch(prefix: str) -> list[dict]:
    """JSON patch for a RayClusterSpec at `prefix` (`/spec` or `/spec/rayClusterConfig`): drop the GPU
    group (the last), shrink the pods, cap the CPU workers."""
    resources = "template/spec/containers/0/resources"
    head = {"requests": DEV_HEAD, "limits": DEV_HEAD}
    worker = {"requests": DEV_WORKER, "limits": DEV_WORKER}
    return [
        {"op": "remove", "path": f"{prefix}/workerGroupSpecs/1"},
        {"op": "replace", "path": f"{prefix}/headGroupSpec/{resources}", "value": head},
        {"op": "replace", "path": f"{prefix}/workerGroupSpecs/0/{resources}", "value": worker},
        {"op": "replace", "path": f"{prefix}/workerGroupSpecs/0/maxReplicas", "value": DEV_MAX_WORKERS},
    ]


def serve_config() -> dict:
    """`serve/config.yaml` with the pod-specific settings applied (SERVE_K8S_OVERRIDES)."""
    if not SERVE_CONFIG.is_file():
        raise FileNotFoundError(f"{SERVE_CONFIG.relative_to(ROOT)} is missing: the RayService is written from it")
    cfg = yaml.safe_load(SERVE_CONFIG.read_text())
    for key, values in SERVE_K8S_OVERRIDES.items():
        cfg[key] = {**(cfg.get(key) or {}), **values}
    return cfg


def rayservice() -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": meta("mvimpute-serve", "ray-service"),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(), sort_keys=False),
            "rayClusterConfig": cluster_spec(cpu_group(max_replicas=4), gpu_group(max_replicas=2)),
        },
    }


# ----------------------------------------------------------------------------- image pins


def serving_requirements() -> list[str]:
    """The pins a logged model carries: the image must install exactly these."""
    from mvimpute.tracking import pinned_requirements

    return pinned_requirements()


def image_requirements() -> str:
    names = {r.split("==")[0] for r in serving_requirements()}
    lines = ["# the versions a logged model pins (mvimpute.tracking.pinned_requirements)"]
    lines += serving_requirements()
    lines.append("# the rest of what the jobs and the Serve app import")
    for name in RUNTIME_EXTRAS:
        if name in names:
            continue
        spec = f"ray[{RAY_EXTRAS}]" if name == "ray" else name
        lines.append(f"{spec}=={version(name)}")
    return "\n".join(lines) + "\n"


def mlflow_requirements() -> str:
    return "\n".join(f"{name}=={version(name.split('[')[0])}" for name in MLFLOW_SERVER_PACKAGES) + "\n"


# ----------------------------------------------------------------------------- files


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as literal blocks, as they are written by hand."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def dump(*docs: dict | list) -> str:
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=120) for d in docs)


def outputs() -> dict[Path, Callable[[], str]]:
    """Every file this script writes, by path, with the function that makes its content."""
    out: dict[Path, Callable[[], str]] = {K8S / "base/ray/raycluster.yaml": lambda: dump(raycluster())}
    for name in JOBS:
        out[K8S / f"base/ray/rayjob-{name}.yaml"] = partial(lambda n: dump(rayjob(n)), name)
    out[K8S / "base/ray/rayservice.yaml"] = lambda: dump(rayservice())
    for name in TRAIN_OVERLAYS:
        out[K8S / f"overlays/{name}/patch-train.yaml"] = partial(lambda n: dump(train_patch(n)), name)
    out[K8S / "overlays/dev/patch-raycluster.yaml"] = lambda: dump(dev_patch("/spec"))
    out[K8S / "overlays/dev/patch-rayservice.yaml"] = lambda: dump(dev_patch("/spec/rayClusterConfig"))
    out[K8S / "image/requirements.txt"] = image_requirements
    out[K8S / "image/requirements-mlflow.txt"] = mlflow_requirements
    return out


def content(path: Path) -> str:
    """What this script writes to `path` (one of `outputs()`), with its header."""
    source = " from serve/config.yaml" if path.name == "rayservice.yaml" else ""
    return GENERATED.format(source=source) + outputs()[path]()


def stale() -> list[Path]:
    return [p for p in outputs() if not p.is_file() or p.read_text() != content(p)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = p.parse_args(argv)
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
