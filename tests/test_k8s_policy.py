"""What an operator relies on in the Kubernetes manifests, checked offline on what `kubectl kustomize`
renders: the data outlives the app; applying again (after an image change, after switching the
environment) changes no immutable field; nobody reaches what they have no business reaching; every
pod runs as Pod Security's `restricted` level asks; serving survives a lost node and an upgrade; jobs
end; pods fit their nodes; images and pins follow the code."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from k8s_manifests import (
    ENVS,
    K8S,
    RAY_KINDS,
    ROOT,
    app,
    cluster_specs,
    containers,
    cpu,
    env_of,
    everything,
    gib,
    infra,
    jobs,
    kustomizations,
    kustomize,
    of_kind,
    one,
    pod_templates,
    ray_pod_templates,
    render,
    secret_templates,
)

STATEFUL = {"Namespace", "PersistentVolumeClaim", "StatefulSet"}

# ----------------------------------------------------------------------------- the data outlives the app


@pytest.mark.parametrize("path", [k for k in kustomizations() if k != "infra"])
def test_deleting_the_app_or_a_job_keeps_the_data(path):
    """`kubectl delete -k` of the app or of a job deletes no namespace, volume or database."""
    docs = kustomize(path)
    found = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in STATEFUL]
    assert not found, f"`kubectl delete -k k8s/{path}` would delete {found}"
    for d in docs:
        assert "volumeClaimTemplates" not in d.get("spec", {}), f"k8s/{path}: {d['kind']} owns volumes"
        for template in pod_templates(d).values():
            claims = [v for v in template["spec"].get("volumes", []) if "persistentVolumeClaim" in v]
            assert not claims or d["kind"] not in RAY_KINDS, f"k8s/{path}: a Ray pod on a volume"


def test_the_data_lives_in_one_kustomization_shared_by_every_environment():
    docs = infra()
    assert {d["kind"] for d in docs} >= STATEFUL
    assert [d["metadata"]["name"] for d in of_kind(docs, "Namespace")] == ["mvimpute"]
    for env in ENVS:  # switching dev <-> gpu changes nothing here: no volume to resize, no template to change
        assert not [d for d in app(env) + jobs(env) if d["kind"] in STATEFUL | {"Job"}]
    sts = one(docs, "StatefulSet", "mlflow-postgres")
    assert "volumeClaimTemplates" not in sts["spec"], "a StatefulSet's volumeClaimTemplates cannot change"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in sts["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims <= {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}


def test_jobs_of_the_infrastructure_can_be_applied_again():
    """A Job's pod template is immutable: a Job that `apply` must be able to change carries a name
    that changes with its spec, and goes away once finished; its image is pinned, not mapped."""
    mapped = {render.IMAGE_CPU, render.IMAGE_GPU, render.IMAGE_MLFLOW}
    for env in ENVS:
        for job in of_kind(everything(env), "Job"):
            name = job["metadata"]["name"]
            assert job["spec"].get("ttlSecondsAfterFinished"), f"Job {name} stays forever"
            digest = re.fullmatch(r"[a-z-]+-([0-9a-f]{10})", name)
            assert digest, f"Job {name}: a changed spec would be refused (template is immutable)"
            for c in containers(job["spec"]["template"]):
                assert c["image"] not in mapped and not c["image"].startswith("mvimpute"), f"Job {name}: {c['image']}"
    generated = render.bucket_job()
    changed = render.bucket_job()
    changed["spec"]["backoffLimit"] += 1
    assert generated["metadata"]["name"] == render.bucket_job()["metadata"]["name"]
    import hashlib

    digest = hashlib.sha256(yaml.safe_dump(changed["spec"], sort_keys=True).encode()).hexdigest()[:10]
    assert not generated["metadata"]["name"].endswith(digest), "the name follows the spec"


# ----------------------------------------------------------------------------- who reaches what


def _matches(selector: dict, labels: dict) -> bool:
    for expr in selector.get("matchExpressions", []):
        raise AssertionError(f"matchExpressions are not modelled here: {expr}")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def allowed(policies: list[dict], src: dict, dst: dict, port: int) -> bool:
    """Kubernetes' ingress semantics for a pod `dst` ({labels, namespace}) on `port`, from `src`:
    open when no policy selects it; else open when some rule of a selecting policy admits the peer
    and the port. Peers: podSelector (same namespace), namespaceSelector (+ podSelector), no `from` = all."""
    selecting = [
        p
        for p in policies
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and _matches(p["spec"]["podSelector"], dst["labels"])
    ]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(q.get("port") == port for q in ports):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if "namespaceSelector" in peer:
                    ns_ok = _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": src["namespace"]})
                else:
                    ns_ok = src["namespace"] == "mvimpute"
                if ns_ok and _matches(peer.get("podSelector", {}), src["labels"]):
                    return True
    return False


JOBS_HEAD = {"mvimpute.io/ray": "jobs", "ray.io/node-type": "head"}
SERVE_POD = {"mvimpute.io/ray": "serve", "ray.io/node-type": "worker"}
MLFLOW = {"app.kubernetes.io/name": "mlflow"}
MINIO = {"app.kubernetes.io/name": "minio"}
POSTGRES = {"app.kubernetes.io/name": "mlflow-postgres"}
SUBMITTER = {"mvimpute.io/role": "ray-submitter"}
OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}

# (source pod, destination pod, port, allowed?)
REACH = [
    ({}, JOBS_HEAD, 8265, False),  # any pod of the namespace: not the Jobs API
    ({}, JOBS_HEAD, 10001, False),
    ({}, MLFLOW, 5000, False),
    ({}, MINIO, 9000, False),
    ({}, POSTGRES, 5432, False),
    (SUBMITTER, JOBS_HEAD, 8265, True),
    (SUBMITTER, JOBS_HEAD, 10001, True),
    (SUBMITTER, JOBS_HEAD, 6379, False),
    (SUBMITTER, MINIO, 9000, False),
    (JOBS_HEAD, MINIO, 9000, True),
    (JOBS_HEAD, MLFLOW, 5000, True),
    (JOBS_HEAD, POSTGRES, 5432, False),
    (SERVE_POD, MLFLOW, 5000, True),
    (SERVE_POD, MINIO, 9000, False),  # the endpoint reads models through MLflow
    (SERVE_POD, JOBS_HEAD, 8265, False),
    (MLFLOW, POSTGRES, 5432, True),
    (MLFLOW, MINIO, 9000, True),
    ({"mvimpute.io/role": "bucket-setup"}, MINIO, 9000, True),
    ({}, SERVE_POD, 8000, True),
]


@pytest.mark.parametrize("env", ENVS)
def test_network_policies_admit_only_who_needs_each_port(env):
    policies = of_kind(everything(env), "NetworkPolicy")
    assert policies, "no NetworkPolicy: every pod reaches the Ray Jobs API, MLflow, MinIO and PostgreSQL"
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies), "no default deny"
    for src, dst, port, expected in REACH:
        got = allowed(policies, {"namespace": "mvimpute", "labels": src}, {"labels": dst}, port)
        assert got == expected, f"{src or 'any pod'} -> {dst} :{port}: {'open' if got else 'closed'}"
    outside = {"namespace": "elsewhere", "labels": {}}
    assert allowed(policies, outside, {"labels": SERVE_POD}, 8000), "the endpoint is for everyone"
    for dst, port in ((JOBS_HEAD, 8265), (MLFLOW, 5000), (MINIO, 9000), (POSTGRES, 5432), (SERVE_POD, 8265)):
        assert not allowed(policies, outside, {"labels": dst}, port), f"another namespace reaches {dst}:{port}"
    operator = {"namespace": "kuberay-system", "labels": OPERATOR}
    assert allowed(policies, operator, {"labels": JOBS_HEAD}, 8265) and allowed(
        policies, operator, {"labels": SERVE_POD}, 8265
    )


@pytest.mark.parametrize("env", ENVS)
def test_policies_select_the_pods_the_manifests_make(env):
    """The labels the policies and the disruption budget select on are on the pods."""
    docs = everything(env)
    labels = {}
    for d in docs:
        for where, template in pod_templates(d).items():
            labels[f"{d['kind']}/{d['metadata']['name']} {where}"] = template["metadata"]["labels"]
    for d in ray_pod_templates(one(docs, "RayCluster", "mvimpute")).values():
        assert d["metadata"]["labels"]["mvimpute.io/ray"] == "jobs"
    for d in ray_pod_templates(one(docs, "RayService", "mvimpute-serve")).values():
        assert d["metadata"]["labels"]["mvimpute.io/ray"] == "serve"
    for job in of_kind(docs, "RayJob"):
        assert job["spec"]["submitterPodTemplate"]["metadata"]["labels"]["mvimpute.io/role"] == "ray-submitter"
    for name in ("mlflow", "minio"):
        assert one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == name
    assert one(docs, "StatefulSet", "mlflow-postgres")["spec"]["template"]["metadata"]["labels"] == {
        "app.kubernetes.io/name": "mlflow-postgres"
    }  # fmt: skip


def test_both_ray_clusters_use_token_authentication(rendered_all):
    for env, docs in rendered_all.items():
        for doc in of_kind(docs, "RayCluster") + of_kind(docs, "RayService"):
            (cs,) = cluster_specs(doc)
            assert cs.get("authOptions") == {"mode": "token", "secretName": render.RAY_AUTH_SECRET}, (
                f"{env}: {doc['metadata']['name']}"
            )
            for where, template in ray_pod_templates(doc).items():
                env_vars = env_of(template["spec"]["containers"][0], docs)
                assert env_vars.get("RAY_AUTH_MODE") == "token", where
                assert env_vars.get("RAY_AUTH_TOKEN") == ("secret", render.RAY_AUTH_SECRET, "auth_token"), where
    (token,) = [s for s in secret_templates() if s["metadata"]["name"] == render.RAY_AUTH_SECRET]
    assert set(token["stringData"]) == {"auth_token"}  # the key KubeRay reads


@pytest.fixture(scope="module")
def rendered_all() -> dict[str, list[dict]]:
    return {env: everything(env) for env in ENVS}


def test_mlflow_requires_a_login_and_each_client_has_its_own_user(rendered_all):
    from mlflow.cli import server

    (app_name,) = [p for p in server.params if p.name == "app_name"]
    for env, docs in rendered_all.items():
        deployment = one(docs, "Deployment", "mlflow")
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        auth = [a.split("=", 1)[1] for a in args if a.startswith("--app-name=")]
        assert auth == ["basic-auth"] and "basic-auth" in app_name.type.choices, f"{env}: MLflow without a login"
        users = {}
        for doc in of_kind(docs, "RayCluster") + of_kind(docs, "RayService"):
            for template in ray_pod_templates(doc).values():
                e = env_of(template["spec"]["containers"][0], docs)
                users.setdefault(doc["kind"], set()).add(e.get("MLFLOW_TRACKING_PASSWORD"))
        assert users["RayCluster"] == {("secret", "mlflow-writer", "MLFLOW_TRACKING_PASSWORD")}
        assert users["RayService"] == {("secret", "mlflow-reader", "MLFLOW_TRACKING_PASSWORD")}


def test_minio_root_is_only_minios_and_the_bucket_jobs(rendered_all):
    for env, docs in rendered_all.items():
        for doc in docs:
            for where, template in pod_templates(doc).items():
                for c in containers(template):
                    refs = {v[1] for v in env_of(c, docs).values() if isinstance(v, tuple)}
                    if render.MINIO_ROOT_SECRET in refs:
                        assert doc["metadata"]["name"] == "minio" or doc["metadata"]["name"].startswith(
                            "mvimpute-bucket"
                        ), f"{env}: {doc['kind']}/{doc['metadata']['name']} {where} holds MinIO's root keys"
                    if doc["kind"] != "Deployment" or doc["metadata"]["name"] != "minio":
                        assert "MINIO_ROOT_PASSWORD" not in str(c.get("envFrom", "")), where
    users = {s["metadata"]["name"]: s["stringData"] for s in secret_templates()}
    assert set(users[render.S3_SECRET]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    script = render.BUCKET_SCRIPT
    assert "mc admin user add" in script and "mc admin policy attach" in script
    assert "arn:aws:s3:::$MVIMPUTE_BUCKET/*" in script and "arn:aws:s3:::*" not in script


CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b", re.I)


def test_no_secret_reaches_a_process_argument(rendered_all):
    """Arguments are visible to every process of the node (ps, /proc); Secret values go through the
    environment or files only."""
    for env, docs in rendered_all.items():
        for doc in docs:
            for where, template in pod_templates(doc).items():
                for c in containers(template):
                    secret_vars = {
                        item["name"]
                        for item in c.get("env", [])
                        if "secretKeyRef" in item.get("valueFrom", {})
                        and CREDENTIAL.search(item["valueFrom"]["secretKeyRef"]["key"])
                    }
                    for item in c.get("env", []):  # a variable built from a secret one is secret too
                        if "value" in item and any(f"$({v})" in item["value"] for v in secret_vars):
                            secret_vars.add(item["name"])
                    for arg in list(c.get("command", [])) + list(c.get("args", [])):
                        used = set(re.findall(r"\$\((\w+)\)", arg)) & secret_vars
                        where_ = f"{env}: {doc['kind']}/{doc['metadata']['name']} {where}"
                        assert not used, f"{where_}: {sorted(used)} in an argument"
                        # a script's commands: a credential variable only on the shell's own printf (a builtin)
                        for line in arg.splitlines():
                            named = [v for v in re.findall(r"\$\{?(\w+)", line) if CREDENTIAL.search(v)]
                            assert not named or line.lstrip().startswith("printf "), f"{where_}: {line.strip()}"


# ----------------------------------------------------------------------------- Pod Security: restricted


def _pod_specs(docs):
    for doc in docs:
        for where, template in pod_templates(doc).items():
            yield f"{doc['kind']}/{doc['metadata']['name']} {where}", doc, template["spec"]


@pytest.mark.parametrize("env", ENVS)
def test_every_pod_meets_the_restricted_pod_security_level(env):
    docs = everything(env)
    (ns,) = of_kind(docs, "Namespace")
    assert ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted"
    checked = 0
    for where, doc, spec in _pod_specs(docs):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{where}: no runAsNonRoot"
        assert isinstance(pod_sc.get("runAsUser"), int) and pod_sc["runAsUser"] > 0, f"{where}: no numeric runAsUser"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
        for c in containers({"spec": spec}):
            sc = c.get("securityContext", {})
            at = f"{where} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{at}: allowPrivilegeEscalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{at}: capabilities"
            assert not sc.get("privileged") and not sc.get("capabilities", {}).get("add"), at
            ray = doc["kind"] in RAY_KINDS
            assert sc.get("readOnlyRootFilesystem") is (not ray), f"{at}: readOnlyRootFilesystem"
            if sc.get("readOnlyRootFilesystem"):  # somewhere to write temporary files
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{at}: read-only root without a /tmp volume"
            checked += 1
        for volume in spec.get("volumes", []):
            assert not ({"hostPath"} & set(volume)), f"{where}: {volume}"
    assert checked >= 10
    for doc in of_kind(docs, "RayCluster") + of_kind(docs, "RayService"):  # KubeRay's autoscaler sidecar
        (cs,) = cluster_specs(doc)
        sc = cs["autoscalerOptions"].get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"]


def test_images_run_as_numeric_users():
    for name in ("Dockerfile", "Dockerfile.mlflow"):
        users = re.findall(r"^USER (\S+)$", (K8S / "image" / name).read_text(), re.M)
        assert users and re.fullmatch(r"\d+(:\d+)?", users[-1]), f"{name}: USER {users[-1:]} is not numeric"
    mlflow_uid = one(app("dev"), "Deployment", "mlflow")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"USER {mlflow_uid}:" in (K8S / "image/Dockerfile.mlflow").read_text()


# ----------------------------------------------------------------------------- serving that survives


@pytest.mark.parametrize("env", ENVS)
def test_the_endpoint_has_a_proxy_on_every_node_and_survives_a_node(env):
    docs = app(env)
    service = one(docs, "RayService", "mvimpute-serve")
    cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    # KubeRay's readiness check of a RayService worker asks the Serve proxy on that pod's 8000
    assert cfg.get("proxy_location") == "EveryNode", f"{env}: proxy_location {cfg.get('proxy_location')}"
    assert yaml.safe_load(render.SERVE_CONFIG.read_text())["proxy_location"] == "EveryNode"
    assert service["spec"].get("upgradeStrategy", {}).get("type") in {"NewCluster", "NewClusterWithIncrementalUpgrade"}
    (cs,) = cluster_specs(service)
    (group,) = cs["workerGroupSpecs"]
    spread = group["template"]["spec"].get("topologySpreadConstraints", [])
    assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in spread), "workers on one node"
    for application in cfg["applications"]:
        assert {"name": "Imputer", "max_replicas_per_node": 1} in application.get("deployments", [])
        assert application["args"]["min_replicas"] <= group["minReplicas"], "a replica per worker at least"
    if env == "gpu":
        assert all(a["args"]["min_replicas"] >= 2 for a in cfg["applications"]), (
            "one replica: one node's loss is an outage"
        )
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == {"mvimpute.io/ray": "serve", "ray.io/node-type": "worker"}
    assert pdb["spec"].get("maxUnavailable") == 1


def test_the_guide_describes_gcs_fault_tolerance():
    guide = (ROOT / "docs/kubernetes.md").read_text()
    assert "gcsFaultToleranceOptions" in guide and "Redis" in guide


# ----------------------------------------------------------------------------- jobs that end


def test_no_job_starts_with_the_app_or_the_infrastructure():
    for path in ("infra", *(f"overlays/{e}" for e in ENVS)):
        assert not of_kind(list(kustomize(path)), "RayJob"), f"`kubectl apply -k k8s/{path}` starts jobs"
    for env in ENVS:
        for name in render.JOBS:
            (job,) = kustomize(f"jobs/{env}/{name}")
            assert job["kind"] == "RayJob" and job["metadata"]["name"] == f"mvimpute-{name}"


@pytest.mark.parametrize("env", ENVS)
def test_every_rayjob_has_a_deadline(env):
    for job in of_kind(jobs(env), "RayJob"):
        spec = job["spec"]
        deadline = spec.get("activeDeadlineSeconds")
        assert isinstance(deadline, int) and 0 < deadline <= 24 * 3600, f"{job['metadata']['name']} may wait forever"
        if "rayClusterSpec" in spec:  # a cluster of its own goes away with it
            assert spec.get("shutdownAfterJobFinishes") is True and spec.get("ttlSecondsAfterFinished") is not None


# A GPU node of 8 vCPU / 32 GiB / 1 GPU: what the kubelet, the system and the node's daemons keep
NODE = {"cpu": 8, "memory": 32, "reserved_cpu": 1.0, "reserved_memory": 4.0}


@pytest.mark.parametrize("env", ENVS)
def test_gpu_pods_fit_a_gpu_node(env):
    for doc in of_kind(app(env), "RayCluster") + of_kind(app(env), "RayService"):
        (cs,) = cluster_specs(doc)
        for group in cs["workerGroupSpecs"]:
            res = group["template"]["spec"]["containers"][0]["resources"]["requests"]
            if "nvidia.com/gpu" not in res:
                continue
            assert int(res["nvidia.com/gpu"]) == 1
            assert cpu(res["cpu"]) <= NODE["cpu"] - NODE["reserved_cpu"], f"{group['groupName']}: {res['cpu']} CPUs"
            assert gib(res["memory"]) <= NODE["memory"] - NODE["reserved_memory"], (
                f"{group['groupName']}: {res['memory']}"
            )


def idle_requests(docs: list[dict]) -> tuple[float, float]:
    """CPUs and GiB requested while no job runs: the servers, the Ray heads with the autoscaler, and
    each worker group's minimum."""
    total_cpu = total_mem = 0.0

    def add(resources: dict, n: int = 1) -> None:
        nonlocal total_cpu, total_mem
        req = resources.get("requests") or resources.get("limits") or {}
        total_cpu += n * cpu(req.get("cpu", 0))
        total_mem += n * gib(req.get("memory", 0))

    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            for c in doc["spec"]["template"]["spec"]["containers"]:
                add(c.get("resources", {}), doc["spec"].get("replicas", 1))
        if doc["kind"] in {"RayCluster", "RayService"}:
            (cs,) = cluster_specs(doc)
            add(cs["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"])
            add(cs.get("autoscalerOptions", {}).get("resources", {"requests": {"cpu": "500m", "memory": "512Mi"}}))
            for group in cs["workerGroupSpecs"]:
                add(group["template"]["spec"]["containers"][0]["resources"], group.get("minReplicas", 0))
    return total_cpu, total_mem


def test_dev_fits_a_laptop_while_idle():
    cpus, mem = idle_requests(infra() + app("dev"))
    assert cpus <= 4 and mem <= 8, f"dev asks for {cpus:.2f} CPUs and {mem:.2f} GiB with no job running"


# ----------------------------------------------------------------------------- images and pins follow the code

# a digest, a MinIO release, or a full version (PostgreSQL's are major.minor: 18.6)
PINNED = re.compile(r"(@sha256:[0-9a-f]{64}$)|(:(RELEASE\.[\dT-]+Z|v?\d+\.\d+\.\d+[\w.-]*)$)|(^postgres:\d+\.\d+-)")


def test_every_image_is_pinned():
    mapped = {render.IMAGE_CPU, render.IMAGE_GPU, render.IMAGE_MLFLOW}
    component = yaml.safe_load((K8S / "images/kustomization.yaml").read_text())
    assert component["kind"] == "Component" and {i["name"] for i in component["images"]} == mapped
    for path in kustomizations():
        for doc in kustomize(path):
            for where, template in pod_templates(doc).items():
                for c in containers(template):
                    assert PINNED.search(c["image"]), (
                        f"k8s/{path}: {doc['metadata']['name']} {where}: {c['image']} floats"
                    )
    for name in ("Dockerfile", "Dockerfile.mlflow"):
        text = (K8S / "image" / name).read_text()
        args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
        for base in re.findall(r"^FROM (\S+)", text, re.M):
            image = re.sub(r"\$\{(\w+)\}", lambda m, a=args: a.get(m[1], ""), base)
            assert re.search(r":\d+\.\d+\.\d+", image) or "@sha256:" in image, f"{name}: FROM {base} floats"


def test_image_tags_change_with_the_code():
    tag = render.image_tag()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    assert re.fullmatch(rf"{re.escape(version)}-{sha.strip()}(-dirty)?", tag), tag
    text = render.images_component("registry.example/", tag)
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in yaml.safe_load(text)["images"]}
    assert images["mvimpute-gpu"] == f"registry.example/mvimpute:{tag}-gpu"
    assert images["mvimpute-mlflow"] == f"registry.example/mvimpute-mlflow:{tag}"


def test_render_check_passes():
    out = subprocess.run(
        [sys.executable, str(K8S / "render.py"), "--check"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr


def test_image_pins_cover_everything_the_package_imports():
    """The image's requirements are the closure of what pyproject.toml asks for, as this virtualenv
    installed it: nothing the package depends on floats (optuna, the sweep's search, included)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    lines = [ln for ln in (K8S / "image/requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    pins = {re.split(r"[\[=]", ln)[0]: ln.split("==")[1] for ln in lines}
    for line in metadata.distribution("mvimpute").requires:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": "omics"}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"the image leaves {req.name} to float"
        assert pins[name] == metadata.version(req.name).split("+")[0], name
    mlflow_lines = (K8S / "image/requirements-mlflow.txt").read_text()
    assert f"boto3=={metadata.version('boto3')}" in mlflow_lines


def test_mlflow_auth_setup_creates_and_rotates_users(tmp_path, monkeypatch):
    """The init container's script, run twice against a SQLite user store: the users exist with their
    Secrets' passwords and roles; a changed Secret changes the password."""
    pytest.importorskip("mlflow.server.auth.sqlalchemy_store")
    sys.path.insert(0, str(K8S / "image"))
    try:
        import mlflow_auth
    finally:
        sys.path.remove(str(K8S / "image"))
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    env = {
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "a" * 16,
        "MLFLOW_WRITER_USERNAME": "mvimpute-jobs", "MLFLOW_WRITER_PASSWORD": "w" * 16,
        "MLFLOW_READER_USERNAME": "mvimpute-serve", "MLFLOW_READER_PASSWORD": "r" * 16,
    }  # fmt: skip
    assert mlflow_auth.ensure_users(uri, env) == ["created admin", "created mvimpute-jobs", "created mvimpute-serve"]
    env["MLFLOW_READER_PASSWORD"] = "s" * 16
    assert mlflow_auth.ensure_users(uri, env) == ["updated admin", "updated mvimpute-jobs", "updated mvimpute-serve"]
    store = SqlAlchemyStore()
    store.init_db(uri)
    assert store.authenticate_user("mvimpute-serve", "s" * 16) and not store.authenticate_user(
        "mvimpute-serve", "r" * 16
    )
    assert store.get_user("admin").is_admin and not store.get_user("mvimpute-jobs").is_admin
    ini = tmp_path / "basic_auth.ini"
    mlflow_auth.write_config(ini, uri)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    from mlflow.server.auth.config import read_auth_config

    config = read_auth_config()
    assert config.default_permission == "READ" and config.database_uri == uri
    # the Deployment's init container and server read the same file, users and database
    spec = one(app("dev"), "Deployment", "mlflow")["spec"]["template"]["spec"]
    init, server = spec["initContainers"][0], spec["containers"][0]
    assert init["command"] == ["python", "/opt/mlflow/mlflow_auth.py"]
    assert "COPY k8s/image/mlflow_auth.py /opt/mlflow/mlflow_auth.py" in (K8S / "image/Dockerfile.mlflow").read_text()
    init_env = {e["name"]: e for e in init["env"]}
    server_env = {e["name"]: e for e in server["env"]}
    assert init_env["MLFLOW_AUTH_CONFIG_PATH"] == server_env["MLFLOW_AUTH_CONFIG_PATH"]
    backend = [a for a in server["args"] if a.startswith("--backend-store-uri=")][0].split("=", 1)[1]
    assert init_env["MLFLOW_AUTH_DATABASE_URI"]["value"] == backend
    for key in env:
        assert key in init_env, key
