"""The KFP pipeline (mem1_pipeline), compile/submit/local runs (run), what local runs print (local_output).

Wiring only: what runs inside a pod, multi-node launch included, lives in components/.
"""
