"""Run the benchmarks (every bench/bench_*.py, or those named) and log their numbers to MLflow.

Each benchmark is a module with `main(results_dir) -> dict[str, float]` that writes its own
`bench/results/<name>.md`. This runner merges the numbers into `bench/results/all.json` (benchmarks
not run this time keep their last numbers) and logs them to MLflow: one run per invocation, one
nested run per benchmark with its metrics and the reports and plots it wrote in this run. Tracking
URI: $MLFLOW_TRACKING_URI, default sqlite:///runs/mlflow.db. A failing benchmark is reported and the
others still run; the exit status is then 1. One that raises `bench.bar.BarMissed` measured
everything and missed its target: its numbers are kept and logged like the others'.

Run: .venv/bin/python -m bench.run_all [NAME ...] [--no-mlflow]   (NAME: memory_scaling, shop, …)
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.bar import BarMissed

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "bench"
DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


def discover() -> list[str]:
    """Benchmark names, from bench/bench_<name>.py, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


BenchMain = Callable[[Path], object]


def load_main(name: str) -> BenchMain:
    """bench/bench_<name>.py's main."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"bench.bench_{name}").main


def checked(name: str, results: object) -> dict[str, float]:
    """A benchmark's numbers as floats; a wrong type names the benchmark."""
    if not isinstance(results, dict):
        raise TypeError(f"bench/bench_{name}.py: main() returned {type(results).__name__}, not a dict")
    bad = [k for k, v in results.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if bad:
        raise TypeError(f"bench/bench_{name}.py: main() returned non-numeric values for {bad}")
    return {k: float(v) for k, v in results.items()}


def run_benches(
    names: list[str], results_dir: Path, load: Callable[[str], BenchMain] = load_main
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """(numbers per benchmark that measured, names that failed); one failure does not stop the rest."""
    all_results: dict[str, dict[str, float]] = {}
    failed: list[str] = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        missed: BarMissed | None = None
        try:
            results = load(name)(results_dir)
        except BarMissed as err:
            results, missed = err.results, err
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        try:
            all_results[name] = checked(name, results)
        except TypeError:
            traceback.print_exc()
            failed.append(name)
            continue
        if missed is not None:
            print(f"   bar missed (numbers kept): {missed}", file=sys.stderr)
            failed.append(name)
            continue
        took = time.perf_counter() - t0
        print(f"   {len(all_results[name])} numbers in {took:.1f} s -> {results_dir / name}.md")
    return all_results, failed


def merge_results(path: Path, new: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Write `new` into the all.json at `path`, keeping the benchmarks it does not name."""
    merged: dict[str, dict[str, float]] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            print(f"warning: {path}: not JSON ({err}); starting it afresh", file=sys.stderr)
            old = {}
        merged = old if isinstance(old, dict) else {}
    merged.update(new)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return merged


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def reports_of(name: str, results_dir: Path, since: float, benches: list[str]) -> list[Path]:
    """The files benchmark `name` wrote in this run: `<name>.md` and its `<name>_*.md` / `.png` companions
    (a full retrieval run's report, the learning curves), not another benchmark's report that shares the
    prefix (retrieval_load) nor a companion left by an earlier run."""
    found = [
        results_dir / f"{name}.md",
        *sorted(results_dir.glob(f"{name}_*.md")),
        *sorted(results_dir.glob(f"{name}_*.png")),
    ]
    fresh = [f for f in found if f.is_file() and f.stat().st_mtime >= since]
    return [f for f in fresh if f.stem == name or f.stem not in benches]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def log_to_mlflow(
    all_results: dict[str, dict[str, float]], results_dir: Path, experiment: str, since: float = 0.0
) -> str:
    """One parent run, a nested run per benchmark with its metrics and the reports and plots it wrote
    since `since` (a time.time())."""
    import mlflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # relative to the working directory, as MLflow reads it
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    benches = discover()
    with mlflow.start_run(run_name="bench") as parent:
        mlflow.set_tag("git_commit", _git_commit())
        for name, results in all_results.items():
            with mlflow.start_run(run_name=name, nested=True):
                finite = {k: v for k, v in results.items() if math.isfinite(v)}
                mlflow.log_metrics(finite)
                for report in reports_of(name, results_dir, since, benches):
                    mlflow.log_artifact(str(report))
        mlflow.log_artifact(str(results_dir / "all.json"))
        return parent.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {discover()})")
    parser.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    parser.add_argument("--no-mlflow", action="store_true", help="only write the results files")
    parser.add_argument("--experiment", default="mem1-bench")
    args = parser.parse_args(argv)

    known = discover()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; known: {known}", file=sys.stderr)
        return 2
    names = args.names or known
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    all_results, failed = run_benches(names, results_dir)
    merge_results(results_dir / "all.json", all_results)

    if all_results and not args.no_mlflow:
        run_id = log_to_mlflow(all_results, results_dir, args.experiment, since=started)
        print(f"logged to MLflow run {run_id} ({tracking_uri()})")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
