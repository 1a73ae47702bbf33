"""A registered agent is self-contained: plain MLflow loads and serves it without this project installed.

The pyfunc model bundles mem1_core (MLflow `code_paths`) and declares its runtime requirements. The
consumer here is a separate interpreter that cannot import the project: `python -I -S` (no user site,
no PYTHONPATH, no cwd, and no `site` processing, so the editable install's .pth finder never runs),
started in a temp dir, with the venv's site-packages appended to sys.path by hand. It proves
`find_spec('mem1_core') is None` before loading, then loads by alias and predicts; it also loads the
raw checkpoint with transformers alone. `mlflow models serve` answers /invocations the same way.
"""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from mlflow_server import free_port, make_data_dir, make_model_dir
from test_registry import QUESTIONS, answers_before_registration, eval_dir

from mem1_core.config import RegisterConfig
from mem1_core.registry import registration, serving
from mem1_core.tracking import Tracker

NAME = "mem1-agent-standalone"
# Imported by the declared packages only because this venv happens to have them (each guards the
# import), so a consumer without them still loads: transformers imports accelerate (and with it
# psutil) when installed; torch.utils.data imports dill when installed; mlflow's tracing psutil too.
OPTIONAL_WHEN_PRESENT = {"accelerate", "dill", "psutil"}
PROMPT = "Who directed the film Velmora?"

CHILD = r"""
import importlib.util, json, sys
sys.path.extend(json.loads(sys.argv[1]))
blocked = [m for m in ("mem1_core", "components", "pipelines") if importlib.util.find_spec(m) is not None]
assert not blocked, f"the project is importable in the consumer: {blocked}"

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import mlflow, pandas as pd

local = mlflow.artifacts.download_artifacts(sys.argv[2])
tok = AutoTokenizer.from_pretrained(local + "/artifacts/model")
lm = AutoModelForCausalLM.from_pretrained(local + "/artifacts/model")
with torch.no_grad():
    logits = lm(**tok(sys.argv[4], return_tensors="pt")).logits[0]
assert importlib.util.find_spec("mem1_core") is None

agent = mlflow.pyfunc.load_model(sys.argv[2])
out = agent.predict(pd.DataFrame({"questions": json.loads(sys.argv[3])}))
sites = tuple(json.loads(sys.argv[1]))
third_party = sorted({
    name.split(".")[0] for name, mod in list(sys.modules.items())
    if str(getattr(mod, "__file__", None) or "").startswith(sites)
})
print("RESULT=" + json.dumps({
    "rows": out.to_dict(orient="records"),
    "logits": logits.tolist(),
    "modules": third_party,
    "mem1_core_from": sys.modules["mem1_core"].__file__,
}))
"""


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A model registered as champion in a fresh SQLite store, and its answers before registration."""
    root = tmp_path_factory.mktemp("standalone")
    data = make_data_dir(root / "data")
    model = make_model_dir(root / "model", data, seed=3)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, experiment="standalone", artifact_location=(root / "mlartifacts").as_uri())
    cfg = RegisterConfig(model_name=NAME, gate_objectives=2, gate_mode="mem1", gate_floor=0.0)
    result = registration.run(cfg, model, eval_dir(root, "ev", 0.5), data, tracker)
    assert result.promoted
    return {"uri": uri, "root": root, "model": model, "want": answers_before_registration(model, data)}


def _same_answers(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    assert len(got) == len(want) == len(QUESTIONS)
    for g, w in zip(got, want, strict=True):
        assert (g["answer"], g["trajectory"]) == (w["answer"], w["trajectory"])
        assert int(g["peak_tokens"]) == int(w["peak_tokens"])  # type: ignore[call-overload]


def _dependency_closure(dists: tuple[str, ...]) -> set[str]:
    """The declared distributions and everything they require (extras left out), normalised names."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = list(dists)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_declared_requirements_are_real_and_the_code_is_bundled(champion: dict[str, object]) -> None:
    from mlflow.artifacts import download_artifacts

    tracker = Tracker(str(champion["uri"]))
    source = tracker.client.get_model_version_download_uri(NAME, "1")
    local = Path(download_artifacts(source, tracking_uri=tracker.tracking_uri))
    reqs = (local / "requirements.txt").read_text().split()
    assert not any(r.startswith("mem1-pipelines") for r in reqs), "no index has the project's wheel"
    assert {r.split("==")[0] for r in reqs} >= set(serving.RUNTIME_DISTRIBUTIONS)
    assert (local / "code" / "mem1_core" / "registry" / "serving.py").is_file()


@pytest.mark.slow
def test_plain_mlflow_consumer_without_the_project(champion: dict[str, object], tmp_path: Path) -> None:
    from packaging.utils import canonicalize_name

    from mem1_core.models import load_model

    sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_", "VIRTUAL_ENV"))}
    env["MLFLOW_TRACKING_URI"] = str(champion["uri"])
    args = [f"models:/{NAME}@champion", json.dumps(QUESTIONS), PROMPT]
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, json.dumps(sites), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT="))[7:])
    assert "/code/mem1_core/" in out["mem1_core_from"], "mem1_core came from the model, not the project"
    _same_answers(out["rows"], champion["want"])  # type: ignore[arg-type]

    # the raw checkpoint under artifacts/model, read by transformers alone, is the same network
    import torch

    model, tokenizer = load_model(champion["model"])  # type: ignore[arg-type]
    with torch.no_grad():
        want = model(**tokenizer(PROMPT, return_tensors="pt")).logits[0]
    assert torch.allclose(torch.tensor(out["logits"]), want, atol=1e-5)

    # every third-party module the load and predict imported belongs to a declared requirement
    # (or to one of their dependencies): the requirements are the real ones
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    allowed = _dependency_closure(serving.RUNTIME_DISTRIBUTIONS)
    undeclared = {
        m: owners.get(m)
        for m in out["modules"]
        if m in owners
        and m not in OPTIONAL_WHEN_PRESENT
        and not {canonicalize_name(d) for d in owners[m]} & allowed
    }
    assert not undeclared, f"imported but not declared: {undeclared}"


@pytest.mark.slow
def test_mlflow_models_serve_answers_the_same(champion: dict[str, object], tmp_path: Path) -> None:
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # serve execs `uvicorn`, as an activated venv has it
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(champion["uri"])}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    log = (tmp_path / "serve.log").open("wb")
    cmd = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no /ping in 180 s:\n" + (tmp_path / "serve.log").read_text()
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        body = {"dataframe_records": [{"questions": q} for q in QUESTIONS]}
        r = requests.post(f"{url}/invocations", json=body, timeout=120)
        assert r.status_code == 200, r.text[:2000]
        _same_answers(r.json()["predictions"], champion["want"])  # type: ignore[arg-type]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
