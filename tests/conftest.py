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
