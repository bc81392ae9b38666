"""The package's shape: no import cycle among qresnet's modules, no module over 500 lines, and the
README's library snippet runs as written."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qresnet"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the qresnet modules it imports}, counting imports inside functions too (a lazy
    import is still a dependency)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from qresnet import data` depends on the module qresnet.data; `from qresnet.quant.ops
                # import x` on qresnet.quant.ops.
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in modules] or [node.module]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_qresnet_modules():
    graph = import_graph()
    assert "qresnet.train" in graph and "qresnet.steps" in graph["qresnet.train"]  # the graph is read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_nothing_imports_the_training_loop_but_the_command_line_and_the_sweep():
    importers = {m for m, deps in import_graph().items() if "qresnet.train" in deps}
    assert importers <= {"qresnet.cli", "qresnet.sweep"}, importers


def test_no_module_over_500_lines():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_library_and_step_modules_take_dataclasses_not_configs():
    """The ConfigDict stops at the entry points: `run_spec` reads it, the library never sees one."""
    for name in ("steps", "feeds", "resnet", "cost", "fused", "quant/layers", "quant/specs", "quant/ops"):
        assert "ml_collections" not in (PACKAGE / f"{name}.py").read_text(), name


def test_readme_library_snippet_runs():
    readme = (ROOT / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert snippets, "the README has a python snippet"
    namespace: dict = {}
    exec(compile(snippets[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert 0 < namespace["ratio"]["linear"] < 1 and len(namespace["specs"]) == 22
