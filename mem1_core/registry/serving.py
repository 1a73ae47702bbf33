"""The served agent: a pyfunc model that runs the MEM1 loop around the registered weights.

Why pyfunc and not mlflow.transformers: a MEM1 agent is a loop (write an internal state, act,
read retrieved text, prune the context), not one text generation. mlflow.transformers would ship
the weights but leave every consumer to re-implement the loop and its pruning; the pyfunc wrapper
ships the loop itself, so `mlflow.pyfunc.load_model("models:/mem1-agent@champion").predict(...)`
answers questions the way the model was evaluated. The wrapped model dir is the project's own
(safetensors weights, tokenizer, `mem1.json` with the tag grammar and weight hashes), bundled as a
pyfunc artifact together with the prompt template and, when small, the retrieval corpus.

Self-contained: mem1_core's sources travel inside the model (MLflow `code_paths`), so a consumer
loads and serves it with plain MLflow and RUNTIME_DISTRIBUTIONS, without this project installed.
Nothing here talks to a tracking server; registration and loading by alias do (registration.py,
aliases.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

import mem1_core
from mem1_core.agent.policy import HFPolicy
from mem1_core.agent.rollout import run_episodes
from mem1_core.config import AgentConfig, ModelConfig
from mem1_core.data.shop_catalog import NO_PRICE_BOUND, ShopGoal, load_catalog, shop_task
from mem1_core.data.sources import load_corpus_file
from mem1_core.data.types import Objective, Task
from mem1_core.envs import domains
from mem1_core.envs.qa import qa_prompt
from mem1_core.models import load_model
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar
from mem1_core.retrieval.bm25 import BM25Backend
from mem1_core.retrieval.client import RetrievalClient


class Mem1AgentModel(mlflow.pyfunc.PythonModel):
    """Questions in, answers and a trajectory summary out; one DataFrame row = one (multi-objective) task.

    Input column `questions`: a list of questions answered together (a string is one question).
    Params (optional): `retrieval_url` (use a retrieval server instead of the bundled corpus),
    `mode` (mem1 | full | truncate:K), `max_turns`, `max_new_tokens`.
    """

    # predict has no type hints on purpose (the signature is explicit); without this MLflow warns
    # so at class creation, and that warning was the first line every `mem1 agent` printed.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        cfg = context.model_config or {}
        self.grammar = TagGrammar(**cfg.get("grammar", {}))
        self.agent_cfg = AgentConfig.model_validate(cfg.get("agent", {}))
        model_cfg = _model_config(context.artifacts["model"], cfg.get("model", {}))
        self.model, self.tokenizer = load_model(context.artifacts["model"], model_cfg)
        self.model.eval()
        self.corpus_path = context.artifacts.get("corpus")
        self.domain = str(cfg.get("domain", "qa"))
        self.catalog_path = context.artifacts.get("catalog")
        self._bm25: Any = None
        self._catalog: Any = None

    def _shop_catalog(self, retrieval_url: str | None) -> Any:
        """The bundled catalogue (products.jsonl); a retrieval server, when given, does its searches."""
        if not self.catalog_path:
            raise ValueError("this shop model has no bundled catalogue (products.jsonl)")
        if retrieval_url:
            return load_catalog(Path(self.catalog_path)).use_backend(RetrievalClient(retrieval_url))
        if self._catalog is None:
            self._catalog = load_catalog(Path(self.catalog_path))
        return self._catalog

    def _backend(self, retrieval_url: str | None) -> Any:
        if retrieval_url:
            return RetrievalClient(retrieval_url)
        if self._bm25 is None:
            if not self.corpus_path:
                raise ValueError("this model has no bundled corpus: pass params={'retrieval_url': ...}")

            self._bm25 = BM25Backend(read_corpus(Path(self.corpus_path)))
        return self._bm25

    # No type hints here on purpose: MLflow would derive a second, conflicting schema from them.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        params = dict(params or {})
        # "" and 0 are the signature's defaults, filled in by MLflow: they mean "as registered".
        update = {k: params[k] for k in ("mode", "max_turns", "max_new_tokens") if params.get(k)}
        agent = AgentConfig.model_validate({**self.agent_cfg.model_dump(), **update})
        url = params.get("retrieval_url") or None
        tasks = tasks_from_input(model_input, self.domain)
        if self.domain == "shop":
            rows = answer_tasks(
                tasks, self.model, self.tokenizer, self.grammar, agent, None, "shop", self._shop_catalog(url)
            )
        else:
            rows = answer_tasks(tasks, self.model, self.tokenizer, self.grammar, agent, self._backend(url))
        return pd.DataFrame(rows)


def _model_config(path: str, overrides: dict[str, Any]) -> Any:
    return ModelConfig.model_validate({**overrides, "base_model": str(path)})


def read_corpus(path: Path) -> list[Any]:
    """corpus.jsonl ({id, title, contents}) -> Documents (errors name the file and line)."""
    return load_corpus_file(path)


def tasks_from_input(model_input: Any, domain: str = "qa") -> list[Any]:
    """DataFrame / dict / list of rows with `questions` (list or one string) -> tasks without gold answers.

    Shop: each question is a purchase instruction, bought in order; with no known target the
    environment's reward means nothing, and the answer is the list of products bought."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    elif isinstance(model_input, list):
        model_input = pd.DataFrame({"questions": model_input})
    if not isinstance(model_input, pd.DataFrame):
        raise TypeError(f"expected a DataFrame with a 'questions' column, got {type(model_input).__name__}")
    column = "questions" if "questions" in model_input.columns else "question"
    if column not in model_input.columns:
        raise ValueError(f"input needs a 'questions' column; got columns {list(model_input.columns)}")
    tasks = []
    for i, value in enumerate(model_input[column].tolist()):
        qs = [value] if isinstance(value, str) else [str(q) for q in list(value)]
        qs = [q.strip() for q in qs if q and q.strip()]
        if not qs:
            raise ValueError(f"input row {i}: no question")
        if domain == "shop":
            goals = [ShopGoal("", q, (), (), NO_PRICE_BOUND, "", "", "", "") for q in qs]
            tasks.append(shop_task(f"input-{i}", goals, source="input"))
            continue
        tasks.append(Task(id=f"input-{i}", objectives=tuple(Objective(question=q, answers=()) for q in qs)))
    return tasks


def answer_tasks(
    tasks: list[Any],
    model: Any,
    tokenizer: Any,
    grammar: TagGrammar,
    agent: AgentConfig,
    backend: Any,
    domain: str = "qa",
    catalog: Any = None,
) -> list[dict[str, Any]]:
    """Run the MEM1 loop (or a baseline mode) and summarise each episode; shared by pyfunc and CLI.
    QA searches `backend`; shop shops in `catalog` (envs.domains picks the environment)."""
    policy = HFPolicy(
        model,
        tokenizer,
        temperature=agent.temperature,
        batch_size=agent.batch_size,
        prefix_cache_tokens=agent.prefix_cache_tokens,
    )
    env_factory = domains.env_factory_for(domain, None, agent, grammar, backend=backend, catalog=catalog)

    trajectories = run_episodes(tasks, env_factory, policy, agent, mode=agent.mode)
    return [summarize_trajectory(t, grammar) for t in trajectories]


def summarize_trajectory(traj: Any, grammar: TagGrammar = DEFAULT_GRAMMAR) -> dict[str, Any]:
    answers = [str(p) for p in traj.predictions]
    turns = [
        {"context_tokens": t.context_len, "output": t.output_text, "observation": t.observation[:2000]}
        for t in traj.turns
    ]
    return {
        "answer": f"{grammar.answer_separator} ".join(answers),
        "answers": json.dumps(answers),
        "n_turns": len(traj.turns),
        "peak_tokens": int(traj.peak_tokens),
        "format_error": traj.format_error or "",
        "trajectory": json.dumps(turns),
    }


def signature_and_example() -> tuple[Any, Any]:
    inputs = Schema([ColSpec(Array(DataType.string), "questions")])
    outputs = Schema(
        [
            ColSpec(DataType.string, "answer"),
            ColSpec(DataType.string, "answers"),
            ColSpec(DataType.long, "n_turns"),
            ColSpec(DataType.long, "peak_tokens"),
            ColSpec(DataType.string, "format_error"),
            ColSpec(DataType.string, "trajectory"),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("retrieval_url", DataType.string, ""),
            ParamSpec("mode", DataType.string, ""),
            ParamSpec("max_turns", DataType.long, 0),
            ParamSpec("max_new_tokens", DataType.long, 0),
        ]
    )
    example = pd.DataFrame(
        {"questions": [["Who directed the film Blue Harbor?", "Where was Ada Lorne born?"]]}
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params), example


# What the bundled mem1_core code imports when the agent is loaded and answers (registry, config,
# tracking, models, agent, envs, data): the consumer's requirements. The code itself travels inside
# the model (`code_paths`), so no project install (and no mem1-pipelines wheel, which no index has)
# is needed. tests/test_self_contained_agent.py checks every third-party module a load + predict
# imports comes from these distributions or their dependencies.
RUNTIME_DISTRIBUTIONS = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "pandas",
    "pyarrow",
    "numpy",
    "pydantic",
    "PyYAML",
    "bm25s",
    "requests",
    "tqdm",
)


def runtime_requirements() -> list[str]:
    """RUNTIME_DISTRIBUTIONS pinned to the versions installed here; a local label (torch's +cpu) is
    dropped, so a CUDA build of the same version satisfies the pin too."""
    return [f"{dist}=={importlib.metadata.version(dist).split('+')[0]}" for dist in RUNTIME_DISTRIBUTIONS]


def _code_copy(dest: Path) -> Path:
    """mem1_core's sources, without bytecode caches, for the model's `code/` (MLflow `code_paths`)."""
    src = Path(mem1_core.__file__).parent
    return Path(shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


def build_pyfunc(
    model_dir: Path,
    out_dir: Path,
    grammar: TagGrammar,
    agent: AgentConfig,
    corpus: Path | None,
    metadata: dict[str, str],
    domain: str = "qa",
    catalog: Path | None = None,
) -> Path:
    """Save the pyfunc model locally (nothing remote yet); a shop model bundles its catalogue."""
    prompt_dir = out_dir.parent / "prompt"
    prompt_dir.mkdir(parents=True, exist_ok=True)
    template = qa_prompt(["{question_1}", "{question_2}"], domains.turns_for("qa", agent, 2), grammar)
    (prompt_dir / "prompt.json").write_text(
        json.dumps({"grammar": asdict(grammar), "qa_prompt_example": template}, indent=2)
    )
    artifacts = {"model": str(model_dir), "prompt": str(prompt_dir / "prompt.json")}
    if corpus is not None:
        artifacts["corpus"] = str(corpus)
    if catalog is not None:
        artifacts["catalog"] = str(catalog)
    signature, example = signature_and_example()
    mlflow.pyfunc.save_model(
        path=str(out_dir),
        python_model=Mem1AgentModel(),
        artifacts=artifacts,
        model_config={
            "grammar": asdict(grammar),
            "agent": agent.model_dump(mode="json"),
            **({"domain": domain} if domain != "qa" else {}),
        },
        signature=signature,
        input_example=example,
        code_paths=[str(_code_copy(prompt_dir.parent / "code"))],
        pip_requirements=runtime_requirements(),
        metadata={**metadata, "mem1_core_version": str(mem1_core.__version__)},
    )
    return out_dir
