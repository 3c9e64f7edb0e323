"""Optional ahead-of-time build of sgxl's C++/CUDA ops.

Plain `pip install -e .` is a fast pure-Python install: the ops are compiled on first use (JIT, cached).
With SGXL_BUILD_OPS=1 this file compiles them now instead:

    SGXL_BUILD_OPS=1 pip install --no-build-isolation -e .

(--no-build-isolation lets the build see the installed torch, whose headers the ops compile against.)
Package metadata lives in pyproject.toml; this file only adds the extension modules.
"""
import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
CSRC = HERE / 'sgxl' / 'csrc'


def op_sources():
    "C++/CUDA sources of the fused ops (none until the ops land in sgxl/csrc)."
    return sorted(p for p in CSRC.glob('*') if p.suffix in ('.cpp', '.cu')) if CSRC.exists() else []


def ops_extensions():
    "The extension modules to build ahead of time, or a clear error when there is nothing to build."
    sources = op_sources()
    if not sources:
        raise SystemExit('SGXL_BUILD_OPS=1 was set, but sgxl/csrc holds no C++/CUDA op sources to build. '
                         'Unset SGXL_BUILD_OPS for a plain install.')
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as e:
        raise SystemExit('SGXL_BUILD_OPS=1 needs torch importable at build time: install torch first and run '
                         'pip install --no-build-isolation -e .') from e
    ext = CppExtension('sgxl._ops_cpu', [str(p.relative_to(HERE)) for p in sources if p.suffix == '.cpp'])
    return [ext], {'build_ext': BuildExtension}


if os.environ.get('SGXL_BUILD_OPS') == '1':
    ext_modules, cmdclass = ops_extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
else:
    setup()
