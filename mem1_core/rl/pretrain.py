"""Causal-LM pre-training on the data set's own text, run by sft.run before SFT when configured.

Why: a tiny model built from a config starts from random weights. SFT on teacher turns alone teaches
it the tag format but not to copy a name it has never seen from the prompt into its state, the copy a
second objective needs (bench/results/learning.md). The corpus repeats every name inside one passage
("X was born in ... X works for ..."), which is what next-token training grows copy heads on. A hub
model already has them, so the config allows this step for base_model "tiny" only.

The texts are the ones the tiny tokenizer is trained on (envs.domains.tokenizer_texts): passages,
training prompts and training gold answers, never a held-out task or a teacher turn. They are
shuffled, joined with eos into one stream and cut into fixed windows: the run_clm recipe of
transformers' examples, trained with transformers' Trainer (progress bar, cosine schedule, clipping).
With `checkpoint_every` a killed run resumes from the Trainer's newest checkpoint, and a finished
stage leaves its weights and summary in out_dir/pretrain/done, so a later resume goes straight to SFT.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mem1_core.config import ConfigError, PretrainConfig
from mem1_core.rl.trainer_log import LogFn, log_callback
from mem1_core.rl.trainer_resume import PRETRAIN_DONE, latest_checkpoint, save_args


def token_windows(
    texts: Iterable[str], tokenizer: Any, seq_len: int, seed: int = 0
) -> tuple[list[list[int]], int]:
    """(windows of seq_len ids, stream length): texts shuffled, eos after each, the short tail dropped."""
    order = list(texts)
    random.Random(seed).shuffle(order)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("sft.pretrain: the tokenizer has no eos token to separate texts with")
    stream: list[int] = []
    for text in order:
        stream.extend(tokenizer.encode(text, add_special_tokens=False))
        stream.append(eos)
    windows = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    return windows, len(stream)


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Every window is full length: no padding, and every token is a label (the model shifts them)."""
    ids = torch.tensor([row["input_ids"] for row in batch], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


def run(
    cfg: PretrainConfig,
    model: Any,
    tokenizer: Any,
    texts: Iterable[str],
    out_dir: Path,
    log: LogFn | None = None,
    seed: int = 0,
    checkpoint_every: int = 0,
) -> dict[str, float]:
    """Train `model` in place for cfg.steps steps; returns a summary (steps, windows, epochs, losses)."""
    # lazy: transformers' Trainer (with datasets) takes seconds to import; only sft.pretrain.steps > 0 runs it
    from datasets import Dataset
    from safetensors.torch import load_model, save_model
    from transformers import Trainer, TrainingArguments

    stage = Path(out_dir) / "pretrain"
    done = Path(out_dir) / PRETRAIN_DONE
    if checkpoint_every and (done / "summary.json").is_file():
        load_model(model, str(done / "model.safetensors"))
        print(f"sft: pre-training finished in an earlier run; its weights from {done}")
        return json.loads((done / "summary.json").read_text(encoding="utf-8"))

    windows, stream_tokens = token_windows(texts, tokenizer, cfg.seq_len, seed)
    if not windows:
        raise ConfigError(
            f"sft.pretrain.seq_len {cfg.seq_len} is longer than the whole text stream "
            f"({stream_tokens} tokens)"
        )
    args = TrainingArguments(
        output_dir=str(stage),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=0.0,
        adam_beta2=0.98,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to="none",
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        **save_args(checkpoint_every),
    )
    model.train()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": windows}),
        data_collator=_collate,
        callbacks=[log_callback(log, "pretrain")] if log else None,
    )
    resume = latest_checkpoint(stage) if checkpoint_every else None  # checked against the run record
    if resume:
        print(f"sft: pre-training resumes from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    summary = {
        "steps": float(result.global_step),
        "windows": float(len(windows)),
        "stream_tokens": float(stream_tokens),
        "epochs": result.global_step * cfg.batch_size / len(windows),
        "train_loss": float(result.training_loss),
        "first_loss": losses[0] if losses else float("nan"),
        "last_loss": losses[-1] if losses else float("nan"),
    }
    if checkpoint_every:  # written whole, then renamed: a kill here leaves no half-finished stage
        tmp = done.with_name(done.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(done, ignore_errors=True)
        tmp.rename(done)
    return summary
