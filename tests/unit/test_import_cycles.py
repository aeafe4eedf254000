"""No import cycles inside dsasdeploy: read from the source with ast, nothing is imported.

Every import counts, also those inside functions or under TYPE_CHECKING: a lazy import
hides a cycle, it does not break it. The directories without __init__.py (templates/)
are scaffolding for `dsas init`, not modules of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dsasdeploy

PACKAGE_DIR = Path(dsasdeploy.__file__).parent
PACKAGE = PACKAGE_DIR.name


def package_modules() -> dict[str, Path]:
    """Dotted module name -> its file, for every importable module of the package."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        folders = path.relative_to(PACKAGE_DIR).parent.parts
        if not all((PACKAGE_DIR.joinpath(*folders[:depth]) / "__init__.py").is_file()
                   for depth in range(len(folders) + 1)):
            continue
        parts = [PACKAGE, *folders] + ([] if path.stem == "__init__" else [path.stem])
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module `name` imports (`from x import y` counts x.y when y is a module)."""
    here = name.split(".") if path.stem == "__init__" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_known_prefix(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(_known_prefix(f"{target}.{alias.name}", modules))
    found.discard("")
    found.discard(name)
    return found


def _known_prefix(dotted: str, modules: dict[str, Path]) -> str:
    """The longest prefix of `dotted` that is a package module ('' for another distribution)."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted


def module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def subpackage_of(module: str) -> str:
    """'dsasdeploy.config.load' -> 'dsasdeploy.config'; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def subpackage_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Subpackage (or top-level module) -> the others it imports."""
    graph: dict[str, set[str]] = {}
    for module, targets in modules.items():
        source = subpackage_of(module)
        graph.setdefault(source, set()).update(subpackage_of(t) for t in targets if subpackage_of(t) != source)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(set(graph) | {t for targets in graph.values() for t in targets}):
        if node not in index:
            visit(node)
    return found


def test_no_cycle_between_subpackages():
    assert cycles(subpackage_graph(module_graph())) == []


def test_no_cycle_between_modules():
    assert cycles(module_graph()) == []


def test_config_does_not_import_inventory():
    """Host and Stage live in config/stage.py; inventory.py re-exports them."""
    graph = module_graph()
    assert "dsasdeploy.config.stage" in graph["dsasdeploy.config.load"]
    assert "dsasdeploy.config.stage" in graph["dsasdeploy.inventory"]
    assert not any("dsasdeploy.inventory" in targets for module, targets in graph.items()
                   if subpackage_of(module) == "dsasdeploy.config")


def test_the_walk_sees_relative_and_lazy_imports():
    """The checks above are not vacuous: the graph holds the edges a reader sees in the source."""
    graph = module_graph()
    assert "dsasdeploy.commands.base" in graph["dsasdeploy.commands.lb.lvs"]  # `from ..base import`, also lazy
    assert "dsasdeploy.tasks.drbd" in graph["dsasdeploy.tasks"]  # `from . import drbd` in __init__
    assert "dsasdeploy.execute.drbd_recover" in graph["dsasdeploy.tasks.drbd"]  # inside a function
    assert not any(name.startswith("dsasdeploy.templates") for name in graph)


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_inventory_keeps_the_old_names():
    from dsasdeploy.config.stage import Host, Stage
    from dsasdeploy import inventory

    assert (inventory.Host, inventory.Stage) == (Host, Stage)
    assert callable(inventory.select_hosts) and callable(inventory.split_list)
