"""`mem1 rollout`: run a model (or the scripted oracle) on composed tasks and print its metrics.

Examples:
  mem1 rollout --model oracle --mode full --objectives 8 --n-tasks 4 --out runs/traj.jsonl
  mem1 rollout --model runs/sft/model --data-dir runs/data --mode mem1 --objectives 2
Without --data-dir a small synthetic set is composed on the fly (from --config's compose section when
given). The domain (QA or shop) is the data dir's, as its manifest says; --domain picks it for the
composed-on-the-fly set. Trajectories, with their per-trajectory metrics, are written as jsonl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="oracle", help="'oracle', a model directory or a hub id")
    parser.add_argument("--data-dir", default=None, help="composed data (default: compose a small set)")
    parser.add_argument("--config", default=None, help="pipeline config YAML (compose, model and agent)")
    parser.add_argument("--split", default="eval", choices=["eval", "train"])
    parser.add_argument("--mode", default=None, help="mem1 | full | truncate:K (default: the config's)")
    parser.add_argument("--objectives", type=int, default=2, help="objectives per task")
    parser.add_argument("--n-tasks", type=int, default=8, help="how many tasks to run")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the config's)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrieval-url", default=None, help="retrieval server (default: in-process BM25)")
    parser.add_argument("--tokenizer", default=None, help="oracle only: count tokens with this model's")
    parser.add_argument("--out", default=None, help="trajectories jsonl")
    parser.add_argument(
        "--domain", default=None, choices=["qa", "shop"], help="without --data-dir: default the config's"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per (mode, objectives)."""
    cols = [("mode", "{}"), ("N", "{}"), ("tasks", "{:.0f}"), ("EM", "{:.3f}"), ("EM sum", "{:.2f}"),
            ("F1", "{:.3f}"), ("peak tok", "{:.0f}"), ("dep len", "{:.0f}"), ("s/task", "{:.3f}"),
            ("fmt err", "{:.2f}")]  # fmt: skip
    keys = ["mode", "n", "n_trajectories", "em", "em_sum", "f1", "peak_tokens", "dependency_length",
            "seconds", "format_error"]  # fmt: skip
    cells = [[fmt.format(r[k]) for (_, fmt), k in zip(cols, keys, strict=True)] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(cols)]
    lines = ["  ".join(h.rjust(w) for (h, _), w in zip(cols, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 rollout --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.agent.policy import HFPolicy
    from mem1_core.agent.rollout import run_episodes
    from mem1_core.agent.teachers import teacher_for
    from mem1_core.config import (
        AgentConfig,
        ComposeConfig,
        ConfigError,
        PipelineConfig,
        load_config,
        parse_mode,
    )
    from mem1_core.data import compose
    from mem1_core.envs import domains
    from mem1_core.eval.metrics import annotate, summarize
    from mem1_core.models import load_grammar, load_model, train_tokenizer

    cfg = load_config(args.config) if args.config else PipelineConfig()
    if args.objectives < 1 or args.n_tasks < 1:
        raise ConfigError("--objectives and --n-tasks must be >= 1")
    agent: AgentConfig = cfg.eval.agent.model_copy()
    try:
        if args.mode is not None:
            parse_mode(args.mode)
            agent.mode = args.mode
        if args.temperature is not None:
            agent.temperature = args.temperature
        if args.max_new_tokens is not None:
            agent.max_new_tokens = args.max_new_tokens
    except ValueError as e:
        raise ConfigError(f"command line: {e}") from None

    with tempfile.TemporaryDirectory(prefix="mem1-rollout-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
        if args.data_dir is None:
            small: ComposeConfig = cfg.compose.model_copy(
                update={
                    "eval_objectives": [args.objectives],
                    "train_objectives": [args.objectives],
                    "n_eval_tasks": args.n_tasks,
                    "n_train_tasks": args.n_tasks,
                    "domain": args.domain or cfg.compose.domain,
                }
            )
            print(f"composing {args.n_tasks} synthetic {args.objectives}-objective tasks into {data_dir}")
            compose.run(small, data_dir)
        tasks = [t for t in compose.load_tasks(data_dir, args.split) if t.n_objectives == args.objectives]
        if not tasks:
            counts = sorted({t.n_objectives for t in compose.load_tasks(data_dir, args.split)})
            print(f"error: {data_dir}/{args.split}.parquet has no {args.objectives}-objective tasks "
                  f"(it has {counts})", file=sys.stderr)  # fmt: skip
            return 2
        tasks = tasks[: args.n_tasks]
        documents = compose.load_corpus(data_dir)
        domain = domains.domain_of(data_dir)

        if args.model == "oracle":
            if args.tokenizer:
                _, tokenizer = load_model(args.tokenizer, cfg.sft.model)
                grammar = load_grammar(args.tokenizer)
            else:
                grammar = load_grammar(data_dir)  # default grammar
                train = compose.load_tasks(data_dir, "train")
                texts = domains.tokenizer_texts(domain, train, documents, grammar)
                tokenizer = train_tokenizer(texts, cfg.sft.model.tiny.vocab_size, grammar)
            policy: Any = teacher_for(domain, tokenizer, grammar)
        else:
            model, tokenizer = load_model(args.model, cfg.sft.model)
            grammar = load_grammar(args.model)
            policy = HFPolicy(model, tokenizer, agent.temperature, agent.batch_size,
                              cfg.sft.model.use_chat_template, seed=args.seed,
                              prefix_cache_tokens=agent.prefix_cache_tokens)  # fmt: skip

        backend: Any = None
        if args.retrieval_url:
            # lazy: `mem1 rollout --help` must not pay for what the step imports (torch, mlflow, kfp)
            from mem1_core.retrieval.client import RetrievalClient

            backend = RetrievalClient(args.retrieval_url)
        env_factory = domains.env_factory_for(domain, data_dir, agent, grammar, backend, corpus=documents)
        trajectories = annotate(run_episodes(tasks, env_factory, policy, agent))

    summary = {**summarize(trajectories), **domains.summary_extras(domain, trajectories)}
    print(format_table([{"mode": agent.mode, "n": args.objectives, **summary}]))
    if domain == "shop":
        print(f"shop: reward {summary['reward']:.3f}  success rate {summary['success_rate']:.3f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for traj in trajectories:
                fh.write(traj.to_json() + "\n")
        print(f"wrote {len(trajectories)} trajectories to {out}")
    return 0
