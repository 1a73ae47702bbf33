"""PPO update cost: one stitched masked pass (dense mask, flex BlockMask) vs re-running every turn.

For synthetic MEM1 trajectories whose stitched length is about 1k / 4k / 16k tokens, one PPO-style
update step (actor forward over the loss tokens' log-probs, backward) is timed three ways:
- `dense`:    the stitched sequence with the additive 4D mask (O(L^2) mask and scores);
- `flex`:     the stitched sequence with a FlexAttention BlockMask (compiled; blocks outside the
              segments are skipped); CUDA only: torch 2.13 has no FlexAttention backward on CPU;
- `per_turn`: every turn's real context as its own sequence (what the stitched pass replaces).
Reported: generated (loss) tokens per second of fwd+bwd, input tokens processed, and peak memory
(CUDA: max allocated; CPU: growth of the process's peak RSS, each case in a fresh subprocess).
On CUDA the model is a Qwen2-0.5B-sized config with random weights in bf16, and MFU is reported
(6 * params * tokens plus attention FLOPs over the dense-equivalent L^2, against the GPU's bf16 peak).

Run: .venv/bin/python -m bench.bench_ppo_update   (writes bench/results/ppo_update.md)
"""

from __future__ import annotations

import multiprocessing as mp
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LENGTHS = (1024, 4096, 16384)
PROMPT, KEPT, OUT = 128, 200, 100  # per turn: kept IS/action/info, then the new output
CPU_DENSE_MAX = 4096  # the dense L x L mask and scores beyond this do not fit a shared 24 GB box
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _model_config(cuda: bool) -> dict[str, Any]:
    if cuda:  # Qwen2-0.5B shape
        return dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768)  # fmt: skip
    return dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768)  # fmt: skip


def _trajectory(length: int, vocab: int, seed: int = 0) -> Any:
    from mem1_core.agent.types import Trajectory, Turn

    rng = random.Random(seed)
    prompt = [rng.randrange(1, vocab) for _ in range(PROMPT)]
    turns, total, kept = [], PROMPT, []
    while total + len(kept) + OUT <= length:
        out = [rng.randrange(1, vocab) for _ in range(OUT)]
        turns.append(Turn(context_ids=prompt + kept, output_ids=out, output_text=""))
        total += len(kept) + OUT
        kept = out + [rng.randrange(1, vocab) for _ in range(KEPT - OUT)]
    return Trajectory(task_id=f"len{length}", mode="mem1", n_objectives=1, prompt_len=PROMPT, turns=turns)


def _case(method: str, length: int, queue: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from mem1_core.agent.types import Trajectory
    from mem1_core.rl.trajectory import collate, stitch
    from mem1_core.rl.value import actor_logprobs

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(1)
    cfg = Qwen2Config(**_model_config(cuda))
    attn = "flex_attention" if method == "flex" else "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype).to(device)
    traj = _trajectory(length, cfg.vocab_size)
    if method == "per_turn":
        # Every turn as its own one-turn trajectory: the same loss tokens, each with its real context.
        parts = [
            Trajectory(task_id=f"t{k}", mode="mem1", n_objectives=1, prompt_len=PROMPT, turns=[t])
            for k, t in enumerate(traj.turns)
        ]
        batch = collate([stitch(p) for p in parts], pad_id=0, pack=False)
        backend = "dense"
    else:
        seq = stitch(traj)
        batch = collate([seq], pad_id=0, pack=False)
        backend = method
    batch = batch.to(device)
    loss_tokens = int(batch.loss_mask.sum())

    def step() -> None:
        lp, _ = actor_logprobs(model, batch, backend)
        (-(lp * batch.loss_mask).sum() / batch.loss_mask.sum()).backward()
        model.zero_grad(set_to_none=True)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    step()  # warm-up (and flex compilation)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm = time.perf_counter() - t0
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / reps
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    n_params = sum(p.numel() for p in model.parameters())
    flops = 6 * n_params * batch.n_tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * batch.n_tokens**2
    result = {
        "loss_tokens_per_s": loss_tokens / seconds,
        "input_tokens": float(batch.n_tokens),
        "seconds": seconds,
        "warmup_s": warm,
        "peak_mb": peak_mb,
        "turns": float(len(traj.turns)),
    }
    if cuda:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result["mfu"] = flops / seconds / (peak * 1e12) if peak else float("nan")
        result["gpu"] = name
    queue.put(result)


def _run_case(method: str, length: int, timeout: float = 900) -> dict[str, Any] | None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(method, length, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return queue.get() if not queue.empty() else None


def main(results_dir: Path) -> dict[str, float]:
    import torch

    cuda = torch.cuda.is_available()
    rows: list[tuple[str, int, dict[str, Any] | None, str]] = []
    for length in LENGTHS:
        for method in ("dense", "flex", "per_turn"):
            if not cuda and method == "dense" and length > CPU_DENSE_MAX:
                rows.append((method, length, None, "skipped: dense L x L mask too large for CPU RAM"))
                continue
            if not cuda and method == "flex":
                rows.append((method, length, None, "skipped: torch 2.13 FlexAttention has no CPU backward"))
                continue
            res = _run_case(method, length)
            rows.append((method, length, res, "" if res else "failed or timed out"))
            print(method, length, res, flush=True)
    device = torch.cuda.get_device_name() if cuda else "CPU (1 thread, shared 2-core box)"
    dtype = "bf16" if cuda else "fp32"
    model = "Qwen2-0.5B-shaped, random weights" if cuda else "tiny Qwen2 (hidden 128, 2 layers, vocab 2048)"
    lines = [
        "# PPO update: stitched masked pass vs per-turn re-runs",
        "",
        f"Device: {device}; dtype {dtype}; model: {model}. One fwd+bwd of the actor's log-probs over the "
        f"loss tokens of one MEM1 trajectory (prompt {PROMPT}, kept context {KEPT}, output {OUT} per turn).",
        "",
        "| length | method | turns | input tokens | loss tokens/s | s/update | peak MB | MFU | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    metrics: dict[str, float] = {}
    for method, length, res, note in rows:
        if res is None:
            lines.append(f"| {length} | {method} | | | | | | | {note} |")
            continue
        mfu = f"{res['mfu']:.3f}" if "mfu" in res else "n/a"
        lines.append(
            f"| {length} | {method} | {res['turns']:.0f} | {res['input_tokens']:.0f} | "
            f"{res['loss_tokens_per_s']:.0f} | {res['seconds']:.3f} | {res['peak_mb']:.0f} | {mfu} | "
            f"warm-up {res['warmup_s']:.1f} s |"
        )
        metrics[f"ppo_update_{method}_L{length}_loss_tokens_per_s"] = float(res["loss_tokens_per_s"])
        metrics[f"ppo_update_{method}_L{length}_peak_mb"] = float(res["peak_mb"])
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "ppo_update.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return metrics


if __name__ == "__main__":
    print(main(REPO / "bench" / "results"))
