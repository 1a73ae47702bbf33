"""`mem1 …`: one subcommand per pipeline step, plus the local pipeline and the consumer agent.

Each subcommand lives in `mem1_core/commands/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their command is used, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mem1_core.config import ConfigError

COMMANDS: dict[str, str] = {
    "compose": "compose N-objective tasks and the retrieval corpus from QA sources",
    "build-index": "build the dense retrieval index (faiss over passage embeddings) of a corpus",
    "serve-retrieval": "serve BM25, dense or hybrid search over HTTP (POST /retrieve, GET /healthz)",
    "rollout": "run the agent (a model or the oracle) in mem1/full/truncate:k mode and print metrics",
    "sft": "SFT warm-up on teacher trajectories (TRL SFTTrainer), after sft.pretrain.steps of causal-LM "
    "pre-training for a tiny model",
    "ppo": "PPO training with the MEM1 attention mask",
    "eval": "the evaluation grid: objectives x memory modes; tables and plots",
    "register": "register a trained model in MLflow behind the promotion gate",
    "agent": "answer a question with a registered model (models:/name@alias) or a local path",
    "pipeline": "compile, submit or run locally the Kubeflow pipeline",
    "runs": "list MLflow runs left RUNNING by a process that died, and mark them KILLED",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mem1",
        description="MEM1 constant-memory agents: compose data, train (SFT + PPO), evaluate, register, ship.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            _module(name).add_arguments(p)
    return parser


def _module(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"mem1_core.commands.{name.replace('-', '_')}")


def _is_data_error(e: BaseException) -> bool:
    """Bad input exits 2 like a bad config: bad data (sources.DataError), a model dir that fails its
    integrity or safetensors-only check (models.ModelIntegrityError), an embedded base whose wheel is missing
    or whose file differs from its pin (embedded_base.EmbeddedBaseError), or a missing input file.
    Checked lazily (only modules already imported) to keep --help fast."""
    if isinstance(e, FileNotFoundError):
        return True
    sources = sys.modules.get("mem1_core.data.sources")
    models = sys.modules.get("mem1_core.models")
    embedded = sys.modules.get("mem1_core.embedded_base")
    return (
        (sources is not None and isinstance(e, sources.DataError))
        or (models is not None and isinstance(e, models.ModelIntegrityError))
        or (embedded is not None and isinstance(e, embedded.EmbeddedBaseError))
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_module(args.command).run(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if _is_data_error(e):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
