"""Memory scaling on multi-objective QA: peak tokens, dependency length and time per mode, 1 to 16
objectives, with the scripted oracle through the shared rollout loop.

This is MEM1's efficiency claim measured on our own stack: in mem1 mode the context is the prompt plus
the last turn, so it grows only with what every turn must carry (the prompt listing all N questions,
the answers found so far), while the full-context baseline appends every turn. The oracle is exact, so
the EM column checks environment, retrieval and teacher (1.0 expected), not a trained model.

Run: .venv/bin/python -m bench.bench_memory_scaling   (writes bench/results/memory_scaling.md)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mem1_core.agent.qa_oracle import OracleTeacher  # noqa: E402
from mem1_core.agent.rollout import run_episodes  # noqa: E402
from mem1_core.config import AgentConfig, ComposeConfig  # noqa: E402
from mem1_core.data.compose import collect_items, compose_tasks  # noqa: E402
from mem1_core.envs import domains  # noqa: E402
from mem1_core.envs.qa import QAEnvironment, tokenizer_texts  # noqa: E402
from mem1_core.eval.metrics import summarize  # noqa: E402
from mem1_core.models import train_tokenizer  # noqa: E402
from mem1_core.retrieval.bm25 import BM25Backend  # noqa: E402

OBJECTIVES = (1, 2, 4, 8, 16)
MODES = ("mem1", "full", "truncate:1")
TASKS_PER_CELL = 16
VOCAB = 2048  # configs/local-tiny.yaml


def _key(mode: str, n: int, metric: str) -> str:
    return f"memory_{mode.replace(':', '')}_n{n}_{metric}"


def _growth_key(mode: str, lo: int = 2) -> str:
    return f"memory_{mode.replace(':', '')}_peak_growth_{lo}_to_16"


def main(results_dir: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    cfg = ComposeConfig(n_train_tasks=256, n_eval_tasks=TASKS_PER_CELL, eval_objectives=list(OBJECTIVES))
    items, docs = collect_items(cfg)
    train, evals = compose_tasks(items, cfg)
    tokenizer = train_tokenizer(tokenizer_texts(train, docs), VOCAB)
    oracle = OracleTeacher(tokenizer)
    backend = BM25Backend(docs)
    agent = AgentConfig(temperature=0.0)  # the defaults the eval grid uses (192 new tokens per turn)

    def env_factory(task):  # type: ignore[no-untyped-def]
        return QAEnvironment(
            task, backend, max_turns=domains.turns_for("qa", agent, task.n_objectives), topk=agent.topk
        )

    results: dict[str, float] = {}
    rows = []
    for n in OBJECTIVES:
        tasks = [t for t in evals if t.n_objectives == n]
        for mode in MODES:
            trajs = run_episodes(tasks, env_factory, oracle, agent, mode=mode, progress=False)
            s = summarize(trajs)
            prompt = sum(t.prompt_len for t in trajs) / len(trajs)
            max_out = max(len(turn.output_ids) for t in trajs for turn in t.turns)
            for metric in ("em", "em_sum", "peak_tokens", "dependency_length", "seconds", "format_error"):
                results[_key(mode, n, metric)] = s[metric]
            rows.append((n, mode, s, prompt, max_out))
    for mode in MODES:
        for lo in (1, 2):
            results[_growth_key(mode, lo)] = (
                results[_key(mode, 16, "peak_tokens")] / results[_key(mode, lo, "peak_tokens")]
            )
    results["memory_bench_seconds"] = time.perf_counter() - t0

    lines = [
        "# Memory scaling: multi-objective QA, oracle through the shared rollout",
        "",
        f"Synthetic world (ComposeConfig defaults, {len(docs)} documents), {TASKS_PER_CELL} held-out tasks "
        f"per cell, scripted oracle teacher, BPE tokenizer ({VOCAB}) trained on the composed data, BM25 "
        f"top-{agent.topk}, turn budget 2N+2, {agent.max_new_tokens} new tokens per turn. Means per task; "
        "tokens are tokenizer ids. Dependency = tokens each generated token attends to, on average. "
        "Seconds = CPU wall time per task (generation is scripted, so this is retrieval, tokenisation "
        "and bookkeeping, not model time).",
        "",
        "| objectives | mode | EM | EM sum | turns | prompt | peak tokens | peak - prompt | dependency "
        "| max out | s/task |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {mode} | {s['em']:.3f} | {s['em_sum']:.2f} | {s['turns']:.1f} | {p:.0f} | "
        f"{s['peak_tokens']:.0f} | {s['peak_tokens'] - p:.0f} | {s['dependency_length']:.0f} | {mo} | "
        f"{s['seconds']:.4f} |"
        for n, mode, s, p, mo in rows
    ]
    growth = ", ".join(f"{m} {results[_growth_key(m)]:.2f}x" for m in MODES)
    p2 = next(p for n, m, _, p, _ in rows if n == 2 and m == "mem1")
    p16 = next(p for n, m, _, p, _ in rows if n == 16 and m == "mem1")
    # growth if nothing but the prompt grew: the 2-objective peak plus the prompt's extra questions
    peak2 = results[_key("mem1", 2, "peak_tokens")]
    results["memory_prompt_floor_2_to_16"] = (peak2 + p16 - p2) / peak2
    lines += [
        "",
        f"Peak tokens, 16 objectives / 2 objectives: {growth}.",
        "",
        f"What still grows in mem1 mode is what every turn must carry: the prompt lists all N questions "
        f"({p2:.0f} tokens at 2 objectives, {p16:.0f} at 16) and the internal state holds the answers found "
        "so far. The prompt alone puts a floor under the 2-to-16 growth that no memory policy can go below "
        f"on this data: {results['memory_prompt_floor_2_to_16']:.2f}x (the 2-objective peak plus 14 more "
        "questions); the internal state adds a few tokens per answer. Full context grows with every turn.",
        "mem1 and truncate:1 build the same context (prompt + last turn + last observation), so with the "
        "same policy their rows match; they differ only for a model not trained to keep its memory in <IS>.",
        f"Wall time: {results['memory_bench_seconds']:.1f} s (CPU).",
        "",
    ]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "memory_scaling.md").write_text("\n".join(lines), encoding="utf-8")
    return results


if __name__ == "__main__":
    out = main(REPO / "bench" / "results")
    for k, v in out.items():
        print(f"{k}: {v:.4f}")
