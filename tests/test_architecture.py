"""The package's import graph: no cycle, and no import that points up a layer.

Every ``import`` statement of every module counts, at module level or inside a function (a function-level import
is still a dependency; hiding one there does not break a circle). Imports under ``if TYPE_CHECKING:`` do not run
and are skipped. The layers, lowest first (a module may import its own layer and those below):

0. the core: ``groups``, ``optim`` (torch and the standard library only)
1. building blocks: io, distributed, monitor, safety, models, data, hf, lightning, width_rule, the tasks, and the
   data/benchmark readers (instruct_data, bigbench, mmlu)
2. ``config`` (TrainConfig) and ``configfile``
3. the run API: ``train``, and ``runs`` (reading a run folder)
4. commands built on runs: ``adapters`` (evaluate, merge), ``generate``, ``evaluate_mmlu``, ``ratio``,
   ``experiments.*``
5. the CLI: ``cli``, ``__main__``
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loraplus"
LAYERS = {
    0: ("groups", "optim"),
    1: ("io", "distributed", "monitor", "safety", "models", "data", "hf", "lightning", "width_rule", "tasks",
        "instruct_data", "bigbench", "mmlu", "generation", "precision", "threads", "runfolder", "multipart"),
    2: ("config", "configfile"),
    3: ("train", "runs"),
    4: ("adapters", "generate", "evaluate_mmlu", "ratio", "experiments"),
    5: ("cli", "__main__", "__init__"),
}  # fmt: skip
CORE_THIRD_PARTY = {"torch"}


def module_name(path: Path) -> str:
    """``src/loraplus/tasks/base.py`` -> ``tasks.base``; a package's ``__init__`` -> the package (``tasks``)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    head = module.split(".")[0]
    found = [level for level, names in LAYERS.items() if head in names]
    assert found, f"module {module!r} has no layer: add it to LAYERS"
    return found[0]


def _in_type_checking(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(package modules imported, top-level third-party/stdlib names imported) by the module at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    internal, external = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif node.level == 0:
            targets = [node.module or ""]
        else:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
            targets = [f"{stem}.{a.name}".strip(".") if f"{stem}.{a.name}".strip(".") in modules else stem
                       for a in node.names]  # fmt: skip
            targets = ["loraplus." + t if t else "loraplus" for t in targets]
        for target in targets:
            if target == "loraplus" or target.startswith("loraplus."):
                name = target.removeprefix("loraplus").lstrip(".") or "__init__"
                while name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                internal.add(name)
            else:
                external.add(target.split(".")[0])
    return internal - {module_name(path)}, external


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph, external = {}, {}
    for path in paths:
        graph[module_name(path)], external[module_name(path)] = imports_of(path, modules)
    return graph, external


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))  # fmt: skip


def test_the_package_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_import_points_up_a_layer():
    graph, _ = import_graph()
    assert upward_imports(graph) == []


def test_the_core_imports_only_torch_and_the_standard_library():
    _, external = import_graph()
    for module in LAYERS[0]:
        extra = external[module] - CORE_THIRD_PARTY - set(sys.stdlib_module_names) - {"__future__"}
        assert not extra, f"{module} imports {sorted(extra)}"


def test_a_task_never_imports_the_run_layer_or_config():
    graph, _ = import_graph()
    for module, targets in graph.items():
        if module.startswith("tasks"):
            assert not targets & {"train", "config", "configfile"}, (module, targets)


@pytest.mark.parametrize(
    "graph, expected",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]), ({"a": {"b"}, "b": set()}, None)],
)
def test_find_cycle_finds_a_planted_cycle(graph, expected):
    assert find_cycle(graph) == expected


def test_imports_are_read_at_every_level(tmp_path, monkeypatch):
    """A function-level relative import and a planted upward import are both seen (the checks can fail)."""
    fake = tmp_path / "loraplus"
    (fake / "tasks").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "train.py").write_text("")
    (fake / "tasks" / "__init__.py").write_text("from .base import X\n")
    (fake / "tasks" / "base.py").write_text("def f():\n    from ..train import run_train\n    import numpy\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph, external = import_graph()
    assert graph["tasks.base"] == {"train"} and external["tasks.base"] == {"numpy"}
    assert graph["tasks"] == {"tasks.base"}
    assert upward_imports(graph) == ["tasks.base (layer 1) imports train (layer 3)"]
