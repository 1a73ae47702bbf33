"""Registration: a trained model becomes a new version of the registered model, behind the gate.

Everything is validated and built locally before the first remote call (inputs.py, serving.py); if a
remote call still fails after retries, a version created on the way is deleted so no half-registered
version is left, and the registration run is marked FAILED. Registering the same weights from the same
pipeline run again returns the existing version (idempotent). `candidate` always moves to the new
version; `champion` only when the gate passes (gate.py).
"""

from __future__ import annotations

import hashlib
import tempfile
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mem1_core.config import AgentConfig, RegisterConfig, parse_mode
from mem1_core.envs import domains
from mem1_core.registry.aliases import CANDIDATE, CHAMPION, alias_version
from mem1_core.registry.gate import (
    TAG_GATE_KEY,
    TAG_GATE_PASSED,
    TAG_GATE_REASON,
    TAG_GATE_SCORE,
    gate_metric_for,
    gate_score,
    promotion_gate,
    score_tag,
    version_score,
)
from mem1_core.registry.inputs import (
    METRICS_FILE,
    check_model_dir,
    dataset_hash,
    model_origin,
    read_eval,
    version_description,
    weights_hash,
)
from mem1_core.registry.serving import build_pyfunc
from mem1_core.tracking import RunHandle, Tracker, git_commit

CORPUS_BUNDLE_LIMIT = 64 * 1024 * 1024  # bigger corpora are served by a retrieval server instead

TAG_KEY = "mem1.registration_key"
TAG_WEIGHTS = "mem1.weights_sha256"
TAG_DATASET = "mem1.dataset_hash"
TAG_COMMIT = "mem1.git_commit"
TAG_PIPELINE = "mem1.pipeline_run_id"


@dataclass
class RegistrationResult:
    model_name: str
    version: str
    created: bool  # False when this run was registered before (idempotent re-registration)
    promoted: bool
    gate_reason: str
    candidate_score: float  # the gate metric's value (gate_key in the tags says which metric)
    champion_score: float | None
    model_uri: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _find_version(tracker: Tracker, name: str, key: str) -> Any | None:
    versions = tracker.call(
        lambda: tracker.client.search_model_versions(f"name = '{name}'"), f"listing versions of {name!r}"
    )
    for v in versions:
        if v.tags.get(TAG_KEY) == key:
            return v
    return None


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

    `tracking` is a Tracker (a `register` run is opened, nested under `parent_run_id`) or an
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
    origin = model_origin(model_dir)
    eval_data = read_eval(eval_dir)

    domain = domains.domain_of(data_dir)
    metric = gate_metric_for(cfg, domain)
    source = str(eval_dir / METRICS_FILE)
    candidate_score = gate_score(eval_data, cfg.gate_objectives, cfg.gate_mode, source, metric)
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
        champion = alias_version(tracker, name, CHAMPION)
        return RegistrationResult(
            model_name=name,
            version=str(existing.version),
            created=False,
            promoted=tags.get(TAG_GATE_PASSED) == "true",
            gate_reason=tags.get(TAG_GATE_REASON, ""),
            candidate_score=float(score_tag(tags) or candidate_score),
            champion_score=version_score(champion, gate_key),
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
            metadata={"weights_sha256": w_hash, "dataset_hash": d_hash, "gate": gate_key, **origin},
            domain=domain,
            catalog=catalog,
        )
        run_ctx = (
            nullcontext(open_run)
            if open_run is not None
            else tracker.step_run("register", cfg, parent_run_id=parent_run_id)
        )
        with run_ctx as step:
            champion = alias_version(tracker, name, CHAMPION)
            champion_score = version_score(champion, gate_key)
            if champion is not None and champion_score is None:
                promoted, reason = (
                    False,
                    f"the champion (v{champion.version}) has no {gate_key}; promote by hand",
                )
            else:
                promoted, reason = promotion_gate(candidate_score, champion_score, cfg.gate_floor, metric)
            tags = {
                TAG_KEY: key,
                TAG_WEIGHTS: w_hash,
                TAG_DATASET: d_hash,
                TAG_COMMIT: git_commit(),
                TAG_PIPELINE: pipeline_id,
                TAG_GATE_KEY: gate_key,
                TAG_GATE_SCORE: repr(candidate_score),
                TAG_GATE_PASSED: "true" if promoted else "false",
                TAG_GATE_REASON: reason,
                **{f"mem1.{k}": v for k, v in origin.items()},
            }
            step.set_tags(tags)
            step.log({"gate_score": candidate_score, f"gate/{metric}": candidate_score}, 0)
            step.log_artifact(local, "model")
            step.log_artifact(eval_dir / METRICS_FILE, "eval")
            _ensure_registered_model(tracker, name)
            run_info = tracker.call(
                lambda: tracker.client.get_run(step.run_id), "reading the registration run"
            )
            source = f"{run_info.info.artifact_uri.rstrip('/')}/model"
            version = tracker.call(
                lambda: tracker.client.create_model_version(
                    name, source, run_id=step.run_id, tags=tags, description=version_description(origin)
                ),
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
        candidate_score=candidate_score,
        champion_score=champion_score,
        model_uri=f"models:/{name}/{version.version}",
        run_id=step.run_id,
        tags=tags,
    )


def _delete_version(tracker: Tracker, name: str, version: str) -> None:
    """Undo a half-finished registration; best effort, the original error is what gets raised."""
    with suppress(Exception):
        tracker.call(
            lambda: tracker.client.delete_model_version(name, version), f"deleting {name} v{version}"
        )
