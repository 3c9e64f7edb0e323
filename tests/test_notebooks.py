"""Execute every notebook in nbs/ -- one pytest test per notebook, so a failure names it.

Cells flagged with one of the project's `tst_flags` (`#| slow`, `#| cuda`, see pyproject.toml) are skipped,
as `nbdev-test` does; set SGXL_NB_FLAGS="slow cuda" to run them too. Each notebook runs in its own
process (no state leaks from one notebook to the next) and its traceback becomes the failure message. The
process uses the session's torch thread count (SGXL_TEST_THREADS, tests/conftest.py), as every other test does.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))

RUNNER = r'''
import os, sys
import torch
torch.set_num_threads(int(os.environ['SGXL_TEST_THREADS']))      # the session's thread count (tests/conftest.py)
from nbdev.config import get_config
from nbdev.test import test_nb
cfg = get_config()
skip = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
ok, secs = test_nb(sys.argv[1], skip_flags=skip, force_flags=sys.argv[2].split(), basepath=str(cfg.config_path))
print(f"{sys.argv[1]}: {'ok' if ok else 'FAILED'} in {secs:.1f}s")
sys.exit(0 if ok else 1)
'''


def test_notebooks_found():
    assert NOTEBOOKS, 'no notebooks found in nbs/'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb: Path, record_property):
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'HF_HUB_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore'}
    proc = subprocess.run([sys.executable, '-c', RUNNER, str(nb), os.environ.get('SGXL_NB_FLAGS', '')],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    m = re.search(r': (?:ok|FAILED) in ([0-9.]+)s', proc.stdout)
    if m: record_property('notebook_seconds', float(m.group(1)))   # printed after the run (tests/conftest.py)
    if proc.returncode != 0:
        pytest.fail(f'{nb.name} failed:\n{proc.stderr[-8000:]}\n{proc.stdout[-2000:]}', pytrace=False)
