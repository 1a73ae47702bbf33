"""components/: config merging, MLflow parent/nested runs on a real SQLite store, and real kfp.local runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components import build, launch, mlflow_runs, step_config
from components.images import Images
from mem1_core.config import ConfigError, DeprecatedNameWarning, PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def tiny_json() -> str:
    return json.dumps(load_config(REPO / "configs/local-tiny.yaml").model_dump(mode="json"))


def test_merge_keeps_config_when_parameters_are_empty() -> None:
    cfg = step_config.merge_config(tiny_json())
    assert cfg == load_config(REPO / "configs/local-tiny.yaml")


def test_named_parameters_and_overrides_win_in_order() -> None:
    cfg = step_config.merge_config(
        tiny_json(),
        overrides={"ppo.steps": 3, "sft.model.base_model": "from-overrides"},
        base_model="Qwen/Qwen2.5-7B",
        sources_json=json.dumps([{"kind": "hotpotqa", "path": "hotpotqa/hotpot_qa"}]),
        train_objectives=[2, 3],
        eval_objectives=[1, 4],
        gate_floor=0.25,
        domain="shop",
        tracking_uri="http://mlflow:5000",
    )
    assert cfg.ppo.steps == 3
    assert cfg.sft.model.base_model == "Qwen/Qwen2.5-7B"  # named parameter beats the free-form override
    assert cfg.compose.sources[0].kind == "hotpotqa"
    assert cfg.compose.train_objectives == [2, 3]
    assert cfg.compose.eval_objectives == [1, 4] and cfg.eval.objectives == [1, 4]
    assert cfg.register.gate_floor == 0.25 and cfg.domain == "shop"
    assert cfg.tracking.tracking_uri == "http://mlflow:5000"


def test_old_key_names_still_merge_with_a_warning() -> None:
    old = json.loads(tiny_json())
    old["registry"] = {"model_name": "m", "em_floor": 0.1}
    old["register"] = {"gate_objectives": 1}  # a section under both names merges
    with pytest.warns(DeprecatedNameWarning) as seen:
        cfg = step_config.merge_config(json.dumps(old))
    assert {str(w.message) for w in seen} == {
        "config key 'registry' is deprecated: use 'register'",
        "config key 'register.em_floor' is deprecated: use 'register.gate_floor'",
    }
    assert (cfg.register.model_name, cfg.register.gate_floor, cfg.register.gate_objectives) == ("m", 0.1, 1)
    with pytest.warns(
        DeprecatedNameWarning, match="'registry.em_floor' is deprecated: use 'register.gate_floor'"
    ):
        cfg = step_config.merge_config(tiny_json(), overrides={"registry.em_floor": 0.3})
    assert cfg.register.gate_floor == 0.3


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ppo\.steps"):
        step_config.merge_config(tiny_json(), overrides={"ppo.steps": 0})
    with pytest.raises(ConfigError, match="config_json: not valid JSON"):
        step_config.merge_config("{not json")
    with pytest.raises(ConfigError, match=r"compose\.train_objectives"):
        step_config.merge_config(tiny_json(), train_objectives=[99])
    with pytest.raises(ConfigError, match="sources_json"):
        step_config.merge_config(tiny_json(), sources_json="[")
    with pytest.raises(ConfigError, match="not a section"):
        step_config.merge_config(tiny_json(), overrides={"domain.x": 1})


def test_section_json_is_canonical_so_caches_hit() -> None:
    a = step_config.merge_config(tiny_json())
    b = PipelineConfig.model_validate(json.loads(tiny_json()))
    for name in step_config.SECTIONS:
        assert step_config.section_json(a, name) == step_config.section_json(b, name)
    assert json.loads(step_config.section_json(a, "ppo"))["steps"] == a.ppo.steps


def test_eval_metrics_flatten_grid_rows() -> None:
    data = {
        "grid": [
            {"objectives": 2, "mode": "mem1", "em": 0.5, "peak_tokens": 300},
            {"objectives": 2, "mode": "truncate:1", "em": 0.25, "done": True},
        ],
        "config": {"n": 1},
        "seconds": 3.0,
    }
    flat = step_config.eval_metrics(data)
    assert flat == {"em.n2.mem1": 0.5, "peak_tokens.n2.mem1": 300.0, "em.n2.truncate_1": 0.25, "seconds": 3.0}


def test_parent_run_nested_steps_and_exit_handler_close(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = step_config.merge_config(tiny_json())
    parent = mlflow_runs.start_parent_run(
        uri, "exp", "run-1", cfg.model_dump(mode="json"), pipeline_job_id="job-42"
    )
    with mlflow_runs.nested_run(uri, parent, "sft", {"epochs": 1}) as step:
        step.log({"loss": 1.5}, 0)
        step.log({"loss": 1.0}, 1)
    with pytest.raises(RuntimeError), mlflow_runs.nested_run(uri, parent, "ppo", {}):
        raise RuntimeError("boom")
    assert mlflow_runs.finish_parent_run(uri, "job-42", "FAILED") == parent
    assert mlflow_runs.finish_parent_run(uri, "no-such-job", "SUCCEEDED") is None

    client = MlflowClient(tracking_uri=uri)
    p = client.get_run(parent)
    assert p.info.status == "FAILED" and p.data.tags["mem1.pipeline_state"] == "FAILED"
    assert p.data.params["ppo.steps"] == str(cfg.ppo.steps)
    children = client.search_runs([p.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    by_name = {r.info.run_name: r for r in children}
    assert by_name["sft"].info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(by_name["sft"].info.run_id, "loss")] == [
        1.5,
        1.0,
    ]
    assert by_name["ppo"].info.status == "FAILED"
    assert (tmp_path / "mlartifacts").is_dir()  # SQLite store keeps artifacts beside the database


def test_train_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown training step"):
        launch.train("dpo", "{}", tmp_path, tmp_path, None, None)
    with pytest.raises(ValueError, match="ppo needs the SFT model"):
        launch.train("ppo", "{}", tmp_path, tmp_path, None, None)
    with pytest.raises(RuntimeError, match="MEM1_NAMESPACE"):  # multi-node outside a compiled pipeline
        launch.train("sft", "{}", tmp_path, tmp_path / "out", None, None, num_nodes=2)


def test_images_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEM1_IMAGE_REGISTRY", "reg.example/x/")
    monkeypatch.setenv("MEM1_IMAGE_TAG", "v1")
    assert Images.from_env() == Images("reg.example/x/mem1-base:v1", "reg.example/x/mem1-trainer:v1")
    assert Images.from_env("r", "t").trainer == "r/mem1-trainer:t"
    with pytest.raises(ValueError):
        Images.from_env("r", "bad tag")


def test_prepare_runs_as_a_real_kfp_local_component(tmp_path: Path) -> None:
    """prepare_run through kfp.local's SubprocessRunner (this Python), as the pipeline runs them."""
    from kfp import local
    from mlflow.tracking import MlflowClient

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    c = build(Images("python-local", "python-local"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prep = c.prepare_run(
        config_json=tiny_json(),
        overrides={"ppo.steps": 1},
        base_model="",
        sources_json="",
        train_objectives=[],
        eval_objectives=[1, 2],
        gate_floor=-1.0,
        domain="",
        tracking_uri=uri,
        experiment="components-test",
        run_name="local-run",
        pipeline_job_id="job-1",
        num_nodes=1,
        gpus_per_node=0,
    )
    parent = prep.outputs["parent_run_id"]
    assert json.loads(prep.outputs["ppo"])["steps"] == 1
    assert json.loads(prep.outputs["eval"])["objectives"] == [1, 2]
    assert prep.outputs["tracking_uri"] == uri
    saved = json.loads(Path(prep.outputs["config"].path).read_text())
    assert saved["compose"]["eval_objectives"] == [1, 2]

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.tags["mem1.kfp_job_id"] == "job-1"
    assert run.info.run_name == "local-run"
    assert client.get_experiment(run.info.experiment_id).name == "components-test"
