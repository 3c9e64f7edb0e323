"""Shared pytest set-up: the repository root, a CPU-only, quiet environment and a fixed number of CPU threads."""
import os
from pathlib import Path

# One torch thread count for the whole session, whatever the machine: results of optimisation (inversion, PTI,
# probes, training losses) move with the number of threads, because a parallel sum adds in another order. The
# default is 1, the same everywhere. SGXL_TEST_THREADS=N overrides it; OMP_NUM_THREADS / MKL_NUM_THREADS carry it to
# the processes tests start (CLI runs; notebooks: tests/test_notebooks.py sets it there too).
THREADS = int(os.environ.setdefault('SGXL_TEST_THREADS', '1'))
os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = str(THREADS)
# Idle OpenMP threads sleep instead of spinning: on busy cores spinning threads wait for each other (a projection
# took 73 s at 2 threads with spinning, 2 s without, on a loaded 2-core machine; same numbers either way).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import pytest
import torch

torch.set_num_threads(THREADS)

ROOT = Path(__file__).resolve().parents[1]

# Keep tests off any GPU unless a test asks for one, and never wait on the network for weights.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


def pytest_report_header(config):
    return f'sgxl: {torch.get_num_threads()} torch CPU threads (SGXL_TEST_THREADS={THREADS})'


NOTEBOOK_BUDGET_S = 60      # every notebook runs in under a minute on 2 cores (issue 19)


def pytest_terminal_summary(terminalreporter):
    "Each notebook's run time (tests/test_notebooks.py), slowest first, those over the budget marked."
    times = [(r.nodeid.split('[')[-1].rstrip(']'), dict(r.user_properties)['notebook_seconds'])
             for key in ('passed', 'failed') for r in terminalreporter.stats.get(key, [])
             if r.when == 'call' and 'notebook_seconds' in dict(r.user_properties)]
    if not times: return
    terminalreporter.section(f'notebook times (budget {NOTEBOOK_BUDGET_S} s each, {THREADS} torch thread(s))')
    for name, secs in sorted(times, key=lambda t: -t[1]):
        terminalreporter.write_line(f'{name:28s} {secs:6.1f} s' + ('   over budget' if secs > NOTEBOOK_BUDGET_S else ''))
    terminalreporter.write_line(f'{"total":28s} {sum(t for _, t in times):6.1f} s')


@pytest.fixture(autouse=True)
def _fixed_threads():
    "Every test starts with the session's thread count (a test may change it for itself)."
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def sleeps(monkeypatch) -> list:
    """The seconds of every `time.sleep` the test's code asks for, without sleeping: "an error at once" is then
    checked as "no back-off, no waiting" (an empty list) rather than by a wall clock that a loaded machine stretches."""
    import time
    asked = []
    monkeypatch.setattr(time, 'sleep', asked.append)
    return asked

# Caches (class embeddings, guidance probes, metric statistics, ...) go to a per-session folder, not the
# user's ~/.cache/sgxl -- except the compiled ops, whose cache CI warms with tools/build_ops.py: SGXL_OPS_CACHE
# pins them to the folder they would use without the session's SGXL_CACHE_DIR.
if 'SGXL_CACHE_DIR' not in os.environ:
    import tempfile
    from sgxl.core import cache_home
    os.environ.setdefault('SGXL_OPS_CACHE', str(cache_home('ops')))
    os.environ['SGXL_CACHE_DIR'] = tempfile.mkdtemp(prefix='sgxl-test-cache-')
