"""1,000 QA episodes through the rollout without leaking memory.

The oracle teacher runs 2-objective tasks composed from the synthetic world (in mem1 mode, in-process
BM25, the same env factory SFT and PPO use) in 10 batches of 100 episodes. After each batch the
trajectories are summarised and dropped, garbage is collected and the process RSS is read (psutil).
The first batch warms caches (tokenizer, BM25, allocator pools); growth is measured from its end to the
end of the last batch. A leak in the environment or the rollout loop (observations, histories,
per-episode state kept alive) would show as steady growth per batch.

Writes bench/results/env_memory.md. Run: .venv/bin/python bench/bench_env_memory.py
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EPISODES = int(os.environ.get("MEM1_MEMORY_EPISODES", "1000"))
BATCH = 100
OBJECTIVES = 2


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main(results_dir: Path) -> dict[str, float]:
    from mem1_core.agent.qa_oracle import OracleTeacher
    from mem1_core.agent.rollout import run_episodes
    from mem1_core.config import AgentConfig, ComposeConfig
    from mem1_core.data.compose import collect_items, compose_tasks
    from mem1_core.envs.qa import tokenizer_texts
    from mem1_core.models import train_tokenizer
    from mem1_core.rl.sft import make_env_factory

    t_start = time.perf_counter()
    cfg = ComposeConfig(
        n_train_tasks=EPISODES, train_objectives=[OBJECTIVES], eval_objectives=[1], n_eval_tasks=1
    )
    items, docs = collect_items(cfg)
    tasks, _ = compose_tasks(items, cfg)
    tokenizer = train_tokenizer(tokenizer_texts(tasks, docs), 2048)
    agent = AgentConfig(mode="mem1", max_new_tokens=256, temperature=0.0, batch_size=BATCH)
    env_factory = make_env_factory(docs, agent)
    oracle = OracleTeacher(tokenizer)

    gc.collect()
    rss = [_rss_mb()]  # before the first batch
    rewards: list[float] = []
    turns = 0
    t_episodes = time.perf_counter()
    for start in range(0, len(tasks), BATCH):
        trajs = run_episodes(tasks[start : start + BATCH], env_factory, oracle, agent, progress=False)
        rewards += [t.reward for t in trajs]
        turns += sum(len(t.turns) for t in trajs)
        del trajs
        gc.collect()
        rss.append(_rss_mb())
    seconds = time.perf_counter() - t_episodes

    batches = len(rss) - 1
    growth = rss[-1] - rss[1]  # after the warm-up batch -> after the last batch
    per_batch = [b - a for a, b in itertools.pairwise(rss[1:])]
    results = {
        "episodes": float(len(rewards)),
        "turns": float(turns),
        "oracle_mean_reward": round(sum(rewards) / len(rewards), 4),
        "rss_mb_start": round(rss[0], 1),
        "rss_mb_after_warmup": round(rss[1], 1),
        "rss_mb_end": round(rss[-1], 1),
        "rss_growth_mb_after_warmup": round(growth, 2),
        "rss_growth_mb_per_1000_episodes": round(growth / max(1, len(rewards) - BATCH) * 1000, 2),
        "rss_max_batch_step_mb": round(max(per_batch, default=0.0), 2),
        "episodes_per_s": round(len(rewards) / seconds, 1),
        "seconds_total": round(time.perf_counter() - t_start, 1),
    }
    _write_report(results_dir, results, rss, batches)
    return results


def _write_report(results_dir: Path, r: dict[str, float], rss: list[float], batches: int) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# QA environment memory over 1,000 episodes",
        "",
        "Oracle teacher through `agent.rollout.run_episodes` (mem1 mode, in-process BM25), "
        f"{r['episodes']:.0f} "
        f"{OBJECTIVES}-objective episodes ({r['turns']:.0f} turns) in {batches} batches of {BATCH}; RSS read "
        "with psutil after each batch and a gc.collect(). Oracle mean reward "
        f"{r['oracle_mean_reward']:.3f}, {r['episodes_per_s']:.1f} episodes/s.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| RSS before the first batch | {r['rss_mb_start']:.1f} MB |",
        f"| RSS after the warm-up batch | {r['rss_mb_after_warmup']:.1f} MB |",
        f"| RSS after the last batch | {r['rss_mb_end']:.1f} MB |",
        f"| growth after warm-up | {r['rss_growth_mb_after_warmup']:+.2f} MB "
        f"({r['rss_growth_mb_per_1000_episodes']:+.2f} MB per 1,000 episodes) |",
        f"| largest growth between two batches | {r['rss_max_batch_step_mb']:+.2f} MB |",
        "",
        "RSS per batch (MB): " + ", ".join(f"{x:.1f}" for x in rss),
        "",
    ]
    (results_dir / "env_memory.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    print(json.dumps(main(REPO / "bench" / "results"), indent=2))
