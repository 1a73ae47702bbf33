"""Stitch a multi-turn trajectory into one sequence whose masked forward pass is exact.

Every turn stores the exact ids it saw (`context_ids`, starting with the task prompt of length P)
and the exact ids it wrote (`output_ids`). One episode becomes

    prompt | seg_0 = context_0[P:] + output_0 | seg_1 = context_1[P:] + output_1 | ...

with segment id 0 for the prompt and t+1 for turn t. A token of segment t may attend to the prompt
and to the causal prefix of its own segment only, and its position id is the position it had at
generation time (P, P+1, ... within the segment). Each token therefore sees exactly the context
it had when it was generated, so log-probs and values from one stitched pass equal those from
re-running every turn separately (tested to 1e-4 in fp32).

Choice vs the paper: MEM1 reuses the previous turn's generated tokens as the next turn's context
inside one sequence, which forces contiguous positions and a token that was written under one
context to also serve as context for the next turn (its hidden states then differ from what the
model computed at generation time; the paper's log-probs are approximate). We instead store the kept
IS/action/observation once more, as the loss-masked head of the next segment. This costs the kept
tokens once more per turn (small in mem1 mode, where the kept context is bounded) and makes every
log-prob exact, in every mode (mem1, full, truncate:K).

Loss lands only on `output_ids` (IS, actions, answers); never on prompt or observation tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mem1_core.agent.types import Trajectory


@dataclass
class StitchedSequence:
    """One episode as one sequence. Lists are aligned per token.

    `pred_index[i]` is the index of the token whose logits predict token i (i-1, except for the
    first output token of a turn whose kept context is empty: then it is the last prompt token);
    -1 where nothing predicts it (the first prompt token).
    """

    input_ids: list[int]
    position_ids: list[int]
    segment_ids: list[int]
    loss_mask: list[int]
    turn_index: list[int]  # -1 on prompt tokens, t on tokens of turn t
    pred_index: list[int]
    old_logprobs: list[float] | None  # behaviour log-probs on output tokens (0 elsewhere), if known
    reward: float
    task_id: str = ""
    prompt_len: int = 0
    n_turns: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def last_loss_index(self) -> int:
        """Index of the last generated token (where the outcome reward lands); -1 if none."""
        for i in range(len(self.loss_mask) - 1, -1, -1):
            if self.loss_mask[i]:
                return i
        return -1


def stitch(traj: Trajectory) -> StitchedSequence:
    """Build the stitched sequence of one trajectory; raises ValueError if turns disagree on the prompt."""
    if not traj.turns:
        raise ValueError(f"trajectory {traj.task_id!r}: no turns to stitch")
    p = traj.prompt_len
    prompt = traj.turns[0].context_ids[:p]
    if p < 1 or len(prompt) != p:
        raise ValueError(
            f"trajectory {traj.task_id!r}: prompt_len {p} does not fit turn 0 context "
            f"of {len(traj.turns[0].context_ids)} tokens"
        )
    ids = list(prompt)
    pos = list(range(p))
    seg = [0] * p
    loss = [0] * p
    turn_idx = [-1] * p
    pred = [i - 1 for i in range(p)]
    have_lp = all(t.logprobs is not None for t in traj.turns)
    old_lp: list[float] = [0.0] * p
    for t, turn in enumerate(traj.turns):
        if turn.context_ids[:p] != prompt:
            raise ValueError(
                f"trajectory {traj.task_id!r}: turn {t} context does not start with the task prompt "
                f"(first {p} ids differ from turn 0)"
            )
        kept = turn.context_ids[p:]
        out = turn.output_ids
        if have_lp and len(turn.logprobs or []) != len(out):
            raise ValueError(
                f"trajectory {traj.task_id!r}: turn {t} has {len(turn.logprobs or [])} logprobs "
                f"for {len(out)} output ids"
            )
        start = len(ids)
        n = len(kept) + len(out)
        ids.extend(kept)
        ids.extend(out)
        pos.extend(range(p, p + n))
        seg.extend([t + 1] * n)
        loss.extend([0] * len(kept) + [1] * len(out))
        turn_idx.extend([t] * n)
        # The first token of a segment is predicted by the last prompt token (it saw only the prompt).
        if n:
            pred.extend([p - 1, *range(start, start + n - 1)])
        old_lp.extend([0.0] * len(kept))
        old_lp.extend(list(turn.logprobs) if have_lp and turn.logprobs is not None else [0.0] * len(out))
    return StitchedSequence(
        input_ids=ids,
        position_ids=pos,
        segment_ids=seg,
        loss_mask=loss,
        turn_index=turn_idx,
        pred_index=pred,
        old_logprobs=old_lp if have_lp else None,
        reward=float(traj.reward),
        task_id=traj.task_id,
        prompt_len=p,
        n_turns=len(traj.turns),
    )


@dataclass
class Batch:
    """Stitched sequences padded or packed into rows. `episode_ids` is -1 on padding.

    `placement[k] = (row, offset)` says where sequence k sits, so per-token arrays computed for a
    sequence (advantages, returns, old log-probs) can be scattered into the batch and back.
    """

    input_ids: torch.Tensor  # [B, L] long
    position_ids: torch.Tensor  # [B, L] long
    segment_ids: torch.Tensor  # [B, L] long
    episode_ids: torch.Tensor  # [B, L] long, -1 on padding
    loss_mask: torch.Tensor  # [B, L] float
    pred_index: torch.Tensor  # [B, L] long, row-local; 0 where unused
    lengths: list[int]
    placement: list[tuple[int, int]]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.input_ids.shape[0]), int(self.input_ids.shape[1])

    @property
    def n_tokens(self) -> int:
        return int((self.episode_ids >= 0).sum())

    def scatter(self, per_seq: list[torch.Tensor] | list[list[float]], fill: float = 0.0) -> torch.Tensor:
        """Place one per-token array per sequence into a [B, L] float tensor."""
        out = torch.full(self.shape, fill, dtype=torch.float32)
        for (row, off), n, values in zip(self.placement, self.lengths, per_seq, strict=True):
            out[row, off : off + n] = torch.as_tensor(values, dtype=torch.float32)
        return out

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of scatter: one 1D tensor per sequence."""
        spans = zip(self.placement, self.lengths, strict=True)
        return [tensor[row, off : off + n] for (row, off), n in spans]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            segment_ids=self.segment_ids.to(device),
            episode_ids=self.episode_ids.to(device),
            loss_mask=self.loss_mask.to(device),
            pred_index=self.pred_index.to(device),
            lengths=self.lengths,
            placement=self.placement,
        )


def _rows(seqs: list[StitchedSequence], pack: bool, max_len: int) -> list[list[int]]:
    """Greedy first-fit in order: which sequences share each row."""
    for k, s in enumerate(seqs):
        if len(s) > max_len:
            raise ValueError(
                f"stitched sequence {k} (task {s.task_id!r}) has {len(s)} tokens, over max_len {max_len}"
            )
    if not pack:
        return [[k] for k in range(len(seqs))]
    rows: list[list[int]] = []
    used: list[int] = []
    for k, s in enumerate(seqs):
        for r, u in enumerate(used):
            if u + len(s) <= max_len:
                rows[r].append(k)
                used[r] += len(s)
                break
        else:
            rows.append([k])
            used.append(len(s))
    return rows


def collate(seqs: list[StitchedSequence], pad_id: int, pack: bool = False, max_len: int = 4096) -> Batch:
    """Pad (one episode per row) or pack (several per row, told apart by episode id) into tensors."""
    if not seqs:
        raise ValueError("collate: no sequences")
    rows = _rows(seqs, pack, max_len)
    width = max(sum(len(seqs[k]) for k in row) for row in rows)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    segment_ids = torch.zeros((b, width), dtype=torch.long)
    episode_ids = torch.full((b, width), -1, dtype=torch.long)
    loss_mask = torch.zeros((b, width), dtype=torch.float32)
    pred_index = torch.zeros((b, width), dtype=torch.long)
    placement: list[tuple[int, int]] = [(0, 0)] * len(seqs)
    for r, row in enumerate(rows):
        off = 0
        for k in row:
            s = seqs[k]
            n = len(s)
            sl = slice(off, off + n)
            input_ids[r, sl] = torch.tensor(s.input_ids)
            position_ids[r, sl] = torch.tensor(s.position_ids)
            segment_ids[r, sl] = torch.tensor(s.segment_ids)
            episode_ids[r, sl] = k
            loss_mask[r, sl] = torch.tensor(s.loss_mask, dtype=torch.float32)
            pred = torch.tensor(s.pred_index)
            pred_index[r, sl] = torch.where(pred >= 0, pred + off, torch.zeros_like(pred))
            placement[k] = (r, off)
            off += n
        # Padding continues positions so rotary embeddings stay in range; nothing attends to it.
        if off < width:
            position_ids[r, off:] = torch.arange(width - off)
    return Batch(
        input_ids=input_ids,
        position_ids=position_ids,
        segment_ids=segment_ids,
        episode_ids=episode_ids,
        loss_mask=loss_mask,
        pred_index=pred_index,
        lengths=[len(s) for s in seqs],
        placement=placement,
    )
