"""Learning on the embedded default: does SFT put held-out EM above the untrained model, and PPO keep it?

Runs the real steps on configs/local-tiny.yaml (CPU): compose -> sft.run (causal-LM pre-training on
the corpus, then TRL SFTTrainer) ->
ppo.run (MEM1 mask) -> greedy mem1-mode rollouts on held-out tasks for three models: the same
architecture and tokenizer with random weights, the SFT model and the PPO model. Besides EM and F1
it scores the oracle's held-out turns teacher-forced, split by what a turn must copy (the question
into the internal state, the state into the query, a fact out of the document, the state into the
answer), so a weak EM shows where the model fails. The bench fails (exit 1 under run_all) when SFT
is not above the untrained model at 2 objectives, the issue's bar; the numbers are written whatever
they are.

Run: .venv/bin/python bench/bench_learning.py [CONFIG]   (writes bench/results/learning.md)
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.bar import BarMissed  # noqa: E402
from bench.stats import fisher_greater  # noqa: E402
from mem1_core import models  # noqa: E402
from mem1_core.agent.policy import HFPolicy  # noqa: E402
from mem1_core.agent.rollout import run_episodes  # noqa: E402
from mem1_core.config import load_config  # noqa: E402
from mem1_core.data import compose  # noqa: E402
from mem1_core.eval.metrics import objective_scores, summarize  # noqa: E402
from mem1_core.eval.teacher_forced import token_accuracy  # noqa: E402
from mem1_core.rl import ppo, sft  # noqa: E402

CONFIG = REPO / "configs" / "local-tiny.yaml"
# The demo's config with a learning budget (tens of minutes instead of a few). Scratch runs on this box
# showed why each: with 300 people and 512 tasks the model memorises the world and writes names it saw
# in training instead of copying; with 3,000 people and 8,192 tasks it must copy. A 1,024-token BPE splits
# names into frequent pieces, which the model learns to copy (with 4,096 most name pieces are rare ids
# and the copy circuit had not formed after 5,500 steps). One-hop questions keep each objective to one
# search and one fact to read. Training on 1- and 2-objective tasks (the demo trains on 2 only) gave
# EM@1 0.28-0.31 where 2-only gave 0 (scratch runs, 3,000 people, ~3 epochs). SFT alone never learned
# to copy the second question's name (EM@2 0/64 after 4 epochs); 500 s of causal-LM pre-training on the
# corpus and training prompts first (sft.pretrain) gave EM@2 19/64 after 3.1 SFT epochs (scratch run).
OVERRIDES: dict[str, object] = {
    "compose.world": {"seed": 0, "n_people": 3000, "n_films": 1200, "n_cities": 400, "n_companies": 400},
    "compose.n_train_tasks": 8192,
    "compose.n_eval_tasks": 32,
    "compose.hops": [1],
    "compose.train_objectives": [1, 2],
    "sft.model.tiny.vocab_size": 1024,
    "sft.pretrain": {"steps": 4000, "seq_len": 256, "batch_size": 8, "learning_rate": 4e-3},
    "sft.epochs": 3.0,
    "eval.agent.max_new_tokens": 128,
    "ppo.agent.max_new_tokens": 128,
    "sft.agent.max_new_tokens": 128,
}
OBJECTIVES = (1, 2, 4, 8)
GATE_OBJECTIVES = 2
STAGE_OBJECTIVES = (1, 2)
SLOTS = {  # key -> what the token copies, and from where
    "question": "state: the first question, first turn (from the prompt)",
    "next_question": "state: the next question, after an answer (from the prompt, behind state and document)",
    "needs": "state: the next document to find (from question or document)",
    "found": "state: answers found (from the document or the last state)",
    "query": "query (from the state)",
    "answer": "answer (from the state)",
    "format": "tags and template words",
}


def _rollouts(
    model: Any, tok: Any, tasks: list[Any], factory: Any, agent: Any
) -> tuple[dict[str, float], list[Any]]:
    policy = HFPolicy(model, tok, temperature=0.0, batch_size=agent.batch_size)
    trajs = run_episodes(tasks, factory, policy, agent, mode="mem1", progress=False)
    return summarize(trajs), trajs


def episode_stages(tasks: list[Any], trajs: list[Any], grammar: Any) -> dict[str, float]:
    """Where free-running episodes break, per objective j: its document reached an observation, its
    answer was written into some internal state, and the final answer got it right (EM)."""
    from mem1_core.eval.answers import exact_match

    counts: dict[str, float] = defaultdict(float)
    g = grammar
    state_re = re.compile(re.escape(g.open(g.state)) + "(.*?)" + re.escape(g.close(g.state)), re.S)
    for task, traj in zip(tasks, trajs, strict=True):
        states = [m for turn in traj.turns for m in state_re.findall(turn.output_text)]
        final_em, _ = objective_scores(traj.predictions, [list(o.answers) for o in task.objectives])
        for j, obj in enumerate(task.objectives, start=1):
            title = obj.supporting_titles[0] if obj.supporting_titles else None
            counts[f"q{j} document retrieved"] += bool(title) and any(
                f"(Title: {title})" in turn.observation for turn in traj.turns
            )
            counts[f"q{j} answer in a state"] += any(
                exact_match(piece.strip(), list(obj.answers))
                for state in states
                for piece in re.split(r"[:;|]", state)
            )
            counts[f"q{j} final answer right"] += final_em[j - 1]
    return {k: v / len(tasks) for k, v in counts.items()}  # per objective: retrieved, in a state, right


def _slot(prefix: str, piece: str, g: Any) -> str:
    """Which copy a teacher output token belongs to, from the output text before it."""
    inside = {t: g.open(t) in prefix and g.close(t) not in prefix for t in (g.query, g.answer, g.state)}
    if inside[g.query]:
        slot = "query"
    elif inside[g.answer]:
        slot = "answer"
    elif inside[g.state]:
        state = prefix.split(g.open(g.state))[-1]
        tail = state.split(" | ")[-1]
        if tail.startswith("Found"):
            slot = "found"
        elif " needs" in tail:
            slot = "needs"
        elif tail.startswith("Q") and ":" in tail:
            slot = "next_question" if state.startswith("Found") else "question"
        else:
            return "format"
    else:
        return "format"
    return "format" if not piece.strip(" ;|:").strip() or piece.startswith("<") else slot


def slot_accuracy(
    model: Any, tok: Any, grammar: Any, tasks: list[Any], factory: Any, agent: Any
) -> dict[str, tuple[float, int]]:
    """Greedy next-token accuracy on the oracle's held-out turns, by slot: {slot: (accuracy, tokens)}."""
    trajs = sft.oracle_trajectories(tasks, factory, tok, agent)
    return token_accuracy(
        model,
        trajs,
        decode=lambda ids: tok.decode(ids, skip_special_tokens=False),
        label=lambda prefix, piece: _slot(prefix, piece, grammar),
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pretrain_words(cfg: Any, summary: dict[str, float]) -> str:
    if not cfg.steps:
        return "no pre-training; "
    return (
        f"causal-LM pre-training {cfg.steps} steps x {cfg.batch_size} windows of {cfg.seq_len} tokens "
        f"({summary['pretrain_epochs']:.1f} passes over the corpus and training prompts, loss "
        f"{summary['pretrain_first_loss']:.2f} -> {summary['pretrain_last_loss']:.2f}), then "
    )


def main(
    results_dir: Path, config: Path = CONFIG, overrides: dict[str, object] | None = None
) -> dict[str, float]:
    t_start = time.perf_counter()
    overrides = OVERRIDES if overrides is None else overrides
    cfg = load_config(config, dict(overrides))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="mem1-learning-") as tmp:
        work = Path(tmp)
        data = work / "data"
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        compose.run(cfg.compose, data)
        times["compose"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sft_dir = sft.run(cfg.sft, data, work / "sft")
        times["sft"] = time.perf_counter() - t0
        sft_summary = json.loads((work / "sft" / "sft_summary.json").read_text(encoding="utf-8"))
        t0 = time.perf_counter()
        ppo_dir = ppo.run(cfg.ppo, data, sft_dir, work / "ppo")
        times["ppo"] = time.perf_counter() - t0
        _, tok = models.load_model(sft_dir)
        untrained = models.save_model(
            models.build_tiny_model(cfg.sft.model.tiny, tok, seed=cfg.sft.seed + 1), tok, work / "untrained"
        )
        dirs = {"untrained": untrained, "sft": sft_dir, "ppo": ppo_dir}
        t0 = time.perf_counter()
        # one corpus index, one env factory and one load per model for the whole grid
        agent = cfg.eval.agent.model_copy(update={"temperature": 0.0, "mode": "mem1"})
        factory = sft.make_env_factory(compose.load_corpus(data), agent)
        eval_tasks = compose.load_tasks(data, "eval")
        by_n = {n: [t for t in eval_tasks if t.n_objectives == n] for n in OBJECTIVES}
        grid: dict[tuple[str, int], dict[str, float]] = {}
        slots: dict[str, dict[str, tuple[float, int]]] = {}
        stages: dict[tuple[str, int], dict[str, float]] = {}
        for k, d in dirs.items():
            model, tok = models.load_model(d)
            grammar = models.load_grammar(d)
            for n in OBJECTIVES:
                grid[(k, n)], trajs = _rollouts(model, tok, by_n[n], factory, agent)
                if n in STAGE_OBJECTIVES:
                    stages[(k, n)] = episode_stages(by_n[n], trajs, grammar)
            slots[k] = slot_accuracy(model, tok, grammar, by_n[GATE_OBJECTIVES], factory, agent)
        times["evaluate"] = time.perf_counter() - t0
        n_eval = int(grid[("sft", GATE_OBJECTIVES)]["n_trajectories"])

    results: dict[str, float] = {}
    for (k, n), s in grid.items():
        for metric in ("em", "f1", "format_error"):
            results[f"learning_{k}_n{n}_{metric}"] = s[metric]
    for k, by_slot in slots.items():
        for slot, (acc, _) in by_slot.items():
            results[f"learning_{k}_slot_{slot}_accuracy"] = acc
    results.update({f"learning_seconds_{k}": v for k, v in times.items()})
    pre = {k: float(v) for k, v in sft_summary.items() if k.startswith("pretrain_")}
    results.update({f"learning_sft_{k}": v for k, v in pre.items()})
    results["learning_seconds_total"] = time.perf_counter() - t_start

    em = {k: grid[(k, GATE_OBJECTIVES)]["em"] for k in dirs}
    tiny = cfg.sft.model.tiny
    lines = [
        "# Learning on the embedded default (CPU)",
        "",
        f"Config `{config.relative_to(REPO) if config.is_relative_to(REPO) else config}`: "
        f"{cfg.compose.n_train_tasks} training tasks ({cfg.compose.train_objectives} objectives, hops "
        f"{cfg.compose.hops}), tiny {tiny.num_hidden_layers}x{tiny.hidden_size} model, vocab "
        f"{tiny.vocab_size}; {_pretrain_words(cfg.sft.pretrain, sft_summary)}"
        f"SFT {cfg.sft.epochs} epochs, PPO {cfg.ppo.steps} steps x "
        f"{cfg.ppo.prompts_per_step} prompts. Greedy mem1-mode rollouts on {n_eval} held-out tasks per "
        "count; "
        "EM and F1 are means over sub-answers (0..1; SQuAD normalisation).",
        "",
        "Overrides of the config: " + ", ".join(f"`{k}={v}`" for k, v in overrides.items()),
        "",
        "| model | " + " | ".join(f"EM@{n}" for n in OBJECTIVES) + " | "
        + " | ".join(f"F1@{n}" for n in OBJECTIVES) + f" | format errors@{GATE_OBJECTIVES} |",
        "|---|" + "---:|" * (2 * len(OBJECTIVES) + 1),
    ]  # fmt: skip
    for k in dirs:
        ems = " | ".join(f"{grid[(k, n)]['em']:.3f}" for n in OBJECTIVES)
        f1s = " | ".join(f"{grid[(k, n)]['f1']:.3f}" for n in OBJECTIVES)
        lines.append(f"| {k} | {ems} | {f1s} | {grid[(k, GATE_OBJECTIVES)]['format_error']:.2f} |")
    slot_names = [s for s in SLOTS if any(s in by for by in slots.values())]
    lines += [
        "",
        f"Teacher-forced greedy next-token accuracy on the oracle's held-out {GATE_OBJECTIVES}-objective "
        "turns, by what the token copies (tokens per slot in brackets):",
        "",
        "| slot | " + " | ".join(dirs) + " |",
        "|---|" + "---:|" * len(dirs),
    ]
    for slot in slot_names:
        cells = " | ".join(_cell(slots[k][slot][0] if slot in slots[k] else None) for k in dirs)
        count = next(slots[k][slot][1] for k in dirs if slot in slots[k])
        lines.append(f"| {SLOTS[slot]} ({count}) | {cells} |")
    stage_names = list(dict.fromkeys(s for by_stage in stages.values() for s in by_stage))
    lines += [
        "",
        "Where greedy episodes break (share of held-out tasks; objective j's document reached an "
        "observation, its answer was written into an internal state, the final answer got it right):",
        "",
        "| model, objectives | " + " | ".join(stage_names) + " |",
        "|---|" + "---:|" * len(stage_names),
    ]
    for (k, n), by_stage in stages.items():
        lines.append(f"| {k}, {n} | " + " | ".join(_cell(by_stage.get(s)) for s in stage_names) + " |")
        for stage, v in by_stage.items():
            results[f"learning_{k}_n{n}_stage_{stage.replace(' ', '_')}"] = v
    lines += [
        "",
        "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
        + f", total {results['learning_seconds_total']:.0f} (2 CPU cores).",
        "",
    ]  # fmt: skip
    # "Clearly above": more correct sub-answers than chance allows (one-sided Fisher exact, p < 0.05).
    n_answers = n_eval * GATE_OBJECTIVES
    right = {k: round(v * n_answers) for k, v in em.items()}
    p_sft = fisher_greater(right["sft"], n_answers, right["untrained"], n_answers)
    p_ppo = fisher_greater(right["sft"], n_answers, right["ppo"], n_answers)
    results["learning_p_sft_above_untrained"] = p_sft
    results["learning_p_ppo_below_sft"] = p_ppo
    verdict = "holds" if p_sft < 0.05 else "does NOT hold"
    lines[-2:-2] = [
        "",
        f"At {GATE_OBJECTIVES} objectives: untrained {right['untrained']}/{n_answers}, SFT {right['sft']}/"
        f"{n_answers}, PPO {right['ppo']}/{n_answers} correct sub-answers. SFT above untrained: one-sided "
        f"Fisher exact p = {p_sft:.3g}, so the bar (p < 0.05) {verdict}. PPO below SFT: p = {p_ppo:.3g}.",
    ]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "learning.md").write_text("\n".join(lines), encoding="utf-8")
    if p_sft >= 0.05:
        raise BarMissed(
            f"SFT is not clearly above the untrained model at {GATE_OBJECTIVES} objectives: "
            f"{right['sft']} vs {right['untrained']} of {n_answers} sub-answers right, p = {p_sft:.3g} "
            "(bench/results/learning.md)",
            results,
        )
    return results


if __name__ == "__main__":
    out = main(REPO / "bench" / "results", Path(sys.argv[1]) if len(sys.argv) > 1 else CONFIG)
    for key, value in out.items():
        print(f"{key}: {value:.3f}")
