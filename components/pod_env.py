"""What the compiled pipeline tells a training pod, by name: each name defined once, here.

pipelines/mem1_pipeline.py sets these on the training tasks; components/trainjob.py reads them to
launch a multi-node job and hands the MLflow endpoint and credentials on to its workers.
"""

from __future__ import annotations

NAMESPACE = "MEM1_NAMESPACE"  # the pod's namespace (downward API): where the job is created
TRAINER_IMAGE = "MEM1_TRAINER_IMAGE"
WORKSPACE = "MEM1_WORKSPACE"  # mount path of the volume the pod and the job's workers share
WORKSPACE_PVC = "MEM1_WORKSPACE_PVC"
# where sft and ppo keep their checkpoints across pipeline runs, keyed by their inputs (components.workdir):
# the workspace volume on a cluster, the run dir locally; unset, a step works in its own output folder
CHECKPOINT_ROOT = "MEM1_CHECKPOINT_ROOT"
GPU_NODE_SELECTOR = "MEM1_GPU_NODE_SELECTOR"  # JSON object
GPU_TOLERATIONS = "MEM1_GPU_TOLERATIONS"  # JSON list
MLFLOW_SECRET = "MEM1_MLFLOW_SECRET"
MLFLOW_CONFIG_MAP = "MEM1_MLFLOW_CONFIG_MAP"
REQUIRED = (NAMESPACE, TRAINER_IMAGE, WORKSPACE)  # a multi-node launch cannot start without these

# Defaults match manifests/ (the Secret and ConfigMap names).
DEFAULT_MLFLOW_SECRET = "mem1-mlflow-credentials"
DEFAULT_MLFLOW_CONFIG_MAP = "mem1-mlflow"
# Keys of the MLflow Secret (credentials) and ConfigMap (endpoint), passed by reference, never by value.
MLFLOW_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
MLFLOW_CONFIG_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
