"""Data parallelism for PPO under torchrun: process group, gradient averaging, reductions, DeepSpeed.

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; `setup` joins the process group (nccl on CUDA, gloo on CPU)
and `Dist` says who this process is. With WORLD_SIZE unset or 1 every helper is the identity, so the
single-process path runs exactly the code it always ran.

Gradients are averaged by an explicit bucketed all-reduce after each backward (`average_gradients`)
rather than by wrapping the models in DistributedDataParallel: PPO scores through `lm.base_model` and
the lm_head on loss positions only (rl/value.py), which bypasses DDP's forward hooks, and the critic
never uses its lm_head; DDP would need adapter modules and find_unused_parameters for the same result.
The all-reduce gives the same mathematics (the mean of the ranks' gradients), keeps "no gradient" as
None where no rank produced one (so AdamW skips the same parameters as in one process), and lets a rank
with an empty mini-batch still take part. At scale, DeepSpeed ZeRO-2/3 (`deepspeed_initialize`) does the
reduction and shards optimizer state instead.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from mem1_core.config import ConfigError

T = TypeVar("T")
BUCKET_ELEMS = 2**24  # gradients are flattened into all-reduce buckets of at most this many elements


class DeepSpeedUnavailable(ConfigError):
    """DeepSpeed was asked for where it cannot run (no CUDA device); the CLI exits 2 with the message."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; world_size 1 means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # True when `setup` created the process group (and teardown ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def setup() -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this rank's device."""
    world = env_world_size()
    cuda = torch.cuda.is_available()
    if world <= 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


def teardown(d: Dist) -> None:
    """Barrier (no rank leaves while another still writes) and end the group if we started it."""
    if not d.enabled:
        return
    barrier(d)
    if d.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()


def shard(items: list[T], d: Dist) -> list[T]:
    """This rank's share of a list that every rank holds in the same order (strided, equal sizes)."""
    return items[d.rank :: d.world_size] if d.enabled else items


def broadcast_object(obj: T, d: Dist) -> T:
    """Rank 0's value of a picklable object, on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum | max | min) on a tensor moved to the group's device; returns it on CPU."""
    if not d.enabled:
        return t
    ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN}
    work = t.to(d.device)
    tdist.all_reduce(work, op=ops[op])
    return work.cpu()


def global_mean_std(x: torch.Tensor, d: Dist) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean, unbiased std and count of x's elements over all ranks (float64 sums, one all-reduce)."""
    if not d.enabled:
        return x.mean(), x.std(), x.numel()
    x64 = x.detach().to(torch.float64)
    stats = torch.stack([x64.sum(), (x64 * x64).sum(), torch.tensor(float(x.numel()), dtype=torch.float64)])
    total, sq, n = all_reduce(stats, d).tolist()
    mean = total / max(n, 1.0)
    var = (sq - n * mean * mean) / max(n - 1.0, 1.0)
    std = max(var, 0.0) ** 0.5
    return torch.tensor(mean, dtype=x.dtype), torch.tensor(std, dtype=x.dtype), int(n)


def reduce_metrics(
    metrics: dict[str, float], d: Dist, sum_keys: tuple[str, ...] = (), max_keys: tuple[str, ...] = ()
) -> dict[str, float]:
    """Mean over ranks (equal shards), except throughputs (summed) and wall times (the slowest rank)."""
    if not d.enabled:
        return metrics
    keys = sorted(metrics)
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    summed = all_reduce(vals.clone(), d, "sum")
    maxed = all_reduce(vals.clone(), d, "max")
    out: dict[str, float] = {}
    for i, k in enumerate(keys):
        if k in sum_keys:
            out[k] = float(summed[i])
        elif k in max_keys:
            out[k] = float(maxed[i])
        else:
            out[k] = float(summed[i]) / d.world_size
    return out


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Replace each parameter's gradient by the mean over ranks; None stays None only if None everywhere.

    Every rank must call this the same number of times with the same parameter list (it is collective).
    """
    if not d.enabled or not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    has = all_reduce(has, d, "max").bool().tolist()
    live = [p for p, h in zip(params, has, strict=True) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in live:
        bucket.append(p)
        size += p.numel()
        if size >= BUCKET_ELEMS:
            _reduce_bucket(bucket, d)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, d)


def _reduce_bucket(bucket: list[torch.nn.Parameter], d: Dist) -> None:
    grads = [p.grad for p in bucket]
    assert all(g is not None for g in grads)
    flat = torch.cat([g.reshape(-1) for g in grads if g is not None])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= d.world_size
    offset = 0
    for p in bucket:
        assert p.grad is not None
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


# -- DeepSpeed ----------------------------------------------------------------------------------------


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: DeepSpeed config not found (ppo.deepspeed_config)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: DeepSpeed config is not valid JSON: {e.msg}") from None


def resolve_deepspeed_config(
    raw: dict[str, Any],
    *,
    micro_batch: int,
    world_size: int,
    grad_clip: float,
    bf16: bool,
    hidden_size: int,
) -> dict[str, Any]:
    """Fill the HF-style "auto" values for a PPO engine, as transformers' Trainer does for SFT.

    One optimizer step per PPO mini-batch (gradient_accumulation_steps 1); bucket sizes follow
    transformers' formulas from the hidden size. Anything left "auto" is an error: DeepSpeed itself
    does not understand it.
    """
    cfg = json.loads(json.dumps(raw))  # deep copy
    fills = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
    }
    for key, value in fills.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    if cfg.get("train_batch_size") == "auto":
        cfg["train_batch_size"] = micro_batch * world_size  # otherwise DeepSpeed derives it
    for key, enabled in (("bf16", bf16), ("fp16", False)):
        section = cfg.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = enabled
    zero = cfg.get("zero_optimization", {})
    zero_fills = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in zero_fills.items():
        if zero.get(key) == "auto":
            zero[key] = value
    left = _auto_keys(cfg)
    if left:
        raise ValueError(f"DeepSpeed config still has 'auto' at {left}; set those values explicitly")
    return cfg


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def zero_stage(cfg: dict[str, Any]) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def require_deepspeed(path: str, what: str = "ppo.deepspeed_config") -> None:
    """DeepSpeed runs on CUDA ranks (nccl) and on CPU ranks (gloo); only its absence is a config error."""
    try:
        import deepspeed  # noqa: F401  (heavy: imported only when a step asks for it)
    except ImportError as e:
        raise DeepSpeedUnavailable(
            f"{what}={path} asks for DeepSpeed, which cannot be imported here ({e}); install it "
            f"or unset {what} (data-parallel over gloo still works under torchrun)"
        ) from None


def comm_backend() -> str:
    """The collective backend DeepSpeed must use: nccl with CUDA, gloo on CPU (its CPU default is ccl)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def cpu_safe_optimizer(cfg: dict[str, Any]) -> dict[str, Any]:
    """Without CUDA, a config's Adam/AdamW becomes torch's (DeepSpeed's FusedAdam is a CUDA kernel).

    Configs without an "optimizer" section need nothing: the caller's torch optimizer is used. The
    choice is printed, since it changes which optimizer code runs."""
    opt = cfg.get("optimizer")
    if torch.cuda.is_available() or not isinstance(opt, dict):
        return cfg
    if str(opt.get("type", "")).lower() not in ("adam", "adamw"):
        return cfg
    params = opt.setdefault("params", {})
    if params.get("torch_adam") is not True:
        params["torch_adam"] = True
        print(f"deepspeed: no CUDA, optimizer {opt.get('type')} with torch_adam (FusedAdam needs CUDA)")
    return cfg


def single_process_env() -> None:
    """Rendezvous variables for a one-process job started without torchrun, so DeepSpeed (which would
    otherwise try MPI discovery and fail) can create its world of one; values already set are kept."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)


def init_deepspeed_comm() -> None:
    """DeepSpeed's communication layer over the process group `setup` made (or a world of one)."""
    import deepspeed  # lazy: optional (a deepspeed_config), ~2 s to import

    deepspeed.init_distributed(dist_backend=comm_backend())


def deepspeed_initialize(model: torch.nn.Module, lr: float, config: dict[str, Any]) -> Any:
    """A DeepSpeed engine (ZeRO-2/3 from `config`) around `model`, with AdamW at `lr` as in one process.

    A config's own "optimizer" section wins (torch_adam on CPU); otherwise torch's AdamW is the client
    optimizer, the very one the single-process path steps, so results match it."""
    import deepspeed  # lazy: optional (a deepspeed_config), ~2 s to import

    init_deepspeed_comm()
    params = [p for p in model.parameters() if p.requires_grad]
    config = cpu_safe_optimizer(json.loads(json.dumps(config)))
    if "optimizer" in config:
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config)
        return engine
    optimizer = torch.optim.AdamW(params, lr=lr)  # no JIT-built ops: runs on CPU and GPU alike
    config = {**config, "zero_allow_untested_optimizer": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def deepspeed_inference(model: torch.nn.Module, config: dict[str, Any]) -> torch.nn.Module:
    """The frozen reference under ZeRO-3: its parameters partitioned like the actor's, no optimizer."""
    import deepspeed  # lazy: optional (a deepspeed_config), ~2 s to import

    init_deepspeed_comm()
    config = {k: v for k, v in config.items() if k != "optimizer"}  # inference: nothing to step
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    return engine.module


def gathered(modules: list[torch.nn.Module], zero3: bool) -> Any:
    """Context in which ZeRO-3 partitioned parameters are whole on every rank (collective enter/exit),
    so rank 0 can save_pretrained them; a no-op otherwise."""
    if not zero3:
        return nullcontext()
    import deepspeed  # lazy: optional (a deepspeed_config), ~2 s to import

    params = [p for m in modules for p in m.parameters()]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


@contextmanager
def whole_for_generation(engine: Any, zero3: bool) -> Iterator[None]:
    """Full, hook-free weights for generation under ZeRO-3 (as TRL's unwrap_model_for_generation).

    ZeRO-3 gathers each layer's shards in a forward hook, a collective: ranks that generate different
    numbers of tokens or turns would wait on each other forever. Gathering once and lifting the hooks
    lets each rank generate alone; the hooks come back (with a fresh trace) on exit. No-op otherwise."""
    if not zero3:
        yield
        return
    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
    with gathered([engine.module], True):
        for p in engine.module.parameters():
            p.ds_active_sub_modules.clear()
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            coordinator = getattr(offload, "param_coordinator", None)
            if coordinator is not None and not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()
            offload._register_deepspeed_module(offload.module)
