"""The evaluation grid: held-out tasks x objective counts x memory modes, as tables, plots and samples.

Each cell (objectives, mode) runs its tasks through the same batched rollout loop as training, in
the data dir's domain (envs.domains: QA with BM25 over the corpus, or the shop catalogue), with a
model dir's HFPolicy (or the domain's scripted oracle for `model_dir == "oracle"`), and summarises
the trajectories with eval.metrics. Writes into out_dir:
metrics.json (config, grid rows, skipped cells), table.md, report.html, trajectories.jsonl (a few
sample episodes per cell) and the PNG plots of eval.plots. Shop rows also carry `success_rate` (share
of instructions scoring 1.0); there `reward` is WebShop's score and `em` means "target product bought".
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mem1_core.agent.policy import HFPolicy
from mem1_core.agent.rollout import run_episodes
from mem1_core.agent.teachers import teacher_for
from mem1_core.config import EvalConfig, ModelConfig, parse_mode
from mem1_core.data import compose
from mem1_core.envs import domains
from mem1_core.eval.metrics import annotate, is_shop_grid, summarize
from mem1_core.eval.plots import grid_plots, learning_curve
from mem1_core.models import load_grammar, load_model, train_tokenizer
from mem1_core.retrieval.backends import data_dir_backend
from mem1_core.rl.ppo import HISTORY_FILE

ORACLE = "oracle"
SAMPLES_PER_CELL = 2
TABLE_COLUMNS: list[tuple[str, str, str]] = [
    # (row key, header, format)
    ("objectives", "objectives", "{:d}"),
    ("mode", "mode", "{}"),
    ("n_tasks", "tasks", "{:d}"),
    ("em_sum", "EM (sum)", "{:.3f}"),
    ("em", "EM (mean)", "{:.3f}"),
    ("f1_sum", "F1 (sum)", "{:.3f}"),
    ("f1", "F1 (mean)", "{:.3f}"),
    ("peak_tokens", "peak tokens", "{:.1f}"),
    ("dependency_length", "dependency", "{:.1f}"),
    ("seconds", "s / task", "{:.3f}"),
    ("turns", "turns", "{:.2f}"),
    ("format_error", "format errors", "{:.2f}"),
]
SHOP_TABLE_COLUMNS: list[tuple[str, str, str]] = [
    ("objectives", "instructions", "{:d}"),
    ("mode", "mode", "{}"),
    ("n_tasks", "tasks", "{:d}"),
    ("reward", "reward (mean)", "{:.3f}"),
    ("success_rate", "success rate", "{:.3f}"),
    ("em", "target bought", "{:.3f}"),
    ("peak_tokens", "peak tokens", "{:.1f}"),
    ("dependency_length", "dependency", "{:.1f}"),
    ("seconds", "s / task", "{:.3f}"),
    ("turns", "turns", "{:.2f}"),
    ("format_error", "format errors", "{:.2f}"),
]


def table_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Shop rows (they carry success_rate) get the shop columns; QA keeps its own."""
    return SHOP_TABLE_COLUMNS if is_shop_grid(rows) else TABLE_COLUMNS


@dataclass
class EvalResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, objectives: int, mode: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["objectives"] == objectives and r["mode"] == mode), None)


def select_tasks(
    tasks: list[Any], objectives: list[int], per_objective: int
) -> tuple[dict[int, list[Any]], list[dict[str, Any]]]:
    """The first `per_objective` eval tasks of each requested objective count; missing counts are reported."""
    by_n: dict[int, list[Any]] = defaultdict(list)
    for t in tasks:
        by_n[t.n_objectives].append(t)
    chosen: dict[int, list[Any]] = {}
    skipped: list[dict[str, Any]] = []
    for n in objectives:
        if not by_n.get(n):
            have = sorted(by_n)
            skipped.append(
                {"objectives": n, "reason": f"the eval set has no {n}-objective tasks (it has {have})"}
            )
            continue
        chosen[n] = by_n[n][:per_objective]
    return chosen, skipped


def _build_policy(
    model_dir: str | Path, data_dir: Path, agent: Any, model_cfg: ModelConfig, domain: str = "qa"
) -> tuple[Any, Any]:
    """(policy, grammar): HFPolicy for a model dir or hub id; the domain's oracle teacher for 'oracle'."""
    if str(model_dir) == ORACLE:
        grammar = load_grammar(data_dir)
        texts = domains.tokenizer_texts(
            domain, compose.load_tasks(data_dir, "train"), compose.load_corpus(data_dir), grammar
        )
        tokenizer = train_tokenizer(texts, model_cfg.tiny.vocab_size, grammar)
        return teacher_for(domain, tokenizer, grammar), grammar
    model, tokenizer = load_model(model_dir, model_cfg)
    grammar = load_grammar(model_dir)
    policy = HFPolicy(
        model,
        tokenizer,
        agent.temperature,
        agent.batch_size,
        model_cfg.use_chat_template,
        seed=0,
        prefix_cache_tokens=agent.prefix_cache_tokens,
    )
    return policy, grammar


def run(
    cfg: EvalConfig,
    data_dir: Path,
    model_dir: str | Path,
    out_dir: Path,
    model_cfg: ModelConfig | None = None,
    retrieval_url: str | None = None,
    backend: Any = None,
) -> EvalResult:
    """Evaluate `model_dir` (or "oracle") over cfg.objectives x cfg.modes on the eval split."""
    started = time.monotonic()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    for m in cfg.modes:
        parse_mode(m)
    model_cfg = model_cfg or ModelConfig()
    chosen, skipped = select_tasks(
        compose.load_tasks(data_dir, "eval"), cfg.objectives, cfg.n_tasks_per_objective
    )
    for s in skipped:
        print(f"evaluate: skipping {s['objectives']} objectives: {s['reason']}")
    if not chosen:
        raise ValueError(f"{data_dir}/eval.parquet has none of the objective counts {cfg.objectives}")
    manifest = compose.load_manifest(data_dir)
    domain = domains.domain_of(data_dir)

    if backend is not None:  # a caller's own SearchBackend (e.g. the retrieval bench's dense index)
        pass
    elif retrieval_url or cfg.agent.retrieval_url:
        backend = domains.remote_backend(str(retrieval_url or cfg.agent.retrieval_url), data_dir)
    elif domain == "qa":
        backend = data_dir_backend(data_dir)  # BM25, dense or hybrid as composed; shared by every cell
    catalog = domains.load_shop_catalog(data_dir, backend) if domain == "shop" else None
    policy, grammar = _build_policy(model_dir, data_dir, cfg.agent, model_cfg, domain)

    rows: list[dict[str, Any]] = []
    samples: list[str] = []
    for mode in cfg.modes:
        # One rollout per mode over all its cells: wider batches decode faster, and each episode's
        # seconds stay its share of the batched generation (agent.rollout.run_episodes).
        agent = cfg.agent.model_copy(update={"mode": mode})
        cells = [(n, tasks[: cfg.tasks_in_cell(n)]) for n, tasks in chosen.items() if cfg.runs_cell(mode, n)]
        env_factory = domains.env_factory_for(
            domain, data_dir, agent, grammar, backend=backend, catalog=catalog
        )
        everything = [t for _, tasks in cells for t in tasks]
        done = annotate(run_episodes(everything, env_factory, policy, agent, mode=mode)) if everything else []
        for n, tasks in cells:
            trajectories, done = done[: len(tasks)], done[len(tasks) :]
            summary = {**summarize(trajectories), **domains.summary_extras(domain, trajectories)}
            rows.append({"objectives": n, "mode": mode, "n_tasks": len(tasks), **summary})
            samples.extend(t.to_json() for t in trajectories[:SAMPLES_PER_CELL])

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    plots = grid_plots(rows, out_dir)
    history = Path(model_dir) / HISTORY_FILE  # an RL-trained model carries its learning curve
    if history.is_file():
        plots.append(
            learning_curve(json.loads(history.read_text(encoding="utf-8")), out_dir / "learning_curve.png")
        )
    files.update({p.stem: p for p in plots})
    table = format_table(rows)
    files["table"] = out_dir / "table.md"
    files["table"].write_text(table, encoding="utf-8")
    files["trajectories"] = out_dir / "trajectories.jsonl"
    files["trajectories"].write_text("".join(s + "\n" for s in samples), encoding="utf-8")
    seconds = time.monotonic() - started
    metrics = {
        "config": cfg.model_dump(mode="json"),
        "model": str(model_dir),
        "data_dir": str(data_dir),
        "dataset_hash": manifest.get("dataset_hash"),
        "domain": domain,
        "grid": rows,
        "skipped": skipped,
        "seconds_total": seconds,
    }
    files["metrics"] = out_dir / "metrics.json"
    files["metrics"].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files["report"] = out_dir / "report.html"
    files["report"].write_text(html_report(rows, skipped, plots, str(model_dir)), encoding="utf-8")
    return EvalResult(out_dir, rows, skipped, files, seconds)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, one row per (objectives, mode), sorted by objectives then mode order."""
    columns = table_columns(rows)
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, sep]
    for r in sorted(rows, key=lambda r: r["objectives"]):
        cells = [fmt.format(int(r[k]) if fmt == "{:d}" else r[k]) for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def html_report(
    rows: list[dict[str, Any]], skipped: list[dict[str, Any]], plots: list[Path], model: str
) -> str:
    """A self-contained HTML page: the table and the plots inlined as base64 PNGs."""
    columns = table_columns(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = []
    for r in sorted(rows, key=lambda r: r["objectives"]):
        cells = [fmt.format(int(r[k]) if fmt == "{:d}" else r[k]) for k, _, fmt in columns]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    notes = "".join(f"<li>{html.escape(s['reason'])}</li>" for s in skipped)
    images = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/></figure>'
        for p in plots
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>MEM1 evaluation</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>MEM1 evaluation</h1><p>model: <code>{html.escape(model)}</code></p>"
        f"<table><tr>{head}</tr>{''.join(body)}</table>"
        + (f"<h2>Skipped</h2><ul>{notes}</ul>" if notes else "")
        + f"<h2>Plots</h2>{images}</body></html>\n"
    )
