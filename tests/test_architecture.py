"""The package layout: no import cycles, and each folder imports only the folders below it."""

import ast
import functools
import os

import pytest

import tf_supermask

PACKAGE_DIR = os.path.dirname(tf_supermask.__file__)

# Lower rank first; a folder may import its own rank or lower (docs/architecture.md).
RANKS = {"": 0, "layers": 1, "data": 1, "models": 2, "export": 3, "training": 4, "pruning": 5,
         "experiments": 6, "tools": 7, "bin": 8}


def _module_name(path):
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def package_modules():
    """{module name: path} of every module of the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[_module_name(path)] = path
    return modules


def imports_of(path, modules):
    """Package modules that `path` imports anywhere (function bodies included)."""
    name = _module_name(path)
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if not target.startswith("tf_supermask"):
                continue
            parts = target.split(".")
            # Importing a.b.c runs the __init__ of a and a.b first, except the
            # packages the importing module itself lives in.
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in modules and not name.startswith(candidate + ".") \
                        and candidate != name:
                    found.add(candidate)
    return found


@functools.lru_cache(maxsize=None)
def import_graph():
    modules = package_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of module names, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def folder_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else ""


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_folder_has_a_rank():
    folders = {folder_of(module) for module in package_modules()}
    assert folders <= set(RANKS), sorted(folders - set(RANKS))


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_folders_import_only_downwards(module):
    graph = import_graph()
    rank = RANKS[folder_of(module)]
    upward = sorted(target for target in graph[module]
                    if RANKS[folder_of(target)] > rank)
    assert not upward, f"{module} imports a higher layer: {upward}"
