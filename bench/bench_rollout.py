"""Rollout and update speed on SmolLM2-135M-Instruct: HF `generate` against HFPolicy, and one GRPO step.

Generation, on the same prompts (turn-0 prompts of demo tasks, chat template, about 160 tokens),
groups of GROUP rows per prompt as GRPO samples them, NEW_TOKENS sampled per row at temperature 1:
- `hf_generate`: `model.generate` on the expanded batch (each row prefills its prompt);
- `policy_noshare`: HFPolicy with its prefix store off (the engine before issue 31);
- `policy`: HFPolicy as the trainers run it, each group's prompt prefilled once and shared.
Each figure is generated tokens over wall time, prefill included; the three engines run interleaved,
best of REPS, so that load from other work on the box hits them alike. The ceiling is tokens/s if
the decode steps' matmuls alone (every linear layer and the LM head at that batch, timed as torch.mm)
were all the work: the practical upper bound of a decoding engine on this box.

bf16 runs only where bf16 matmuls have fast kernels (rl.sft.bf16_supported); on an AVX2-only CPU they
run ~20x slower than float32 and the bf16 rows are skipped with that reason.

One GRPO step (`--grpo`): mem1, 2-objective demo tasks, PROMPTS x GROUP episodes, split into rollout,
scoring (old and reference log-probs) and update, with the prefix store off and on. It needs a model
that writes the tag protocol (an SFT'd one, `--model`): the untrained base ends its episodes at the
first turn with a format error.

Run: .venv/bin/python -m bench.bench_rollout [--model DIR] [--grpo 8x4,16x8]   (writes rollout.md)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.bar import BarMissed  # noqa: E402
from bench.run_all import merge_results  # noqa: E402
from mem1_core import models  # noqa: E402
from mem1_core.agent.policy import HFPolicy  # noqa: E402
from mem1_core.agent.types import PolicyInput  # noqa: E402
from mem1_core.config import AgentConfig, ComposeConfig, PPOConfig, WorldConfig  # noqa: E402
from mem1_core.data import compose  # noqa: E402
from mem1_core.data.compose import load_tasks  # noqa: E402
from mem1_core.envs import domains  # noqa: E402
from mem1_core.rl import ppo  # noqa: E402
from mem1_core.rl.sft import bf16_supported  # noqa: E402

BASE = "smollm2-135m-instruct"
BATCHES = (16, 64, 128)
GPU_BATCHES = (64, 128, 256)
GROUP = 8  # rows sampled per prompt, as a GRPO group
NEW_TOKENS = 32
REPS = 2
ENGINES = ("hf_generate", "policy_noshare", "policy")
BARS = {"vs_hf_generate": 4.0, "vs_ceiling": 0.30}  # HFPolicy at its best batch, ratios measured here


def demo_data(out: Path, objectives: list[int]) -> Path:
    """Tasks and corpus as the demo composes them (configs/local-smollm2.yaml's world)."""
    cfg = ComposeConfig(
        world=WorldConfig(seed=0, n_people=300, n_films=120, n_cities=40, n_companies=40),
        train_objectives=objectives,
        eval_objectives=[1],
        n_train_tasks=256,
        n_eval_tasks=8,
    )
    compose.run(cfg, out)
    return out


def prompts(policy: HFPolicy, data_dir: Path, n: int) -> list[tuple[Any, list[int]]]:
    agent = AgentConfig(topk=1)
    factory = domains.env_factory_for("qa", data_dir, agent)
    tasks = load_tasks(data_dir, "train")[:n]
    return [(t, policy.encode_prompt(factory(t).reset())) for t in tasks]


def hf_generate(model: Any, tokenizer: Any, rows: list[list[int]]) -> int:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, r in enumerate(rows):
        ids[k, width - len(r) :] = torch.tensor(r)
        mask[k, width - len(r) :] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return int(out.shape[0] * (out.shape[1] - width))


def policy_generate(model: Any, tokenizer: Any, group: list[tuple[Any, list[int]]], share: bool) -> int:
    policy = HFPolicy(model, tokenizer, temperature=1.0, batch_size=len(group), seed=0,
                      prefix_cache_tokens=65536 if share else 0)  # fmt: skip
    batch = [PolicyInput(p, t, 0, prefix_len=len(p)) for t, p in group]
    outs = policy.generate(batch, stop=[], max_new_tokens=NEW_TOKENS)
    return sum(len(o.ids) for o in outs)


def generation(model: Any, tokenizer: Any, pool: list[tuple[Any, list[int]]], batch: int) -> dict[str, float]:
    """Generated tokens/s of each engine at one batch size, interleaved, best of REPS."""
    group = [pool[k // GROUP] for k in range(batch)]  # batch // GROUP prompts, GROUP rows each
    rows = [p for _, p in group]
    runs = {
        "hf_generate": lambda: hf_generate(model, tokenizer, rows),
        "policy_noshare": lambda: policy_generate(model, tokenizer, group, share=False),
        "policy": lambda: policy_generate(model, tokenizer, group, share=True),
    }
    best: dict[str, float] = {}
    for _ in range(REPS):
        for name, run in runs.items():
            _sync()
            t0 = time.perf_counter()
            tokens = run()
            _sync()
            rate = tokens / (time.perf_counter() - t0)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"  batch {batch} {name}: {rate:.1f} tok/s", flush=True)
    return best


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_ceiling(model: Any, batch: int, dtype: torch.dtype) -> tuple[float, float]:
    """(tokens/s, GFLOP/s) if a decode step cost only its matmuls, each timed as torch.mm at `batch` rows."""
    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    step_s, flops = 0.0, 0.0
    for (k, n), count in shapes.items():
        device = next(model.parameters()).device
        a, w = (
            torch.randn(batch, k, dtype=dtype, device=device),
            torch.randn(k, n, dtype=dtype, device=device),
        )
        times = []
        for _ in range(7):
            _sync()
            t0 = time.perf_counter()
            torch.mm(a, w)
            _sync()
            times.append(time.perf_counter() - t0)
        step_s += statistics.median(times[2:]) * count
        flops += 2.0 * batch * k * n * count
    return batch / step_s, flops / step_s / 1e9


def grpo_step(
    model_dir: Path, data_dir: Path, prompts_per_step: int, group: int, share: bool
) -> dict[str, float]:
    """One GRPO step's wall time, split: rollout, scoring (old and ref log-probs), update."""
    agent = AgentConfig(topk=1, max_new_tokens=96, temperature=1.0, prefix_cache_tokens=65536 if share else 0)
    cfg = PPOConfig(agent=agent, steps=1, prompts_per_step=prompts_per_step, group_size=group,
                    minibatch_size=8, advantage="grpo", actor_lr=1e-6, checkpoint_every=1)  # fmt: skip
    seen: dict[str, float] = {}

    def log(metrics: dict[str, float], step: int) -> None:
        seen.update(metrics)

    with tempfile.TemporaryDirectory(prefix="mem1-bench-grpo-") as out:
        ppo.run(cfg, data_dir, model_dir, Path(out), log=log)
    rollout, score, step = seen["ppo/rollout_s"], seen["ppo/score_s"], seen["ppo/step_s"]
    return {
        "rollout_s": rollout,
        "score_s": score,
        "update_s": step - rollout - score,
        "step_s": step,
        "update_tok_s": seen["ppo/update_tokens_per_s"],
        "rollout_tok_s": seen["ppo/rollout_tokens_per_s"],
        "turns": seen["ppo/turns"],
    }


def plot(results: dict[str, float], path: Path, batches: tuple[int, ...], pre: str, tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, key in [("HF generate", "hf_generate"), ("HFPolicy, no sharing", "policy_noshare"),
                      ("HFPolicy", "policy"), ("matmul ceiling", "ceiling")]:  # fmt: skip
        ys = [results.get(f"{pre}_{key}_tok_s_b{b}_{tag}") for b in batches]
        ax.plot(batches, ys, marker="o", label=name, linestyle="--" if key == "ceiling" else "-")
    ax.set_xlabel("rows in the batch (groups of 8 on one prompt)")
    ax.set_ylabel(f"generated tokens / s ({tag})")
    ax.set_xscale("log", base=2)
    ax.set_title(f"SmolLM2-135M sampling ({'GPU' if pre.endswith('gpu') else 'this box'}), prefill included")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(
    results_dir: Path, model: str = BASE, grpo: tuple[tuple[int, int], ...] = ((8, 4),), gpu: bool = False
) -> dict[str, float]:
    """CPU by default; `gpu` times one CUDA device at GPU_BATCHES (bf16 first) into rollout_gpu.md."""
    torch.manual_seed(0)
    batches, pre, main_tag = (GPU_BATCHES, "rollout_gpu", "bf16") if gpu else (BATCHES, "rollout", "fp32")
    lm, tokenizer = models.load_model(model)
    lm.eval().to("cuda" if gpu else "cpu")
    results: dict[str, float] = {f"{pre}_load_start": os.getloadavg()[0]}
    lines = ["# Rollout and update speed on SmolLM2-135M-Instruct (issue 31)", ""]
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if bf16_supported() else [])
    dtypes = dtypes[::-1] if gpu else dtypes
    with tempfile.TemporaryDirectory(prefix="mem1-bench-rollout-") as tmp:
        data_dir = demo_data(Path(tmp) / "data", [2])
        for tag, dtype in dtypes:
            lm_d = lm.to(dtype)
            pool = prompts(HFPolicy(lm_d, tokenizer, use_chat_template=True), data_dir, max(batches) // GROUP)
            for b in batches:
                for name, rate in generation(lm_d, tokenizer, pool, b).items():
                    results[f"{pre}_{name}_tok_s_b{b}_{tag}"] = rate
                ceiling, gflops = matmul_ceiling(lm_d, b, dtype)
                results[f"{pre}_ceiling_tok_s_b{b}_{tag}"] = ceiling
                results[f"{pre}_matmul_gflops_b{b}_{tag}"] = gflops
        model_dir = Path(models.resolve_base(model))
        for prompts_per_step, group in grpo:
            for share in (False, True):
                step = grpo_step(model_dir, data_dir, prompts_per_step, group, share)
                key = f"{pre}_grpo_{prompts_per_step}x{group}_{'share' if share else 'noshare'}"
                results.update({f"{key}_{k}": v for k, v in step.items()})
                print(f"  grpo {prompts_per_step}x{group} share={share}: {json.dumps(step)}", flush=True)

    results[f"{pre}_load_end"] = os.getloadavg()[0]
    by_batch = {
        b: {e: results[f"{pre}_{e}_tok_s_b{b}_{main_tag}"] for e in (*ENGINES, "ceiling")} for b in batches
    }
    best_b = max(batches, key=lambda b: by_batch[b]["policy"])
    results[f"{pre}_best_batch"] = float(best_b)
    results[f"{pre}_policy_vs_hf_generate"] = by_batch[best_b]["policy"] / by_batch[best_b]["hf_generate"]
    results[f"{pre}_policy_vs_ceiling"] = by_batch[best_b]["policy"] / by_batch[best_b]["ceiling"]
    where = "one CUDA GPU" if gpu else f"{torch.get_num_threads()} threads"
    lines += [
        f"Model: `{model}`, {main_tag}, {where}, {NEW_TOKENS} new tokens a row, "
        f"groups of {GROUP} rows on one prompt, prompts of about "
        f"{statistics.mean(len(p) for _, p in pool):.0f} tokens.",
        "Generated tokens per second, prefill included, best of "
        f"{REPS} interleaved runs (bench/bench_rollout.py). Load average (1 min) at the start "
        f"{results[f'{pre}_load_start']:.1f}, at the end {results[f'{pre}_load_end']:.1f}: above 0.5 "
        "other work shared the cores, which lowers every figure but touches the ratios less.",
        "",
        "| batch | HF generate | HFPolicy, no sharing | HFPolicy | matmul ceiling | matmul GFLOP/s |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {b} | {by_batch[b]['hf_generate']:.0f} | {by_batch[b]['policy_noshare']:.0f} | "
            f"{by_batch[b]['policy']:.0f} | {by_batch[b]['ceiling']:.0f} | "
            f"{results[f'{pre}_matmul_gflops_b{b}_{main_tag}']:.0f} |"
            for b in batches
        ),
        "",
        f"At its best batch ({best_b}) HFPolicy runs at "
        f"**{results[f'{pre}_policy_vs_hf_generate']:.2f}x** HF generate (bar {BARS['vs_hf_generate']}x) "
        f"and **{results[f'{pre}_policy_vs_ceiling']:.0%}** of the matmul ceiling "
        f"(bar {BARS['vs_ceiling']:.0%}).",
        "",
        "bf16: "
        + (
            "measured above as `_bf16` keys in all.json."
            if len(dtypes) > 1
            else f"skipped: no fast bf16 matmul kernels here (CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}); bf16 runs ~20x slower than float32 on this CPU."
        ),
        "",
        f"![tokens/s by batch]({pre}.png)",
        "",
    ]
    if grpo:
        header = "| step | prefix store | rollout s | scoring s | update s | total s | update tok/s | turns |"
        lines += ["## One GRPO step (mem1, 2 objectives, temperature 1)", "", header,
                  "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for prompts_per_step, group in grpo:
            for share in ("noshare", "share"):
                k = f"{pre}_grpo_{prompts_per_step}x{group}_{share}"
                lines.append(
                    f"| {prompts_per_step}x{group} | {'on' if share == 'share' else 'off'} | "
                    f"{results[f'{k}_rollout_s']:.0f} | {results[f'{k}_score_s']:.0f} | "
                    f"{results[f'{k}_update_s']:.0f} | {results[f'{k}_step_s']:.0f} | "
                    f"{results[f'{k}_update_tok_s']:.0f} | {results[f'{k}_turns']:.1f} |"
                )
        lines += ["", f"Model for the GRPO step: `{model}`.", ""]
    results_dir.mkdir(parents=True, exist_ok=True)
    plot(results, results_dir / f"{pre}.png", batches, pre, main_tag)
    (results_dir / f"{pre}.md").write_text("\n".join(lines), encoding="utf-8")
    missed = [k for k, bar in BARS.items() if results[f"{pre}_policy_{k}"] < bar]
    if missed:
        raise BarMissed(f"bench_rollout: missed {missed}", results)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=BASE, help="the model to time (default: the embedded SmolLM2 base)"
    )
    parser.add_argument(
        "--grpo", default="8x4", help="GRPO steps to time, PROMPTSxGROUP, comma separated; '' none"
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--gpu", action="store_true", help="one CUDA GPU, batches 64/128/256, bf16 first")
    args = parser.parse_args()
    shapes = tuple(tuple(int(x) for x in s.split("x")) for s in args.grpo.split(",") if s)
    try:
        results = main(args.results_dir, args.model, shapes, args.gpu)  # type: ignore[arg-type]
    except BarMissed as missed:  # measured: keep the numbers in all.json, then fail
        merge_results(
            args.results_dir / "all.json", {"rollout_gpu" if args.gpu else "rollout": missed.results}
        )
        raise
    merge_results(args.results_dir / "all.json", {"rollout_gpu" if args.gpu else "rollout": results})
    print(json.dumps(results, indent=1))
