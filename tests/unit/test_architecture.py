"""The shape docs/architecture.md promises, checked on the code (issue 14's "done when")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dsasdeploy"
EXECUTE = sorted((PACKAGE / "execute").glob("*.py"))
MAX_CLASS_LINES = 250


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", EXECUTE, ids=lambda p: p.name)
def test_no_long_class_in_execute(path):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree(path))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert not long, f"{path.name}: classes over {MAX_CLASS_LINES} lines: {long}"


@pytest.mark.parametrize("path", EXECUTE, ids=lambda p: p.name)
def test_behaviour_is_not_chosen_by_probing_attributes(path):
    probes = [node.lineno for node in ast.walk(tree(path)) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")]
    assert not probes, f"{path.name}: getattr/hasattr at lines {probes}"


@pytest.mark.parametrize("path", EXECUTE, ids=lambda p: p.name)
def test_no_borrowed_flow_and_no_local_imports(path):
    module = tree(path)
    reach_ins = [node.lineno for node in ast.walk(module)
                 if isinstance(node, ast.Attribute) and node.attr == "flow"]
    assert not reach_ins, f"{path.name}: `.flow` reach-ins at lines {reach_ins}"
    local_imports = [node.lineno for fn in ast.walk(module) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not local_imports, f"{path.name}: imports inside functions at lines {local_imports}"


def test_drivers_get_only_the_pool_environment():
    """No driver module imports the run context: a driver is handed a PoolEnv, nothing more."""
    for name in ("lb_base.py", "lvs_driver.py", "lvs_membership.py", "haproxy_driver.py", "fleet_copy.py"):
        imported = {node.module for node in ast.walk(tree(PACKAGE / "execute" / name))
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"context", "run", "deploy", "rolling"}, (name, imported)
