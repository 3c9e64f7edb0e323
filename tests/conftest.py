"""Shared pytest set-up: the repository root and a CPU-only, quiet environment."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Keep tests off any GPU unless a test asks for one, and never wait on the network for weights.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


@pytest.fixture
def root() -> Path:
    return ROOT

# Caches (class embeddings, guidance probes, metric statistics, ...) go to a per-session folder, not the
# user's ~/.cache/sgxl -- except the compiled ops, whose cache CI warms with tools/build_ops.py.
if 'SGXL_CACHE_DIR' not in os.environ:
    import tempfile
    os.environ['SGXL_CACHE_DIR'] = tempfile.mkdtemp(prefix='sgxl-test-cache-')
