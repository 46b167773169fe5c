"""The Kubernetes manifests (k8s/), checked offline: both overlays render; every core object and
every pod template inside the Ray kinds validates against the Kubernetes schemas; the ray.io/v1
kinds use only the fields KubeRay documents; what the manifests name (entry points, the Serve import
path and config, images, Secrets, the tracking URI) exists in this repository and agrees with it."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "gpu")
K8S_VERSION = "1.32.0"  # the Kubernetes API version the schemas are checked against
sys.path.insert(0, str(K8S))
import render  # noqa: E402  (k8s/render.py: the one source of the Ray manifests)

RAY_KINDS = {"RayCluster", "RayJob", "RayService"}

# The fields of the ray.io/v1 kinds, from KubeRay's API reference: ray-project/kuberay,
# docs/reference/api.md (section "ray.io/v1"), at commit 0057210ed5a94e830c864af372577328c3542b44;
# the same tables are at https://ray-project.github.io/kuberay/reference/api/. KubeRay's CRDs keep
# unknown fields out, so a misspelt field would be dropped silently by the API server.
TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec"}
RAY_CLUSTER_SPEC = {
    "suspend",
    "managedBy",
    "autoscalerOptions",
    "headServiceAnnotations",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "rayVersion",
    "workerGroupSpecs",
}
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {
    "suspend",
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
}
AUTOSCALER_OPTIONS = {
    "resources",
    "image",
    "imagePullPolicy",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "version",
    "env",
    "envFrom",
    "volumeMounts",
}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}
RAY_JOB_SPEC = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
    "schedule",
}
SUBMITTER_CONFIG = {"backoffLimit"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
RAY_SERVICE_SPEC = {
    "serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold", "serveService", "upgradeStrategy",
    "serveConfigV2", "rayClusterConfig", "excludeHeadPodFromServeSvc",
}  # fmt: skip


def kustomize(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: nothing renders the kustomizations")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(request.param)


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict]]:
    return {name: kustomize(name) for name in OVERLAYS}


def secret_templates() -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()) if d]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def cluster_specs(doc: dict) -> list[dict]:
    """The RayClusterSpecs inside a Ray kind (none for a RayJob submitted to an existing cluster)."""
    spec = doc["spec"]
    found = {"RayCluster": spec, "RayService": spec.get("rayClusterConfig"), "RayJob": spec.get("rayClusterSpec")}
    return [found[doc["kind"]]] if found[doc["kind"]] else []


def pod_templates(doc: dict) -> dict[str, dict]:
    """Every core PodTemplateSpec inside a Ray kind, by where it sits."""
    out = {}
    for spec in cluster_specs(doc):
        out["head"] = spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            out[f"worker group {group['groupName']}"] = group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out["submitter"] = doc["spec"]["submitterPodTemplate"]
    return out


def ray_pod_templates(doc: dict) -> dict[str, dict]:
    return {k: v for k, v in pod_templates(doc).items() if k != "submitter"}


def cpu(quantity: str) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


# ----------------------------------------------------------------------------- rendering and schemas


def test_overlays_render_every_object(rendered):
    name, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    for kind, n in {
        "Namespace": 1, "ConfigMap": 1, "Service": 3, "Deployment": 2, "StatefulSet": 1,
        "PersistentVolumeClaim": 1, "Job": 1, "RayCluster": 1, "RayJob": 3, "RayService": 1,
    }.items():  # fmt: skip
        assert kinds.count(kind) == n, f"{name}: {kind} x{kinds.count(kind)}, expected {n}"
    assert not of_kind(docs, "Secret"), "credentials come from k8s/secrets.example.yaml, never from the kustomization"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"mvimpute"}


def test_core_objects_validate_against_the_kubernetes_schemas(rendered):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, docs = rendered
    core = [d for d in docs if d["kind"] not in RAY_KINDS] + secret_templates()
    assert len(core) >= 12
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_pod_templates_inside_the_ray_kinds_validate(rendered):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, docs = rendered
    checked = 0
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            continue
        for where, template in pod_templates(doc).items():
            wrapped = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": re.sub(r"[^a-z0-9-]", "-", f"{doc['metadata']['name']}-{where}")},
                "template": template,
            }
            try:
                kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}, {where}: {err}") from err
            checked += 1
    assert checked >= 6


def test_strict_schema_check_catches_a_misspelt_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    template = render.raycluster()["spec"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["envFrm"] = template["spec"]["containers"][0].pop("envFrom")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template},
            K8S_VERSION,
            strict=True,
        )


def check_ray_fields(doc: dict) -> None:
    """Raise AssertionError naming the first field of a ray.io/v1 kind that KubeRay does not document."""
    name = f"{doc['kind']} {doc['metadata']['name']}"

    def only(found: dict, allowed: set[str], where: str) -> None:
        extra = set(found) - allowed
        assert not extra, f"{name}: {where} has fields KubeRay does not document: {sorted(extra)}"

    assert doc["apiVersion"] == "ray.io/v1"
    only(doc, TOP_LEVEL, "the top level")
    spec = doc["spec"]
    specs = {"RayCluster": RAY_CLUSTER_SPEC, "RayJob": RAY_JOB_SPEC, "RayService": RAY_SERVICE_SPEC}
    only(spec, specs[doc["kind"]], "spec")
    if doc["kind"] == "RayJob":
        only(spec.get("submitterConfig", {}), SUBMITTER_CONFIG, "spec.submitterConfig")
        assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
        assert spec.get("entrypoint"), f"{name}: no entrypoint"
        assert spec.get("clusterSelector") or spec.get("rayClusterSpec"), f"{name}: no cluster to run on"
    if doc["kind"] == "RayService":
        assert isinstance(spec.get("serveConfigV2"), str), f"{name}: serveConfigV2 must be a YAML string"
    for cs in cluster_specs(doc):
        only(cs, RAY_CLUSTER_SPEC, "the RayClusterSpec")
        only(cs.get("autoscalerOptions", {}), AUTOSCALER_OPTIONS, "autoscalerOptions")
        assert cs.get("autoscalerOptions", {}).get("upscalingMode", "Default") in UPSCALING_MODES
        only(cs["headGroupSpec"], HEAD_GROUP_SPEC, "headGroupSpec")
        assert "template" in cs["headGroupSpec"]
        for group in cs.get("workerGroupSpecs", []):
            only(group, WORKER_GROUP_SPEC, f"worker group {group.get('groupName')}")
            assert group.get("groupName") and "template" in group, f"{name}: a worker group without groupName/template"
            for params in (group.get("rayStartParams", {}), cs["headGroupSpec"].get("rayStartParams", {})):
                assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values are strings"


def test_ray_kinds_use_only_the_fields_kuberay_documents(rendered):
    _, docs = rendered
    ray = [d for d in docs if d["kind"] in RAY_KINDS]
    assert len(ray) == 5
    for doc in ray:
        check_ray_fields(doc)


def test_the_field_check_catches_an_undocumented_field():
    doc = render.raycluster()
    doc["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(AssertionError, match="maxReplica"):
        check_ray_fields(doc)
    job = render.rayjob("train")
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")
    with pytest.raises(AssertionError, match="entryPoint"):
        check_ray_fields(job)


# ----------------------------------------------------------------------------- the cluster's shape


def train_worker_cpus() -> float:
    """A Ray Train worker's CPUs as the train job plans them on an autoscaling cluster."""
    from mvimpute.engine.resources import plan_worker_resources

    return plan_worker_resources(2, wait_for_resources=True)["CPU"]


def test_ray_clusters_autoscale_and_leave_room_for_ray_data(rendered):
    name, docs = rendered
    import ray

    for doc in of_kind(docs, "RayCluster") + of_kind(docs, "RayService"):
        (cs,) = cluster_specs(doc)
        assert cs["rayVersion"] == ray.__version__
        assert cs["enableInTreeAutoscaling"] is True
        head = cs["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", "tasks and actors stay off the head"
        for group in cs["workerGroupSpecs"]:
            where = f"{name}: {doc['kind']} group {group['groupName']}"
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
            assert group["maxReplicas"] > group["minReplicas"], f"{where}: nothing to autoscale"
            res = group["template"]["spec"]["containers"][0]["resources"]
            assert res["requests"] == res["limits"], f"{where}: Ray sizes itself from the limits"
            # a Train worker's CPUs plus at least one more for the Ray Data tasks that feed it
            assert cpu(res["limits"]["cpu"]) >= train_worker_cpus() + 1, where


def test_gpu_overlay_has_a_gpu_group_with_gpu_limits_and_trains_on_it(overlays):
    docs = overlays["gpu"]
    for doc in of_kind(docs, "RayCluster") + of_kind(docs, "RayService"):
        (cs,) = cluster_specs(doc)
        groups = {g["groupName"]: g for g in cs["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"}
        gpu = groups["gpu"]["template"]["spec"]
        assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert gpu["containers"][0]["image"].endswith("-gpu")
        assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
        assert "nvidia.com/gpu" not in str(groups["cpu"]) and not str(cs["headGroupSpec"]).count("-gpu")
    train = shlex.split(one(docs, "RayJob", "mvimpute-train")["spec"]["entrypoint"])
    assert "--use-gpu" in train


def test_dev_overlay_is_cpu_only_and_small(overlays):
    dev, gpu = overlays["dev"], overlays["gpu"]
    text = yaml.safe_dump_all(dev)
    assert "nvidia.com/gpu" not in text and "-gpu" not in text
    assert "--use-gpu" not in one(dev, "RayJob", "mvimpute-train")["spec"]["entrypoint"]

    def total_max_cpus(docs):
        (cs,) = cluster_specs(one(docs, "RayCluster", "mvimpute"))
        return sum(
            g["maxReplicas"] * cpu(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
            for g in cs["workerGroupSpecs"]
        )

    assert total_max_cpus(dev) <= 4 < total_max_cpus(gpu)


# ----------------------------------------------------------------------------- environment, Secrets, storage


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


def service_url(docs: list[dict], name: str) -> str:
    svc = one(docs, "Service", name)
    return f"http://{name}:{svc['spec']['ports'][0]['port']}"


def test_every_ray_pod_reports_to_the_mlflow_server_and_reaches_the_bucket(rendered):
    _, docs = rendered
    mlflow_url = service_url(docs, "mlflow")
    assert one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"
    ] == int(mlflow_url.rsplit(":", 1)[1])
    checked = 0
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            continue
        for where, template in ray_pod_templates(doc).items():
            for container in template["spec"]["containers"]:
                env = env_of(container, docs)
                assert env.get("MLFLOW_TRACKING_URI") == mlflow_url, f"{doc['metadata']['name']} {where}"
                assert env.get("MVIMPUTE_MODEL_URI") == "models:/mvimpute-jpvae@champion"
                assert env.get("AWS_ENDPOINT_URL") == service_url(docs, "minio")
                assert env.get("AWS_ACCESS_KEY_ID", ())[:1] == ("secret",)
                checked += 1
    assert checked >= 4  # head and CPU workers of the RayCluster and of the RayService, at least


def test_secrets_are_templates_and_cover_every_reference(rendered):
    _, docs = rendered
    templates = secret_templates()
    for secret in templates:
        for key, value in secret["stringData"].items():
            if re.search("PASSWORD|SECRET|ACCESS_KEY", key):
                assert value == "CHANGE-ME", f"{secret['metadata']['name']}/{key} holds a value, not a placeholder"
    referenced = set()
    for doc in docs:  # every secretKeyRef and secretRef resolves against the templates (env_of asserts)
        templates_in = [doc["spec"]["template"]] if doc["kind"] in {"Deployment", "StatefulSet", "Job"} else []
        templates_in += list(pod_templates(doc).values()) if doc["kind"] in RAY_KINDS else []
        for template in templates_in:
            for container in template["spec"]["containers"]:
                env = env_of(container, docs)
                referenced |= {v[1] for v in env.values() if isinstance(v, tuple)}
    assert referenced == {s["metadata"]["name"] for s in templates} == {"mlflow-postgres", "mvimpute-s3"}


def test_jobs_checkpoint_to_the_bucket(rendered):
    _, docs = rendered
    bucket = one(docs, "ConfigMap", "mvimpute-env")["data"]["MVIMPUTE_BUCKET"]
    for name in ("mvimpute-train", "mvimpute-tune"):
        args = shlex.split(one(docs, "RayJob", name)["spec"]["entrypoint"])
        assert f"cluster.storage_path=s3://{bucket}/ray_results" in args, name
        assert "cluster.wait_for_resources=true" in args, f"{name}: the autoscaler adds nodes on demand"
    args = shlex.split(one(docs, "RayJob", "mvimpute-impute")["spec"]["entrypoint"])
    for flag in ("--input", "--output"):
        assert args[args.index(flag) + 1].startswith(f"s3://{bucket}/")
    model_uri = one(docs, "ConfigMap", "mvimpute-env")["data"]["MVIMPUTE_MODEL_URI"]
    assert args[args.index("--model-uri") + 1] == model_uri == "models:/mvimpute-jpvae@champion"
    mlflow_args = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--artifacts-destination=s3://$(MVIMPUTE_BUCKET)/mlartifacts" in mlflow_args
    assert any(a.startswith("--backend-store-uri=postgresql://") for a in mlflow_args)


# ----------------------------------------------------------------------------- what the manifests name


def entry_points() -> dict[str, list[str]]:
    out = {name: shlex.split(render.rayjob(name)["spec"]["entrypoint"]) for name in render.JOBS}
    out.update({f"train ({o})": render.train_args(o) for o in render.TRAIN_OVERLAYS})
    return out


def in_repo(path: str) -> Path:
    assert path.startswith(render.APP_DIR + "/"), f"{path} is not under the image's {render.APP_DIR}"
    return ROOT / path[len(render.APP_DIR) + 1 :]


@pytest.mark.parametrize("job", list(entry_points()))
def test_rayjob_entry_point_runs_and_accepts_its_flags(job):
    args = entry_points()[job]
    assert args[0] == "python"
    script = in_repo(args[1])
    assert script.is_file(), f"{job}: {script.relative_to(ROOT)} is missing"
    for i, arg in enumerate(args[2:], 2):
        if arg.startswith(render.APP_DIR):
            assert in_repo(arg).is_file(), f"{job}: {args[i - 1]} {in_repo(arg).relative_to(ROOT)} is missing"
    out = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"{job}: {script.name} --help failed:\n{out.stderr[-2000:]}"
    for flag in (a for a in args[2:] if a.startswith("--")):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", out.stdout), f"{job}: {script.name} has no {flag}"


def serve_config_v2() -> dict:
    return yaml.safe_load(render.rayservice()["spec"]["serveConfigV2"])


def test_rayservice_serve_config_is_serve_config_yaml_and_valid():
    from ray.serve.schema import ServeDeploySchema

    assert render.SERVE_CONFIG.is_file(), "serve/config.yaml is missing"
    source = yaml.safe_load(render.SERVE_CONFIG.read_text())
    committed = yaml.safe_load((K8S / "base/ray/rayservice.yaml").read_text())
    cfg = yaml.safe_load(committed["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(cfg)
    assert cfg["applications"] == source["applications"]
    for key in set(cfg) | set(source):
        if key not in render.SERVE_K8S_OVERRIDES:
            assert cfg.get(key) == source.get(key), key
    assert cfg["http_options"]["host"] == "0.0.0.0"  # reachable through the Serve Service
    for key, value in source.get("http_options", {}).items():
        if key != "host":
            assert cfg["http_options"][key] == value
    # the model the endpoint loads: the application's model_uri, else $MVIMPUTE_MODEL_URI, which
    # every Ray pod gets from the ConfigMap (test_every_ray_pod_reports_to_the_mlflow_server...)
    configmap = yaml.safe_load((K8S / "base/config.yaml").read_text())["data"]
    served = [(a.get("args") or {}).get("model_uri") or configmap["MVIMPUTE_MODEL_URI"] for a in cfg["applications"]]
    assert served == ["models:/mvimpute-jpvae@champion"]


def test_rayservice_import_path_builds_a_serve_application():
    from ray import serve

    sys.path.insert(0, str(ROOT))
    try:
        for application in serve_config_v2()["applications"]:
            module, attr = application["import_path"].split(":")
            builder = getattr(importlib.import_module(module), attr)
            built = builder(application.get("args", {}))
            assert isinstance(built, serve.Application), f"{application['import_path']} built {type(built)}"
    finally:
        sys.path.remove(str(ROOT))


@pytest.mark.parametrize("path", [p.relative_to(ROOT).as_posix() for p in render.outputs()])
def test_committed_file_is_what_render_writes(path):
    assert (ROOT / path).read_text() == render.content(ROOT / path), f"{path} is stale: run python k8s/render.py"


# ----------------------------------------------------------------------------- images


def requirement_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_image_installs_exactly_the_serving_pins():
    from mvimpute.tracking import pinned_requirements

    lines = requirement_lines(K8S / "image/requirements.txt")
    names = {re.split(r"[\[=]", ln)[0].lower(): ln for ln in lines}
    for pin in pinned_requirements():
        name = pin.split("==")[0].lower()
        assert names.get(name) == pin, f"the image has {names.get(name)}, a logged model pins {pin}"
    import ray

    assert names["ray"].endswith(f"=={ray.__version__}")
    docker = (K8S / "image/Dockerfile").read_text()
    assert "pip install --no-cache-dir -r /home/ray/requirements.txt" in docker
    assert '-c /home/ray/requirements.txt "/home/ray/mvimpute[omics]"' in docker


def test_image_is_the_official_ray_image_of_this_ray_and_python():
    import ray

    docker = (K8S / "image/Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", docker, re.M)[1]
    assert base == f"rayproject/ray:{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}-\$\{VARIANT\}$", docker, re.M)
    assert re.search(r"^ARG VARIANT=cpu$", docker, re.M) and "--build-arg VARIANT=gpu" in docker
    torch_pin = [ln for ln in requirement_lines(K8S / "image/requirements.txt") if ln.startswith("torch==")]
    assert len(torch_pin) == 1  # the CPU variant installs the same pin from the CPU wheel index


def test_image_copies_only_what_the_jobs_and_serve_run():
    docker = (K8S / "image/Dockerfile").read_text()
    sources = []
    for line in re.findall(r"^COPY (.+)$", docker, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        sources += parts[:-1]
    for src in sources:
        assert not re.match(r"(tests|docs|jobs/bench|jobs/demo\.py)", src), src
        assert (ROOT / src).exists(), f"the image copies {src}, which is not in the repository"
    ignored = (K8S / "image/Dockerfile.dockerignore").read_text().split()
    assert {"tests", "docs", "jobs/benchmarks.py", "jobs/bench.py"} <= set(ignored)
    # the benchmark module left out of the image is imported by no other module of the package
    for path in (ROOT / "mvimpute").rglob("*.py"):
        if path.name == "benchmarks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
                assert not any("benchmarks" in n for n in names), f"{path.relative_to(ROOT)} imports benchmarks"


def test_mlflow_server_image_matches_the_clients_mlflow():
    from importlib import metadata

    lines = requirement_lines(K8S / "image/requirements-mlflow.txt")
    assert f"mlflow=={metadata.version('mlflow')}" in lines
    assert any(ln.startswith("psycopg[binary]==") for ln in lines) and any(ln.startswith("boto3==") for ln in lines)
    assert "requirements-mlflow.txt" in (K8S / "image/Dockerfile.mlflow").read_text()


# ----------------------------------------------------------------------------- the deployment guide


def selects(selector: str, labels: dict) -> bool:
    """kubectl's equality-based label selector (`k=v`, `k==v`, `k!=v`, comma = and)."""
    for term in selector.split(","):
        key, op, value = re.fullmatch(r"\s*([\w./-]+)\s*(!=|==|=)\s*([\w.-]*)\s*", term).groups()
        if (labels.get(key) == value) != (op != "!="):
            return False
    return True


def test_the_guide_applies_every_object_once_and_waits_on_objects_that_exist(overlays):
    guide = (ROOT / "docs/kubernetes.md").read_text()
    applies = re.findall(r"kubectl apply -k k8s/overlays/dev -l '?([^'\n]+?)'?$", guide, re.M)
    assert len(applies) == 5
    docs = overlays["dev"]
    applied: list[str] = []
    for selector in applies:
        chosen = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if selects(selector, d["metadata"]["labels"])]
        assert chosen, f"-l {selector} selects nothing"
        applied += chosen
    assert sorted(applied) == sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs), "applied twice or never"
    assert applied[-1] == "RayJob/mvimpute-impute" and "RayService/mvimpute-serve" in applied
    names = {(d["kind"].lower(), d["metadata"]["name"]) for d in docs}
    waits = re.findall(r"^.*kubectl -n mvimpute (?:wait|rollout status|port-forward) .*$", guide, re.M)
    refs = [r for line in waits for r in re.findall(r"\b(\w+)/([a-z][\w-]+)", line)]
    assert len(refs) == len(waits) >= 9
    made_by_kuberay = {("service", "mvimpute-serve-serve-svc"): ("rayservice", "mvimpute-serve")}
    for kind, name in refs:
        assert made_by_kuberay.get((kind, name), (kind, name)) in names, f"the guide waits on {kind}/{name}"
    for path in re.findall(r"(?:-f|-k) (k8s/[\w./-]+)", guide):
        if path != "k8s/secrets.yaml":  # the user's copy of the template
            assert (ROOT / path).exists(), path
