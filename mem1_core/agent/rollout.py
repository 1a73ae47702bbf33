"""The rollout loop: MEM1 constant-memory contexts and the full-context and truncation baselines.

All live episodes generate together each turn (one batched `policy.generate` call). Contexts are
built by concatenating token ids — prompt, then kept turns' output ids and observation ids — never
by re-tokenising what the model wrote, so each `Turn.context_ids` is exactly what the model saw:

- `mem1`:       prompt + last turn's output (internal state + action) + last observation
- `full`:       prompt + every turn's output and observation
- `truncate:k`: prompt + the last k turns' outputs and observations

A malformed generation ends its episode with a format error recorded on the turn and the
trajectory; it never raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from mem1_core.agent.types import Policy, PolicyInput, Trajectory, Turn
from mem1_core.config import AgentConfig, parse_mode
from mem1_core.data.types import Task
from mem1_core.envs.base import Environment


def kept_turns(mode: str) -> int | None:
    """How many past (output, observation) pairs a mode keeps after the prompt; None = all."""
    name, k = parse_mode(mode)
    if name == "full":
        return None
    return 1 if name == "mem1" else k


def build_context(
    prompt_ids: list[int], history: list[tuple[list[int], list[int]]], keep: int | None
) -> list[int]:
    """Prompt ids, then the kept (output ids, observation ids) pairs, oldest first."""
    kept = history if keep is None else history[max(len(history) - keep, 0) :] if keep > 0 else []
    ids = list(prompt_ids)
    for out_ids, obs_ids in kept:
        ids.extend(out_ids)
        ids.extend(obs_ids)
    return ids


def shared_prefix_len(
    context_len: int, prompt_len: int, history: list[tuple[list[int], list[int]]], keep: int | None
) -> int:
    """How many leading ids a turn's context shares with the previous turn's context plus output.

    While no kept pair has been dropped yet (always in full context), that is the whole context but
    the newest observation; once the window slides (mem1, truncate), only the prompt stays put.
    """
    if not history:
        return prompt_len
    if keep is None or len(history) <= keep:
        return context_len - len(history[-1][1])
    return prompt_len


def final_info_metrics(info: dict[str, Any]) -> dict[str, float]:
    """The final step's numeric info as `env_<key>` (e.g. the shop's success rate `env_em`), so domain
    scores the trajectory fields do not carry survive into evaluation."""
    return {
        f"env_{k}": float(v)
        for k, v in info.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


@dataclass
class _Episode:
    task: Task
    env: Environment
    traj: Trajectory
    prompt_ids: list[int]
    history: list[tuple[list[int], list[int]]] = field(default_factory=list)
    seconds: float = 0.0


def _prompt_encoder(policy: Policy) -> Callable[[str], list[int]]:
    encode_prompt = getattr(policy, "encode_prompt", None)
    return encode_prompt if callable(encode_prompt) else policy.encode


def run_episodes(
    tasks: list[Task],
    env_factory: Callable[[Task], Environment],
    policy: Policy,
    agent_cfg: AgentConfig,
    mode: str | None = None,
    progress: bool = True,
) -> list[Trajectory]:
    """Run one episode per task, all episodes batched together; trajectories in task order.

    `seconds` per trajectory is its share of the batched generation time (split evenly among the
    episodes in each call) plus its own environment time, so the seconds of all trajectories sum
    to the wall time of the loop.
    """
    mode = mode or agent_cfg.mode
    keep = kept_turns(mode)
    encode_prompt = _prompt_encoder(policy)
    episodes: list[_Episode] = []
    for task in tasks:
        t0 = time.perf_counter()
        env = env_factory(task)
        prompt_ids = encode_prompt(env.reset())
        traj = Trajectory(
            task_id=task.id,
            mode=mode,
            n_objectives=task.n_objectives,
            prompt_len=len(prompt_ids),
            gold=[list(a) for a in task.gold_answers],
        )
        episodes.append(_Episode(task, env, traj, prompt_ids, seconds=time.perf_counter() - t0))

    clear = getattr(policy, "clear_prefix_cache", None)  # stored prefixes belong to the current weights
    if callable(clear):
        clear()
    try:
        _run_turns(episodes, policy, agent_cfg, keep, mode, progress)
    finally:
        if callable(clear):
            clear()
    for ep in episodes:
        ep.traj.seconds = ep.seconds
    return [ep.traj for ep in episodes]


def _run_turns(
    episodes: list[_Episode],
    policy: Policy,
    agent_cfg: AgentConfig,
    keep: int | None,
    mode: str,
    progress: bool,
) -> None:
    live = list(episodes)
    turn_index = 0
    bar = tqdm(total=len(episodes), desc=f"rollout {mode}", unit="episode", disable=not progress)
    while live:
        stops = sorted({s for ep in live for s in ep.env.stop_strings})
        batch = []
        for ep in live:
            context = build_context(ep.prompt_ids, ep.history, keep)
            prefix = shared_prefix_len(len(context), len(ep.prompt_ids), ep.history, keep)
            batch.append(PolicyInput(context, ep.task, turn_index, prefix_len=prefix))
        t0 = time.perf_counter()
        outputs = policy.generate(batch, stop=stops, max_new_tokens=agent_cfg.max_new_tokens)
        share = (time.perf_counter() - t0) / len(live)
        if len(outputs) != len(live):
            raise RuntimeError(f"policy returned {len(outputs)} outputs for {len(live)} inputs")
        still: list[_Episode] = []
        for ep, inp, out in zip(live, batch, outputs, strict=True):
            t1 = time.perf_counter()
            result = ep.env.step(out.text)
            turn = Turn(
                context_ids=inp.context_ids,
                output_ids=list(out.ids),
                output_text=out.text,
                observation=result.observation,
                format_error=result.format_error,
                logprobs=out.logprobs,
            )
            ep.traj.turns.append(turn)
            ended = result.done or result.format_error is not None
            if not ended and len(ep.traj.turns) >= ep.env.max_turns:
                ended, turn.format_error = True, "turn budget exhausted without an answer"
            if ended:
                traj = ep.traj
                traj.done = True
                traj.reward = float(result.reward)
                traj.format_error = turn.format_error
                traj.predictions = [str(p) for p in result.info.get("predictions", [])]
                traj.metrics.update(final_info_metrics(result.info))
                bar.update()
            else:
                ep.history.append((list(out.ids), policy.encode(result.observation)))
                still.append(ep)
            ep.seconds += share + time.perf_counter() - t1
        live = still
        turn_index += 1
    bar.close()
