"""The package has no import circle: the graph of its module-level imports (read from the
sources with ast, so a circle dodged by an import inside a function would not count as
one; those are listed below as the lazy loads they are) has no cycle."""

import ast
import os

import convmixer_kernels
from tests.harness import ROOT

PACKAGE_DIR = os.path.dirname(convmixer_kernels.__file__)


def _modules():
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
                yield rel[: -len(".__init__")] if rel.endswith(".__init__") else rel, path


MODULES = dict(_modules())


def _target(module: str, is_package: bool, node: ast.ImportFrom, alias: str):
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module
    # `from pkg import sub` imports the submodule; `from mod import attr` the module.
    return f"{name}.{alias}" if f"{name}.{alias}" in MODULES else name


def import_graph():
    graph = {}
    for module, path in MODULES.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        edges = set()
        for node in tree.body:  # module level only
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    edges.add(_target(module, path.endswith("__init__.py"), node, alias.name))
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[module] = {e for e in edges if e in MODULES and e != module}
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    graph = import_graph()
    assert "convmixer_kernels.ops.auto_select" in graph and len(graph) > 20
    # the checker sees an edge where there is one
    assert "convmixer_kernels.ops.auto_select" in graph["convmixer_kernels.ops.backends"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_checker_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_tools_are_not_in_the_package():
    assert os.path.isdir(os.path.join(ROOT, "tools"))
    assert not any(name.endswith("compile_check") or name.endswith("auto_table") for name in MODULES)
