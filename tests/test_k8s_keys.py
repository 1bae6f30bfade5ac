"""The pods' private keys reach the guard as files it accepts: its own, mode 0400.

The kubelet writes a secret volume's files (plain or projected) as root's, and where
the pod sets ``fsGroup`` it adds group read (0440) whatever the volume's modes say
(``SetVolumeOwnership``; only a projected service-account token is made the pod user's).
The guard refuses a signing key others can read, and a root-owned 0400 file is no use
to a non-root user: so every pod copies its keys, owner-only, into memory of its own
before the guard starts, and the guard reads them there.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (test extra) is needed to read the manifests")

from riskguard.operators.signing.crypto import Signer, generate_key_file  # noqa: E402

from riskguard.errors import SigningError  # noqa: E402  # after the importorskip

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "ops" / "k8s"
ROOT_UID = 0


def pods() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every workload under ops/k8s."""
    for path in sorted(K8S.rglob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            spec = (d or {}).get("spec", {})
            pod = spec.get("template", spec.get("podTemplate", {})).get("spec")
            if pod:
                yield f"{path.relative_to(K8S)}:{d['metadata']['name']}", pod


def secret_items(volume: dict[str, Any]) -> list[tuple[str, int]]:
    """(file name, mode asked for) of each file a secret or projected volume writes."""
    if "secret" in volume:
        src, default = volume["secret"], volume["secret"].get("defaultMode", 0o644)
        return [(i["path"], i.get("mode", default)) for i in src.get("items", [])]
    projected = volume.get("projected", {})
    default = projected.get("defaultMode", 0o644)
    return [(i["path"], i.get("mode", default))
            for s in projected.get("sources", []) if "secret" in s
            for i in s["secret"].get("items", [])]


def kubelet_file(pod: dict[str, Any], mode: int) -> tuple[int, int]:
    """(owner uid, mode) the kubelet gives a secret volume's file of ``mode``."""
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    return ROOT_UID, mode | (0o440 if fs_group is not None else 0)


def private(name: str) -> bool:
    return name.endswith((".key", "signing.pem"))


def test_every_pod_with_keys_is_found() -> None:
    found = {where for where, pod in pods() if any(secret_items(v) for v in pod["volumes"])}
    assert len(found) == 8, found


def test_the_guard_never_reads_a_private_key_as_the_kubelet_wrote_it() -> None:
    """Each private-key file a main container sees is its user's own and owner-only: a
    secret volume's file (root's, and 0440 with fsGroup) is neither."""
    bad = []
    for where, pod in pods():
        user = pod["securityContext"]["runAsUser"]
        vols = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                for name, mode in secret_items(vols.get(m["name"], {})):
                    owner, got = kubelet_file(pod, mode)
                    if private(name) and (owner != user or got & 0o077):
                        bad.append(f"{where} {c['name']} {name}: uid {owner} mode {oct(got)}")
    assert not bad, bad


def key_copies(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod.get("initContainers", []) if c["name"] == "keys"]


def kubelet_layout(folder: Path, files: dict[str, bytes], mode: int) -> None:
    """A secret volume as the kubelet's atomic writer lays it out: the files in a
    timestamped folder, ``..data`` linking to it, and a link per file."""
    stamp = folder / "..2026_11_29_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, data in files.items():
        (stamp / name).write_bytes(data)
        (stamp / name).chmod(mode)
    (folder / "..data").symlink_to(stamp.name)
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")


def test_each_pod_copies_its_keys_owner_only_into_memory_the_guard_reads(
    tmp_path: Path,
) -> None:
    """The init container ``keys`` copies the secret's files, mode 0400, into an
    in-memory emptyDir that every main container mounts read-only where its config looks
    for the keys; run on a volume laid out as the kubelet does, the copy of the signing
    key loads where the kubelet's file is refused."""
    seed = tmp_path / "seed.pem"
    generate_key_file(seed)
    for n, (where, pod) in enumerate(pods()):
        if not any(secret_items(v) for v in pod["volumes"]):
            continue
        (init,) = key_copies(pod) or [None]
        assert init is not None, f"{where}: no init container 'keys'"
        assert pod["securityContext"].get("fsGroup") is not None, where  # reads the 0440 files
        assert init["securityContext"]["readOnlyRootFilesystem"] is True, where
        images = {c.get("image") for c in pod["containers"]} - {None}
        assert images <= {init["image"]}, where  # the guard's image: one to keep up to date
        vols = {v["name"]: v for v in pod["volumes"]}
        src, dst = (m for m in init["volumeMounts"])
        assert secret_items(vols[src["name"]]) and src["readOnly"] is True, where
        assert vols[dst["name"]]["emptyDir"]["medium"] == "Memory", where
        for c in pod["containers"]:
            (mount,) = [m for m in c["volumeMounts"] if m["name"] == dst["name"]]
            assert mount["readOnly"] is True and mount["mountPath"] == dst["mountPath"], where
        names = [name for name, _ in secret_items(vols[src["name"]])]
        here_src, here_dst = tmp_path / str(n) / "secret", tmp_path / str(n) / "keys"
        here_dst.mkdir(parents=True)
        _, mode = kubelet_file(pod, 0o400)
        kubelet_layout(here_src, {x: seed.read_bytes() for x in names}, mode)
        argv = [a.replace(src["mountPath"], str(here_src)).replace(
            dst["mountPath"], str(here_dst)) for a in init["command"] + init.get("args", [])]
        subprocess.run(argv, check=True)
        assert sorted(os.listdir(here_dst)) == sorted(names), where
        for x in names:
            assert (here_dst / x).stat().st_mode & 0o777 == 0o400, (where, x)
        if "signing.pem" in names:
            Signer.from_file(here_dst / "signing.pem")
            with pytest.raises(SigningError, match="mode"):
                Signer.from_file(here_src / "signing.pem")


def test_the_configs_look_for_the_keys_where_the_pods_put_them() -> None:
    """guard*.toml name the copies' folder for the signing key and the Kafka client key."""
    (cm,) = list(yaml.safe_load_all((K8S / "configmap.yaml").read_text()))
    folders = {m["mountPath"] for _, pod in pods() for init in key_copies(pod)
               for m in init["volumeMounts"][1:]}
    assert len(folders) == 1
    (folder,) = folders
    for name, text in cm["data"].items():
        if name.startswith("guard") and name.endswith(".toml"):
            cfg = tomllib.loads(text)
            assert cfg["keys"]["signing_key"] == f"{folder}/signing.pem", name
            assert cfg["kafka"]["ssl_key_location"] == f"{folder}/kafka-client.key", name
