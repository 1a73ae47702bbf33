"""The Kubeflow pipeline (mem1_pipeline), compile/submit/local runs (run), multi-node jobs (trainjob)."""
