"""The package's shape follows the notebooks (issue 19): the import graph climbs the ladder, methods live in their class.

Every check reads the exported modules with `ast`, so it sees every import, including those inside functions: an
import moved into a function to dodge a cycle is still an edge of the graph. The ladder's order is the notebooks'
order: each notebook's `#| default_exp` names its module, and a module may import only modules taught in an earlier
notebook (or in its own).
"""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'sgxl'
NOT_TAUGHT = {'__init__', '__main__', '_modidx'}       # the package's plumbing, written by hand or by nbdev


def module_order() -> dict[str, int]:
    "module name -> position of the notebook that exports it, in nbs/ file order."
    order = {}
    for i, nb in enumerate(sorted((ROOT / 'nbs').glob('*.ipynb'))):
        for cell in json.loads(nb.read_text())['cells']:
            for line in ''.join(cell['source']).splitlines():
                if line.startswith('#| default_exp '): order.setdefault(line.split()[-1], i)
    return order


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PKG.glob('*.py')) if p.stem not in NOT_TAUGHT}


def imported_modules(tree: ast.Module, known: set[str]) -> set[str]:
    "The sgxl modules `tree` imports anywhere (top level or inside functions): `from .x import`, `import sgxl.x`, `from sgxl import x`."
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level == 0 and not (base == 'sgxl' or base.startswith('sgxl.')): continue
            base = base.removeprefix('sgxl').lstrip('.') if node.level == 0 else base
            names = [f'sgxl.{base}'] if base else [f'sgxl.{a.name}' for a in node.names]
        else: continue
        for n in names:
            if n.startswith('sgxl.') and n.split('.')[1] in known: found.add(n.split('.')[1])
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imported_modules(t, set(mods)) - {m} for m, t in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "One cycle of `graph` as [a, b, ..., a], or None (depth-first search, colouring nodes)."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open': return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = 'done'; stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return None


def test_finders_see_what_they_look_for():
    "The helpers themselves: a function-level import counts, and a cycle is found."
    tree = ast.parse('from .a import x\ndef f():\n    from sgxl.b import y\n    import sgxl.c\nfrom sgxl import d\nimport os')
    assert imported_modules(tree, {'a', 'b', 'c', 'd'}) == {'a', 'b', 'c', 'd'}
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_every_module_is_taught_by_a_notebook():
    order = module_order()
    assert set(modules()) <= set(order), f'modules with no notebook: {sorted(set(modules()) - set(order))}'


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle among sgxl modules: {' -> '.join(cycle)}"


def test_no_module_imports_a_later_notebook():
    order, graph = module_order(), import_graph()
    late = sorted(f'{m} ({order[m]}) imports {n} ({order[n]})' for m, ns in graph.items() for n in ns if order[n] > order[m])
    assert not late, 'modules importing a module taught in a later notebook:\n' + '\n'.join(late)


def class_attribute_assignments(tree: ast.Module) -> list[str]:
    "`Cls.name = <function or lambda>` at module level after `class Cls` (also `setattr(Cls, 'name', f)`)."
    classes, functions, found = set(), set(), []
    for node in tree.body:
        if isinstance(node, ast.ClassDef): classes.add(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): functions.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in classes:
                    found.append(f'{t.value.id}.{t.attr} (line {node.lineno})')
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            call = node.value
            if isinstance(call.func, ast.Name) and call.func.id == 'setattr' and call.args \
                    and isinstance(call.args[0], ast.Name) and call.args[0].id in classes:
                found.append(f'setattr({call.args[0].id}, ...) (line {node.lineno})')
    return found


def test_finder_sees_methods_assigned_after_the_class():
    tree = ast.parse('class A:\n    pass\ndef f(self): pass\nA.f = f\nA.g = lambda self: 1\nsetattr(A, "h", f)\n'
                     'A.i, A.j = f, f\nB = 1\n')
    assert class_attribute_assignments(tree) == ['A.f (line 4)', 'A.g (line 5)', 'setattr(A, ...) (line 6)',
                                                 'A.i (line 7)', 'A.j (line 7)']


def test_methods_live_in_their_class():
    found = [f'{m}.py: {a}' for m, t in modules().items() for a in class_attribute_assignments(t)]
    assert not found, 'attributes assigned to a class after its body (use fastcore @patch or define them inside):\n' \
        + '\n'.join(found)
