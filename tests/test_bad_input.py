"""Bad input through the real CLI: every case exits 2 with one message naming file, row/line and field,
before any work starts; the output folder is never created and MLflow gets no run.

MLFLOW_TRACKING_URI points at a SQLite store in tmp for every case; `_no_mlflow_runs` then checks that
the store either was never created or holds no run at all.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mem1_core.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL_WORLD = {"seed": 0, "n_people": 24, "n_films": 8, "n_cities": 4, "n_companies": 4}


@pytest.fixture()
def mlflow_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db


def _no_mlflow_runs(db: Path) -> None:
    if not db.exists():
        return  # nothing ever opened the store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exps = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(exps) == [], "a run was created for input that failed validation"


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Run the CLI, expect exit 2 and every `expected` fragment in one stderr message, no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.count("error: ") == 1, err  # one message (progress bars may share stderr)
    err = err[err.index("error: ") :]
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    return err


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _compose_config(tmp_path: Path, extra: str = "", sources: str = "[{kind: synthetic}]") -> Path:
    return _config(
        tmp_path,
        f"compose:\n  sources: {sources}\n  world: {json.dumps(SMALL_WORLD)}\n"
        f"  n_train_tasks: 4\n  n_eval_tasks: 1\n  eval_objectives: [1, 2]\n{extra}",
    )


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


NQ_OK = [{"id": f"q{i}", "question": f"who wrote book {i}?", "answers": [f"author {i}"]} for i in range(8)]


# ------------------------------------------------------------------------------------------- compose


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "  n_train_taskz: 3\n",
            ["config.yaml:7", "compose.n_train_taskz", "Extra inputs are not permitted"],
        ),
        ("  train_objectives: [2, 40]\n", ["config.yaml:7", "compose.train_objectives", "40 objectives"]),
        ("  train_objectives: [0]\n", ["compose.train_objectives", "0 objectives is outside 1..32"]),
        ("  seed: many\n", ["config.yaml:7", "compose.seed", "valid integer"]),
        ("  n_eval_tasks: -1\n", ["config.yaml:6", "compose.n_eval_tasks", "greater than or equal to 1"]),
    ],
    ids=["unknown-key", "objectives-too-many", "objectives-zero", "wrong-type", "out-of-range"],
)
def test_compose_bad_config(
    extra: str, expected: list[str], tmp_path: Path, mlflow_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _compose_config(tmp_path, extra)
    if "n_eval_tasks: -1" in extra:  # a duplicate key: YAML keeps the last one
        cfg.write_text(cfg.read_text().replace("  n_eval_tasks: 1\n", ""))
    out = tmp_path / "out"
    _fails(["compose", "--config", str(cfg), "--out", str(out)], capsys, str(cfg), *expected)
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


def test_compose_bad_override_and_unknown_section(
    tmp_path: Path, mlflow_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _compose_config(tmp_path)
    out = tmp_path / "out"
    _fails(["compose", "--config", str(cfg), "--out", str(out), "--set", "compose.seed"], capsys, "KEY=VALUE")
    _fails(
        ["compose", "--config", str(cfg), "--out", str(out), "--set", "compose.eval_objectives=[1,99]"],
        capsys,
        "compose.eval_objectives",
        "99 objectives is outside",
    )
    cfg2 = _config(tmp_path, "compsoe: {seed: 1}\n")
    _fails(["compose", "--config", str(cfg2), "--out", str(out)], capsys, f"{cfg2}:1", "compsoe")
    cfg3 = _config(tmp_path, "- just\n- a list\n")
    _fails(["compose", "--config", str(cfg3), "--out", str(out)], capsys, "must be a mapping")
    _fails(["compose", "--config", str(tmp_path / "nope.yaml"), "--out", str(out)], capsys, "not found")
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


@pytest.mark.parametrize(
    ("kind", "rows", "expected"),
    [
        ("nq", [NQ_OK[0], "{not json", *NQ_OK[1:]], [":2: not valid JSON"]),
        (
            "nq",
            [*NQ_OK[:2], {"id": "x", "answers": ["a"]}, *NQ_OK[2:]],
            [":3:", "field 'question' is missing"],
        ),
        ("nq", [*NQ_OK[:3], {"id": "y", "question": "q?", "answers": 5}, *NQ_OK[3:]], [":4:", "'answers'"]),
        ("nq", [*NQ_OK[:4], {"id": "z", "question": 7, "answers": ["a"]}], [":5:", "field 'question'"]),
        ("nq", [*NQ_OK[:5], {"id": "w", "question": "q?", "answers": ["ok", ""]}], [":6:", "answers[1]"]),
        ("nq", [*NQ_OK, NQ_OK[0] | {"question": "another?"}], ["question id 'q0' appears twice"]),
        ("nq", [*NQ_OK[:2], ["a", "list"]], [":3:", "expected a JSON object"]),
        ("nq", [], ["no rows; the file is empty"]),
        (
            "hotpotqa",
            [
                {
                    "id": "h1",
                    "question": "q?",
                    "answer": "a",
                    "context": [["T", ["s"]]],
                    "supporting_facts": "no",
                }
            ],
            [":1:", "field 'supporting_facts'"],
        ),
        (
            "hotpotqa",
            [
                {
                    "id": "h1",
                    "question": "q?",
                    "answer": "a",
                    "context": [["T", "not a list"]],
                    "supporting_facts": [],
                }
            ],
            [":1:", "field 'context[0]'"],
        ),
    ],
    ids=[
        "bad-json",
        "missing-field",
        "answers-int",
        "question-int",
        "empty-answer",
        "dup-id",
        "row-list",
        "empty-file",
        "hotpot-support",
        "hotpot-context",
    ],
)
def test_compose_bad_source_file(
    kind: str,
    rows: list[Any],
    expected: list[str],
    tmp_path: Path,
    mlflow_db: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = _jsonl(tmp_path / f"{kind}.jsonl", rows)
    cfg = _compose_config(tmp_path, sources=f"[{{kind: {kind}, path: '{src}'}}]")
    out = tmp_path / "out"
    _fails(["compose", "--config", str(cfg), "--out", str(out)], capsys, str(src), *expected)
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


def test_compose_corpus_with_duplicate_ids(
    tmp_path: Path, mlflow_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _jsonl(tmp_path / "nq.jsonl", NQ_OK)
    docs = [{"id": "d1", "title": "A", "contents": "alpha"}, {"id": "d2", "title": "B", "contents": "beta"}]
    corpus = _jsonl(tmp_path / "corpus.jsonl", [*docs, {"id": "d1", "title": "C", "contents": "gamma"}])
    cfg = _compose_config(tmp_path, f"  corpus_path: '{corpus}'\n", sources=f"[{{kind: nq, path: '{src}'}}]")
    out = tmp_path / "out"
    _fails(
        ["compose", "--config", str(cfg), "--out", str(out)],
        capsys,
        f"{corpus}:3",
        "duplicate document id 'd1'",
        f"first at {corpus}:1",
    )
    assert not out.exists()
    _jsonl(corpus, [*docs, {"id": "d3", "title": "C"}])
    _fails(["compose", "--config", str(cfg), "--out", str(out)], capsys, f"{corpus}:3", "'contents/text'")
    corpus.write_text("")
    _fails(["compose", "--config", str(cfg), "--out", str(out)], capsys, f"{corpus}: the corpus is empty")
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


# ---------------------------------------------------------------------------------- sft / ppo / eval


@pytest.fixture(scope="module")
def good_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mem1_core.config import ComposeConfig
    from mem1_core.data import compose

    out = tmp_path_factory.mktemp("good") / "data"
    cfg = ComposeConfig.model_validate(
        {"world": SMALL_WORLD, "n_train_tasks": 6, "n_eval_tasks": 1, "eval_objectives": [1, 2]}
    )
    compose.run(cfg, out)
    return out


@pytest.fixture(scope="module")
def good_model(good_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from mlflow_server import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("model") / "model", good_data)


def _copy(data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(data, dst)
    return dst


def _edit_train_rows(data: Path, edit: Any) -> None:
    path = data / "train.parquet"
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _drop_question(rows: list[dict[str, Any]]) -> None:
    rows[1]["objectives"][0]["question"] = None


def _answers_not_list(rows: list[dict[str, Any]]) -> None:
    for r in rows:  # the column must keep one type for parquet
        for o in r["objectives"]:
            o["answers"] = "just a string"


def _no_objectives(rows: list[dict[str, Any]]) -> None:
    rows[2]["objectives"] = []


BAD_DATA = {
    "missing-question": (_drop_question, ["train.parquet row 2", "field 'objectives[0].question'"]),
    "answers-wrong-type": (_answers_not_list, ["train.parquet row 1", "'objectives[0].answers'"]),
    "no-objectives": (_no_objectives, ["train.parquet row 3", "field 'objectives'"]),
}


def _step_argv(step: str, data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    argv = [step, "--config", str(REPO / "configs" / "local-tiny.yaml"), "--data-dir", str(data)]
    if step == "ppo":
        argv += ["--model", str(model), "--set", "ppo.prompts_per_step=2"]
    return [*argv, "--out", str(out), *extra]


@pytest.mark.parametrize("step", ["sft", "ppo"])
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_training_steps_refuse_bad_task_rows(
    step: str,
    case: str,
    good_data: Path,
    good_model: Path,
    tmp_path: Path,
    mlflow_db: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    edit, expected = BAD_DATA[case]
    data = _copy(good_data, tmp_path)
    _edit_train_rows(data, edit)
    out = tmp_path / "out"
    _fails(_step_argv(step, data, good_model, out), capsys, *expected)
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


@pytest.mark.parametrize("step", ["sft", "ppo"])
def test_training_steps_refuse_missing_damaged_and_duplicate_data(
    step: str,
    good_data: Path,
    good_model: Path,
    tmp_path: Path,
    mlflow_db: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    _fails(_step_argv(step, tmp_path / "absent", good_model, out), capsys, "train.parquet: not found")
    data = _copy(good_data, tmp_path)
    (data / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    _fails(_step_argv(step, data, good_model, out), capsys, "train.parquet: not a readable parquet file")
    shutil.copy(good_data / "train.parquet", data / "train.parquet")
    lines = (data / "corpus.jsonl").read_text().splitlines()
    (data / "corpus.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    _fails(
        _step_argv(step, data, good_model, out),
        capsys,
        f"corpus.jsonl:{len(lines) + 1}",
        "duplicate document id",
    )
    _fails(
        _step_argv(step, data, good_model, out, "--set", f"{step}.seeed=1"),
        capsys,
        f"{step}.seeed",
        "Extra inputs",
    )
    _fails(
        _step_argv(step, good_data, good_model, out, "--set", f"{step}.agent.mode=everything"),
        capsys,
        f"{step}.agent.mode",
        "unknown agent mode 'everything'",
    )
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


def test_ppo_refuses_bad_model_dirs_and_too_many_prompts(
    good_data: Path, good_model: Path, tmp_path: Path, mlflow_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _fails(
        _step_argv("ppo", good_data, tmp_path / "no-model", out),
        capsys,
        "no-model: model directory not found",
    )
    _fails(
        _step_argv("ppo", good_data, good_model, out, "--set", "ppo.prompts_per_step=999"),
        capsys,
        "ppo.prompts_per_step 999 is more than the 6 train tasks",
    )
    tampered = tmp_path / "tampered"
    shutil.copytree(good_model, tampered)
    weights = tampered / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01
    weights.write_bytes(bytes(blob))
    _fails(_step_argv("ppo", good_data, tampered, out), capsys, f"{weights}: sha256", "does not match")
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


def test_eval_refuses_bad_input(
    good_data: Path, good_model: Path, tmp_path: Path, mlflow_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        import mem1_core.commands.eval  # noqa: F401
    except ImportError:
        pytest.skip("mem1 eval (mem1_core/commands/eval.py) has not landed yet")
    out = tmp_path / "out"
    base = ["eval", "--config", str(REPO / "configs" / "local-tiny.yaml"), "--model", str(good_model)]
    _fails([*base, "--data-dir", str(tmp_path / "absent"), "--out", str(out)], capsys, "not found")
    _fails(
        [*base, "--data-dir", str(good_data), "--out", str(out), "--set", "eval.objectives=[0]"],
        capsys,
        "eval.objectives",
        "0 objectives is outside",
    )
    _fails(
        [*base, "--data-dir", str(good_data), "--out", str(out), "--set", 'eval.modes=["truncate:0"]'],
        capsys,
        "eval.modes",
        "truncate:0",
    )
    assert not out.exists()
    _no_mlflow_runs(mlflow_db)


# --------------------------------------------------------------------------- the pipeline's first step


def test_pipeline_prepare_validates_before_the_parent_run(tmp_path: Path, mlflow_db: Path) -> None:
    """In the KFP pipeline, prepare_run validates the merged config before opening the MLflow parent run."""
    from components.prepare import prepare_run
    from mem1_core.config import ConfigError

    config_json = json.dumps({"compose": {"train_objectives": [2]}})
    with pytest.raises(ConfigError, match=r"compose\.eval_objectives.*0 objectives is outside"):
        prepare_run(
            config_json=config_json,
            overrides={"ppo.steps": 1},
            base_model="",
            sources_json="",
            train_objectives=[],
            eval_objectives=[0],
            gate_floor=-1.0,
            domain="",
            tracking_uri=f"sqlite:///{mlflow_db}",
            experiment="bad-input",
            run_name="bad",
            pipeline_job_id="job-1",
            num_nodes=1,
            gpus_per_node=0,
            config=None,
        )
    with pytest.raises(ConfigError, match=r"ppo\.stepz"):
        prepare_run(
            config_json=config_json, overrides={"ppo.stepz": 1}, base_model="", sources_json="",
            train_objectives=[], eval_objectives=[], gate_floor=-1.0, domain="",
            tracking_uri=f"sqlite:///{mlflow_db}", experiment="bad-input", run_name="bad",
            pipeline_job_id="job-1", num_nodes=1, gpus_per_node=0, config=None,
        )  # fmt: skip
    _no_mlflow_runs(mlflow_db)
