"""`mem1 runs list|clean`: MLflow runs left RUNNING by a process that died, listed and marked KILLED by hand.

`mem1 pipeline local` and the pipeline's first step already close such runs of their experiment; this
command is for looking first, for other experiments, and for runs mem1 cannot judge (--run-id).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

EPILOG = """\
How a run is judged: every run mem1 opens is tagged with its owner process (mem1.owner =
host/pid/start-time) and a heartbeat (mem1.heartbeat, renewed every 60 s while it runs).
  alive    its process runs on this host, or its heartbeat is recent
  gone     its process on this host is no longer running, or no heartbeat for --stale-after seconds
  unknown  no owner tag (started outside mem1 or by an older mem1): left alone unless named by --run-id
`clean` marks every gone run KILLED, ended at its last heartbeat, with the tags mem1.killed_at (when it
was found) and mem1.killed_reason (why). The store is MLFLOW_TRACKING_URI, else runs/mlflow.db.

Examples:
  mem1 runs list
  mem1 runs clean --experiment mem1-local --dry-run
  mem1 runs clean --run-id 3f2a9c...   # a run mem1 cannot judge, closed by hand
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list RUNNING runs and whether their process is alive, gone or unknown"),
        ("clean", "mark KILLED the RUNNING runs whose process is gone (and any named by --run-id)"),
    ):
        p = sub.add_parser(name, help=text, description=text, epilog=EPILOG)
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        p.add_argument(
            "--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else runs/mlflow.db"
        )
        p.add_argument(
            "--experiment", action="append", default=None, help="only this experiment (repeatable)"
        )
        p.add_argument(
            "--stale-after",
            type=float,
            default=None,
            metavar="SECONDS",
            help="a run on another host whose heartbeat is older is gone (default 300)",
        )
        if name == "clean":
            p.add_argument("--run-id", action="append", default=[], help="also mark this RUNNING run KILLED")
            p.add_argument("--dry-run", action="store_true", help="say what would be marked, change nothing")


def run(args: argparse.Namespace) -> int:
    # lazy: `mem1 runs --help` must not pay for mlflow (~2 s)
    from mem1_core import tracking

    uri = args.tracking_uri or tracking.resolve_tracking_uri()
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        print(f"error: {db}: no MLflow store; set MLFLOW_TRACKING_URI or --tracking-uri", file=sys.stderr)
        return 2
    tracking.bound_http_for_reads()
    tracker = tracking.Tracker(uri, retry=tracking.READ_RETRY)
    try:
        return _act(args, tracker, uri)
    except tracking.TrackingError as e:  # the server is down: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


def _act(args: argparse.Namespace, tracker: Any, uri: str) -> int:
    # lazy: `mem1 runs --help` must not pay for mlflow (~2 s)
    from mem1_core import orphan_runs

    stale = args.stale_after if args.stale_after is not None else orphan_runs.STALE_AFTER_S
    found = orphan_runs.open_runs(tracker, args.experiment, stale)
    if args.action == "list":
        print(f"{len(found)} RUNNING run(s) in {uri}")
        for r in found:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
            print(f"  {r.run_id}  {r.experiment}/{r.name}  started {when}  {r.state}: {r.reason}")
        return 0
    by_id = {r.run_id: r for r in found}
    unknown = [i for i in args.run_id if i not in by_id]
    if unknown:
        print(f"error: --run-id {unknown[0]}: not a RUNNING run of {uri}", file=sys.stderr)
        return 2
    chosen = [r for r in found if r.state == "gone" or r.run_id in args.run_id]
    for r in chosen:
        by_hand = r.run_id in args.run_id
        why = "named by `mem1 runs clean --run-id`" if by_hand else "found by `mem1 runs clean`"
        if not args.dry_run:
            orphan_runs.mark_killed(tracker, r, why)
        verb = "would mark" if args.dry_run else "marked"
        print(f"{verb} KILLED: {r.run_id} {r.experiment}/{r.name} ({r.reason})")
    left = [r for r in found if r not in chosen]
    print(f"{len(chosen)} run(s) {'to mark' if args.dry_run else 'marked'} KILLED; {len(left)} left RUNNING")
    return 0
