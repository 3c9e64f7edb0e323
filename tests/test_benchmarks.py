"""Benchmark scripts are not run by the suite (they print comparisons for minutes), so check what can break
silently when the package is reorganised: every `sgxl` name they import must exist where they import it from."""
import ast
import importlib
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).parents[1] / 'benchmarks').glob('*.py'))


def sgxl_imports(path: Path) -> list[tuple[str, str, int]]:
    "(module, name, line) of every `from sgxl... import name` in the file, at any depth."
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'sgxl':
            out += [(node.module, a.name, node.lineno) for a in node.names]
    return out


def test_there_are_benchmarks():
    assert len(BENCH) >= 5 and any(sgxl_imports(p) for p in BENCH)


@pytest.mark.parametrize('path', BENCH, ids=[p.name for p in BENCH])
def test_benchmark_imports_exist(path):
    missing = [f'{path.name}:{line}: from {mod} import {name}' for mod, name, line in sgxl_imports(path)
               if not hasattr(importlib.import_module(mod), name)]
    assert not missing, 'benchmark imports names the package no longer has:\n' + '\n'.join(missing)
