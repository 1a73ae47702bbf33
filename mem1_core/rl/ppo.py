"""PPO over MEM1 rollouts, scored through one stitched, masked forward pass per batch.

Each step: sample `prompts_per_step` training tasks (x `oversample`: then only `prompts_per_step` groups,
those whose rewards differ first, are trained on), roll each out `group_size` times in the agent's
mode (mem1 by default; full and truncate:K train the baselines the same way) with the actor
(HFPolicy, temperature cfg.agent.temperature), stitch every episode (rl/trajectory.py), and run one
masked forward pass per mini-batch for the old and reference log-probs (and the values, with a
critic). Log-probs are those of softmax(logits / T), the distribution that was sampled, so the ratio
starts at exactly 1.

Advantages (`advantage`, rl/advantages.py):
- gae: per-token reward = -kl_coef * (log pi_old - log pi_ref) on every generated token, plus the task
  reward (mean EM over objectives) on the episode's last generated token; GAE(gamma, lam) over the
  episode's generated tokens in order, across turns; whitened over the step. Critic trained with a
  clipped value loss.
- grpo / rloo: each episode's reward against its group's (the same task's other samples); every
  generated token carries the episode's advantage; the KL to the reference is a loss term
  (kl_coef x the k3 estimator, as in GRPO); no critic exists.
Then `ppo_epochs` passes of clipped policy loss with an entropy bonus, aggregated per `loss_agg`,
with gradient-norm clipping.

Models: actor = the SFT model; critic (gae only) = value head on a copy of the SFT backbone
(rl/value.py); frozen reference = another copy. The single-process path (CPU or one GPU) needs no
DeepSpeed; configs/deepspeed_zero{2,3}.json are for multi-rank launches (GPU, or CPU ranks over gloo).

With `eval_every` > 0, greedy held-out EM on `eval_tasks` tasks per count in `eval_objectives` is
measured before step 1 and every `eval_every` steps: the learning curve, logged as
`ppo/heldout_em_n<N>` beside the training reward.

Checkpoints every `checkpoint_every` steps and at the end (rl/checkpoint.py, atomic); a run whose
out_dir holds one resumes from the latest, with the same task sampling and sampling seeds as an
uninterrupted run, and a metrics history with no gap and no duplicate.

Under torchrun (WORLD_SIZE > 1, rl/distributed.py) the step is data-parallel: every rank draws the same
`prompts_per_step` tasks and rolls out its strided shard (whole groups) with its own sampling seed;
GAE advantages are whitened with global statistics; each global mini-batch of `minibatch_size` episodes
is split evenly over the ranks and gradients are averaged (explicit all-reduce, or DeepSpeed ZeRO-2/3
engines when `deepspeed_config` is set, on GPU or CPU ranks; under ZeRO-3 rollouts run on gathered
weights, since ranks generate different lengths); metrics are all-reduced and logged by
rank 0, which alone writes checkpoints and the final model; every rank resumes from the checkpoint
rank 0 picks.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from mem1_core import models
from mem1_core.agent.policy import HFPolicy
from mem1_core.agent.rollout import run_episodes
from mem1_core.config import ConfigError, ModelConfig, PPOConfig
from mem1_core.data.compose import load_corpus, load_tasks
from mem1_core.envs import domains
from mem1_core.envs.qa import score_answers
from mem1_core.protocol.scoring import normalize_answer
from mem1_core.rl import checkpoint, distributed
from mem1_core.rl.advantages import gae, group_advantages, group_stats, informative_groups
from mem1_core.rl.attention import AttentionBackend, resolve_backend
from mem1_core.rl.trainer_log import LogFn
from mem1_core.rl.trajectory import Batch, StitchedSequence, collate, stitch
from mem1_core.rl.value import Critic, actor_logprobs

PACK_TOKENS = 4096  # row width when packing (flex backend); dense pads one episode per row
RANK_SEED_STRIDE = 1_000_000  # rank r samples with seed + r * stride (rank 0 = the single-process seed)
SUMMED_METRICS = ("update_tokens_per_s", "rollout_tokens_per_s")  # throughput of the whole job
SLOWEST_METRICS = ("rollout_s", "score_s", "heldout_s")  # the step waits for the slowest rank
_TAG = re.compile(r"<[^<>]*>")  # a markup tag in an observation
REWARD_WINDOW = 10  # steps in the reward moving average
HISTORY_FILE = "ppo_history.json"  # the per-step metrics, also inside the model dir (the learning curve)


@dataclass
class Scored:
    """One episode's stitched sequence with its per-token PPO quantities (aligned to its tokens)."""

    seq: StitchedSequence
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor  # zeros without a critic
    advantages: torch.Tensor
    returns: torch.Tensor  # zeros without a critic
    loss_mask: torch.Tensor


def _em(traj: Any) -> float:
    """Mean exact match over objectives, from the trajectory's predictions and gold answers."""
    if not traj.gold:
        return 0.0
    return float(score_answers(list(traj.predictions), [tuple(g) for g in traj.gold])["em"])


def episode_reward(traj: Any, how: str) -> float:
    """The reward PPO trains on: the environment's; or (QA) mean F1 over objectives; or (QA) EM over
    the answers the episode read in an observation (`grounded`); 0 on a format error."""
    if how == "env":
        return float(traj.reward)
    if traj.format_error is not None or not traj.gold:
        return 0.0
    gold = [tuple(g) for g in traj.gold]
    if how == "f1":
        return float(score_answers(list(traj.predictions), gold)["f1"])
    seen = observed_text(traj)
    return float(score_answers([p if _was_read(p, seen) else "" for p in traj.predictions], gold)["em"])


def observed_text(traj: Any) -> str:
    """Every observation of the episode, normalised once per episode. Tags are cut first: normalising
    "<info>Paris" would glue the tag to the word."""
    return normalize_answer(_TAG.sub(" ", " ".join(turn.observation for turn in traj.turns)))


def _was_read(prediction: str, seen: str) -> bool:
    """The answer appears, as whole words, in `seen` (observed_text); yes/no are judgements, never
    copied, so they always count."""
    answer = normalize_answer(prediction)
    if answer in ("yes", "no"):
        return True
    return bool(answer) and f" {answer} " in f" {seen} "


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate(x: torch.Tensor, mask: torch.Tensor, episode_ids: torch.Tensor, how: str) -> torch.Tensor:
    """A per-token loss [B, L] to a scalar: `token_mean` over every loss token of the batch, or
    `sequence_mean`, each episode's token mean first, then the mean over episodes."""
    if how == "token_mean":
        return _masked_mean(x, mask)
    n = int(episode_ids.max()) + 1
    ep = episode_ids.clamp(min=0).flatten()  # padding (-1) has mask 0, so its slot adds nothing
    num = torch.zeros(n, dtype=x.dtype, device=x.device).scatter_add(0, ep, (x * mask).flatten())
    den = torch.zeros(n, dtype=x.dtype, device=x.device).scatter_add(0, ep, mask.flatten().to(x.dtype))
    has = den > 0
    return (num[has] / den[has]).mean()


def _k3(new: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(ref - new) - (ref - new) - 1: unbiased and >= 0 (Schulman)."""
    d = ref - new
    return d.exp() - d - 1


class PPOTrainer:
    """Holds actor, critic, reference, optimizers and the step loop; `run` is the public entry."""

    def __init__(
        self,
        cfg: PPOConfig,
        data_dir: Path,
        model_dir: Path,
        out_dir: Path,
        dist: distributed.Dist | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist if dist is not None else distributed.Dist(device=_default_device())
        world = self.dist.world_size
        for name in ("prompts_per_step", "minibatch_size"):
            if getattr(cfg, name) % world:
                raise ConfigError(f"ppo.{name} {getattr(cfg, name)} must be a multiple of the {world} ranks")
        self.local_minibatch = cfg.minibatch_size // world
        ds_raw = None
        if cfg.deepspeed_config:
            distributed.require_deepspeed(cfg.deepspeed_config)
            ds_raw = distributed.load_deepspeed_config(cfg.deepspeed_config)
        self.out_dir = Path(out_dir)
        self.model_dir = Path(model_dir)
        # Inputs are read and checked before any model is loaded: bad data fails in a second, not after.
        self.tasks = load_tasks(Path(data_dir), "train")
        if cfg.prompts_per_step * cfg.oversample > len(self.tasks):
            drawn = f"ppo.prompts_per_step {cfg.prompts_per_step}" + (
                f" x ppo.oversample {cfg.oversample}" if cfg.oversample > 1 else ""
            )
            raise ConfigError(f"{drawn} is more than the {len(self.tasks)} train tasks")
        self.domain = domains.domain_of(Path(data_dir))
        if cfg.reward != "env" and self.domain != "qa":
            raise ConfigError(
                f"ppo.reward {cfg.reward!r} scores QA answers; the data set's domain is {self.domain!r}"
            )
        corpus = load_corpus(Path(data_dir))
        catalog = domains.load_shop_catalog(Path(data_dir)) if self.domain == "shop" else None
        self.device = self.dist.device
        self.backend: AttentionBackend = resolve_backend(cfg.attention, self.device)
        if self.backend == "flex" and self.device.type == "cpu":
            raise ValueError(
                "ppo.attention 'flex' needs a GPU for training: FlexAttention has no CPU backward in "
                "torch 2.13 (its CPU forward is fine for scoring); use 'prefix', 'dense' or 'auto' on CPU"
            )
        if self.dist.is_main:
            print(f"ppo: attention {self.backend} (ppo.attention {cfg.attention!r} on {self.device.type})")
        self.grammar = models.load_grammar(model_dir)
        actor, self.tokenizer = models.load_model(model_dir, ModelConfig())
        self.actor = actor.to(self.device)
        self.ref = copy.deepcopy(self.actor).eval().requires_grad_(False)
        # Only GAE needs a value function; the group estimators' baseline is the group itself.
        self.critic: Critic | None = None
        if cfg.advantage == "gae":
            self.critic = Critic(copy.deepcopy(self.actor)).to(self.device)
            head = self.model_dir / "value_head.safetensors"
            if head.is_file():
                self.critic.load_head(head)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.engines: dict[str, Any] = {}  # "actor"/"critic" DeepSpeed engines when deepspeed_config is set
        self.zero3 = False
        if ds_raw is not None:
            self._init_deepspeed(ds_raw)
        # Constant learning rates (the paper's); schedulers are kept so a schedule can be swapped in
        # and so resume restores their state like everything else.
        self.opt: dict[str, torch.optim.Optimizer] = {}
        self.sched: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        for name, module, lr in (("actor", self.actor, cfg.actor_lr), ("critic", self.critic, cfg.critic_lr)):
            if module is not None and name not in self.engines:  # an engine holds its own optimizer
                self.opt[name] = torch.optim.AdamW(module.parameters(), lr=lr)
                self.sched[name] = torch.optim.lr_scheduler.LambdaLR(self.opt[name], lambda _: 1.0)
        self.env_factory = domains.env_factory_for(
            self.domain, Path(data_dir), cfg.agent, self.grammar, corpus=corpus, catalog=catalog
        )
        # The learning curve's held-out tasks: the first eval_tasks of each count, fixed for the run.
        self.curve_tasks: dict[int, list[Any]] = {}
        if cfg.eval_every:
            held_out = load_tasks(Path(data_dir), "eval")
            for n in cfg.eval_objectives:
                chosen = [t for t in held_out if t.n_objectives == n][: cfg.eval_tasks]
                if not chosen:
                    raise ConfigError(
                        f"ppo.eval_objectives: the data set has no held-out task with {n} objectives"
                    )
                self.curve_tasks[n] = chosen
        self.task_rng = random.Random(cfg.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []

    def _init_deepspeed(self, raw: dict[str, Any]) -> None:
        """Actor and critic as ZeRO engines (their own AdamW, clipping and gradient reduction); under
        ZeRO-3 the reference is partitioned too. Rollouts and scoring call the engines' modules."""
        ds_cfg = distributed.resolve_deepspeed_config(
            raw,
            micro_batch=self.local_minibatch,
            world_size=self.dist.world_size,
            grad_clip=self.cfg.max_grad_norm,
            bf16=next(self.actor.parameters()).dtype == torch.bfloat16,
            hidden_size=int(self.actor.config.hidden_size),
        )
        self.zero3 = distributed.zero_stage(ds_cfg) == 3
        if not self.dist.enabled:
            distributed.single_process_env()  # one GPU without torchrun
        self.engines["actor"] = distributed.deepspeed_initialize(self.actor, self.cfg.actor_lr, ds_cfg)
        self.actor = self.engines["actor"].module
        if self.critic is not None:
            out_emb, in_emb = self.critic.lm.get_output_embeddings(), self.critic.lm.get_input_embeddings()
            if out_emb is not None and out_emb.weight is not in_emb.weight:
                out_emb.requires_grad_(False)  # the critic never uses its lm_head; ZeRO need not reduce it
            self.engines["critic"] = distributed.deepspeed_initialize(self.critic, self.cfg.critic_lr, ds_cfg)
            self.critic = self.engines["critic"].module
        if self.zero3:
            self.ref = distributed.deepspeed_inference(self.ref, ds_cfg).eval()
        if self.dist.is_main:
            opt = ds_cfg.get("optimizer", {}).get("type", "torch.optim.AdamW")
            print(
                f"ppo: DeepSpeed ZeRO-{distributed.zero_stage(ds_cfg)} on {self.dist.world_size} "
                f"{self.device.type} rank(s) over {distributed.comm_backend()}, optimizer {opt}"
            )

    # -- checkpoints ------------------------------------------------------------------------------

    def _deepspeed_dir(self, name: str) -> Path:
        return checkpoint.checkpoint_root(self.out_dir) / "deepspeed" / name

    def _save_models(self, where: Path) -> None:
        models.save_model(self.actor, self.tokenizer, where / "actor", self.grammar)
        if self.critic is not None:
            self.critic.save(where / "critic")

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.actor, self.critic) if m is not None]

    def save_checkpoint(self) -> Path:
        """Rank 0 writes the checkpoint (optimizer states are the same on every rank); with DeepSpeed every
        rank first writes its optimizer shard through the engine, and ZeRO-3 weights are gathered."""
        state: dict[str, Any] = {
            "step": self.step,
            "rng": checkpoint.rng_state(self.task_rng),
            "advantage": self.cfg.advantage,
        }
        if self.engines:
            tag = f"step_{self.step}"
            for name, engine in self.engines.items():
                engine.save_checkpoint(str(self._deepspeed_dir(name)), tag=tag)
            state["deepspeed_tag"] = tag
        else:
            for name in self.opt:
                state[f"opt_{name}"] = self.opt[name].state_dict()
                state[f"sched_{name}"] = self.sched[name].state_dict()
        path = checkpoint.checkpoint_root(self.out_dir) / f"step_{self.step}"
        with distributed.gathered(self._modules(), self.zero3):
            if self.dist.is_main:
                path = checkpoint.save(self.out_dir, self.step, self._save_models, state, self.history)
        distributed.barrier(self.dist)
        return path

    def maybe_resume(self) -> bool:
        ckpt = None
        if self.dist.is_main:  # rank 0 picks and verifies; every rank loads that same checkpoint
            ckpt = checkpoint.latest(self.out_dir)
            if ckpt is not None:
                checkpoint.verify(ckpt)
        ckpt = distributed.broadcast_object(ckpt, self.dist)
        if ckpt is None:
            return False
        state, history = checkpoint.load_state(ckpt)
        written_by = state.get("advantage", "gae")  # checkpoints from before the choice existed were gae
        if written_by != self.cfg.advantage:
            raise ValueError(
                f"{ckpt}: written by a run with another ppo.advantage ({written_by!r}, this run: "
                f"{self.cfg.advantage!r}); resume with the estimator that wrote it, or use a new out_dir"
            )
        if self.engines:
            if "deepspeed_tag" not in state:
                raise ValueError(
                    f"{ckpt}: written without DeepSpeed; resume it with ppo.deepspeed_config unset"
                )
            for name, engine in self.engines.items():  # module weights and optimizer shards
                engine.load_checkpoint(str(self._deepspeed_dir(name)), tag=state["deepspeed_tag"])
        else:
            if "deepspeed_tag" in state:
                raise ValueError(f"{ckpt}: written by DeepSpeed engines; resume it with ppo.deepspeed_config")
            actor, _ = models.load_model(ckpt / "actor", ModelConfig())
            self.actor.load_state_dict(actor.state_dict())
            if self.critic is not None:
                critic_lm = AutoModelForCausalLM.from_pretrained(ckpt / "critic", use_safetensors=True)
                self.critic.lm.load_state_dict(critic_lm.state_dict())
                self.critic.load_head(ckpt / "critic" / "value_head.safetensors")
            for name in self.opt:
                self.opt[name].load_state_dict(state[f"opt_{name}"])
                self.sched[name].load_state_dict(state[f"sched_{name}"])
        checkpoint.restore_rng(state["rng"], self.task_rng)
        self.step = int(state["step"])
        self.history = [h for h in history if h["step"] <= self.step]
        print(f"ppo: resumed from {ckpt} at step {self.step}")
        return True

    # -- one step ---------------------------------------------------------------------------------

    def _collate(self, seqs: list[StitchedSequence]) -> Batch:
        pack = self.backend == "flex"
        longest = max(len(s) for s in seqs)
        return collate(seqs, self.pad_id, pack=pack, max_len=max(longest, PACK_TOKENS if pack else 0))

    def rollout(self) -> tuple[list[Any], float]:
        """This rank's episodes: its shard of the step's tasks, each `group_size` times in a row."""
        # Every rank draws the same tasks (same task_rng), then rolls out its own shard of whole groups.
        drawn = self.task_rng.sample(self.tasks, self.cfg.prompts_per_step * self.cfg.oversample)
        tasks = distributed.shard(drawn, self.dist)
        grouped = [task for task in tasks for _ in range(self.cfg.group_size)]
        seed = self.cfg.seed * 1_000_003 + self.step + self.dist.rank * RANK_SEED_STRIDE
        t0 = time.perf_counter()
        trajs = self._episodes(grouped, self.cfg.agent.temperature, seed)
        return trajs, time.perf_counter() - t0

    def _episodes(self, tasks: list[Any], temperature: float, seed: int) -> list[Any]:
        agent = self.cfg.agent
        policy = HFPolicy(
            self.actor,
            self.tokenizer,
            temperature=temperature,
            batch_size=agent.batch_size,
            seed=seed,
            prefix_cache_tokens=agent.prefix_cache_tokens,
        )
        self.actor.eval()
        whole = distributed.whole_for_generation(self.engines.get("actor"), self.zero3)
        with torch.no_grad(), whole:
            return run_episodes(tasks, self.env_factory, policy, agent, mode=agent.mode, progress=False)

    def heldout(self) -> dict[str, float]:
        """Greedy held-out EM (and reward) per count: the learning curve's points. Ranks split the tasks."""
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        for n, tasks in self.curve_tasks.items():
            trajs = self._episodes(distributed.shard(tasks, self.dist), 0.0, self.cfg.seed)
            sums = torch.tensor([sum(_em(t) for t in trajs), sum(t.reward for t in trajs), len(trajs)])
            em, reward, count = distributed.all_reduce(sums.double(), self.dist).tolist()
            out[f"heldout_em_n{n}"] = em / max(count, 1)
            out[f"heldout_reward_n{n}"] = reward / max(count, 1)
        out["heldout_s"] = time.perf_counter() - t0
        return out

    @torch.no_grad()
    def score(self, seqs: list[StitchedSequence]) -> list[Scored]:
        """Old/ref log-probs (and values) from one masked pass per mini-batch, then the advantages.

        `seqs` are in group order (task 0 x group_size, task 1 x group_size, ...) for grpo/rloo."""
        cfg = self.cfg
        temp = cfg.agent.temperature
        episode_adv = (
            None
            if self.critic is not None
            else group_advantages(
                [s.reward for s in seqs], cfg.group_size, cfg.advantage, cfg.scale_by_group_std
            )
        )
        self.actor.eval()
        if self.critic is not None:
            self.critic.eval()
        out: list[Scored] = []
        for start in range(0, len(seqs), cfg.minibatch_size):
            chunk = seqs[start : start + cfg.minibatch_size]
            batch = self._collate(chunk).to(self.device)
            old, _ = actor_logprobs(self.actor, batch, self.backend, temperature=temp)
            ref, _ = actor_logprobs(self.ref, batch, self.backend, temperature=temp)
            values = (
                self.critic(batch, self.backend) * batch.loss_mask
                if self.critic is not None
                else torch.zeros(batch.shape, device=self.device)
            )
            for k, (s, o, r, v, m) in enumerate(
                zip(
                    chunk,
                    batch.gather(old.cpu()),
                    batch.gather(ref.cpu()),
                    batch.gather(values.cpu()),
                    batch.gather(batch.loss_mask.cpu()),
                    strict=True,
                )
            ):
                if episode_adv is not None:
                    out.append(Scored(s, o, r, v, episode_adv[start + k] * m, torch.zeros_like(v), m))
                    continue
                rewards = -cfg.kl_coef * (o - r) * m
                last = s.last_loss_index
                if last >= 0:
                    rewards[last] += s.reward
                adv, ret = gae(rewards, v, m, cfg.gamma, cfg.lam)
                out.append(Scored(s, o, r, v, adv, ret, m))
        if cfg.whiten_advantages and self.critic is not None:
            all_adv = torch.cat([x.advantages[x.loss_mask > 0] for x in out]) if out else torch.zeros(0)
            mean, std, n = distributed.global_mean_std(all_adv, self.dist)  # over the global batch
            if n > 1:
                for x in out:
                    x.advantages = (x.advantages - mean) / (std + 1e-8) * x.loss_mask
        return out

    def update(self, scored: list[Scored]) -> dict[str, float]:
        cfg = self.cfg
        self.actor.train()
        if self.critic is not None:
            self.critic.train()
        sums: dict[str, float] = {"policy_loss": 0.0, "entropy": 0.0, "clipfrac": 0.0, "approx_kl": 0.0}
        if self.critic is not None:
            sums.update(value_loss=0.0, value_clipfrac=0.0)
        else:
            sums.update(kl_loss=0.0)
        n_mb = 0
        tokens = 0
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)
        t0 = time.perf_counter()
        size = self.local_minibatch  # this rank's share of a global mini-batch of cfg.minibatch_size
        local_batches = (len(scored) + size - 1) // size
        # Every rank takes the same number of optimizer steps (gradient averaging is collective).
        n_batches = int(distributed.all_reduce(torch.tensor([local_batches]), self.dist, "max")[0])
        if self.engines and n_batches != local_batches:
            raise RuntimeError(f"rank {self.dist.rank}: {len(scored)} episodes, unlike the other ranks")
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(scored), generator=gen).tolist()
            for k in range(n_batches):
                mb = [scored[i] for i in order[k * size : (k + 1) * size]]
                if not mb:  # a rank short of episodes still joins the gradient all-reduces
                    for name in ("actor", "critic") if self.critic is not None else ("actor",):
                        self._step(name, None)
                    continue
                batch = self._collate([x.seq for x in mb]).to(self.device)
                mask = batch.loss_mask
                old = batch.scatter([x.old_logprobs for x in mb]).to(self.device)
                adv = batch.scatter([x.advantages for x in mb]).to(self.device)

                def agg(x: torch.Tensor, batch: Batch = batch, mask: torch.Tensor = mask) -> torch.Tensor:
                    return aggregate(x, mask, batch.episode_ids, cfg.loss_agg)

                new, entropy = actor_logprobs(
                    self.actor, batch, self.backend, with_entropy=True, temperature=cfg.agent.temperature
                )
                assert entropy is not None
                log_ratio = (new - old) * mask
                ratio = log_ratio.exp()
                pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
                pg_loss = agg(pg)
                ent = agg(entropy)
                loss = pg_loss - cfg.entropy_coef * ent
                if self.critic is None:  # group estimators: the KL to the reference is a loss term
                    ref = batch.scatter([x.ref_logprobs for x in mb]).to(self.device)
                    kl_loss = agg(_k3(new, ref) * mask)
                    loss = loss + cfg.kl_coef * kl_loss
                    sums["kl_loss"] += float(kl_loss.detach())
                self._step("actor", loss)

                if self.critic is not None:
                    ret = batch.scatter([x.returns for x in mb]).to(self.device)
                    old_v = batch.scatter([x.values for x in mb]).to(self.device)
                    v = self.critic(batch, self.backend)
                    v_clip = old_v + (v - old_v).clamp(-cfg.value_clip_range, cfg.value_clip_range)
                    vf = 0.5 * torch.max((v - ret) ** 2, (v_clip - ret) ** 2)
                    vf_loss = agg(vf)
                    self._step("critic", vf_loss)
                    with torch.no_grad():
                        sums["value_loss"] += float(vf_loss)
                        vclipped = ((v - old_v).abs() > cfg.value_clip_range).float()
                        sums["value_clipfrac"] += float(_masked_mean(vclipped, mask))

                with torch.no_grad():
                    sums["policy_loss"] += float(pg_loss)
                    sums["entropy"] += float(ent)
                    clipped = ((ratio - 1).abs() > cfg.clip_range).float()
                    sums["clipfrac"] += float(_masked_mean(clipped, mask))
                    sums["approx_kl"] += float(_masked_mean((ratio - 1) - log_ratio, mask))
                n_mb += 1
                tokens += batch.n_tokens
        seconds = time.perf_counter() - t0
        metrics = {k: v / max(n_mb, 1) for k, v in sums.items()}
        metrics["update_tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
        return metrics

    def _step(self, which: str, loss: torch.Tensor | None) -> None:
        """One optimizer step of the actor or critic on `loss` (None: no local data, others' gradients)."""
        if which in self.engines:  # DeepSpeed: reduction, clipping, step and zero_grad in the engine
            engine = self.engines[which]
            assert loss is not None, "DeepSpeed ranks always hold data (checked in update)"
            engine.backward(loss)
            engine.step()
            return
        module = self.actor if which == "actor" else self.critic
        assert module is not None, f"no {which} to step"
        opt, sched = self.opt[which], self.sched[which]
        opt.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
        distributed.average_gradients(list(module.parameters()), self.dist)
        torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.max_grad_norm)
        opt.step()
        sched.step()

    def train_step(self) -> dict[str, float]:
        trajs, rollout_s = self.rollout()
        seqs = [stitch(t) for t in trajs]  # every episode has >= 1 turn; group order is kept
        if self.cfg.reward != "env":
            for s, t in zip(seqs, trajs, strict=True):
                s.reward = episode_reward(t, self.cfg.reward)
        trained = self._informative(seqs)
        t0 = time.perf_counter()
        scored = self.score(trained)
        score_s = time.perf_counter() - t0
        metrics = self.update(scored)
        n = len(trajs)
        kl = [float(((x.old_logprobs - x.ref_logprobs) * x.loss_mask).sum()) for x in scored]
        gen_tokens = sum(s.n_loss_tokens for s in seqs)  # every episode rolled out, trained or not
        metrics.update(
            reward=sum(s.reward for s in seqs) / n,  # what PPO trained on (ppo.reward)
            em=sum(_em(t) for t in trajs) / n,
            kl=sum(kl) / max(len(kl), 1),
            format_error_rate=sum(t.format_error is not None for t in trajs) / n,
            turns=sum(len(t.turns) for t in trajs) / n,
            generated_tokens=gen_tokens / n,  # the response length: tokens the model wrote per episode
            stitched_tokens=sum(len(s) for s in seqs) / max(len(seqs), 1),
            rollout_s=rollout_s,
            rollout_tokens_per_s=gen_tokens / rollout_s if rollout_s > 0 else 0.0,
            score_s=score_s,
        )
        metrics[f"attention_{self.backend}"] = 1.0  # which exact path scored and updated (auto resolved)
        if self.cfg.group_size > 1:
            metrics.update(group_stats([s.reward for s in seqs], self.cfg.group_size))
        if self.cfg.oversample > 1:
            kept = group_stats([s.reward for s in trained], self.cfg.group_size)
            metrics["trained_flat_group_share"] = kept["flat_group_share"]
        metrics.update(domains.summary_extras(self.domain, trajs))
        if self.curve_tasks and (self.step + 1) % self.cfg.eval_every == 0:
            metrics.update(self.heldout())
        return distributed.reduce_metrics(metrics, self.dist, SUMMED_METRICS, SLOWEST_METRICS)

    def _informative(self, seqs: list[StitchedSequence]) -> list[StitchedSequence]:
        """The groups this step trains on: all, or with oversample k this rank's 1/k, those whose rewards
        differ first (rl/advantages.informative_groups)."""
        k, size = self.cfg.oversample, self.cfg.group_size
        if k == 1:
            return seqs
        keep = informative_groups([s.reward for s in seqs], size, len(seqs) // size // k)
        return [seqs[g * size + i] for g in keep for i in range(size)]

    def _record(self, step: int, metrics: dict[str, float], log: LogFn | None) -> dict[str, float]:
        record = {"step": float(step), **{f"ppo/{k}": float(v) for k, v in metrics.items()}}
        self.history.append(record)
        if log and self.dist.is_main:
            log({k: v for k, v in record.items() if k != "step"}, step)
        return record

    def train(self, log: LogFn | None = None) -> Path:
        cfg = self.cfg
        self.maybe_resume()
        main = self.dist.is_main  # only rank 0 logs, prints and writes
        bar = tqdm(
            total=cfg.steps, initial=min(self.step, cfg.steps), desc="ppo", unit="step", disable=not main
        )
        if self.step == 0 and self.curve_tasks:  # the curve's first point: the SFT model
            self._record(0, self.heldout(), log)
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            metrics = self.train_step()
            self.step += 1
            metrics["step_s"] = time.perf_counter() - t0
            recent = [h["ppo/reward"] for h in self.history if "ppo/reward" in h][-(REWARD_WINDOW - 1) :]
            metrics["reward_ma"] = (sum(recent) + metrics["reward"]) / (len(recent) + 1)
            self._record(self.step, metrics, log)
            bar.update()
            if not log and main:
                bar.write(format_step(self.step, metrics))
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        bar.close()

        model_dir = self.out_dir / "model"
        with distributed.gathered(self._modules(), self.zero3):
            if main:
                extra = {
                    "ppo_steps": self.step,
                    "ppo_advantage": cfg.advantage,
                    "ppo_attention": self.backend,
                }
                models.save_model(self.actor.eval(), self.tokenizer, model_dir, self.grammar, extra)
                if self.critic is not None:
                    self.critic.save(self.out_dir / "critic")
                history = json.dumps(self.history, indent=1) + "\n"
                (self.out_dir / "metrics_history.json").write_text(history)
                # In the model dir too: the model artifact carries its own learning curve to evaluation.
                (model_dir / HISTORY_FILE).write_text(history)
        distributed.barrier(self.dist)
        return model_dir


def format_step(step: int, m: dict[str, float]) -> str:
    """One line per step: what tells whether the policy learns (reward, its trend, how far it moved)."""
    parts = [
        f"reward {m['reward']:.3f} (ma {m['reward_ma']:.3f})",
        f"approx_kl {m['approx_kl']:.2e}",
        f"clipfrac {m['clipfrac']:.3f}",
        f"entropy {m['entropy']:.3f}",
        f"len {m['generated_tokens']:.0f}",
        f"fmt_err {m['format_error_rate']:.2f}",
    ]
    if "group_reward_std" in m:
        parts.append(f"group_std {m['group_reward_std']:.3f} flat {m['flat_group_share']:.2f}")
    if "trained_flat_group_share" in m:
        parts.append(f"trained flat {m['trained_flat_group_share']:.2f}")
    if "value_loss" in m:
        parts.append(f"vf {m['value_loss']:.4f}")
    parts += [
        f"{k.replace('heldout_', 'heldout ')} {v:.3f}" for k, v in m.items() if k.startswith("heldout_em")
    ]
    return f"ppo step {step}: " + " ".join(parts)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(cfg: PPOConfig, data_dir: Path, model_dir: Path, out_dir: Path, log: LogFn | None = None) -> Path:
    """Train with PPO from `model_dir` (the SFT model); returns out_dir/model (the actor).

    Under torchrun (WORLD_SIZE > 1) this process joins the group and trains its data-parallel share."""
    torch.manual_seed(cfg.seed)
    dist = distributed.setup()
    trainer = PPOTrainer(cfg, Path(data_dir), Path(model_dir), Path(out_dir), dist)
    model_dir = trainer.train(log)
    distributed.teardown(dist)  # barrier: no rank exits while rank 0 still writes
    return model_dir
