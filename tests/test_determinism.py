"""The session's fixed CPU thread count (tests/conftest.py) reaches every process, and tools/flaky.py, which repeats
tests at several thread counts, reports their pass rates and the values they note with `record_value`."""
import os
import subprocess
import sys

import torch

from sgxl.core import record_value

FLAKY_README = ['tools/flaky.py', 'tests/test_determinism.py', '-k', 'not flaky', '--threads', '1,2', '--runs', '2']


def test_session_uses_the_fixed_thread_count():
    n = int(os.environ['SGXL_TEST_THREADS'])
    assert torch.get_num_threads() == n and os.environ['OMP_NUM_THREADS'] == str(n)


def test_processes_a_test_starts_use_it_too():
    out = subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'], capture_output=True,
                         text=True, timeout=300)
    assert int(out.stdout) == int(os.environ['SGXL_TEST_THREADS']), out.stderr


def test_a_noted_value():
    "tools/flaky.py is checked on this value: twice the thread count, so each thread count has its own."
    assert record_value('twice_the_threads', 2 * torch.get_num_threads()) > 0


def test_flaky_reports_pass_rates_and_value_ranges(root):
    "The command of the README, exactly: every test passes at 1 and 2 threads, each value's range per thread count."
    out = subprocess.run([sys.executable, *FLAKY_README], cwd=root, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for name in ('test_session_uses_the_fixed_thread_count', 'test_processes_a_test_starts_use_it_too',
                 'test_a_noted_value'):
        row = next(l for l in lines if l.startswith(f'tests/test_determinism.py::{name} '))
        assert row.split()[1:] == ['2/2', '2/2'], row
    values = next(l for l in lines if 'twice_the_threads' in l and '..' in l)
    assert '1 thr 2..2, 2 thr 4..4' in values and 'all 2..4' in values and 'n=4' in values, values
    bad = subprocess.run([sys.executable, 'tools/flaky.py', 'tests/test_determinism.py::no_such_test', '--runs', '1',
                          '--threads', '1'], cwd=root, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and 'collected or ran nothing' in bad.stderr
