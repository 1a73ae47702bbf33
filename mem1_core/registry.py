"""Register a trained MEM1 policy in the MLflow model registry, behind a promotion gate.

Why pyfunc and not mlflow.transformers: a MEM1 agent is a loop (write an internal state, act,
read retrieved text, prune the context), not one text generation. mlflow.transformers would ship
the weights but leave every consumer to re-implement the loop and its pruning; the pyfunc wrapper
ships the loop itself, so `mlflow.pyfunc.load_model("models:/mem1-agent@champion").predict(...)`
answers questions the way the model was evaluated. The wrapped model dir is the project's own
(safetensors weights, tokenizer, `mem1.json` with the tag grammar and weight hashes), bundled as a
pyfunc artifact together with the prompt template and, when small, the retrieval corpus.

Aliases: `candidate` always names the newest registered version; `champion` moves only when the
gate passes (the gate metric at the configured objectives/mode, EM for QA and mean reward for
shop unless `gate_metric` says otherwise, beats both the current champion's and the floor).
Everything is validated and built locally before the first remote call; if a remote call still
fails after retries, a version created on the way is deleted so no half-registered version is left,
and the registration run is marked FAILED.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc

import mem1_core
from mem1_core.agent.policy import HFPolicy
from mem1_core.agent.rollout import run_episodes
from mem1_core.config import AgentConfig, ModelConfig, RegisterConfig, parse_mode
from mem1_core.data.shop_catalog import NO_PRICE_BOUND, ShopGoal, load_catalog, shop_task
from mem1_core.data.sources import load_corpus_file
from mem1_core.data.types import Objective, Task
from mem1_core.envs import domains
from mem1_core.envs.qa import qa_prompt
from mem1_core.models import ModelIntegrityError, load_grammar, load_model, verify_model_dir
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar
from mem1_core.retrieval.bm25 import BM25Backend
from mem1_core.retrieval.client import RetrievalClient
from mem1_core.tracking import (
    READ_RETRY,
    RunHandle,
    Tracker,
    bound_http_for_reads,
    git_commit,
    resolve_tracking_uri,
    sqlite_path,
)

CANDIDATE = "candidate"
CHAMPION = "champion"
CORPUS_BUNDLE_LIMIT = 64 * 1024 * 1024  # bigger corpora are served by a retrieval server instead
METRICS_FILE = "metrics.json"

TAG_KEY = "mem1.registration_key"
TAG_WEIGHTS = "mem1.weights_sha256"
TAG_DATASET = "mem1.dataset_hash"
TAG_COMMIT = "mem1.git_commit"
TAG_PIPELINE = "mem1.pipeline_run_id"
TAG_GATE_EM = "mem1.gate_em"  # the gate metric's value (EM unless mem1.gate_key says otherwise)
TAG_GATE_KEY = "mem1.gate_key"
TAG_GATE_PASSED = "mem1.gate_passed"
TAG_GATE_REASON = "mem1.gate_reason"


class RegistryError(RuntimeError):
    """Inputs that cannot be registered (missing files, no gate metric); the message names the file."""


@dataclass
class RegistrationResult:
    model_name: str
    version: str
    created: bool  # False when this run was registered before (idempotent re-registration)
    promoted: bool
    gate_reason: str
    candidate_em: float
    champion_em: float | None
    model_uri: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Validation of the inputs (all local, before any MLflow call)


def weights_hash(model_dir: Path) -> str:
    """sha256 over (file name, file sha256) of every safetensors file: the identity of the weights."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise RegistryError(f"{model_dir}: no *.safetensors weights (only safetensors models are registered)")
    outer = hashlib.sha256()
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        outer.update(f"{f.name}:{h.hexdigest()}\n".encode())
    return outer.hexdigest()


def check_model_dir(model_dir: Path) -> TagGrammar:
    """A model dir written by models.save_model, weights unchanged since; returns its tag grammar."""
    if not model_dir.is_dir():
        raise RegistryError(f"{model_dir}: model dir not found")
    if not (model_dir / "config.json").is_file():
        raise RegistryError(f"{model_dir}: missing config.json (not a saved model dir)")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise RegistryError(f"{model_dir}: missing tokenizer files")
    pickles = sorted(p.name for p in [*model_dir.glob("*.bin"), *model_dir.glob("*.pt")])
    if pickles:
        raise RegistryError(f"{model_dir}: pickle weight files {pickles}; only safetensors are registered")
    try:
        verify_model_dir(model_dir)
    except ModelIntegrityError as e:
        raise RegistryError(str(e)) from None
    return load_grammar(model_dir)


def _read_json(path: Path, missing: str) -> Any:
    """A JSON file's content; a RegistryError naming the file (and line) when absent or malformed."""
    if not path.is_file():
        raise RegistryError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None


def dataset_hash(data_dir: Path) -> str:
    path = data_dir / "manifest.json"
    manifest = _read_json(path, f"manifest not found (is {data_dir} a composed data dir?)")
    value = manifest.get("dataset_hash") if isinstance(manifest, dict) else None
    if not isinstance(value, str) or not value:
        raise RegistryError(f"{path}: field 'dataset_hash' is missing or empty")
    return value


def read_eval(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / METRICS_FILE
    data = _read_json(path, "eval metrics not found (run `mem1 eval` first)")
    if not isinstance(data, dict) or not isinstance(data.get("grid"), list):
        raise RegistryError(f"{path}: field 'grid' (a list of rows) is missing")
    return data


def gate_metric_for(cfg: RegisterConfig, domain: str) -> str:
    """The eval metric the gate compares; `auto` picks EM for QA and the mean reward for shop."""
    if cfg.gate_metric != "auto":
        return cfg.gate_metric
    return "reward" if domain == "shop" else "em"


def gate_em(
    eval_data: dict[str, Any], objectives: int, mode: str, source: str = METRICS_FILE, metric: str = "em"
) -> float:
    """`metric` (default EM, mean over objectives and tasks, 0..1) of the grid row (objectives, mode)."""
    cells = []
    for i, row in enumerate(eval_data["grid"]):
        if not isinstance(row, dict):
            raise RegistryError(f"{source}: grid[{i}] is not an object")
        cells.append((row.get("objectives"), row.get("mode")))
        if row.get("objectives") == objectives and row.get("mode") == mode:
            if not isinstance(row.get(metric), int | float):
                raise RegistryError(f"{source}: grid[{i}].{metric} is missing or not a number")
            return float(row[metric])
    raise RegistryError(
        f"{source}: no grid row for objectives={objectives} mode={mode!r} (the gate needs it); rows: {cells}"
    )


def promotion_gate(
    candidate: float, champion: float | None, floor: float, metric: str = "em"
) -> tuple[bool, str]:
    """Promote only a strict improvement over both the floor and the current champion."""
    name = "EM" if metric == "em" else metric
    if candidate <= floor:
        return False, f"{name} {candidate:.4f} does not beat the floor {floor:.4f}"
    if champion is not None and candidate <= champion:
        return False, f"{name} {candidate:.4f} does not beat the champion's {champion:.4f}"
    if champion is None:
        return True, f"{name} {candidate:.4f} beats the floor {floor:.4f}; no champion yet"
    return True, f"{name} {candidate:.4f} beats the champion's {champion:.4f} and the floor {floor:.4f}"


# ---------------------------------------------------------------------------------------------
# The pyfunc model: the MEM1 loop around the registered weights


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
        import pandas as pd

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


def _not_found(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "does not exist" in text


def resolve_model_uri(model_uri: str, tracker: Tracker) -> str:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> `models:/NAME/VERSION`, checked against the store.

    An unknown name, alias or version is a RegistryError saying what the store does have; a store
    that cannot be reached is a TrackingError naming its URI (after the tracker's bounded retries).
    """
    uri = tracker.tracking_uri
    ref = model_uri[len("models:/") :]
    name, sep, alias = ref.partition("@")
    version = ""
    if not sep:
        name, _, version = ref.partition("/")
    if not name or (sep and not alias) or (not sep and not version.isdigit()):
        raise RegistryError(f"{model_uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    client = tracker.client

    def lookup() -> str:
        try:
            mv = (
                client.get_model_version_by_alias(name, alias)
                if sep
                else client.get_model_version(name, version)
            )
            return str(mv.version)
        except Exception as e:
            if not _not_found(e):
                raise
        try:
            model = client.get_registered_model(name)
        except Exception as e:
            if not _not_found(e):
                raise
            names = ", ".join(sorted(m.name for m in client.search_registered_models(max_results=50)))
            raise RegistryError(
                f"{model_uri}: no registered model {name!r} at {uri} (registered: {names or 'none'})"
            ) from None
        if sep:
            have = ", ".join(sorted(model.aliases or {})) or "none"
            raise RegistryError(
                f"{model_uri}: model {name!r} has no alias {alias!r} at {uri} (aliases: {have})"
            )
        latest = max((int(v.version) for v in client.search_model_versions(f"name = '{name}'")), default=0)
        raise RegistryError(
            f"{model_uri}: model {name!r} has no version {version} at {uri} (latest: {latest})"
        )

    return f"models:/{name}/{tracker.call(lookup, f'looking up {model_uri}')}"


def load_registered(model_uri: str, tracking_uri: str | None = None) -> Mem1AgentModel:
    """The registered agent behind `models:/name@alias` (or runs:/, a local pyfunc dir), unwrapped so a
    caller can swap the retrieval backend (e.g. `mem1 agent --corpus`).

    Registry and runs URIs are read from `tracking_uri` (default: MLFLOW_TRACKING_URI, else the
    embedded default store) for both tracking and registry, with bounded retries on HTTP."""
    if model_uri.startswith(("models:/", "runs:/")):
        uri = tracking_uri or resolve_tracking_uri()
        db = sqlite_path(uri)
        if db is not None and not db.is_file():  # checked first: opening it would create an empty store
            raise RegistryError(
                f"{model_uri}: no MLflow store at {uri} (run `make demo` first, or set MLFLOW_TRACKING_URI)"
            )
        bound_http_for_reads()
        tracker = Tracker(uri, retry=READ_RETRY)
        source = model_uri
        if model_uri.startswith("models:/"):
            # MLflow resolves models:/ against its global registry URI whatever it is passed; resolve
            # the version's artifact location here, against this store, and download that instead.
            name, version = resolve_model_uri(model_uri, tracker)[len("models:/") :].rsplit("/", 1)
            source = tracker.call(
                lambda: tracker.client.get_model_version_download_uri(name, version),
                f"locating {model_uri}",
            )
        dst = tempfile.mkdtemp(prefix="mem1-agent-")  # kept: the bundled corpus is read lazily from it
        model_uri = tracker.call(
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=dst, tracking_uri=tracker.tracking_uri,
                registry_uri=tracker.tracking_uri,
            ),
            f"downloading {source}",
        )  # fmt: skip
    loaded = mlflow.pyfunc.load_model(model_uri)
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, Mem1AgentModel):
        raise RegistryError(f"{model_uri}: not a MEM1 agent (python model is {type(inner).__name__})")
    return inner


def _model_config(path: str, overrides: dict[str, Any]) -> Any:
    return ModelConfig.model_validate({**overrides, "base_model": str(path)})


def read_corpus(path: Path) -> list[Any]:
    """corpus.jsonl ({id, title, contents}) -> Documents (errors name the file and line)."""
    return load_corpus_file(path)


def tasks_from_input(model_input: Any, domain: str = "qa") -> list[Any]:
    """DataFrame / dict / list of rows with `questions` (list or one string) -> tasks without gold answers.

    Shop: each question is a purchase instruction, bought in order; with no known target the
    environment's reward means nothing, and the answer is the list of products bought."""
    import pandas as pd

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
    policy = HFPolicy(model, tokenizer, temperature=agent.temperature, batch_size=agent.batch_size)
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
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

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
    from importlib.metadata import version

    return [f"{dist}=={version(dist).split('+')[0]}" for dist in RUNTIME_DISTRIBUTIONS]


def _code_copy(dest: Path) -> Path:
    """mem1_core's sources, without bytecode caches, for the model's `code/` (MLflow `code_paths`)."""
    import shutil

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


# ---------------------------------------------------------------------------------------------
# Registration


def _find_version(tracker: Tracker, name: str, key: str) -> Any | None:
    versions = tracker.call(
        lambda: tracker.client.search_model_versions(f"name = '{name}'"), f"listing versions of {name!r}"
    )
    for v in versions:
        if v.tags.get(TAG_KEY) == key:
            return v
    return None


def _alias_version(tracker: Tracker, name: str, alias: str) -> Any | None:
    def get() -> Any | None:
        try:
            return tracker.client.get_model_version_by_alias(name, alias)
        except Exception as e:
            if _not_found(e):
                return None
            raise

    return tracker.call(get, f"reading alias {alias!r} of {name!r}")


def _ensure_registered_model(tracker: Tracker, name: str) -> None:
    def create() -> None:
        try:
            tracker.client.create_registered_model(
                name, description="MEM1 constant-memory agent (pyfunc loop)"
            )
        except Exception as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e).lower():
                raise

    tracker.call(create, f"creating registered model {name!r}")


def run(
    cfg: RegisterConfig,
    model_dir: Path,
    eval_dir: Path,
    data_dir: Path,
    tracking: Tracker | RunHandle,
    parent_run_id: str | None = None,
    pipeline_run_id: str | None = None,
) -> RegistrationResult:
    """Register `model_dir` as a new version of `cfg.model_name` (or return the existing one), then gate.

    `tracking` is a Tracker (a `register_model` run is opened, nested under `parent_run_id`) or an
    already open RunHandle (a KFP component's nested run) that the registration logs into.
    """
    model_dir, eval_dir, data_dir = Path(model_dir), Path(eval_dir), Path(data_dir)
    open_run = tracking if isinstance(tracking, RunHandle) else None
    tracker = open_run.tracker if open_run is not None else tracking
    assert isinstance(tracker, Tracker)
    parse_mode(cfg.gate_mode)
    grammar = check_model_dir(model_dir)
    w_hash = weights_hash(model_dir)
    d_hash = dataset_hash(data_dir)
    eval_data = read_eval(eval_dir)

    domain = domains.domain_of(data_dir)
    metric = gate_metric_for(cfg, domain)
    source = str(eval_dir / METRICS_FILE)
    candidate_em = gate_em(eval_data, cfg.gate_objectives, cfg.gate_mode, source, metric)
    agent_dict = (eval_data.get("config") or {}).get("agent") or {}
    agent = AgentConfig.model_validate({**agent_dict, "mode": cfg.gate_mode})
    corpus = data_dir / "corpus.jsonl"
    bundled = corpus if corpus.is_file() and corpus.stat().st_size <= CORPUS_BUNDLE_LIMIT else None
    catalog = data_dir / domains.PRODUCTS_FILE if domain == "shop" else None
    if open_run is not None and not pipeline_run_id:
        run_tags = tracker.call(
            lambda: tracker.client.get_run(open_run.run_id), "reading the open run"
        ).data.tags
        pipeline_run_id = run_tags.get(TAG_PIPELINE)
    pipeline_id = pipeline_run_id or parent_run_id or "local"
    key = hashlib.sha256(f"{cfg.model_name}:{pipeline_id}:{w_hash}".encode()).hexdigest()
    gate_key = f"{metric}@objectives={cfg.gate_objectives},mode={cfg.gate_mode}"
    name = cfg.model_name

    existing = _find_version(tracker, name, key)
    if existing is not None:
        tags = dict(existing.tags)
        champion = _alias_version(tracker, name, CHAMPION)
        return RegistrationResult(
            model_name=name,
            version=str(existing.version),
            created=False,
            promoted=tags.get(TAG_GATE_PASSED) == "true",
            gate_reason=tags.get(TAG_GATE_REASON, ""),
            candidate_em=float(tags.get(TAG_GATE_EM, candidate_em)),
            champion_em=_champion_em(champion, gate_key),
            model_uri=f"models:/{name}/{existing.version}",
            run_id=existing.run_id,
            tags=tags,
        )

    with tempfile.TemporaryDirectory(prefix="mem1-register-") as tmp:
        local = build_pyfunc(
            model_dir,
            Path(tmp) / "model",
            grammar,
            agent,
            bundled,
            metadata={"weights_sha256": w_hash, "dataset_hash": d_hash, "gate": gate_key},
            domain=domain,
            catalog=catalog,
        )
        run_ctx = (
            nullcontext(open_run)
            if open_run is not None
            else tracker.step_run("register_model", cfg, parent_run_id=parent_run_id)
        )
        with run_ctx as step:
            champion = _alias_version(tracker, name, CHAMPION)
            champion_em = _champion_em(champion, gate_key)
            if champion is not None and champion_em is None:
                promoted, reason = (
                    False,
                    f"the champion (v{champion.version}) has no {gate_key}; promote by hand",
                )
            else:
                promoted, reason = promotion_gate(candidate_em, champion_em, cfg.em_floor, metric)
            tags = {
                TAG_KEY: key,
                TAG_WEIGHTS: w_hash,
                TAG_DATASET: d_hash,
                TAG_COMMIT: git_commit(),
                TAG_PIPELINE: pipeline_id,
                TAG_GATE_KEY: gate_key,
                TAG_GATE_EM: repr(candidate_em),
                TAG_GATE_PASSED: "true" if promoted else "false",
                TAG_GATE_REASON: reason,
            }
            step.set_tags(tags)
            step.log({"gate_em": candidate_em, f"gate/{metric}": candidate_em}, 0)
            step.log_artifact(local, "model")
            step.log_artifact(eval_dir / METRICS_FILE, "eval")
            _ensure_registered_model(tracker, name)
            run_info = tracker.call(
                lambda: tracker.client.get_run(step.run_id), "reading the registration run"
            )
            source = f"{run_info.info.artifact_uri.rstrip('/')}/model"
            version = tracker.call(
                lambda: tracker.client.create_model_version(name, source, run_id=step.run_id, tags=tags),
                f"creating a version of {name!r}",
            )
            try:
                tracker.call(
                    lambda: tracker.client.set_registered_model_alias(name, CANDIDATE, version.version),
                    f"setting alias {CANDIDATE!r}",
                )
                if promoted:
                    tracker.call(
                        lambda: tracker.client.set_registered_model_alias(name, CHAMPION, version.version),
                        f"setting alias {CHAMPION!r}",
                    )
            except BaseException:
                _delete_version(tracker, name, str(version.version))
                raise
            step.set_tags({"mem1.registered_version": str(version.version), "mem1.promoted": str(promoted)})
    return RegistrationResult(
        model_name=name,
        version=str(version.version),
        created=True,
        promoted=promoted,
        gate_reason=reason,
        candidate_em=candidate_em,
        champion_em=champion_em,
        model_uri=f"models:/{name}/{version.version}",
        run_id=step.run_id,
        tags=tags,
    )


def _champion_em(champion: Any | None, gate_key: str) -> float | None:
    if champion is None:
        return None
    if champion.tags.get(TAG_GATE_KEY) != gate_key or TAG_GATE_EM not in champion.tags:
        return None
    return float(champion.tags[TAG_GATE_EM])


def _delete_version(tracker: Tracker, name: str, version: str) -> None:
    """Undo a half-finished registration; best effort, the original error is what gets raised."""
    with suppress(Exception):
        tracker.call(
            lambda: tracker.client.delete_model_version(name, version), f"deleting {name} v{version}"
        )
