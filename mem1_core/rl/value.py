"""Actor log-probs and the critic (causal-LM backbone + scalar value head) over stitched batches.

trl 1.16 no longer ships `AutoModelForCausalLMWithValueHead` nor a PPO trainer (neither in `trl` nor
in `trl.experimental`), so the critic is a small module of our own: the base transformer of a causal
LM (`lm.base_model`, lm_head unused) and an `nn.Linear(hidden, 1)` on its last hidden state. The head
is saved as `value_head.safetensors` beside the backbone's save_pretrained files.

Values and log-probs are read at `pred_index`: the value of generating token i is V(state before i),
i.e. the head at the token that predicts i; only loss positions are projected through lm_head, so
the full [B, L, vocab] logits tensor is never built.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from mem1_core.rl.attention import AttentionBackend, hidden_states
from mem1_core.rl.trajectory import Batch

VALUE_HEAD_FILE = "value_head.safetensors"


def _at_pred(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Hidden state of each token's predictor: [B, L, H]."""
    idx = batch.pred_index.to(hidden.device)[:, :, None].expand(-1, -1, hidden.shape[-1])
    return torch.gather(hidden, 1, idx)


def actor_logprobs(
    lm: nn.Module,
    batch: Batch,
    backend: AttentionBackend,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs [B, L] of batch.input_ids under `lm` (0 off the loss mask), and entropy.

    With `temperature` T > 0 both come from softmax(logits / T), the distribution HFPolicy samples
    from, so the PPO ratio compares the policy that acted with the one being trained. T = 0 (greedy
    rollouts) scores the untempered model, as HFPolicy reports for greedy."""
    hidden = hidden_states(lm.base_model, batch, backend)
    pred_h = _at_pred(hidden, batch)
    sel = batch.loss_mask.to(hidden.device) > 0
    logits = lm.get_output_embeddings()(pred_h[sel]).float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    targets = batch.input_ids.to(hidden.device)[sel]
    lp = torch.zeros(batch.shape, dtype=torch.float32, device=hidden.device)
    lp[sel] = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = torch.zeros(batch.shape, dtype=torch.float32, device=hidden.device)
        entropy[sel] = -(logp_all.exp() * logp_all).sum(-1)
    return lp, entropy


class Critic(nn.Module):
    """V(s) for every token: causal-LM backbone + Linear(hidden, 1) on the last hidden state."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.to(dtype=next(lm.parameters()).dtype, device=next(lm.parameters()).device)

    def forward(self, batch: Batch, backend: AttentionBackend) -> torch.Tensor:
        """Value [B, L] of the state before each token (read at pred_index)."""
        hidden = hidden_states(self.lm.base_model, batch, backend)
        return self.head(_at_pred(hidden, batch)).squeeze(-1).float()

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(out_dir, safe_serialization=True)
        head = {k: v.contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(out_dir / VALUE_HEAD_FILE))

    def load_head(self, path: Path) -> None:
        self.head.load_state_dict(load_file(str(path)))

    @classmethod
    def load(cls, model_dir: Path, dtype: torch.dtype = torch.float32) -> Critic:
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
        critic = cls(lm)
        head = Path(model_dir) / VALUE_HEAD_FILE
        if head.is_file():
            critic.load_head(head)
        return critic
