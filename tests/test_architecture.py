"""The package map of docs/architecture.md holds: no import circle between the package's modules,
and how stages are run stays behind the execution package's interfaces.

Edges are the explicit imports of a module, module-level and inside functions alike
(``from opgrpo_stages.rewards.base import Reward`` is an edge to ``rewards.base``; ``from . import
ranks`` to ``execution.ranks``): a circle through function-level imports is still a circle a reader
has to untangle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "opgrpo_stages"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The package's modules that ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:
                    found.add(sub)
                elif base in modules:
                    found.add(base)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    found = cycles(graph())
    assert not found, "import circles (each a set of modules importing each other): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_only_the_execution_interfaces_are_imported_from_outside():
    interface = f"{PACKAGE}.execution"
    bad = []
    for m, deps in graph().items():
        if m == interface or m.startswith(interface + "."):
            continue
        for d in deps:
            if d.startswith(interface + "."):
                bad.append(f"{m} imports {d}")
    assert not bad, "outside opgrpo_stages/execution/ import only its interface `opgrpo_stages.execution`: " + \
        "; ".join(bad)


def test_the_snakefile_uses_the_workflow_interface_only():
    text = (REPO / "Snakefile").read_text()
    lines = re.findall(r"^\s*(?:from|import)\s+opgrpo_stages\.execution\b.*$", text, re.M)
    assert lines, "the Snakefile runs stages through opgrpo_stages.execution.workflow"
    bad = [ln.strip() for ln in lines if not re.fullmatch(r"\s*from opgrpo_stages\.execution import workflow as \w+", ln)]
    assert not bad, f"the Snakefile imports execution details: {bad}"



def test_scoring_rules_know_no_backend():
    """GenEval's and T2I-CompBench++'s rules are shared by every detector backend (the embedded
    world's, Mask2Former/CLIP, a server): they import no backend, model or world."""
    g = graph()
    for rules in (f"{PACKAGE}.geneval.rules", f"{PACKAGE}.t2i_compbench.rules"):
        allowed = {f"{PACKAGE}.geneval.rules", f"{PACKAGE}.errors"}
        assert g[rules] <= allowed, f"{rules} imports {sorted(g[rules] - allowed)}"
