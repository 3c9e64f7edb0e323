"""The notebooks are committed executed, so a student reading them on the web sees their figures (issue 19).

`python tools/run_notebooks.py` writes the outputs; `nbdev-clean` keeps them but strips execution counts and
metadata. These checks fail when a notebook is committed without its outputs, with counts, or with a large array."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))
MAX_KB = 700                      # per notebook: small PNG figures and printed numbers, no large arrays


def code_cells(nb_path: Path) -> list:
    return [c for c in json.loads(nb_path.read_text())['cells'] if c['cell_type'] == 'code']


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(nb):
    cells = code_cells(nb)
    assert any(c.get('outputs') for c in cells), f'{nb.name} has no outputs: run python tools/run_notebooks.py {nb.relative_to(ROOT)}'
    kb = sum(len(json.dumps(c.get('outputs', []))) for c in cells) / 1024
    assert kb <= MAX_KB, f'{nb.name}: outputs take {kb:.0f} KiB (limit {MAX_KB}): smaller figures, no large arrays'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_outputs_are_clean(nb):
    for c in code_cells(nb):
        assert c.get('execution_count') is None, f'{nb.name}: execution counts left in: run nbdev-clean'
        for o in c.get('outputs', []):
            assert o.get('execution_count') is None, f'{nb.name}: execution counts left in outputs: run nbdev-clean'
            assert o.get('output_type') != 'error', f'{nb.name}: an error output is committed'
