"""The MLflow side of a pipeline run: the parent run every step nests under, and a step's nested run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mem1_core import orphan_runs, tracking
from mem1_core.tracking import RunHandle, Tracker, is_local_uri


def resolve_tracking_uri(tracking_uri: str) -> str:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ValueError(
            "no MLflow tracking URI: set the pipeline parameter tracking_uri or MLFLOW_TRACKING_URI"
        )
    return uri


def tracker_for(tracking_uri: str, experiment: str = "mem1") -> Tracker:
    """A Tracker for a component; with SQLite, artifacts go next to the database (runs/mlartifacts).

    Its calls ride out a tracking server that is down for up to ~2 minutes (tracking.OUTAGE_RETRY): a
    step that trains for hours should not fail because the server restarted.
    """
    uri = resolve_tracking_uri(tracking_uri)
    artifacts = None
    if uri.startswith("sqlite:///") and is_local_uri(uri):
        artifacts = (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return Tracker(uri, experiment, artifacts, tracking.OUTAGE_RETRY)


TAG_KFP_JOB = "mem1.kfp_job_id"


def start_parent_run(
    tracking_uri: str, experiment: str, run_name: str, config: dict[str, Any], pipeline_job_id: str = ""
) -> str:
    """Create the pipeline's parent MLflow run and leave it RUNNING; the exit handler closes it, and,
    should the local driver that owns it die first, the next pipeline start (orphan_runs).

    (mem1_core.tracking's context manager closes the run on exit, but here the run must outlive this
    step: every later step nests under it, in other pods.)
    """
    from mlflow.entities import Param  # mlflow: heavy, and absent where only the pipeline is compiled

    tracker = tracker_for(tracking_uri, experiment)
    params = tracking.flatten_params(config)
    tracking.validate_params(params)
    tags = {"mem1.kind": "pipeline", "mem1.git_commit": tracking.git_commit(), TAG_KFP_JOB: pipeline_job_id}
    owner = os.environ.get(tracking.OWNER_ENV)
    if owner:  # `mem1 pipeline local`'s process; on a cluster the exit handler alone closes the run
        tags[tracking.TAG_OWNER] = owner
    run = tracker.call(
        lambda: tracker.client.create_run(tracker.experiment_id, run_name=run_name, tags=tags),
        f"creating the pipeline run {run_name!r}",
    )
    run_id = run.info.run_id
    tracker.call(lambda: tracker.client.set_tag(run_id, tracking.TAG_PIPELINE_RUN, run_id), "tagging the run")
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), tracking.PARAMS_PER_BATCH):
        chunk = items[i : i + tracking.PARAMS_PER_BATCH]
        tracker.call(lambda c=chunk: tracker.client.log_batch(run_id, params=c), "logging pipeline params")
    return run_id


def close_orphans(tracking_uri: str, experiment: str) -> None:
    """Mark KILLED the RUNNING runs of this experiment whose owner is gone (a killed pipeline's parent
    and step runs), printing one line when there were any: a new pipeline run starts with none left."""
    closed = orphan_runs.close_orphans(
        tracker_for(tracking_uri, experiment), [experiment], "found by a new pipeline run's prepare_run"
    )
    if closed:
        print(orphan_runs.summary_line(closed), flush=True)


def finish_parent_run(tracking_uri: str, pipeline_job_id: str, state: str) -> str | None:
    """Close the parent run tagged with this KFP job id (SUCCEEDED -> FINISHED, else FAILED).

    Returns its run id, or None when prepare_run never created one (it failed first).
    """
    tracker = tracker_for(tracking_uri)
    client = tracker.client
    exps = tracker.call(lambda: client.search_experiments(), "listing experiments")
    runs = tracker.call(
        lambda: client.search_runs(
            [e.experiment_id for e in exps], filter_string=f"tags.`{TAG_KFP_JOB}` = '{pipeline_job_id}'"
        ),
        "finding the pipeline run",
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    status = "FINISHED" if state == "SUCCEEDED" else "FAILED"
    tracker.call(lambda: client.set_tag(run_id, "mem1.pipeline_state", state), "tagging the pipeline run")
    tracker.call(lambda: client.set_terminated(run_id, status), "closing the pipeline run")
    return run_id


@contextmanager
def nested_run(
    tracking_uri: str, parent_run_id: str, step: str, config: dict[str, Any] | None = None
) -> Iterator[RunHandle]:
    """A nested MLflow run for one step under the pipeline's parent run; FAILED if the body raises."""
    with tracker_for(tracking_uri).step_run(step, config or {}, parent_run_id) as handle:
        yield handle
