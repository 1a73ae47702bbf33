"""Real-data evaluation: HotpotQA and Natural Questions subsets from ../shared/data.

What this measures on real records, with the same code the pipeline runs:
- BM25 recall@3 of the supporting passage when the query is the question text itself (how hard
  retrieval is on this corpus);
- the scripted oracle through `evaluate.run` (EM and memory per mode), which checks loaders,
  composition, environment and teacher on real questions;
- optionally a trained model (MEM1_BENCH_MODEL=path/to/model, e.g. the demo's PPO model), whose EM
  on real questions is reported as measured — the tiny model is trained on the synthetic world only.

Skipped, with the reason, when ../shared/data is absent (set MEM1_SHARED_DATA to point elsewhere).
Run: .venv/bin/python -m bench.bench_real_data   (writes bench/results/real_data.md)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mem1_core.config import ComposeConfig, EvalConfig, SourceSpec  # noqa: E402
from mem1_core.data import compose  # noqa: E402
from mem1_core.eval import evaluate  # noqa: E402
from mem1_core.retrieval.bm25 import BM25Backend  # noqa: E402

SHARED = Path(os.environ.get("MEM1_SHARED_DATA", REPO.parent / "shared" / "data"))
OBJECTIVES = [1, 2, 4, 8]
MODES = ["mem1", "full", "truncate:2"]
TASKS_PER_CELL = 16
RECALL_SAMPLE = 500


def _recall_at_3(data_dir: Path) -> dict[str, float]:
    """Share of eval questions whose every supporting passage is in the top 3 for the question text."""
    backend = BM25Backend(compose.load_corpus(data_dir))
    objectives = [o for t in compose.load_tasks(data_dir, "eval") for o in t.objectives]
    by_source: dict[str, list[float]] = {}
    sample = objectives[:RECALL_SAMPLE]
    hits = backend.search([o.question for o in sample], topk=3)
    for o, found in zip(sample, hits, strict=True):
        ids = {h.document.id for h in found}
        ok = float(bool(o.supporting_doc_ids) and set(o.supporting_doc_ids) <= ids)
        any_ok = float(bool(ids & set(o.supporting_doc_ids)))
        by_source.setdefault(f"{o.source}_all", []).append(ok)
        by_source.setdefault(f"{o.source}_any", []).append(any_ok)
    return {f"real_recall3_{k}": sum(v) / len(v) for k, v in sorted(by_source.items())}


def main(results_dir: Path) -> dict[str, float]:
    if not SHARED.is_dir():
        print(f"bench_real_data: skipped: {SHARED} is absent (set MEM1_SHARED_DATA)")
        return {}
    t0 = time.perf_counter()
    cfg = ComposeConfig(
        sources=[
            SourceSpec(kind="hotpotqa", path=str(SHARED / "hotpotqa_dev.jsonl")),
            SourceSpec(kind="nq", path=str(SHARED / "nq_open_dev_gold_passages.jsonl")),
        ],
        train_objectives=[2],
        eval_objectives=OBJECTIVES,
        n_train_tasks=64,
        n_eval_tasks=TASKS_PER_CELL,
    )
    results: dict[str, float] = {}
    models = {"oracle": "oracle"}
    if os.environ.get("MEM1_BENCH_MODEL"):
        models["model"] = os.environ["MEM1_BENCH_MODEL"]
    lines = [
        "# Real-data evaluation: HotpotQA (distractor dev subset) + NQ-open (dev, gold passages)",
        "",
        f"Data: {SHARED} (see its README). Corpus: every context paragraph of the composed questions "
        "(HotpotQA's ten per question, NQ's gold passage) — easier than all of Wikipedia. "
        f"{TASKS_PER_CELL} held-out tasks per objective count, BM25 top-3, greedy.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        composed = compose.run(cfg, data_dir)
        results.update(_recall_at_3(data_dir))
        lines += [
            f"Composed: {composed.n_questions} questions, {composed.n_documents} passages, "
            f"{composed.n_eval_tasks} eval tasks (dataset hash {composed.dataset_hash[:12]}).",
            "",
            "BM25 recall@3 with the question text as the query (all = every supporting passage found, "
            "any = at least one):",
            "",
            "| metric | value |",
            "|---|---:|",
            *[f"| {k.removeprefix('real_recall3_')} | {v:.3f} |" for k, v in results.items()],
            "",
        ]
        for name, model in models.items():
            ecfg = EvalConfig(objectives=OBJECTIVES, modes=MODES, n_tasks_per_objective=TASKS_PER_CELL)
            res = evaluate.run(ecfg, data_dir, model, Path(tmp) / f"eval-{name}")
            lines += [
                f"## {name} ({model})",
                "",
                "| objectives | mode | EM (mean) | EM (sum) | F1 | peak tokens | dependency | s/task |",
                "|---:|---|---:|---:|---:|---:|---:|---:|",
            ]
            for r in res.rows:
                n, mode = r["objectives"], r["mode"]
                lines.append(
                    f"| {n} | {mode} | {r['em']:.3f} | {r['em_sum']:.2f} | {r['f1']:.3f} | "
                    f"{r['peak_tokens']:.0f} | {r['dependency_length']:.0f} | {r['seconds']:.3f} |"
                )
                key = f"real_{name}_{mode.replace(':', '')}_n{n}"
                results[f"{key}_em"] = float(r["em"])
                results[f"{key}_peak_tokens"] = float(r["peak_tokens"])
            lines.append("")
    results["real_bench_seconds"] = time.perf_counter() - t0
    lines.append(f"Wall time: {results['real_bench_seconds']:.1f} s (CPU).")
    out = Path(results_dir) / "real_data.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(out.read_text(encoding="utf-8"))
    return results


if __name__ == "__main__":
    main(REPO / "bench" / "results")
