"""MEM1: constant-memory language agents trained with RL; the method and its tooling, free of Kubeflow."""

__version__ = "0.1.0"
