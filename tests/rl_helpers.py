"""Random MEM1 / full / truncate trajectories and a tiny model, shared by the rl tests."""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

import torch

from mem1_core.agent.types import Trajectory, Turn

VOCAB = 256
PAD = 0
INFO_LO, INFO_HI = 200, 255  # observation tokens come from here, outputs from 1..199


def random_trajectory(rng: random.Random, mode: str, n_turns: int, task_id: str = "t") -> Trajectory:
    """Contexts built exactly as the rollout builds them, by concatenating ids."""
    p = rng.randint(3, 12)
    prompt = [rng.randint(1, 199) for _ in range(p)]
    history: list[list[int]] = []  # per past turn: its output ids + observation ids
    turns: list[Turn] = []
    for _ in range(n_turns):
        if mode == "mem1":
            kept = history[-1] if history else []
        elif mode == "full":
            kept = [x for h in history for x in h]
        elif mode.startswith("truncate:"):
            k = int(mode.split(":")[1])
            kept = [x for h in history[-k:] for x in h]
        else:
            raise ValueError(mode)
        out = [rng.randint(1, 199) for _ in range(rng.randint(1, 10))]
        info = [rng.randint(INFO_LO, INFO_HI) for _ in range(rng.randint(0, 8))]
        turns.append(Turn(context_ids=prompt + kept, output_ids=out, output_text=""))
        history.append(out + info)
    return Trajectory(
        task_id=task_id, mode=mode, n_objectives=1, prompt_len=p, turns=turns, reward=rng.random()
    )


def tiny_lm(attn: str = "eager", seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


def reference_per_turn(lm: torch.nn.Module, head: torch.nn.Module, traj: Trajectory) -> tuple[list, list]:
    """Ground truth: run every turn's real context separately (plain causal attention).

    Returns per-turn log-probs of the output ids and the values of the states before them.
    """
    lm.set_attn_implementation("eager")
    lps, vals = [], []
    with torch.no_grad():
        for turn in traj.turns:
            ids = torch.tensor([turn.context_ids + turn.output_ids])
            hidden = lm.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
            c, n = len(turn.context_ids), len(turn.output_ids)
            pred_h = hidden[c - 1 : c - 1 + n]
            logp = torch.log_softmax(lm.get_output_embeddings()(pred_h).float(), -1)
            lps.append(logp.gather(-1, torch.tensor(turn.output_ids)[:, None]).squeeze(-1))
            vals.append(head(pred_h).squeeze(-1))
    return lps, vals


def compose_small(
    out: Path, n_train_tasks: int = 16, n_eval_tasks: int = 2, eval_objectives: tuple[int, ...] = (1,)
) -> Path:
    """A composed data dir from the small world the rl tests train on (60 people, 30 films)."""
    from mem1_core.config import ComposeConfig, WorldConfig
    from mem1_core.data import compose

    cfg = ComposeConfig(
        world=WorldConfig(n_people=60, n_films=30, n_cities=10, n_companies=10),
        n_train_tasks=n_train_tasks,
        n_eval_tasks=n_eval_tasks,
        eval_objectives=list(eval_objectives),
    )
    compose.run(cfg, out)
    return out


def untrained_tiny_model(data_dir: Path, out: Path) -> Path:
    """An untrained tiny model with a tokenizer trained on the corpus, saved (PPO mechanics, not learning)."""
    from mem1_core import models
    from mem1_core.config import TinyModelConfig
    from mem1_core.data.compose import load_corpus

    tok = models.train_tokenizer([d.contents for d in load_corpus(data_dir)], 600)
    tiny = TinyModelConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=600,
    )  # fmt: skip
    model = models.build_tiny_model(tiny, tok, seed=0)
    return models.save_model(model, tok, out)


# A torchrun worker: SFT on every rank, recording which rank saves the model and which logs (the steps
# its log function, the MLflow one in a pipeline, was called at) in reports/rank<r>.json.
SFT_WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch

    from mem1_core.config import SFTConfig
    from mem1_core.rl import sft
    from write_recorder import record_writes

    torch.set_num_threads(1)
    cfg = SFTConfig.model_validate(json.loads(sys.argv[1]))
    data_dir, out_dir, report_dir = (Path(a) for a in sys.argv[2:5])
    writes = record_writes()
    logged = []
    sft.run(cfg, data_dir, out_dir, log=lambda values, step: logged.append(step))
    rank = int(os.environ["RANK"])
    (report_dir / f"rank{rank}.json").write_text(json.dumps({"writes": writes, "logged_steps": logged}))
    """
)


TESTS = Path(__file__).resolve().parent


def worker_env(*first_on_path: Path) -> dict[str, str]:
    """The environment of a torchrun launched by a test: one thread a rank, CPU only, and the repo and
    tests/ (write_recorder) importable, after any `first_on_path` (a sitecustomize's folder)."""
    path = [*first_on_path, TESTS.parent, TESTS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def max_weight_difference(a: Path, b: Path) -> float:
    """Largest |a - b| between two saved models' weights (model.safetensors); both hold the same tensors."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)
