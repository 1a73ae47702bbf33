"""`mem1 pipeline compile|submit|local`: the Kubeflow pipeline from the command line.

compile writes the pipeline YAML (images from --registry/--tag or MEM1_IMAGE_REGISTRY/MEM1_IMAGE_TAG);
submit sends a compiled package to a KFP host (--host/--token or KFP_HOST/KFP_TOKEN); local runs the
whole pipeline here with kfp.local and MLflow on SQLite. KFP is imported only inside run().
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = sub.add_parser("compile", help="compile the pipeline to YAML")
    c.add_argument("--output", default="build/mem1_pipeline.yaml", help="where to write the YAML")
    c.add_argument("--config", default=None, help="config YAML compiled in as the default config_json")
    c.add_argument("--registry", default=None, help="image registry (default: $MEM1_IMAGE_REGISTRY)")
    c.add_argument("--tag", default=None, help="image tag (default: $MEM1_IMAGE_TAG)")
    c.add_argument(
        "--gpu-node-selector",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="node label of the GPU pool (repeatable; default nvidia.com/gpu.present=true)",
    )
    c.add_argument(
        "--gpu-toleration",
        action="append",
        default=None,
        metavar="KEY[=VALUE][:EFFECT]",
        help="taint of the GPU pool to tolerate (repeatable; default nvidia.com/gpu:NoSchedule)",
    )
    c.add_argument("--workspace-pvc", default=None, help="RWX PVC shared with multi-node training jobs")

    s = sub.add_parser("submit", help="submit a compiled pipeline to a Kubeflow Pipelines host")
    s.add_argument("--package", default="build/mem1_pipeline.yaml", help="compiled pipeline YAML")
    s.add_argument("--host", default=None, help="KFP API host (default: $KFP_HOST)")
    s.add_argument("--namespace", default=None, help="Kubeflow profile namespace (default: $KFP_NAMESPACE)")
    s.add_argument("--token", default=None, help="bearer token (default: $KFP_TOKEN)")
    s.add_argument("--experiment", default="mem1", help="KFP experiment name")
    s.add_argument("--run-name", default=None)
    s.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter (VALUE parsed as JSON when it can be), e.g. --param num_nodes=2",
    )

    lo = sub.add_parser("local", help="run the whole pipeline locally (kfp.local, MLflow on SQLite)")
    lo.add_argument("--config", default="configs/local-tiny.yaml")
    lo.add_argument("--run-dir", default=None, help="default: the config's run_dir")
    lo.add_argument("--cache", action="store_true", help="reuse cached compose/evaluate outputs")
    lo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set ppo.steps=1",
    )


def parse_assignments(items: list[str], what: str) -> dict[str, object]:
    """NAME=VALUE pairs; values are JSON when they parse (numbers, lists, booleans), else strings."""
    # lazy: `mem1 pipeline --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.commands.overrides import parse_assignments as parse

    return parse(items, what, "NAME=VALUE")


def _tolerations(specs: list[str] | None):  # type: ignore[no-untyped-def]
    # lazy: `mem1 pipeline --help` must not pay for what the step imports (torch, mlflow, kfp)
    from pipelines.mem1_pipeline import Toleration

    out = []
    for spec in specs or []:
        keyval, _, effect = spec.partition(":")
        key, sep, value = keyval.partition("=")
        if not key:
            raise ValueError(f"--gpu-toleration {spec!r}: expected KEY[=VALUE][:EFFECT]")
        out.append(
            Toleration(key, "Equal" if sep else "Exists", value if sep else None, effect or "NoSchedule")
        )
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    if args.action == "compile":
        return _compile(args)
    if args.action == "submit":
        return _submit(args)
    return _local(args)


def _compile(args: argparse.Namespace) -> int:
    # lazy: `mem1 pipeline --help` must not pay for what the step imports (torch, mlflow, kfp)
    from components.images import Images
    from mem1_core.config import load_config
    from pipelines.mem1_pipeline import ClusterOptions
    from pipelines.run import compile_pipeline

    cluster = ClusterOptions()
    if args.gpu_node_selector:
        cluster = replace(
            cluster, gpu_node_selector=dict(parse_assignments(args.gpu_node_selector, "selector"))
        )
        cluster = replace(
            cluster, gpu_node_selector={k: str(v) for k, v in cluster.gpu_node_selector.items()}
        )
    if args.gpu_toleration:
        cluster = replace(cluster, gpu_tolerations=_tolerations(args.gpu_toleration))
    if args.workspace_pvc:
        cluster = replace(cluster, workspace_pvc=args.workspace_pvc)
    config = load_config(args.config) if args.config else None
    out = compile_pipeline(args.output, config, Images.from_env(args.registry, args.tag), cluster)
    print(f"wrote {out}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    # lazy: `mem1 pipeline --help` must not pay for what the step imports (torch, mlflow, kfp)
    from pipelines.run import submit

    package = Path(args.package)
    if not package.is_file():
        print(f"error: {package}: no compiled pipeline; run `mem1 pipeline compile` first", file=sys.stderr)
        return 2
    params = parse_assignments(args.param, "--param")
    try:
        run_id = submit(
            package, args.host, args.namespace, args.token, args.experiment, args.run_name, params
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"submitted run {run_id}")
    return 0


def _local(args: argparse.Namespace) -> int:
    # lazy: `mem1 pipeline --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.config import load_config
    from pipelines.local_output import summary_lines
    from pipelines.run import run_local

    config = load_config(args.config, parse_assignments(args.set, "--set"))
    try:
        result = run_local(config, args.run_dir, caching=args.cache)
    except RuntimeError as e:  # kfp.local: a task failed; the message names the log
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(result.summary)))
    return 0
