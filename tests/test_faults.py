"""Faults the pipeline survives, each injected for real:

- `mem1 ppo` killed with SIGKILL mid-run (a subprocess at tiny sizes, checkpoint_every=1) and run
  again: it resumes from the last complete checkpoint, reaches the same step count, and its metrics
  history has no gap and no duplicate (and equals the killed run's history up to the checkpoint);
- `mem1 sft` killed with SIGKILL in pre-training and again in SFT, and run again each time: it
  resumes from the Trainer's newest checkpoint and ends with the weights of a run never killed;
- an MLflow server behind a proxy that answers 503: a few 503s are retried with backoff and the
  model is registered once; a server that keeps failing gives a clear error naming the URI and
  leaves no registered version;
- the retrieval server stopped and restarted on the same port in the middle of a rollout: the
  client's retries carry the episodes through, with the same results as in-process search.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import Proxy503, make_data_dir, make_model_dir, mlflow_server  # noqa: F401
from rl_helpers import max_weight_difference

from mem1_core.config import AgentConfig, EvalConfig, RegisterConfig
from mem1_core.rl import checkpoint
from mem1_core.tracking import RetryPolicy, Tracker, TrackingError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fault-assets")
    data = make_data_dir(root / "data")
    return {"root": root, "data": data, "model": make_model_dir(root / "model", data)}


# ------------------------------------------------------------------------------ SIGKILL and resume


def _ppo_cmd(assets: dict[str, Path], out: Path, steps: int) -> list[str]:
    sets = {
        "ppo.steps": steps, "ppo.checkpoint_every": 1, "ppo.prompts_per_step": 2, "ppo.group_size": 2,
        "ppo.minibatch_size": 2,
        "ppo.agent.max_new_tokens": 8, "ppo.agent.max_turns": 2, "ppo.actor_lr": 1e-3, "ppo.critic_lr": 1e-3,
    }  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "mem1_core.cli",
        "ppo",
        "--config",
        str(REPO / "configs" / "local-tiny.yaml"),
    ]
    cmd += ["--data-dir", str(assets["data"]), "--model", str(assets["model"]), "--out", str(out)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _history(out: Path) -> list[dict[str, float]]:
    return json.loads((out / "metrics_history.json").read_text())


TIMING = ("step_s", "rollout_s", "score_s", "update_tokens_per_s", "rollout_tokens_per_s")


def _kill_when(cmd: list[str], ready: Path, log_path: Path) -> None:
    """Run cmd and SIGKILL it as soon as `ready` exists (a later checkpoint may be half-written then)."""
    with log_path.open("w") as log:
        env = {**_env(), "PYTHONUNBUFFERED": "1"}  # what it printed before the kill reaches the log
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + 240
        try:
            while not ready.exists():
                assert proc.poll() is None, f"it ended before it could be killed:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no {ready} in time"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_ppo_survives_sigkill_and_resumes_without_gap_or_duplicate(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    steps = 6
    out = tmp_path / "ppo"
    ckpts = out / "checkpoints"
    _kill_when(_ppo_cmd(assets, out, steps), ckpts / "step_2", tmp_path / "killed.log")
    assert not (out / "model").exists() and not (out / "metrics_history.json").exists(), "it did not finish"
    last = int(checkpoint.latest(out).name.split("_")[1])  # the newest complete checkpoint
    assert 2 <= last < steps
    at_kill = json.loads((ckpts / f"step_{last}" / "metrics_history.json").read_text())

    resumed = subprocess.run(
        _ppo_cmd(assets, out, steps), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {ckpts / f'step_{last}'} at step {last}" in resumed.stdout
    lines = resumed.stdout.splitlines()
    printed = [int(line.split()[2].rstrip(":")) for line in lines if line.startswith("ppo step ")]
    assert printed == list(range(last + 1, steps + 1)), "the resumed run logged only the steps it ran"

    history = _history(out)
    assert [int(r["step"]) for r in history] == list(range(1, steps + 1)), "no gap, no duplicate"
    for before, after in zip(at_kill, history[:last], strict=True):
        assert before == after, "steps before the kill are kept as they were logged"
    assert (out / "model" / "mem1.json").is_file()
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".tmp")], "no half-written checkpoint is left"

    # The resumed run is the run that was never killed: same metrics at every step (timings aside).
    straight = tmp_path / "straight"
    done_straight = subprocess.run(
        _ppo_cmd(assets, straight, steps), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300
    )
    assert done_straight.returncode == 0, done_straight.stderr[-3000:]
    for a, b in zip(_history(straight), history, strict=True):
        for k in a:
            if not k.endswith(TIMING):
                assert abs(a[k] - b[k]) < 1e-5, f"step {a['step']} {k}: {a[k]} vs {b[k]}"


def _sft_cmd(assets: dict[str, Path], out: Path) -> list[str]:
    sets = {
        "sft.model.tiny.hidden_size": 32, "sft.model.tiny.intermediate_size": 64,
        "sft.model.tiny.num_hidden_layers": 1, "sft.model.tiny.vocab_size": 400, "sft.batch_size": 2,
        "sft.epochs": 0.5, "sft.checkpoint_every": 2,
        "sft.pretrain.steps": 30, "sft.pretrain.seq_len": 32, "sft.pretrain.batch_size": 2,
        "sft.pretrain.warmup_steps": 1,
    }  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "mem1_core.cli",
        "sft",
        "--config",
        str(REPO / "configs" / "local-tiny.yaml"),
    ]
    cmd += ["--data-dir", str(assets["data"]), "--out", str(out)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


@pytest.mark.slow
def test_sft_survives_sigkill_in_each_stage_and_ends_as_a_run_never_killed(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "sft"
    _kill_when(
        _sft_cmd(assets, out),
        out / "pretrain" / "checkpoint-2" / "trainer_state.json",
        tmp_path / "kill1.log",
    )
    assert not (out / "model").exists() and (out / "sft_run.json").is_file()
    _kill_when(
        _sft_cmd(assets, out), out / "trainer" / "checkpoint-2" / "trainer_state.json", tmp_path / "kill2.log"
    )
    second = (tmp_path / "kill2.log").read_text()
    assert "sft: pre-training resumes from " in second and "checkpoint-" in second, second[-3000:]
    assert not (out / "model").exists()

    resumed = subprocess.run(
        _sft_cmd(assets, out), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "sft: pre-training finished in an earlier run" in resumed.stdout
    assert f"sft: resumes from {out / 'trainer'}/checkpoint-" in resumed.stdout
    left = [p.name for p in out.rglob("checkpoint-*")] + [p.name for p in out.glob("sft_run.json")]
    assert not left and not (out / "pretrain" / "done").exists(), f"checkpoints outlive the model: {left}"

    straight = tmp_path / "straight"
    done = subprocess.run(
        _sft_cmd(assets, straight), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    worst = max_weight_difference(straight / "model", out / "model")
    assert worst < 1e-6, f"the twice-killed run's weights differ from a straight run's by {worst}"
    s_a = json.loads((straight / "sft_summary.json").read_text())
    s_b = json.loads((out / "sft_summary.json").read_text())
    for key in ("steps", "pretrain_steps", "pretrain_first_loss", "pretrain_last_loss"):
        assert s_a[key] == pytest.approx(s_b[key], abs=1e-6), key


def test_sft_refuses_to_resume_another_config_in_the_same_out_dir(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    from mem1_core.config import ConfigError, SFTConfig
    from mem1_core.rl import trainer_resume

    first = {"sft": SFTConfig().model_dump(mode="json"), "data": "abc"}
    trainer_resume.claim_out_dir(tmp_path, first)
    trainer_resume.claim_out_dir(tmp_path, first)  # the same run again: resumed, not refused
    other = {"sft": SFTConfig(epochs=2.0).model_dump(mode="json"), "data": "abc"}
    with pytest.raises(ConfigError, match=r"sft_run.json: .* \(sft.epochs: 3.0 then, 2.0 now\)"):
        trainer_resume.claim_out_dir(tmp_path, other)


# ----------------------------------------------------------------------------- MLflow answers 503


@pytest.fixture()
def flaky(mlflow_server: str) -> Iterator[Proxy503]:  # noqa: F811
    """503 for the first `flaky.failures` requests (set by each test), then the real MLflow server."""
    with Proxy503(mlflow_server) as proxy:
        yield proxy


def _eval_dir(root: Path, em: float) -> Path:
    out = root / "eval"
    out.mkdir(parents=True, exist_ok=True)
    agent = AgentConfig(temperature=0.0, max_turns=2, max_new_tokens=12, batch_size=4)
    cfg = EvalConfig(agent=agent, objectives=[2], modes=["mem1"], n_tasks_per_objective=2)
    row = {"objectives": 2, "mode": "mem1", "n_tasks": 2, "em": em, "em_mean": em / 2}
    (out / "metrics.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "grid": [row]}))
    return out


def test_registration_rides_out_a_few_503s(
    flaky: Proxy503,
    mlflow_server: str,  # noqa: F811
    assets: dict[str, Path],
    tmp_path: Path,
) -> None:
    from mem1_core.registry import registration

    flaky.failures = 3
    policy = RetryPolicy(attempts=5, initial_delay=0.1, max_delay=0.4)
    t0 = time.monotonic()
    result = registration.run(
        RegisterConfig(model_name="mem1-flaky"), assets["model"], _eval_dir(tmp_path, 0.5), assets["data"],
        Tracker(flaky.url, experiment="faults-flaky", retry=policy),
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert flaky.refused == 3 and flaky.seen > 3
    assert elapsed >= 0.1 + 0.2 + 0.4 - 0.05, "the backoff delays were waited"
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    versions = client.search_model_versions("name = 'mem1-flaky'")
    assert [v.version for v in versions] == [result.version], "registered exactly once"
    assert client.get_model_version_by_alias("mem1-flaky", "candidate").version == result.version


def test_mlflow_that_keeps_failing_gives_a_clear_error_and_registers_nothing(
    flaky: Proxy503,
    mlflow_server: str,  # noqa: F811
    assets: dict[str, Path],
    tmp_path: Path,
) -> None:
    from mem1_core.registry import registration

    flaky.failures = 10**9
    policy = RetryPolicy(attempts=3, initial_delay=0.1, max_delay=0.2)
    with pytest.raises(TrackingError) as info:
        registration.run(
            RegisterConfig(model_name="mem1-down"), assets["model"], _eval_dir(tmp_path, 0.5), assets["data"],
            Tracker(flaky.url, experiment="faults-down", retry=policy),
        )  # fmt: skip
    message = str(info.value)
    assert flaky.url in message and "after 3 attempts" in message and "503" in message
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.search_model_versions("name = 'mem1-down'") == []
    exp = client.get_experiment_by_name("faults-down")
    assert exp is None or all(r.info.status != "RUNNING" for r in client.search_runs([exp.experiment_id]))


# ------------------------------------------------------------------- retrieval restart mid-rollout


class _Counting:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.calls = inner, 0

    def search(self, queries: list[str], topk: int):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.inner.search(queries, topk)


def test_rollout_survives_a_retrieval_server_restart(assets: dict[str, Path]) -> None:
    from mem1_core.agent.qa_oracle import OracleTeacher
    from mem1_core.agent.rollout import run_episodes
    from mem1_core.data import compose
    from mem1_core.envs import domains
    from mem1_core.envs.qa import QAEnvironment
    from mem1_core.models import train_tokenizer
    from mem1_core.retrieval.bm25 import BM25Backend
    from mem1_core.retrieval.client import RetrievalClient
    from mem1_core.retrieval.server import start_background

    docs = compose.load_corpus(assets["data"])
    tasks = compose.load_tasks(assets["data"], "train")[:6]
    bm25 = BM25Backend(docs)
    oracle = OracleTeacher(train_tokenizer([d.contents for d in docs], 400))
    agent = AgentConfig(max_new_tokens=200, temperature=0.0, batch_size=8)

    def run(backend):  # type: ignore[no-untyped-def]
        def factory(t):  # type: ignore[no-untyped-def]
            return QAEnvironment(t, backend, max_turns=domains.turns_for("qa", agent, t.n_objectives))

        return run_episodes(tasks, factory, policy, agent, mode="mem1", progress=False)

    first = start_background(bm25)
    port = first.port
    second = _Counting(bm25)
    servers = [first]
    stopped, restarted = threading.Event(), threading.Event()

    def bounce() -> None:
        first.stop()
        stopped.set()
        time.sleep(0.8)  # down long enough for several failed attempts
        servers.append(start_background(second, port=port))
        restarted.set()

    class Bouncing:
        """The oracle, plus: after the first turn is generated the server goes down (a thread restarts it)."""

        def __init__(self) -> None:
            self.encode = oracle.encode

        def generate(self, batch, stop, max_new_tokens):  # type: ignore[no-untyped-def]
            out = oracle.generate(batch, stop, max_new_tokens)
            if batch[0].turn_index == 1 and not stopped.is_set():
                threading.Thread(target=bounce, daemon=True).start()
                assert stopped.wait(15)
            return out

    policy = Bouncing()
    client = RetrievalClient(first.url, retries=10, backoff=0.05, max_backoff=0.5)
    try:
        t0 = time.monotonic()
        through_restart = run(client)
        elapsed = time.monotonic() - t0
    finally:
        restarted.wait(15)
        for s in servers:
            s.stop()
    assert stopped.is_set() and restarted.is_set() and second.calls > 0, "the server did restart mid-rollout"
    assert elapsed >= 0.7, "the rollout waited for the server to come back"
    policy = oracle  # type: ignore[assignment]
    in_process = run(bm25)
    assert sum(len(t.turns) for t in in_process) > len(tasks), "episodes searched more than once"
    for a, b in zip(in_process, through_restart, strict=True):
        assert (a.reward, a.predictions, a.format_error) == (b.reward, b.predictions, b.format_error)
        assert [t.observation for t in a.turns] == [t.observation for t in b.turns]
