"""eval: the grid objectives x memory modes on held-out tasks; cached (deterministic given its inputs)."""

from kfp import dsl


# Named as the step's config section and `mem1 eval`; it shadows the builtin only in this module.
def eval(
    eval_json: str,
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    results: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    table: dsl.Output[dsl.Markdown],
    plots: dsl.Output[dsl.HTML],
):
    import json
    from pathlib import Path

    from components import reports, step_config
    from mem1_core.config import EvalConfig, parse_section
    from mem1_core.eval import evaluate as ev

    cfg = parse_section(EvalConfig, eval_json, "eval")
    out = Path(results.path)
    ev.run(cfg, Path(dataset.path), Path(model.path), out)
    flat = step_config.eval_metrics(json.loads((out / "metrics.json").read_text(encoding="utf-8")))
    for key, value in flat.items():
        metrics.log_metric(key, value)
    md = (out / "table.md").read_text(encoding="utf-8")
    Path(table.path).write_text(md, encoding="utf-8")
    pngs = sorted(out.rglob("*.png"))
    Path(plots.path).write_text(reports.html_report("MEM1 evaluation", md, pngs), encoding="utf-8")
