"""Installs where users are: dependency ranges instead of exact torch pins, an ops build lock that does not need
`fcntl` (Windows), and --help texts that keep commands copied from StyleGAN3's README from misbehaving."""
import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

from sgxl.training import train_parser

from conftest import ROOT


def requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    return {(r := Requirement(d)).name: r for d in deps}


def test_torch_is_a_range_that_holds_the_installed_versions():
    "torch/torchvision are ranges (an exact pin replaces Colab's or a cluster's torch), and the ones here satisfy them."
    reqs = requirements()
    for name in ('torch', 'torchvision'):
        spec = reqs[name].specifier
        assert not any(s.operator in ('==', '===') for s in spec), f'{name} is pinned exactly: {spec}'
        assert spec.contains(version(name).split('+')[0]), f'installed {name} {version(name)} is outside {spec}'
        assert not spec.contains('2.3.0' if name == 'torch' else '0.18.0'), f'{name} {spec} admits a release too old'
    assert 'filelock' in reqs


def test_ops_build_imports_and_falls_back_without_fcntl(tmp_path):
    """`import fcntl` fails (as on Windows) and no compiler is found: sgxl.ops_build still imports, its lock
    works, and the ops fall back to the reference path with one warning."""
    script = textwrap.dedent('''
        import sys, warnings
        from pathlib import Path
        sys.modules['fcntl'] = None                                  # `import fcntl` raises ImportError
        import sgxl.ops_build as ob
        with ob.file_lock(Path(sys.argv[1]) / 'x.lock'): pass
        import torch
        from sgxl import ops
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            x = torch.randn(1, 1, 8, 8)
            assert torch.equal(ops.filtered_lrelu(x, impl='auto'), ops.filtered_lrelu(x, impl='ref'))
        assert ob.ops_status()['cpu'].startswith('failed'), ob.ops_status()
        assert any('reference path' in str(w.message) for w in caught)
        print('ok')
    ''')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'SGXL_OPS_CACHE': str(tmp_path / 'ops'), 'CXX': '/nonexistent/c++',
           'OMP_NUM_THREADS': '1'}
    out = subprocess.run([sys.executable, '-c', script, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-3000:]


def test_snap_help_says_kimg_not_ticks():
    "StyleGAN3's --snap counts ticks of 4 kimg; ours counts kimg, and --help says so."
    text = ' '.join(train_parser().format_help().split())
    assert 'kimg (thousands of real images) between snapshots' in text and 'ticks of 4 kimg' in text
