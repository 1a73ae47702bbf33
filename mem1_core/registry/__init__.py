"""Register a trained MEM1 policy in the MLflow model registry, behind a promotion gate.

inputs.py        the local checks of what is registered (model dir, data set, eval metrics)
gate.py          the promotion gate: metric per domain, its value in the eval grid, the decision
serving.py       the pyfunc agent (the MEM1 loop around the weights), self-contained via code_paths
aliases.py       `models:/NAME@ALIAS` resolved against the store; the registered agent loaded
registration.py  a new version, its tags, `candidate` and (when the gate passes) `champion`
"""

# Agents registered before the split pickled their python model as `mem1_core.registry.Mem1AgentModel`;
# a process that already imported the project (`mem1 agent`) resolves that name here when it loads one.
from mem1_core.registry.serving import Mem1AgentModel

__all__ = ["Mem1AgentModel"]
