"""`mem1 agent`: answer questions with a registered model (models:/name@alias) or a local model dir.

All --question values form ONE multi-objective task answered in one MEM1 episode, the way the
model was trained and evaluated. A shop model (registered from shop data, or a local model with a
shop --data-dir) takes purchase instructions and shops in the catalogue; its answer is what it bought.
Retrieval: --retrieval-url, else BM25 over --corpus or
--data-dir's corpus.jsonl, else (registered models only) the corpus bundled at registration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        'Example: mem1 agent --model models:/mem1-agent@champion --question "Who directed X?" '
        '--question "Where was Y born?"'
    )
    parser.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model dir; registered models are read from "
        "MLFLOW_TRACKING_URI, else --config's tracking, else sqlite:///runs/mlflow.db (where `make demo` "
        "registers)",
    )
    parser.add_argument("--question", action="append", required=True, help="repeat for several objectives")
    parser.add_argument("--corpus", default=None, help="corpus.jsonl {id,title,contents} for BM25")
    parser.add_argument("--data-dir", default=None, help="a `mem1 compose` dir (its corpus.jsonl)")
    parser.add_argument("--retrieval-url", default=None, help="a retrieval server (POST /retrieve)")
    parser.add_argument("--mode", default=None, help="mem1 | full | truncate:K (default: as registered)")
    parser.add_argument("--max-turns", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--config", default=None, help="pipeline config: eval.agent for a local model dir; run_dir/tracking"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 agent --help` must not pay for what the step imports (torch, mlflow, kfp)
    from mem1_core.config import AgentConfig, ConfigError, PipelineConfig, load_config
    from mem1_core.registry.serving import answer_tasks, tasks_from_input

    corpus = (
        Path(args.corpus)
        if args.corpus
        else (Path(args.data_dir) / "corpus.jsonl" if args.data_dir else None)
    )
    if corpus is not None and not corpus.is_file():
        raise ConfigError(f"{corpus}: corpus not found")
    backend: Any = None
    if args.retrieval_url:
        # lazy: `mem1 agent --help` must not pay for what the step imports (torch, mlflow, kfp)
        from mem1_core.retrieval.client import RetrievalClient

        backend = RetrievalClient(args.retrieval_url)
    elif corpus is not None:
        # lazy: `mem1 agent --help` must not pay for what the step imports (torch, mlflow, kfp)
        from mem1_core.data.sources import load_corpus_file
        from mem1_core.retrieval.bm25 import BM25Backend

        backend = BM25Backend(load_corpus_file(corpus))

    domain, catalog = "qa", None
    if args.model.startswith(("models:/", "runs:/")):
        # lazy: `mem1 agent --help` must not pay for what the step imports (torch, mlflow, kfp)
        from mem1_core.registry.aliases import load_registered
        from mem1_core.registry.inputs import RegistryError
        from mem1_core.tracking import TrackingError, resolve_tracking_uri

        cfg = load_config(args.config) if args.config else PipelineConfig()
        uri = resolve_tracking_uri(cfg.run_dir, cfg.tracking.tracking_uri)
        try:
            agent_model = load_registered(args.model, uri)
        except RegistryError as e:  # unknown name, alias or version; no store yet
            print(f"error: {e}", file=sys.stderr)
            return 2
        except TrackingError as e:  # the store is unreachable (bounded retries, ~30 s at most)
            print(f"error: {e}", file=sys.stderr)
            return 1
        model, tokenizer, grammar = agent_model.model, agent_model.tokenizer, agent_model.grammar
        agent: AgentConfig = agent_model.agent_cfg
        domain = agent_model.domain
        if domain == "shop":
            catalog = agent_model._shop_catalog(args.retrieval_url)
        elif backend is None:
            backend = agent_model._backend(None)
    else:
        # lazy: `mem1 agent --help` must not pay for what the step imports (torch, mlflow, kfp)
        from mem1_core.envs import domains
        from mem1_core.models import load_grammar, load_model

        cfg = load_config(args.config) if args.config else PipelineConfig()
        if args.data_dir and domains.domain_of(Path(args.data_dir)) == "shop":
            domain = "shop"
            catalog = domains.load_shop_catalog(Path(args.data_dir), backend)
        elif backend is None:
            raise ConfigError("a local model needs --corpus, --data-dir or --retrieval-url for retrieval")
        model, tokenizer = load_model(args.model, cfg.sft.model)
        grammar = load_grammar(args.model)
        agent = cfg.eval.agent
    update = {"mode": args.mode, "max_turns": args.max_turns, "max_new_tokens": args.max_new_tokens}
    try:
        agent = AgentConfig.model_validate({**agent.model_dump(), **{k: v for k, v in update.items() if v}})
    except ValueError as e:
        raise ConfigError(f"command line: {e}") from None

    tasks = tasks_from_input({"questions": [args.question]}, domain)
    result = answer_tasks(tasks, model, tokenizer, grammar, agent, backend, domain, catalog)[0]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for i, turn in enumerate(json.loads(result["trajectory"]), start=1):
        print(f"--- turn {i} (context {turn['context_tokens']} tokens)")
        print(turn["output"])
        if turn["observation"]:
            print(turn["observation"])
    if result["format_error"]:
        print(f"(episode ended on a malformed turn: {result['format_error']})")
    print(f"answer: {result['answer']}")
    print(f"turns: {result['n_turns']}  peak tokens: {result['peak_tokens']}  mode: {agent.mode}")
    return 0
