"""SFT warm-up: teach the tag format on teacher trajectories, one example per MEM1 turn.

Each turn of a teacher trajectory becomes (context ids, output ids) with loss on the output ids
only: the same per-turn contexts a MEM1 rollout shows the model (prompt + last IS/action + last
observation), built by the rollout loop from ids, so nothing is re-tokenised between collection and
training. The examples go to TRL's SFTTrainer pre-tokenised (`input_ids` + `completion_mask`,
`completion_only_loss=True`), or with `sft.trainer: mem1_mask` each whole trajectory goes through one
stitched pass with the MEM1 mask (rl.sft_mask), which reads each task prompt once instead of once per turn.

Teachers: the data dir's domain's scripted teacher (envs.domains: OracleTeacher on the QA environment
with BM25 over the composed corpus, ShopOracleTeacher on the shop catalogue) run through agent.rollout,
or a jsonl of trajectories from any teacher (`cfg.teacher_trajectories`; their ids must come from
the base model's tokenizer). For base_model "tiny" the tokenizer is trained on the corpus, the
prompts and the teacher's outputs, and the model is built from the config. With `cfg.pretrain.steps`
the model is first trained as a plain causal LM on the data set's text (rl.pretrain), which is what
lets a random-weight model learn to copy names.

With `cfg.checkpoint_every` both Trainer stages checkpoint into out_dir, and a killed run started
again with the same out_dir, config and data resumes where it stopped (rl.trainer_resume).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mem1_core import models
from mem1_core.agent.rollout import run_episodes
from mem1_core.agent.teachers import teacher_for
from mem1_core.agent.types import Trajectory
from mem1_core.config import AgentConfig, ConfigError, SFTConfig
from mem1_core.data.compose import load_corpus, load_tasks
from mem1_core.data.sources import DataError
from mem1_core.data.types import Document, Task
from mem1_core.envs import domains
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar
from mem1_core.rl import distributed, pretrain, sft_mask, trainer_resume
from mem1_core.rl.trainer_log import LogFn, log_callback


def make_env_factory(
    corpus: list[Document], agent_cfg: AgentConfig, grammar: TagGrammar = DEFAULT_GRAMMAR
) -> Callable[[Task], Any]:
    """QA environments over one shared BM25 index of the corpus."""
    return domains.env_factory_for("qa", None, agent_cfg, grammar, corpus=corpus)


def oracle_trajectories(
    tasks: list[Task],
    env_factory: Callable[[Task], Any],
    tokenizer: Any,
    agent_cfg: AgentConfig,
    grammar: TagGrammar = DEFAULT_GRAMMAR,
    domain: str = "qa",
) -> list[Trajectory]:
    teacher = teacher_for(domain, tokenizer, grammar, for_sft=True)
    return run_episodes(tasks, env_factory, teacher, agent_cfg, mode=agent_cfg.mode)


def read_trajectories(path: Path) -> list[Trajectory]:
    """Trajectories from a jsonl file (one Trajectory.to_json() per line); errors name the line."""
    if not Path(path).is_file():
        raise DataError(f"{path}: teacher trajectories file not found")
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(Trajectory.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise DataError(f"{path}:{line_no}: not a trajectory record: {e}") from None
    if not out:
        raise DataError(f"{path}: no trajectories")
    return out


def examples_from_trajectories(
    trajs: list[Trajectory], max_seq_len: int, vocab_size: int | None = None
) -> tuple[list[dict[str, list[int]]], int]:
    """One pre-tokenised example per turn; returns (examples, number skipped as too long)."""
    examples: list[dict[str, list[int]]] = []
    skipped = 0
    for k, traj in enumerate(trajs):
        for t, turn in enumerate(traj.turns):
            if not turn.output_ids:
                continue
            ids = turn.context_ids + turn.output_ids
            if vocab_size is not None and max(ids) >= vocab_size:
                raise ValueError(
                    f"trajectory {k} (task {traj.task_id!r}) turn {t}: token id {max(ids)} is outside the "
                    f"model's vocabulary of {vocab_size}; the trajectories come from another tokenizer"
                )
            if len(ids) > max_seq_len:
                skipped += 1  # never truncate: that would cut the very tokens we train on
                continue
            mask = [0] * len(turn.context_ids) + [1] * len(turn.output_ids)
            examples.append({"input_ids": ids, "completion_mask": mask})
    return examples, skipped


def _build_tiny(
    cfg: SFTConfig,
    tasks: list[Task],
    corpus: list[Document],
    env_factory: Callable[[Task], Any],
    domain: str = "qa",
) -> tuple[Any, Any, list[Trajectory], list[str]]:
    """Two passes: a provisional tokenizer to run the teacher, then the final one trained on its outputs.
    Also returns the data set's texts (no teacher turn), the ones pre-training reads."""
    grammar = DEFAULT_GRAMMAR
    base_texts = list(domains.tokenizer_texts(domain, tasks, corpus, grammar))
    provisional = models.train_tokenizer(base_texts, cfg.model.tiny.vocab_size, grammar)
    first = oracle_trajectories(tasks, env_factory, provisional, cfg.agent, grammar, domain)
    teacher_text = [x for tr in first for turn in tr.turns for x in (turn.output_text, turn.observation)]
    tokenizer = models.train_tokenizer(base_texts + teacher_text, cfg.model.tiny.vocab_size, grammar)
    model = models.build_tiny_model(cfg.model.tiny, tokenizer, seed=cfg.seed)
    trajs = oracle_trajectories(tasks, env_factory, tokenizer, cfg.agent, grammar, domain)
    return model, tokenizer, trajs, base_texts


def build_trainer(
    cfg: SFTConfig,
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, list[int]]],
    out_dir: Path,
    log: LogFn | None,
    ds_config: dict[str, Any] | None = None,
) -> Any:
    """TRL SFTTrainer on pre-tokenised examples; completion_mask becomes the loss mask (no re-tokenising).

    With `ds_config` the Trainer runs under DeepSpeed on whatever devices there are: on CPU ranks it
    must not be told use_cpu (that bypasses DeepSpeed for plain gloo DDP)."""
    # lazy: TRL (with transformers' Trainer) takes seconds to import; collecting teacher turns needs none
    from datasets import Dataset
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    args = TRLConfig(
        output_dir=str(out_dir / "trainer"),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=min(cfg.warmup_ratio, 0.99),
        lr_scheduler_type="cosine",
        logging_steps=1,
        report_to="none",
        max_length=cfg.max_seq_len,
        completion_only_loss=True,
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available() and ds_config is None,
        optim=_optimizer_name(ds_config),
        bf16=cfg.bf16 or (cfg.model.dtype == "bfloat16" and torch.cuda.is_available()),
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        deepspeed=ds_config,  # ZeRO under torchrun; the Trainer fills the config's "auto"s
        accelerator_config={"use_configured_state": _cpu_deepspeed_state(ds_config)},
        **trainer_resume.save_args(cfg.checkpoint_every),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        callbacks=[log_callback(log, "sft")] if log else None,
        peft_config=_peft_config(cfg),
    )
    return trainer


def bf16_supported() -> bool:
    """bf16 matmuls have fast kernels here: CUDA, or a CPU whose oneDNN has bf16 (AVX-512 bf16, AMX).

    Elsewhere (an AVX2-only CPU) torch still runs bf16, through reference kernels: measured on such a
    2-core box, one fwd+bwd of SmolLM2-135M on 4x256 tokens took 220 s in bf16 against 11 s in float32."""
    return torch.cuda.is_available() or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _check_bf16(cfg: SFTConfig) -> None:
    if cfg.bf16 and not bf16_supported():
        raise ConfigError(
            f"sft.bf16 is set, but this machine has no fast bf16 matmul (CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, no CUDA): a training step would run about 20x "
            "slower than in float32 here; set sft.bf16 to false"
        )


def _peft_config(cfg: SFTConfig) -> Any:
    """peft's LoraConfig for `sft.lora`, or None (every weight trains)."""
    if cfg.lora is None:
        return None
    from peft import LoraConfig  # lazy: only LoRA runs need peft

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def _deepspeed_config(cfg: SFTConfig) -> dict[str, Any] | None:
    """The step's DeepSpeed config, made CPU-safe where there is no CUDA, with DeepSpeed's collectives
    joined first (gloo on CPU ranks; left to accelerate, DeepSpeed's CPU default would be oneCCL)."""
    if not cfg.deepspeed_config:
        return None
    distributed.require_deepspeed(cfg.deepspeed_config, "sft.deepspeed_config")
    if distributed.env_world_size() <= 1:
        distributed.single_process_env()  # one device without torchrun
    raw = distributed.load_deepspeed_config(cfg.deepspeed_config)
    distributed.init_deepspeed_comm()
    return distributed.cpu_safe_optimizer(raw)


def _cpu_deepspeed_state(ds_config: dict[str, Any] | None) -> bool:
    """On CPU ranks, set up accelerate's DeepSpeed state with the gloo backend ourselves (True: use it).

    TrainingArguments passes no backend for DeepSpeed, and accelerate, finding no GPU, then counts a
    world of one process: every rank would train on all the data and its gathers would fail."""
    from accelerate import PartialState  # lazy: only for DeepSpeed on CPU ranks

    if ds_config is None or torch.cuda.is_available():
        return False
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend=distributed.comm_backend())
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return True


def _optimizer_name(ds_config: dict[str, Any] | None) -> str:
    """The Trainer's AdamW: fused on CUDA; under DeepSpeed on CPU the plain torch one (printed), since
    ZeRO steps it over flattened partitions and a fused kernel buys nothing there."""
    if ds_config is None or torch.cuda.is_available():
        return "adamw_torch_fused"
    if "optimizer" not in ds_config:  # else the config's own (made torch_adam) is the one stepped
        print("sft: DeepSpeed on CPU ranks, optimizer adamw_torch (no fused kernel)")
    return "adamw_torch"


def run(cfg: SFTConfig, data_dir: Path, out_dir: Path, log: LogFn | None = None) -> Path:
    """Collect teacher turns, train (TRL's SFTTrainer, or the MEM1-mask trainer), save to out_dir/model
    (LoRA adapters merged); returns that dir."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    _check_bf16(cfg)
    ds_config = _deepspeed_config(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tasks = load_tasks(data_dir, "train")
    if cfg.n_tasks is not None:
        tasks = tasks[: cfg.n_tasks]
    grammar = DEFAULT_GRAMMAR
    pretrain_texts: list[str] = []  # filled for base_model "tiny", the only one sft.pretrain accepts

    if cfg.teacher_trajectories:
        if cfg.model.base_model == "tiny":
            raise ConfigError(
                "sft.teacher_trajectories needs a real base_model: their token ids must come from that "
                "model's tokenizer, and a 'tiny' tokenizer is trained here"
            )
        model, tokenizer = models.load_model(cfg.model.base_model, cfg.model)
        grammar = models.load_grammar(cfg.model.base_model)
        trajs = read_trajectories(Path(cfg.teacher_trajectories))
    else:
        domain = domains.domain_of(data_dir)
        corpus = load_corpus(data_dir)
        if cfg.model.base_model == "tiny":
            env_factory = domains.env_factory_for(domain, data_dir, cfg.agent, grammar, corpus=corpus)
            model, tokenizer, trajs, pretrain_texts = _build_tiny(cfg, tasks, corpus, env_factory, domain)
        else:
            model, tokenizer = models.load_model(cfg.model.base_model, cfg.model)
            grammar = models.load_grammar(cfg.model.base_model)
            env_factory = domains.env_factory_for(domain, data_dir, cfg.agent, grammar, corpus=corpus)
            trajs = oracle_trajectories(tasks, env_factory, tokenizer, cfg.agent, grammar, domain)

    vocab = model.get_input_embeddings().weight.shape[0]
    examples, skipped = examples_from_trajectories(trajs, cfg.max_seq_len, vocab)
    if not examples:
        n, limit = skipped, cfg.max_seq_len
        raise ConfigError(f"no SFT examples: {n} turns were longer than sft.max_seq_len {limit}")
    teacher_reward = sum(t.reward for t in trajs) / len(trajs)
    summary = {
        "trajectories": len(trajs),
        "examples": len(examples),
        "skipped_too_long": skipped,
        "teacher_mean_reward": teacher_reward,
        "completion_tokens": sum(sum(e["completion_mask"]) for e in examples),
        "tokens": sum(len(e["input_ids"]) for e in examples),
    }
    print(f"sft: {json.dumps(summary)}")
    if log and distributed.env_rank() == 0:
        log({f"sft/data_{k}": float(v) for k, v in summary.items()}, 0)

    out_dir.mkdir(parents=True, exist_ok=True)  # only now: input that fails the checks above writes nothing
    if cfg.checkpoint_every and distributed.env_rank() == 0:
        trainer_resume.claim_out_dir(
            out_dir, {"sft": cfg.model_dump(mode="json"), "data": _data_id(data_dir)}
        )
    if cfg.pretrain.steps:
        pre = pretrain.run(
            cfg.pretrain, model, tokenizer, pretrain_texts, out_dir, log, cfg.seed, cfg.checkpoint_every
        )
        print(f"sft: pre-training {json.dumps(pre)}")
        summary.update({f"pretrain_{k}": v for k, v in pre.items()})
    model_dir = out_dir / "model"
    extra = {"sft": summary, models.BASE_KEY: _base_of(cfg)}
    if cfg.trainer == "mem1_mask":
        trained, result = sft_mask.train(
            cfg, model, trajs, int(tokenizer.pad_token_id), out_dir, _peft_config(cfg), log
        )
        summary.update(result)
        _save(trained, tokenizer, out_dir, grammar, extra)
        return model_dir
    model.train()
    trainer = build_trainer(cfg, model, tokenizer, examples, out_dir, log, ds_config)
    resume = trainer_resume.latest_checkpoint(out_dir / "trainer") if cfg.checkpoint_every else None
    if resume:
        print(f"sft: resumes from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    summary["train_loss"] = float(result.training_loss)
    summary["steps"] = int(result.global_step)
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    with distributed.gathered([trainer.model], plugin is not None and plugin.zero_stage == 3):
        if trainer.is_world_process_zero():  # under torchrun only rank 0 writes the model
            _save(sft_mask.merged(trainer.model).eval(), tokenizer, out_dir, grammar, extra)
    trainer.accelerator.wait_for_everyone()
    return model_dir


def _save(model: Any, tokenizer: Any, out_dir: Path, grammar: TagGrammar, extra: dict[str, Any]) -> None:
    """The trained model to out_dir/model, its summary beside it; then the checkpoints are dropped."""
    models.save_model(model, tokenizer, out_dir / "model", grammar, extra)
    summary = json.dumps(extra["sft"], indent=2) + "\n"
    (out_dir / "sft_summary.json").write_text(summary, encoding="utf-8")
    trainer_resume.finish(out_dir)


def _base_of(cfg: SFTConfig) -> dict[str, Any]:
    """Where the trained weights started: an embedded base's licence and pin travel with the model."""
    if cfg.model.base_model == "tiny":
        return {"name": "tiny", "license": "Apache-2.0 (built from a config by this project)"}
    source = models.resolve_base(cfg.model.base_model)
    return models.base_provenance(source) or {"name": cfg.model.base_model}


def _data_id(data_dir: Path) -> str:
    """What a resumed run must train on again: the composed data set's hash, else the directory."""
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        return str(json.loads(manifest.read_text(encoding="utf-8")).get("dataset_hash", data_dir.resolve()))
    return str(data_dir.resolve())
