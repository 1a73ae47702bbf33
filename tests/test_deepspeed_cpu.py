"""DeepSpeed ZeRO-2/3 for real, on 2 CPU ranks (gloo) under torchrun, with the shipped configs.

One launch trains several jobs in the same two processes (each launch costs a minute of start-up on a
loaded CI box): PPO/GAE under ZeRO-2 and ZeRO-3 on the same global batch as a single-process run, GRPO
under ZeRO-2, and a GRPO ZeRO-3 run that is killed right after checkpoint 1. A second launch reruns the
killed job, which must resume and log only step 2. SFT runs under ZeRO-2 on 2 ranks, and under the
cluster's default ZeRO-3 as a two-node TrainJob (two torchrun agents on 127.0.0.1 running the job's own
worker command, logging to the step's MLflow run from rank 0); both are compared with one process on the
same global batch.

Same answer: rollouts are greedy with agent.batch_size 1 (each episode generated alone, so a rank's
episodes are exactly the single process's), one global mini-batch per step and `sequence_mean`, so the
mean over ranks of the per-rank losses is the single-process loss. What remains is float32 summation
order (the all-reduce/reduce-scatter adds the ranks' gradients in another order) amplified by AdamW's
normalisation: see ATOL.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from cluster_helpers import RECORD_WRITES_SITE, LocalTrainJobOperator
from rl_helpers import SFT_WORKER, compose_small, untrained_tiny_model, worker_env

from mem1_core.config import PPOConfig

REPO = Path(__file__).resolve().parents[1]
LR = 1e-2
# Weights: float32 reorderings change gradients by ~1e-7 relative, so almost every weight agrees to 1e-5
# (CLOSE). AdamW divides by sqrt(v): where a gradient is itself ~1e-8 (an untrained model, a token seen
# once) the same absolute noise becomes a visible share of an LR-sized step, so a few weights differ by
# up to ~2e-4 after 2 steps (measured 1.7e-4). ATOL = LR / 20 still rules out a different batch, a
# missed reduction or a doubled step, any of which moves weights by ~LR.
ATOL = LR / 20
CLOSE, CLOSE_SHARE = 1e-5, 0.99
# Losses are means over the same episodes: they agree to float32 reordering (rel 1e-4, abs 1e-6).
LOSS_REL, LOSS_ABS = 1e-4, 1e-6
# SFT (lr 1e-3) compares weights the same way. The ranks see the same 8 examples per optimizer step as one
# process on batch 8 (accelerate deals the ranks alternate batches of one seeded permutation; 32 examples,
# so no rank pads its last batch) and the Trainer averages the loss over the global batch's completion
# tokens, so only float32 summation order differs. No SFT gradient sits at float32-noise level, so AdamW
# has nothing to amplify: ZeRO-2 and ZeRO-3 measured 7.5e-9, one ulp of a weight below 0.125. SFT_ATOL =
# lr / 1000 leaves a hundredfold margin; one process on half the batch (what ranks that did not shard the
# data would compute) ends 4.5e-3 away.
SFT_ATOL = 1e-6

WORKER = textwrap.dedent(
    """
    import gc, json, os, sys
    from pathlib import Path

    import torch

    from mem1_core.config import PPOConfig
    from mem1_core.rl import distributed, ppo
    from write_recorder import record_writes

    jobs = json.loads(Path(sys.argv[1]).read_text())
    data_dir, model_dir, report_dir = (Path(a) for a in sys.argv[2:5])
    torch.set_num_threads(1)
    d = distributed.setup()
    writes = record_writes()
    for job in jobs:
        cfg = PPOConfig.model_validate(job["cfg"])
        torch.manual_seed(cfg.seed)
        writes.clear()
        logged = []
        trainer = ppo.PPOTrainer(cfg, data_dir, model_dir, Path(job["out"]), d)
        if job.get("die_after"):
            save = trainer.save_checkpoint

            def save_then_die(save=save, at=job["die_after"]):
                path = save()
                if trainer.step == at:  # a node lost right after the checkpoint: no clean exit
                    os._exit(3)
                return path

            trainer.save_checkpoint = save_then_die
        trainer.train(log=lambda values, step: logged.append(step))
        report = {
            "rank": d.rank,
            "writes": list(writes),
            "logged_steps": logged,
            "history": trainer.history,
            "engines": sorted(trainer.engines),
            "zero3": trainer.zero3,
        }
        (report_dir / f"{job['name']}.rank{d.rank}.json").write_text(json.dumps(report))
        del trainer
        gc.collect()
    distributed.teardown(d)
    """
)


def small_ppo(**over: Any) -> PPOConfig:
    base: dict[str, Any] = {
        "advantage": "gae",  # greedy rollouts, so the single-process run has the same episodes
        "steps": 2,
        "prompts_per_step": 4,
        "group_size": 2,
        "minibatch_size": 8,  # the whole global batch: one optimizer step per epoch
        "loss_agg": "sequence_mean",
        "checkpoint_every": 1,
        "actor_lr": LR,
        "critic_lr": LR,
        "kl_coef": 0.1,
        "agent": {"max_new_tokens": 8, "max_turns": 2, "temperature": 0.0, "batch_size": 1},
    }
    return PPOConfig.model_validate({**base, **over})


def grpo(**over: Any) -> PPOConfig:
    agent = {"max_new_tokens": 8, "max_turns": 2, "temperature": 1.0, "batch_size": 4}
    return small_ppo(advantage="grpo", agent=agent, **over)


def zero(stage: int) -> str:
    return str(REPO / "configs" / f"deepspeed_zero{stage}.json")


def launch(jobs: list[dict[str, Any]], data_dir: Path, model_dir: Path, tmp: Path) -> tuple[int, str]:
    """Both ranks run every job in turn; returns torchrun's exit code and the output's tail."""
    (tmp / "worker.py").write_text(WORKER, encoding="utf-8")
    (tmp / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    (tmp / "reports").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(tmp / "worker.py"), str(tmp / "jobs.json"), str(data_dir), str(model_dir)]
    cmd.append(str(tmp / "reports"))
    env = worker_env()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout[-3000:] + proc.stderr[-5000:]


def report(tmp: Path, name: str, rank: int) -> dict[str, Any]:
    return json.loads((tmp / "reports" / f"{name}.rank{rank}.json").read_text())


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    assert a.keys() == b.keys()
    return torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in sorted(a)])


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(diffs(a, b).max())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compose_small(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_tiny_model(data_dir, tmp_path_factory.mktemp("sft") / "model")


@pytest.fixture(scope="module")
def runs(data_dir: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-rank jobs (one launch), the killed job's rerun (a second), and the single-process run."""
    from mem1_core.rl import ppo

    tmp = tmp_path_factory.mktemp("ds")
    jobs = [
        {"name": "zero2", "cfg": small_ppo(deepspeed_config=zero(2)).model_dump(), "out": str(tmp / "zero2")},
        {"name": "zero3", "cfg": small_ppo(deepspeed_config=zero(3)).model_dump(), "out": str(tmp / "zero3")},
        {"name": "grpo2", "cfg": grpo(deepspeed_config=zero(2), steps=1).model_dump(), "out": str(tmp / "g")},
        {
            "name": "grpo3",
            "cfg": grpo(deepspeed_config=zero(3)).model_dump(),
            "out": str(tmp / "g3"),
            "die_after": 1,
        },
    ]
    rc, tail = launch(jobs, data_dir, model_dir, tmp)
    assert rc != 0, "the grpo3 job should have been killed after checkpoint 1"
    assert not (tmp / "reports" / "grpo3.rank0.json").exists(), tail
    for name in ("zero2", "zero3", "grpo2"):
        assert (tmp / "reports" / f"{name}.rank1.json").exists(), tail
    rc, tail = launch([{**jobs[3], "die_after": None}], data_dir, model_dir, tmp)
    assert rc == 0, tail
    ppo.run(small_ppo(), data_dir, model_dir, tmp / "single")
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_zero_on_two_cpu_ranks_matches_one_process(runs: Path, model_dir: Path, name: str) -> None:
    single, multi = weights(runs / "single" / "model"), weights(runs / name / "model")
    assert max_diff(weights(model_dir), single) > 10 * ATOL, "the single-process run barely moved"
    d = diffs(single, multi)
    assert float(d.max()) < ATOL and float((d <= CLOSE).float().mean()) >= CLOSE_SHARE, (
        f"max {float(d.max()):.2e}, share within {CLOSE}: {float((d <= CLOSE).float().mean()):.4f}"
    )
    one = json.loads((runs / "single" / "metrics_history.json").read_text())
    two = json.loads((runs / name / "metrics_history.json").read_text())
    for a, b in zip(one, two, strict=True):
        assert a["ppo/reward"] == b["ppo/reward"] and a["ppo/generated_tokens"] == b["ppo/generated_tokens"]
        for key in ("ppo/policy_loss", "ppo/value_loss", "ppo/entropy", "ppo/kl"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_REL, abs=LOSS_ABS), key
    r0, r1 = report(runs, name, 0), report(runs, name, 1)
    assert r0["engines"] == ["actor", "critic"] and r0["zero3"] == (name == "zero3")
    # rank 0 alone writes the checkpoints and the model, and alone logs (the MLflow callback)
    saves = ["models.save_model", "Critic.save"]
    assert r0["writes"] == ["checkpoint.save", *saves, "checkpoint.save", *saves, *saves]
    assert r1["writes"] == [] and r1["logged_steps"] == []
    assert r0["logged_steps"] == [1, 2]


@pytest.mark.slow
def test_grpo_runs_under_zero2(runs: Path) -> None:
    r0 = report(runs, "grpo2", 0)
    assert r0["engines"] == ["actor"] and r0["logged_steps"] == [1]
    assert report(runs, "grpo2", 1)["writes"] == []
    assert (runs / "g" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_zero3_killed_after_checkpoint_1_resumes_and_saves_a_plain_hf_model(
    runs: Path, model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from mem1_core import models
    from mem1_core.config import ModelConfig

    r0, r1 = report(runs, "grpo3", 0), report(runs, "grpo3", 1)
    assert r0["zero3"] and r0["logged_steps"] == [2], "the rerun must log only the remaining step"
    assert [h["step"] for h in r0["history"]] == [1.0, 2.0] == [h["step"] for h in r1["history"]]
    assert r1["writes"] == [] and r1["logged_steps"] == []
    final = runs / "g3" / "model"
    ckpts = sorted(p.name for p in (runs / "g3" / "checkpoints").iterdir())
    assert ckpts == ["deepspeed", "step_1", "step_2"]
    model, _ = models.load_model(final, ModelConfig())  # checks mem1.json's hashes
    plain = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True)
    saved = weights(final)
    assert all(t.numel() > 0 for t in saved.values()), "ZeRO-3 shards saved instead of gathered weights"
    for name, tensor in plain.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]) and torch.equal(model.state_dict()[name], tensor)
    assert max_diff(weights(model_dir), saved) > 0, "GRPO left the actor unchanged"


def small_sft(**over: Any) -> dict[str, Any]:
    """The SFT section: 8 tasks make 32 turn examples, 4 optimizer steps of 8 (2 ranks x 4, or 1 x 8)."""
    base = {
        "n_tasks": 8,
        "epochs": 1,
        "batch_size": 4,
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "vocab_size": 600}},
    }
    return {**base, **over}


@pytest.fixture(scope="module")
def sft_one_process(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SFT in this one process, no DeepSpeed, through the component's one-node launch: on batch 8 (the
    2-rank runs' global batch, the reference) and on batch 4 (what ranks that did not shard would do)."""
    from components import launch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Path] = {}
    try:
        for name, batch in (("global", 2 * small_sft()["batch_size"]), ("half", small_sft()["batch_size"])):
            work = tmp_path_factory.mktemp(f"sft-{name}")
            section = json.dumps(small_sft(batch_size=batch))
            out[name] = launch.train("sft", section, data_dir, work, None, None)
    finally:
        torch.set_num_threads(before)
    examples = json.loads((out["global"].parent / "sft_summary.json").read_text())["examples"]
    assert examples % 8 == 0, f"{examples} examples: the ranks would pad their last batch, unlike one process"
    return out


def assert_same_sft(multi: Path, single: Path) -> float:
    """Weights within SFT_ATOL of the single-process run; returns the largest difference."""
    gap = max_diff(weights(single), weights(multi))
    assert gap < SFT_ATOL, f"max weight difference {gap:.2e} to the single-process run"
    return gap


@pytest.mark.slow
def test_sft_under_zero2_on_two_cpu_ranks_matches_one_process(
    data_dir: Path, sft_one_process: dict[str, Path], tmp_path: Path
) -> None:
    """TRL's SFTTrainer with the shipped ZeRO-2 config: DeepSpeed (not plain DDP) steps it, rank 0 alone
    saves and logs, and the weights are the single process's on the same global batch."""
    from mem1_core import models
    from mem1_core.config import SFTConfig

    cfg = SFTConfig.model_validate(small_sft(deepspeed_config=zero(2)))
    out = tmp_path / "sft"
    (tmp_path / "worker.py").write_text(SFT_WORKER, encoding="utf-8")
    (tmp_path / "reports").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [
        str(tmp_path / "worker.py"),
        cfg.model_dump_json(),
        str(data_dir),
        str(out),
        str(tmp_path / "reports"),
    ]
    env = worker_env()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "optimizer adamw_torch (no fused kernel)" in proc.stdout
    assert "DeepSpeed" in proc.stdout + proc.stderr
    r0, r1 = (json.loads((tmp_path / "reports" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["writes"] == ["models.save_model"] and r1["writes"] == []
    summary = json.loads((out / "sft_summary.json").read_text())
    # the data is sharded over the 2 ranks (each step takes batch_size on each)
    assert summary["steps"] == math.ceil(summary["examples"] / (2 * cfg.batch_size))
    # step 0: the data summary; then every Trainer step, and the last again with the run's totals
    steps = summary["steps"]
    assert r0["logged_steps"] == [0, *range(1, steps + 1), steps] and r1["logged_steps"] == []
    single = sft_one_process["global"]
    assert max_diff(weights(single), weights(sft_one_process["half"])) > 100 * SFT_ATOL
    assert_same_sft(out / "model", single)
    one = json.loads((single.parent / "sft_summary.json").read_text())
    assert summary["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_REL)
    model, _ = models.load_model(out / "model", cfg.model)
    assert model.config.hidden_size == 32


# The launching pod: the sft component's body (a parent run as prepare_run makes it, then the step
# in its nested run) with num_nodes 2 (a TrainJob), in a process of its own that finds the "cluster"
# through its kubeconfig, as a pod finds it through its service account.
LAUNCHING_POD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from components.launch import train_step
    from components.mlflow_runs import start_parent_run

    section, data_dir, out_dir, uri = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    parent = start_parent_run(uri, "mem1", "pipeline", {})
    run_id, metrics = train_step(
        "sft", section, uri, parent, data_dir, None, out_dir, 2, 0, "trainjob"
    )
    print("step result: " + json.dumps({"parent": parent, "run_id": run_id, "metrics": metrics}))
    """
)


def printed_metrics(log: str) -> dict[str, list[int]]:
    """The steps at which the CLI printed each metric (`sft step N: key=value ...`, stage sft; a progress
    bar may precede it on its line)."""
    steps: dict[str, list[int]] = {}
    for step, values in re.findall(r"sft step (\d+): (.*)", log):
        for item in values.split():
            steps.setdefault(f"sft/{item.split('=', 1)[0]}", []).append(int(step))
    return steps


@pytest.mark.slow
def test_two_node_trainjob_runs_its_worker_command_and_matches_one_process(
    data_dir: Path, sft_one_process: dict[str, Path], tmp_path: Path
) -> None:
    """Two "nodes" on 127.0.0.1 (two torchrun agents, --nnodes 2, one process each) run the command of
    the TrainJob the component creates, with the cluster's default ZeRO-3, and end as one process does.
    Rank 0 logs every step to the step's nested MLflow run (SQLite here), and the step reads them back."""
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM

    from mem1_core import models
    from mem1_core.config import ModelConfig

    site, reports = tmp_path / "site", tmp_path / "writes"
    site.mkdir()
    reports.mkdir()
    (site / "sitecustomize.py").write_text(RECORD_WRITES_SITE, encoding="utf-8")
    node_env = worker_env(site) | {"RECORD_WRITES_DIR": str(reports)}
    out = tmp_path / "out"
    with LocalTrainJobOperator(node_env, REPO, tmp_path / "nodes") as operator:
        pod_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}  # not in-cluster
        pod_env |= {
            "PYTHONPATH": str(REPO),
            "KUBECONFIG": str(operator.kubeconfig(tmp_path / "kubeconfig")),
            "MEM1_NAMESPACE": "team-a",
            "MEM1_TRAINER_IMAGE": "mem1-trainer:local",
            "MEM1_WORKSPACE": str(tmp_path / "workspace"),
        }
        section = json.dumps(small_sft())  # names no deepspeed_config: the workers' default, ZeRO-3
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        cmd = [sys.executable, "-c", LAUNCHING_POD, section, str(data_dir), str(out), uri]
        pod = subprocess.run(cmd, cwd=REPO, env=pod_env, capture_output=True, text=True, timeout=900)
    logs = [operator.node_log(i) for i in range(len(operator.node_commands))]
    assert pod.returncode == 0, pod.stdout[-3000:] + pod.stderr[-3000:] + "".join(x[-4000:] for x in logs)
    assert "Complete: JobSucceeded" in pod.stdout
    [result] = [
        json.loads(x.split(": ", 1)[1]) for x in pod.stdout.splitlines() if x.startswith("step result:")
    ]

    [job] = operator.created
    trainer = job["spec"]["trainer"]
    assert job["kind"] == "TrainJob" and trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert "sft.deepspeed_config=configs/deepspeed_zero3.json" in trainer["args"]
    # each node ran exactly the job's command: torchrun, then the args the component built
    for command in operator.node_commands:
        assert Path(command[0]).name == "torchrun" and command[1:] == trainer["args"]
    assert [e["PET_NODE_RANK"] for e in operator.node_env] == ["0", "1"]
    # the workers get the step's nested run by MLflow's own variables
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["MLFLOW_RUN_ID"] == result["run_id"] and env["MLFLOW_TRACKING_URI"] == uri
    assert operator.exit_codes == [0, 0]

    # rank 0 alone saves the model and logs (the CLI prints what the pipeline sends to MLflow)
    writes = [json.loads((reports / f"rank{r}.json").read_text())["writes"] for r in (0, 1)]
    assert writes == [["models.save_model"], []]
    assert "sft step 1:" in logs[0] and "sft step" not in logs[1]
    assert "DeepSpeed" in logs[0]

    # ... to MLflow: each printed metric once per step it was printed at (no second rank's copy), in the
    # step's nested run, and the step's returned metrics (its KFP Metrics output) are their last values
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == result["parent"] and run.info.status == "FINISHED"
    printed = printed_metrics(logs[0])
    steps = json.loads((out / "mem1.json").read_text())["extra"]["sft"]["steps"]
    assert printed["sft/loss"] == list(range(1, steps + 1)) and "sft/data_examples" in printed
    logged = {k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    assert {k: sorted(v) for k, v in logged.items()} == printed
    assert result["metrics"] == run.data.metrics and "sft/train_loss" in result["metrics"]

    # the same artefacts as the one-node run: the model's files, its summary, its weights
    single = sft_one_process["global"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())
    two, one = (json.loads((d / "mem1.json").read_text())["extra"]["sft"] for d in (out, single))
    assert {k: v for k, v in two.items() if k != "train_loss"} == {
        k: v for k, v in one.items() if k != "train_loss"
    }
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_REL)
    assert_same_sft(out, single)
    model, _ = models.load_model(out, ModelConfig())  # checks mem1.json's hashes
    plain = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert all(t.numel() > 0 for t in plain.state_dict().values()), (
        "ZeRO-3 shards saved, not gathered weights"
    )
    assert model.config.hidden_size == 32
