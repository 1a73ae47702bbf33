"""PPO update cost: the exact stitched paths (dense mask, flex BlockMask, prefix) vs re-running every turn.

For synthetic MEM1 trajectories whose stitched length is about 1k / 4k / 16k tokens, one PPO-style
update step (actor forward over the loss tokens' log-probs, backward) is timed per path:
- `per_turn`: every turn's real context as its own sequence (what the stitched passes replace);
- `dense`:    the stitched sequence with the additive 4D mask (O(L^2) mask and scores);
- `flex`:     the stitched sequence with a FlexAttention BlockMask (compiled); CUDA only: torch 2.13
              has no FlexAttention backward on CPU;
- `prefix`:   the task prompt once, every segment as a row of a padded batch against the prompt's
              keys/values (mem1_core/rl/prefix.py): no L x L mask, linear in turns.
Groups (`_g8`): 8 episodes of one task sharing its prompt, as GRPO/RLOO batches them; prefix runs
the shared prompt once per group.
Reported: generated (loss) tokens per second of fwd+bwd (median of the timed repeats), input tokens
fed (no padding), and peak memory (CPU: growth of the process's peak RSS, each case in a fresh
subprocess; CUDA: max allocated above the resident weights).

Run: .venv/bin/python -m bench.bench_ppo_update          CPU, tiny model (writes ppo_update.md)
     .venv/bin/python -m bench.bench_ppo_update --gpu    one CUDA GPU, Qwen2-0.5B shape, bf16, all
         paths at 1k/4k/16k/32k and groups, at most ~8 min (writes ppo_update_gpu.md) with MFU.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bar import BarMissed  # noqa: E402

LENGTHS = (1024, 4096, 16384)
GPU_LENGTHS = (1024, 4096, 16384, 32768)
GROUP = 8  # episodes sharing one prompt
GROUP_LENGTHS = (1024, 4096)  # per episode
PROMPT, KEPT, OUT = 128, 200, 100  # per turn: kept IS/action/info, then the new output
CPU_DENSE_MAX = 4096  # the dense L x L mask and scores beyond this do not fit a shared 24 GB box
CPU_REPS, GPU_REPS = 5, 3
GPU_BUDGET_S = 420.0  # cases start only while under this; one case takes well under a minute
SPEEDUP_BAR = 1.3  # prefix vs per_turn loss tokens/s, every length
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

TINY = dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768)  # fmt: skip
QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                 tie_word_embeddings=True)  # fmt: skip


@dataclass(frozen=True)
class Case:
    method: str  # per_turn | dense | flex | prefix
    length: int  # stitched tokens per episode
    group: int = 1  # episodes sharing the prompt

    @property
    def key(self) -> str:
        return self.method + (f"_g{self.group}" if self.group > 1 else "")


@dataclass
class Result:
    case: Case
    loss_tokens_per_s: float = 0.0
    input_tokens: int = 0
    seconds: float = 0.0
    warmup_s: float = 0.0
    peak_mb: float = 0.0
    turns: int = 0
    mfu: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.seconds > 0


def _trajectory(length: int, vocab: int, seed: int = 0) -> Any:
    """A MEM1 episode of about `length` stitched tokens; the prompt depends on vocab only (a task)."""
    from mem1_core.agent.types import Trajectory, Turn

    prompt = [random.Random(-1).randrange(1, vocab) for _ in range(PROMPT)]
    rng = random.Random(seed)
    turns, total, kept = [], PROMPT, []
    while total + len(kept) + OUT <= length:
        out = [rng.randrange(1, vocab) for _ in range(OUT)]
        turns.append(Turn(context_ids=prompt + kept, output_ids=out, output_text=""))
        total += len(kept) + OUT
        kept = out + [rng.randrange(1, vocab) for _ in range(KEPT - OUT)]
    return Trajectory(task_id=f"len{length}", mode="mem1", n_objectives=1, prompt_len=PROMPT, turns=turns)


def build(case: Case, vocab: int) -> tuple[Any, str, int, int, int]:
    """(batch, backend, turns, input tokens fed, attended query-key pairs) for one case."""
    from mem1_core.agent.types import Trajectory
    from mem1_core.rl import prefix
    from mem1_core.rl.trajectory import collate, stitch

    trajs = [_trajectory(case.length, vocab, seed=g) for g in range(case.group)]
    turns = sum(len(t.turns) for t in trajs)
    if case.method == "per_turn":
        # Every turn as its own one-turn trajectory: the same loss tokens, each with its real context.
        parts = [
            Trajectory(task_id=f"t{k}", mode="mem1", n_objectives=1, prompt_len=PROMPT, turns=[t])
            for k, t in enumerate(t for traj in trajs for t in traj.turns)
        ]
        batch = collate([stitch(p) for p in parts], pad_id=0, pack=False)
        pairs = sum(n * (n + 1) // 2 for n in batch.lengths)
        return batch, "dense", turns, batch.n_tokens, pairs
    batch = collate([stitch(t) for t in trajs], pad_id=0, pack=case.method == "flex", max_len=1 << 20)
    pl = prefix.plan(batch)
    seg = sum(int(n) * PROMPT + int(n) * (int(n) + 1) // 2 for b in pl.buckets for n in b.lengths)
    if case.method == "prefix":  # each distinct prompt once
        lens = [int(p) for p in pl.prompt_lens]
        seg_tokens = sum(int(b.lengths.sum()) for b in pl.buckets)
        return batch, "prefix", turns, sum(lens) + seg_tokens, seg + sum(p * (p + 1) // 2 for p in lens)
    return batch, case.method, turns, batch.n_tokens, seg + case.group * PROMPT * (PROMPT + 1) // 2


def _model(cfg_kwargs: dict[str, Any], device: Any, dtype: Any, attn: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(**cfg_kwargs)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)


def _timed(
    model: Any, batch: Any, backend: str, reps: int, sync: Any, clock: Any = time.perf_counter
) -> tuple[float, float, float]:
    """(median `clock` seconds of one fwd+bwd over `reps`, warm-up seconds, median wall seconds)."""
    from mem1_core.rl.value import actor_logprobs

    def step() -> None:
        lp, _ = actor_logprobs(model, batch, backend)  # type: ignore[arg-type]
        (-(lp * batch.loss_mask).sum() / batch.loss_mask.sum()).backward()
        model.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # warm-up (and flex compilation)
    sync()
    warm = time.perf_counter() - t0
    times, walls = [], []
    for _ in range(reps):
        t0, w0 = clock(), time.perf_counter()
        step()
        sync()
        times.append(clock() - t0)
        walls.append(time.perf_counter() - w0)
    return statistics.median(times), warm, statistics.median(walls)


def _flops(cfg: dict[str, Any], n_params: int, tokens: int, loss_tokens: int, pairs: int) -> float:
    """Model FLOPs of one fwd+bwd: 6 * body params per token fed, lm_head on loss tokens, attention."""
    d, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    body = n_params - v * d * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return 6 * body * tokens + 6 * v * d * loss_tokens + 12 * layers * d * pairs


# -- CPU: one case per fresh subprocess, so peak RSS growth is that case's --------------------------------


def _cpu_memory(case: Case, queue: Any) -> None:
    """Peak RSS growth of one fwd+bwd of one case, in a fresh process (so it is that case's)."""
    import torch

    torch.set_num_threads(1)
    model = _model(TINY, "cpu", torch.float32, "sdpa")
    batch, backend, *_ = build(case, TINY["vocab_size"])
    from mem1_core.rl.value import actor_logprobs

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lp, _ = actor_logprobs(model, batch, backend)
    (-(lp * batch.loss_mask).sum() / batch.loss_mask.sum()).backward()
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)


def _cpu_timing(cases: list[Case], queue: Any) -> None:
    """All paths of one length in one process, their steps interleaved round by round, timed by the
    process's CPU time: on the shared box the wall clock measured the scheduler (one step took 0.07
    to 1.0 s wall, always ~0.07 s CPU), and separate processes drifted by ~10% between paths."""
    import torch

    from mem1_core.rl.value import actor_logprobs

    torch.set_num_threads(1)
    model = _model(TINY, "cpu", torch.float32, "sdpa")
    built = [build(c, TINY["vocab_size"]) for c in cases]

    def step(batch: Any, backend: str) -> None:
        lp, _ = actor_logprobs(model, batch, backend)  # type: ignore[arg-type]
        (-(lp * batch.loss_mask).sum() / batch.loss_mask.sum()).backward()
        model.zero_grad(set_to_none=True)

    warm = []
    for batch, backend, *_ in built:
        t0 = time.perf_counter()
        step(batch, backend)
        warm.append(time.perf_counter() - t0)
    cpu: list[list[float]] = [[] for _ in cases]
    wall: list[list[float]] = [[] for _ in cases]
    for _ in range(CPU_REPS):
        for k, (batch, backend, *_) in enumerate(built):
            t0, w0 = time.process_time(), time.perf_counter()
            step(batch, backend)
            cpu[k].append(time.process_time() - t0)
            wall[k].append(time.perf_counter() - w0)
    out = []
    for k, (case, (batch, _, turns, tokens, _)) in enumerate(zip(cases, built, strict=True)):
        seconds = statistics.median(cpu[k])
        loss = float(batch.loss_mask.sum())
        note = f"wall {statistics.median(wall[k]):.2f} s"
        out.append(Result(case, loss / seconds, tokens, seconds, warm[k], 0.0, turns, note=note))
    queue.put(out)


def _spawn(target: Any, arg: Any, timeout: float = 1800) -> Any:
    """target(arg, queue) in a fresh spawned process; its one queued value, or None."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(arg, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return queue.get() if not queue.empty() else None


def run_cpu_cases(cases: list[Case]) -> list[Result]:
    """Per (length, group): one interleaved timing process for its paths, one memory process per path."""
    results: dict[Case, Result] = {c: Result(c, note=_cpu_skip(c)) for c in cases if _cpu_skip(c)}
    keys = sorted({(c.length, c.group) for c in cases}, key=lambda k: (k[1], k[0]))
    for length, group in keys:
        run = [c for c in cases if (c.length, c.group) == (length, group) and c not in results]
        timed = _spawn(_cpu_timing, run) or [Result(c, note="timing failed") for c in run]
        for r in timed:
            peak = _spawn(_cpu_memory, r.case)
            r.peak_mb = float("nan") if peak is None else float(peak)
            results[r.case] = r
            print(r, flush=True)
    return [results[c] for c in cases]


def cpu_cases() -> list[Case]:
    cases = [Case(m, n) for n in LENGTHS for m in ("per_turn", "dense", "flex", "prefix")]
    return cases + [Case(m, n, GROUP) for n in GROUP_LENGTHS for m in ("per_turn", "prefix")]


def _cpu_skip(case: Case) -> str:
    if case.method == "flex":
        return "skipped: torch 2.13 FlexAttention has no CPU backward"
    if case.method == "dense" and case.length * case.group > CPU_DENSE_MAX:
        return "skipped: dense L x L mask too large for CPU RAM"
    return ""


# -- GPU: all cases in one process (weights built once), bounded by a time budget ------------------------


def run_gpu_cases(
    cases: Sequence[Case],
    cfg_kwargs: dict[str, Any],
    device: str = "cuda",
    dtype_name: str = "bfloat16",
    reps: int = GPU_REPS,
    budget_s: float = GPU_BUDGET_S,
) -> list[Result]:
    """Every case on one device with one model; a case that fails (OOM, compile) is noted, not fatal."""
    import torch

    dtype = getattr(torch, dtype_name)
    cuda = torch.device(device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    model = _model(cfg_kwargs, device, dtype, "sdpa")
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    start = time.perf_counter()
    results = []
    for case in cases:
        if time.perf_counter() - start > budget_s:
            results.append(Result(case, note=f"skipped: over the {budget_s:.0f} s budget"))
            continue
        try:
            batch, backend, turns, tokens, pairs = build(case, cfg_kwargs["vocab_size"])
            batch = batch.to(device)
            sync()
            base = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds, warm, _ = _timed(model, batch, backend, reps, sync)
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
            loss = int(batch.loss_mask.sum())
            flops = _flops(cfg_kwargs, n_params, tokens, loss, pairs)
            mfu = flops / seconds / (peak_tflops * 1e12) if peak_tflops else None
            results.append(Result(case, loss / seconds, tokens, seconds, warm, peak_mb, turns, mfu))
        except Exception as err:  # an OOM or compile failure is a result to report
            results.append(
                Result(case, note=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}")
            )
        finally:
            batch = None
            model.zero_grad(set_to_none=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        print(results[-1], flush=True)
    return results


def gpu_cases(
    lengths: Sequence[int] = GPU_LENGTHS, group_lengths: Sequence[int] = GROUP_LENGTHS
) -> list[Case]:
    """Most telling first, so a tight budget drops the least: prefix and per_turn before flex and dense."""
    cases = [Case(m, n) for n in lengths for m in ("prefix", "per_turn", "flex", "dense")]
    return cases + [Case(m, n, GROUP) for n in group_lengths for m in ("prefix", "per_turn", "flex")]


# -- report ------------------------------------------------------------------------------------------------


def report(results: list[Result], header: list[str]) -> tuple[list[str], dict[str, float]]:
    lines = [
        *header,
        "",
        "| length | path | episodes | turns | input tokens | loss tokens/s | vs per_turn | s/update | "
        "peak MB | MFU | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    metrics: dict[str, float] = {}
    base = {(r.case.length, r.case.group): r for r in results if r.case.method == "per_turn" and r.ok}
    for r in results:
        c = r.case
        if not r.ok:
            lines.append(f"| {c.length} | {c.method} | {c.group} | | | | | | | | {r.note} |")
            continue
        ref = base.get((c.length, c.group))
        vs = f"{r.loss_tokens_per_s / ref.loss_tokens_per_s:.2f}x" if ref else ""
        mfu = f"{r.mfu:.3f}" if r.mfu is not None else "n/a"
        lines.append(
            f"| {c.length} | {c.method} | {c.group} | {r.turns} | {r.input_tokens} | "
            f"{r.loss_tokens_per_s:.0f} | {vs} | {r.seconds:.3f} | {r.peak_mb:.0f} | {mfu} | "
            f"warm-up {r.warmup_s:.1f} s {r.note} |"
        )
        stem = f"ppo_update_{c.key}_L{c.length}"
        metrics[f"{stem}_loss_tokens_per_s"] = r.loss_tokens_per_s
        metrics[f"{stem}_peak_mb"] = r.peak_mb
        if r.mfu is not None:
            metrics[f"{stem}_mfu"] = r.mfu
        if ref and c.method != "per_turn":
            metrics[f"{stem}_speedup_vs_per_turn"] = r.loss_tokens_per_s / ref.loss_tokens_per_s
    return lines, metrics


def check_bars(results: list[Result]) -> list[str]:
    """CPU bars: prefix >= 1.3x per_turn at every length (single episodes), 16k fits, memory linear."""
    by = {(r.case.method, r.case.length, r.case.group): r for r in results}
    missed = []
    for n in LENGTHS:
        p, t = by.get(("prefix", n, 1)), by.get(("per_turn", n, 1))
        if p is None or not p.ok:
            missed.append(f"prefix at {n} did not run ({p.note if p else 'absent'})")
        elif t is not None and t.ok and p.loss_tokens_per_s < SPEEDUP_BAR * t.loss_tokens_per_s:
            missed.append(f"prefix at {n}: {p.loss_tokens_per_s / t.loss_tokens_per_s:.2f}x per_turn")
    a, b = by.get(("prefix", LENGTHS[-2], 1)), by.get(("prefix", LENGTHS[-1], 1))
    if a and b and a.ok and b.ok and b.peak_mb / b.input_tokens > 1.5 * a.peak_mb / a.input_tokens:
        missed.append(f"prefix peak memory per token grows: {a.peak_mb:.0f} MB -> {b.peak_mb:.0f} MB")
    return missed


def main(results_dir: Path) -> dict[str, float]:
    """CPU run (what run_all calls): tiny model, fp32, one thread per case."""
    results = run_cpu_cases(cpu_cases())
    header = [
        "# PPO update: exact stitched paths vs per-turn re-runs (CPU)",
        "",
        "Device: CPU, 1 thread per case, on a shared 2-core box where another long benchmark ran at the "
        "same time (this one niced). Seconds are the process's CPU time per update (median of "
        f"{CPU_REPS} after a warm-up), not wall time: under that load the wall clock measured the "
        "scheduler (one step: 0.07 to 1.0 s wall, ~0.07 s CPU); the wall median is in the note. "
        "The paths of one length ran in one process, their steps interleaved round by round, so the "
        "`vs per_turn` ratios are the fair comparison (separate processes drifted ~10%). "
        "dtype fp32; model: tiny Qwen2 "
        "(hidden 128, 2 layers, vocab 2048). One fwd+bwd of the actor's log-probs over the loss tokens of "
        f"MEM1 trajectories (prompt {PROMPT}, kept context {KEPT}, output {OUT} per turn). "
        f"Episodes > 1: {GROUP} episodes of one task sharing its "
        "prompt (a GRPO group). Peak MB: growth of peak RSS over one fwd+bwd in a fresh process per path.",
    ]
    lines, metrics = report(results, header)
    missed = check_bars(results)
    lines += ["", "Bars (prefix >= 1.3x per_turn at 1k/4k/16k, 16k fits, memory linear): "
              + ("all met" if not missed else "MISSED: " + "; ".join(missed))]  # fmt: skip
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "ppo_update.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if missed:
        raise BarMissed("; ".join(missed), metrics)
    return metrics


def main_gpu(
    results_dir: Path,
    cases: Sequence[Case] | None = None,
    cfg_kwargs: dict[str, Any] | None = None,
    device: str = "cuda",
    dtype_name: str = "bfloat16",
    budget_s: float = GPU_BUDGET_S,
) -> dict[str, float]:
    """GPU run: Qwen2-0.5B shape, random weights, bf16; writes ppo_update_gpu.md. The arguments let a
    CPU test drive the same code at a tiny size."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_ppo_update --gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run without --gpu for the CPU benchmark"
        )
    cfg_kwargs = cfg_kwargs or QWEN2_05B
    results = run_gpu_cases(cases or gpu_cases(), cfg_kwargs, device, dtype_name, budget_s=budget_s)
    name = torch.cuda.get_device_name() if device == "cuda" else device
    header = [
        "# PPO update: exact stitched paths vs per-turn re-runs (GPU)",
        "",
        f"Device: {name}; dtype {dtype_name}; model: Qwen2 config {cfg_kwargs['hidden_size']} hidden, "
        f"{cfg_kwargs['num_hidden_layers']} layers, vocab {cfg_kwargs['vocab_size']}, random weights. One "
        f"fwd+bwd of the actor's log-probs over the loss tokens (prompt {PROMPT}, kept {KEPT}, output "
        f"{OUT} per turn); median of {GPU_REPS} after a warm-up (flex: compile). Peak MB: max allocated "
        "above the resident weights. MFU: (6 x non-embedding params x tokens fed + 6 x lm_head x loss "
        "tokens + 12 x layers x hidden x attended query-key pairs) / time / bf16 peak.",
    ]
    lines, metrics = report(results, header)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "ppo_update_gpu.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA run at Qwen2-0.5B size (ppo_update_gpu.md)")
    args = parser.parse_args()
    out = REPO / "bench" / "results"
    print(main_gpu(out) if args.gpu else main(out))
