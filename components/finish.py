"""finish_run: the exit handler; closes this pipeline run's MLflow parent run with the final state.

An exit task may not depend on other tasks, so it cannot receive the parent run id: it finds the
parent by the KFP job id that prepare_run tagged it with.
"""

from kfp import dsl


def finish_run(tracking_uri: str, pipeline_job_id: str, status: dsl.PipelineTaskFinalStatus):
    from components import mlflow_runs

    print(f"pipeline {status.pipeline_job_resource_name}: {status.state} {status.error_message or ''}")
    closed = mlflow_runs.finish_parent_run(tracking_uri, pipeline_job_id, status.state)
    print(
        f"MLflow parent run {closed or '(none found: prepare_run failed before creating it)'}: {status.state}"
    )
