"""manifests/: every rendered object valid for Kubernetes (strict schemas), secure defaults, RBAC that fits.

Rendering uses a small reader of kustomization.yaml (the subset these manifests use), so the test needs
no binary; where `kubectl` is installed its `kubectl kustomize` output must match ours exactly.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
K8S_VERSION = "1.32.0"
TARGETS = ("base", "overlays/gpu-pool", "overlays/index-from-artifact-store")


def _json_pointer_add(doc: Any, path: str, value: Any, replace: bool) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    target = doc
    for p in parts[:-1]:
        target = target[int(p)] if isinstance(target, list) else target.setdefault(p, {})
    leaf = parts[-1]
    if isinstance(target, list):
        if leaf == "-":
            target.append(value)
        elif replace:
            target[int(leaf)] = value
        else:
            target.insert(int(leaf), value)
    else:
        if replace and leaf not in target:
            raise KeyError(f"replace {path}: no such field")
        target[leaf] = value


def _matches(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        target.get("kind", obj["kind"]) == obj["kind"]
        and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def render(directory: Path) -> list[dict[str, Any]]:
    """resources, namespace, labels, images and JSON-6902 patches: what these kustomizations use."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}
    assert set(kust) <= known, f"{directory}: renderer does not support {set(kust) - known}"
    objs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = directory / res
        if path.is_dir():
            objs += render(path)
        else:
            objs += [o for o in yaml.safe_load_all(path.read_text(encoding="utf-8")) if o]
    for patch in kust.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text(encoding="utf-8"))
        hits = [o for o in objs if _matches(o, patch["target"])]
        assert hits, f"{directory}: patch {patch['path']} matches nothing"
        for obj in hits:
            for op in ops:
                assert op["op"] in ("add", "replace"), op
                _json_pointer_add(obj, op["path"], copy.deepcopy(op["value"]), op["op"] == "replace")
    own_sas = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    for obj in objs:
        if "namespace" in kust and obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            obj["metadata"]["namespace"] = kust["namespace"]
        if "namespace" in kust and obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):  # kustomize: subjects naming this kustomization's SAs
                if subject["kind"] == "ServiceAccount" and subject["name"] in own_sas:
                    subject["namespace"] = kust["namespace"]
        for lab in kust.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(lab["pairs"])
            assert lab.get("includeSelectors") is False
            if lab.get("includeTemplates"):
                raise AssertionError("includeTemplates not supported by this renderer")
        for pod in _pod_specs(obj):
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                for img in kust.get("images", []):
                    if c["image"] == img["name"]:
                        c["image"] = f"{img['newName']}:{img['newTag']}"
    return objs


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [spec["template"]["spec"]]
    return []


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(MANIFESTS / request.param)


def test_every_object_is_valid_kubernetes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    assert len(objs) >= 15
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{name}: {obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
            )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed; own renderer only")
def test_matches_kubectl_kustomize(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    out = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    theirs = {_key(o): o for o in yaml.safe_load_all(out) if o}
    ours = {_key(o): o for o in objs}
    assert theirs.keys() == ours.keys()
    for k in ours:
        assert ours[k] == theirs[k], k


def test_workloads_are_hardened(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    for obj in objs:
        for pod in _pod_specs(obj):
            assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
            for c in pod["containers"]:
                where = f"{obj['metadata']['name']}/{c['name']}"
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert c["resources"]["requests"] and c["resources"]["limits"], where
                assert (":" in c["image"] and not c["image"].endswith(":latest")) or "mem1-" in c["image"], (
                    where
                )


def test_retrieval_server_probe_resources_and_read_only_root(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objs = rendered
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "retrieval")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # writable scratch despite read-only root
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "retrieval")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    if name == "overlays/gpu-pool":
        pod = dep["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    else:
        assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_secrets_are_referenced_never_shipped(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    assert not [o for o in objs if o["kind"] == "Secret"], "secrets must be created out of band"
    referenced = set()
    for obj in objs:
        for pod in _pod_specs(obj):
            for c in pod["containers"]:
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        referenced.add((ref["name"], ref["key"]))
                    assert not any(w in env["name"] for w in ("PASSWORD", "SECRET")) or "valueFrom" in env
    readme = (MANIFESTS / "README.md").read_text(encoding="utf-8")
    for secret, key in referenced:  # every referenced secret key has a documented creation command
        assert secret in readme and key in readme, (secret, key)


def test_rbac_lets_the_runner_manage_training_jobs(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    role = next(o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "mem1-training-jobs")
    allowed = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for group, resource in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs")):
        for verb in ("create", "get", "list", "watch", "delete"):
            assert (group, resource, verb) in allowed
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])
    binding = next(o for o in objs if o["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sas = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    assert "mem1-pipeline-runner" in sas
    assert {"mem1-pipeline-runner", "default-editor"} <= {s["name"] for s in binding["subjects"]}
    assert all(s.get("namespace") == binding["metadata"]["namespace"] for s in binding["subjects"])


def test_names_the_pipeline_relies_on_exist(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    from pipelines.mem1_pipeline import ClusterOptions

    _, objs = rendered
    cluster = ClusterOptions()
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("ConfigMap", cluster.mlflow_config_map) in names
    assert ("PersistentVolumeClaim", cluster.workspace_pvc) in names
    cm = next(
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cluster.mlflow_config_map
    )
    assert set(cluster.mlflow_config_keys) <= set(cm["data"])
    pvc = next(
        o
        for o in objs
        if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == cluster.workspace_pvc
    )
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by the step and its job's workers
