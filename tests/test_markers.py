"""The ``slow`` marks that tests/conftest.py adds by node id name tests that exist: a renamed test
would silently lose its mark."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import SLOW_TESTS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("node_id", SLOW_TESTS)
def test_each_slow_node_id_names_a_test(node_id: str) -> None:
    path, name = node_id.split("::")
    module = ast.parse((ROOT / path).read_text())
    functions = {node.name for node in module.body if isinstance(node, ast.FunctionDef)}
    assert name in functions, f"{path} has no test {name}: update SLOW_TESTS in tests/conftest.py"
