"""The Kubernetes manifests (k8s/), checked offline: the infrastructure, both environments' apps and
every RayJob render; every core object and every pod template inside the Ray kinds validates against
the Kubernetes schemas; the ray.io/v1 kinds validate, at every level, against the schemas of the
KubeRay CRDs of the pinned operator version; what the manifests name (entry points, the Serve import
path and config, images, Secrets, the tracking URI) exists in this repository and agrees with it.
The operational properties (what survives a delete, who reaches what, security, sizes) are in
tests/test_k8s_policy.py."""

from __future__ import annotations

import ast
import copy
import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_manifests import (
    ENVS,
    K8S,
    K8S_VERSION,
    RAY_KINDS,
    ROOT,
    app,
    cluster_specs,
    containers,
    cpu,
    env_of,
    everything,
    jobs,
    of_kind,
    one,
    pod_templates,
    ray_pod_templates,
    render,
    secret_templates,
)

# The schemas of the ray.io/v1 kinds, from the CRDs of the KubeRay version render.KUBERAY_VERSION pins
# (see the file's "_source"): pod templates inside them are left to kubernetes-validate.
CRD_SCHEMAS = Path(__file__).parent / "k8s_data" / f"kuberay-v{render.KUBERAY_VERSION}-schemas.json"


@pytest.fixture(scope="module", params=ENVS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, everything(request.param)


# ----------------------------------------------------------------------------- rendering and schemas


def test_every_kustomization_renders_every_object(rendered):
    name, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    for kind, n in {
        "Namespace": 1, "ConfigMap": 1, "Service": 3, "Deployment": 2, "StatefulSet": 1, "NetworkPolicy": 6,
        "PersistentVolumeClaim": 2, "Job": 1, "PodDisruptionBudget": 1, "RayCluster": 1, "RayJob": 3, "RayService": 1,
    }.items():  # fmt: skip
        assert kinds.count(kind) == n, f"{name}: {kind} x{kinds.count(kind)}, expected {n}"
    assert not of_kind(docs, "Secret"), "credentials come from k8s/secrets.example.yaml, never from a kustomization"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"mvimpute"}
    assert len({(d["kind"], d["metadata"]["name"]) for d in docs}) == len(docs), "an object in two kustomizations"


def test_core_objects_validate_against_the_kubernetes_schemas(rendered):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, docs = rendered
    core = [d for d in docs if d["kind"] not in RAY_KINDS] + secret_templates()
    assert len(core) >= 25
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
    assert checked >= 7


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


def _closed(schema):
    """The CRD schema as the API server applies it to our objects, strictly: an object with declared
    properties takes no others (the server would drop them silently)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    return out


def check_ray_fields(doc: dict) -> None:
    """Raise AssertionError naming the first place where a ray.io/v1 object breaks its CRD's schema."""
    import jsonschema

    schemas = json.loads(CRD_SCHEMAS.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    validator = jsonschema.Draft7Validator(_closed(schemas[doc["kind"]]))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "the top level"
        raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {where}: {err.message}")
    spec = doc["spec"]
    name = f"{doc['kind']} {doc['metadata']['name']}"
    if doc["kind"] == "RayJob":
        assert spec.get("entrypoint"), f"{name}: no entrypoint"
        assert spec.get("clusterSelector") or spec.get("rayClusterSpec"), f"{name}: no cluster to run on"
    if doc["kind"] == "RayService":
        yaml.safe_load(spec["serveConfigV2"])
    for cs in cluster_specs(doc):
        for params in [cs["headGroupSpec"].get("rayStartParams", {})] + [
            g.get("rayStartParams", {}) for g in cs.get("workerGroupSpecs", [])
        ]:
            assert all(isinstance(v, str) for v in params.values()), f"{name}: rayStartParams values are strings"


def test_ray_kinds_validate_against_kuberays_crds(rendered):
    _, docs = rendered
    ray = [d for d in docs if d["kind"] in RAY_KINDS]
    assert len(ray) == 5
    for doc in ray:
        check_ray_fields(doc)


@pytest.mark.parametrize(
    ("make", "path", "value", "message"),
    [
        (render.raycluster, ["spec", "workerGroupSpecs", 0, "maxReplica"], 3, "maxReplica"),
        (lambda: render.rayjob("train"), ["spec", "entryPoint"], "python x.py", "entryPoint"),
        (render.raycluster, ["spec", "authOptions", "mode"], "password", "password"),
        (render.raycluster, ["spec", "autoscalerOptions", "upscalingMode"], "Fast", "Fast"),
        (render.raycluster, ["spec", "autoscalerOptions", "securityContext", "runAsNonroot"], True, "runAsNonroot"),
        (render.rayservice, ["spec", "upgradeStrategy", "maxSurge"], 1, "maxSurge"),
        (lambda: render.rayjob("impute"), ["spec", "submitterConfig", "backofLimit"], 1, "backofLimit"),
        (lambda: render.rayjob("impute"), ["spec", "activeDeadlineSeconds"], "1h", "1h"),
    ],
)
def test_the_crd_check_catches_a_wrong_field_at_any_level(make, path, value, message):
    doc = make()
    check_ray_fields(copy.deepcopy(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(AssertionError, match=message):
        check_ray_fields(doc)


def test_crd_schemas_are_the_pinned_kuberay_version():
    source = json.loads(CRD_SCHEMAS.read_text())["_source"]
    assert f"kuberay v{render.KUBERAY_VERSION}" in source
    guide = (ROOT / "docs/kubernetes.md").read_text()
    assert re.search(rf"helm install .*kuberay-operator .*--version {re.escape(render.KUBERAY_VERSION)}\b", guide)


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
            if doc["kind"] == "RayCluster":  # a Train worker's CPUs plus one more for the Ray Data tasks that feed it
                assert cpu(res["limits"]["cpu"]) >= train_worker_cpus() + 1, where
            else:  # a Serve replica's CPUs
                assert cpu(res["limits"]["cpu"]) >= 1, where


def test_gpu_overlay_has_a_gpu_group_with_gpu_limits_and_trains_on_it():
    docs = app("gpu")
    (cs,) = cluster_specs(one(docs, "RayCluster", "mvimpute"))
    groups = {g["groupName"]: g for g in cs["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "-gpu" in gpu["containers"][0]["image"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert "nvidia.com/gpu" not in str(groups["cpu"]) and not str(cs["headGroupSpec"]).count("-gpu")
    train = shlex.split(one(jobs("gpu"), "RayJob", "mvimpute-train")["spec"]["entrypoint"])
    assert "--use-gpu" in train


def test_dev_overlay_is_cpu_only_and_small():
    dev, gpu = app("dev") + jobs("dev"), app("gpu")
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


def service_url(docs: list[dict], name: str) -> str:
    svc = one(docs, "Service", name)
    return f"http://{name}:{svc['spec']['ports'][0]['port']}"


def test_every_ray_pod_reports_to_the_mlflow_server_as_its_user(rendered):
    _, docs = rendered
    mlflow_url = service_url(docs, "mlflow")
    assert one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"
    ] == int(mlflow_url.rsplit(":", 1)[1])
    checked = 0
    for doc in docs:
        role = "serve" if doc["kind"] == "RayService" else "jobs"
        for where, template in ray_pod_templates(doc).items():
            for container in template["spec"]["containers"]:
                env = env_of(container, docs)
                at = f"{doc['metadata']['name']} {where}"
                assert env.get("MLFLOW_TRACKING_URI") == mlflow_url, at
                assert env.get("MVIMPUTE_MODEL_URI") == "models:/mvimpute-jpvae@champion", at
                user = render.MLFLOW_WRITER_SECRET if role == "jobs" else render.MLFLOW_READER_SECRET
                assert env.get("MLFLOW_TRACKING_USERNAME") == ("secret", user, "MLFLOW_TRACKING_USERNAME"), at
                assert env.get("MLFLOW_TRACKING_PASSWORD") == ("secret", user, "MLFLOW_TRACKING_PASSWORD"), at
                assert env.get("RAY_AUTH_MODE") == "token", at
                assert env.get("RAY_AUTH_TOKEN") == ("secret", render.RAY_AUTH_SECRET, "auth_token"), at
                if role == "jobs":  # checkpoints, Tune results and batch data in the bucket
                    assert env.get("AWS_ENDPOINT_URL") == service_url(docs, "minio"), at
                    assert env.get("AWS_ACCESS_KEY_ID") == ("secret", render.S3_SECRET, "AWS_ACCESS_KEY_ID"), at
                else:  # models come through the MLflow server's artifact proxy
                    assert "AWS_SECRET_ACCESS_KEY" not in env, f"{at}: the endpoint needs no bucket keys"
                checked += 1
    assert checked >= 4  # heads and workers of the RayCluster and of the RayService


def test_secrets_are_templates_and_cover_every_reference(rendered):
    _, docs = rendered
    templates = secret_templates()
    for secret in templates:
        for key, value in secret["stringData"].items():
            if re.search("PASSWORD|SECRET|ACCESS_KEY|TOKEN", key, re.I):
                assert value == "CHANGE-ME", f"{secret['metadata']['name']}/{key} holds a value, not a placeholder"
    referenced = set()
    for doc in docs:  # every secretKeyRef and secretRef resolves against the templates (env_of asserts)
        for template in pod_templates(doc).values():
            for container in containers(template):
                env = env_of(container, docs)
                referenced |= {v[1] for v in env.values() if isinstance(v, tuple)}
        for cs in cluster_specs(doc) if doc["kind"] in RAY_KINDS else []:
            referenced.add(cs["authOptions"]["secretName"])
    assert referenced == {s["metadata"]["name"] for s in templates}


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
    bucket_job = one(docs, "Job", render.bucket_job()["metadata"]["name"])
    assert '"minio/$MVIMPUTE_BUCKET"' in bucket_job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert env_of(bucket_job["spec"]["template"]["spec"]["containers"][0], docs)["MVIMPUTE_BUCKET"] == bucket


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
    dev_patch = yaml.safe_load((K8S / "overlays/dev/patch-rayservice.yaml").read_text())
    (dev_text,) = [op["value"] for op in dev_patch if op["path"] == "/spec/serveConfigV2"]
    for env, text in (("base", committed["spec"]["serveConfigV2"]), ("dev", dev_text)):
        cfg = yaml.safe_load(text)
        ServeDeploySchema.model_validate(cfg)
        for key in set(cfg) | set(source):
            if key not in render.SERVE_K8S_OVERRIDES and key != "applications":
                assert cfg.get(key) == source.get(key), key
        assert cfg["proxy_location"] == source["proxy_location"] == "EveryNode"
        assert cfg["http_options"]["host"] == "0.0.0.0"  # reachable through the Serve Service
        for key, value in source.get("http_options", {}).items():
            if key != "host":
                assert cfg["http_options"][key] == value
        # the applications of serve/config.yaml; on the cluster, the environment's floor of replicas
        # and one replica per node are the only differences
        assert len(cfg["applications"]) == len(source["applications"])
        for ours, theirs in zip(cfg["applications"], source["applications"], strict=True):
            changed = {"min_replicas", "max_replicas"}
            assert {k: v for k, v in ours["args"].items() if k not in changed} == {
                k: v for k, v in theirs["args"].items() if k not in changed
            }
            assert ours["args"]["min_replicas"] == render.SERVE_MIN_REPLICAS[env]
            assert ours["args"]["max_replicas"] > ours["args"]["min_replicas"], "room to autoscale"
            assert {k: v for k, v in ours.items() if k not in ("args", "deployments")} == {
                k: v for k, v in theirs.items() if k != "args"
            }
            assert ours["deployments"] == [{"name": "Imputer", "max_replicas_per_node": 1}]
        # the model the endpoint loads: the application's model_uri, else $MVIMPUTE_MODEL_URI, which
        # every Ray pod gets from the ConfigMap (test_every_ray_pod_reports_to_the_mlflow_server...)
        configmap = yaml.safe_load((K8S / "base/config.yaml").read_text())["data"]
        served = [
            (a.get("args") or {}).get("model_uri") or configmap["MVIMPUTE_MODEL_URI"] for a in cfg["applications"]
        ]
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
    assert f"mlflow[auth]=={metadata.version('mlflow')}" in lines  # the basic-auth app's extra
    assert any(ln.startswith("psycopg[binary]==") for ln in lines) and any(ln.startswith("boto3==") for ln in lines)
    assert "requirements-mlflow.txt" in (K8S / "image/Dockerfile.mlflow").read_text()


# ----------------------------------------------------------------------------- the deployment guide


def guide_commands() -> list[str]:
    """The shell lines of docs/kubernetes.md's code blocks, continuation lines joined, comments dropped."""
    guide = (ROOT / "docs/kubernetes.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", guide, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_the_guide_applies_in_order_and_never_deletes_the_data():
    cmds = guide_commands()
    applies = [(i, m[1]) for i, c in enumerate(cmds) for m in re.finditer(r"kubectl apply -k (k8s/[\w./-]+)", c)]
    paths = [p.rstrip("/") for _, p in applies]
    for path in paths:
        assert (ROOT / path / "kustomization.yaml").is_file(), f"the guide applies {path}, which is no kustomization"
    first = {p: paths.index(p) for p in set(paths)}
    assert first["k8s/infra"] < first["k8s/overlays/dev"] < first["k8s/jobs/dev/train"] < first["k8s/jobs/dev/impute"]
    assert "k8s/jobs/dev/train" in paths and "k8s/jobs/dev/impute" in paths
    deletes = [m[1] for c in cmds for m in re.finditer(r"kubectl delete -k (k8s/[\w./-]+)", c)]
    assert deletes and all("infra" not in d for d in deletes), deletes
    assert not any(re.search(r"kubectl delete (ns|namespace) mvimpute\b", c) for c in cmds[: first["k8s/infra"]])


def test_the_guide_waits_on_objects_that_exist():
    docs = everything("dev")
    names = {(d["kind"].lower(), d["metadata"]["name"]) for d in docs}
    waits = [c for c in guide_commands() if re.search(r"kubectl -n mvimpute (wait|rollout status|port-forward) ", c)]
    refs = [r for line in waits for r in re.findall(r"\b(\w+)/([a-z][\w-]+)", re.sub(r"-l \S+", "", line))]
    assert len(waits) >= 9
    made_by_kuberay = {
        ("service", "mvimpute-serve-serve-svc"): ("rayservice", "mvimpute-serve"),
        ("job", "mvimpute-train"): ("rayjob", "mvimpute-train"),
    }
    for kind, name in refs:
        if kind == "job" and name.startswith("mvimpute-bucket"):
            continue  # selected by label: its name carries a hash of its spec
        assert made_by_kuberay.get((kind, name), (kind, name)) in names, f"the guide waits on {kind}/{name}"


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("installs KubeRay with a pinned chart", r"helm install kuberay-operator kuberay/kuberay-operator .*--version"),
        ("builds the three images with the checkout's tag", r"docker build .*Dockerfile .*VARIANT=gpu .*\$TAG-gpu"),
        ("loads them into kind", r"kind load docker-image"),
        ("points the kustomizations at them", r"python k8s/render.py --set-images"),
        ("creates the Secrets", r"kubectl apply -n mvimpute -f k8s/secrets.yaml"),
        ("puts input into the bucket", r"mc cp .* minio/mvimpute/data/input/"),
        ("reads the output", r"mc (cp|ls) .*minio/mvimpute/data/imputed"),
        ("checks the endpoint", r"curl .*localhost:8000/healthz"),
        ("tears the app down", r"kubectl delete -k k8s/overlays/dev"),
        ("backs up PostgreSQL", r"pg_dump"),
        ("restores PostgreSQL", r"pg_restore"),
        ("backs up and restores the bucket", r"mc mirror .*minio/mvimpute"),
    ],
)
def test_the_guide_covers(what, pattern):
    assert any(re.search(pattern, c) for c in guide_commands()), f"the guide never {what} ({pattern})"


def test_the_guide_files_exist():
    guide = (ROOT / "docs/kubernetes.md").read_text()
    for path in re.findall(r"(?:-f|-k) (k8s/[\w./-]+)", guide):
        if path != "k8s/secrets.yaml":  # the user's copy of the template
            assert (ROOT / path).exists(), path
