"""The node pack's code stays readable: no function in ``nodes/`` over 60 lines (the training node's
run used to be 90 lines with 31 parameters)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parents[2] / "nodes"
LIMIT = 60


@pytest.mark.parametrize("path", sorted(NODES.rglob("*.py")), ids=lambda p: str(p.relative_to(NODES)))
def test_no_function_over_the_limit(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LIMIT]
    assert long == []


def test_the_training_nodes_pass_config_objects_not_argument_lists():
    """The run takes one Recipe; the metadata and the resume check are built from it."""
    source = (NODES / "training_run.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    for name in ("metadata_parameters", "fixed_settings", "run_training"):
        assert functions[name].args.args[0].arg == "recipe", name
    assert "locals()" not in source and "locals()" not in (NODES / "train_nodes.py").read_text(encoding="utf-8")
