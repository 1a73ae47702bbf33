"""What `mem1 pipeline local` prints, from its pure parts: step lines, the summary, the agent command.

tests/test_pipeline_local.py runs the real pipeline and checks the printed output end to end; here
the demo-sized summary (5 objective counts x 3 modes) is checked for length and content.
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

from pipelines.local_output import StepLog, Summary, agent_command, display_dir, key_metric, summary_lines

MODES = ["mem1", "full", "truncate:2"]
GRID = [{"objectives": n, "mode": m, "em": 0.5 / n} for n in (1, 2, 4, 8, 16) for m in MODES]
QUESTIONS = ["Who directed the film Velmora?", "Where was Ada O'Lorne born?"]


def summary(tmp_path: Path, uri: str, default: str) -> Summary:
    return Summary(
        ok=True,
        seconds=330.0,
        log_path=tmp_path / "runs/logs/pipeline.log",
        tracking_uri=uri,
        default_uri=default,
        bin_dir=".venv/bin/",
        grid=GRID,
        eval_dir=tmp_path / "runs/kfp/x/eval/results",
        registered="models:/mem1-agent/3 (candidate, champion)",
        model_ref="models:/mem1-agent@champion",
        questions=QUESTIONS,
    )


def test_demo_summary_is_short_and_says_what_to_do_next(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    lines = summary_lines(summary(tmp_path, uri, uri))
    assert len(lines) + 1 + 9 <= 80, "banner + 9 step lines + summary must fit 80 lines"
    text = "\n".join(lines)
    assert f"full log: {tmp_path}/runs/logs/pipeline.log" in text
    assert "report.html" in text and "*.png" in text
    assert f"  .venv/bin/mlflow ui --backend-store-uri {uri}" in lines
    header = next(i for i, x in enumerate(lines) if x.split()[:1] == ["objectives"])
    assert lines[header].split() == ["objectives", *MODES]
    assert lines[header + 2].split() == ["2", "0.250", "0.250", "0.250"]
    assert len([x for x in lines[header + 1 :] if x.strip() and x.split()[0].isdigit()]) == 5


def test_agent_command_pastes_verbatim(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    cmd = agent_command(summary(tmp_path, uri, uri))
    # the default store needs no variable; quoting survives a shell (the apostrophe in O'Lorne)
    argv = shlex.split(cmd)
    assert argv[:4] == [".venv/bin/mem1", "agent", "--model", "models:/mem1-agent@champion"]
    assert argv[4:] == ["--question", QUESTIONS[0], "--question", QUESTIONS[1]]
    elsewhere = agent_command(summary(tmp_path, "sqlite:////data/x.db", uri))
    assert shlex.split(elsewhere)[0] == "MLFLOW_TRACKING_URI=sqlite:////data/x.db"


def test_failed_run_names_the_log(tmp_path: Path) -> None:
    s = summary(tmp_path, "u", "u")
    s.ok = False
    assert summary_lines(s)[-1].startswith("== pipeline FAILED") and "full log:" in summary_lines(s)[-1]


def test_display_dir(tmp_path: Path) -> None:
    assert display_dir(tmp_path / ".venv" / "bin", tmp_path) == ".venv/bin/"
    assert display_dir(Path("/usr/bin"), tmp_path) == "/usr/bin/"


def test_step_log_one_line_per_task_rest_to_the_log(tmp_path: Path) -> None:
    root = tmp_path / "kfp"
    task_dir = root / "mem1-pipeline-1" / "sft"
    task_dir.mkdir(parents=True)
    meta = {"sft/loss": 1.25, "sft/epoch": 4.0}
    out = {"artifacts": {"metrics": {"artifacts": [{"name": "metrics", "metadata": meta}]}}}
    (task_dir / "executor_output.json").write_text(json.dumps(out))
    log, console = io.StringIO(), io.StringIO()
    steps = StepLog(log, console, root)
    steps.write("12:00:00.000 - INFO - Executing task \x1b[96m'sft'\x1b[0m\n")
    for i in range(1000):
        steps.write(f"    {i}/1000 [00:01<00:00]\n")
    steps.write("12:00:09.000 - INFO - Task \x1b[96m'sft'\x1b[0m finished with ")
    steps.write("status \x1b[92mSUCCESS\x1b[0m\n")
    lines = console.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].split()[:2] == ["ok", "sft"] and "loss 1.250" in lines[0]
    assert log.getvalue().count("\n") == 1002


def test_key_metrics() -> None:
    reg = {"parameterValues": {"Output": json.dumps({"model_uri": "models:/m/2", "promoted": True})}}
    assert key_metric("register", reg).startswith("models:/m/2 (champion")
    ev = {"em.n1.mem1": 0.5, "em.n2.mem1": 0.25, "em.n2.full": 0.0, "f1.n1.mem1": 0.6}
    ev_out = {"artifacts": {"metrics": {"artifacts": [{"metadata": ev}]}}}
    assert key_metric("eval", ev_out) == "EM@1 0.500  EM@2 0.250 (mem1)"
    assert key_metric("finish-run", {}) == "" and key_metric("eval", {}) == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_running_step_is_one_line_its_result_overwrites(tmp_path: Path) -> None:
    console = _Terminal()
    steps = StepLog(io.StringIO(), console, tmp_path)
    steps.write("INFO - Executing task 'eval'\n" + "progress\n" * 50)
    assert console.getvalue().count("\n") == 0 and "eval" in console.getvalue()
    steps.write("INFO - Task 'eval' finished with status FAILURE\n")
    assert console.getvalue().count("\n") == 1
    assert console.getvalue().split("\r\x1b[K")[1].split()[:2] == ["FAILURE", "eval"]
