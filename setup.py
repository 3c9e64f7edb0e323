"""Optional ahead-of-time build of sgxl's C++/CUDA ops.

Plain `pip install -e .` is a fast pure-Python install: the ops are compiled on first use (JIT, cached by a
hash of the sources, see sgxl/ops_build.py). With SGXL_BUILD_OPS=1 this file compiles them now instead,
into the modules sgxl._ops_cpu and (when nvcc is found) sgxl._ops_cuda:

    SGXL_BUILD_OPS=1 pip install --no-build-isolation -e .

(--no-build-isolation lets the build see the installed torch, whose headers the ops compile against.)
The sources, flags and CUDA set-up are the JIT build's (sgxl.ops_build), and each module records the hash of
the sources it was built from: sgxl uses it only while the sources are unchanged, and JIT-builds otherwise.
Package metadata lives in pyproject.toml; this file only adds the extension modules.
"""
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def ops_extensions():
    "The extension modules to build ahead of time (CPU always, CUDA when nvcc is found)."
    sys.path.insert(0, str(HERE))
    try:
        from sgxl import ops_build                   # one source of truth for sources, flags and CUDA set-up
        has_nvcc = ops_build.cuda_setup()['CUDA_HOME'] is not None
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:
        raise SystemExit('SGXL_BUILD_OPS=1 needs torch importable at build time: install torch first and run '
                         'pip install --no-build-isolation -e .') from e
    rel = lambda kind: [str((ops_build.CSRC / s).relative_to(HERE)) for s in ops_build.SOURCES[kind]]
    f = ops_build.build_flags('cpu')
    exts = [CppExtension('sgxl._ops_cpu', rel('cpu'), include_dirs=f['extra_include_paths'],
                         extra_compile_args={'cxx': f['extra_cflags']})]
    if has_nvcc:
        f = ops_build.build_flags('cuda')
        exts.append(CUDAExtension('sgxl._ops_cuda', rel('cuda'), include_dirs=f['extra_include_paths'],
                                  extra_compile_args={'cxx': f['extra_cflags'], 'nvcc': f['extra_cuda_cflags']}))
    else:
        print('sgxl: nvcc not found (set CUDA_HOME): building the CPU ops only', file=sys.stderr)
    return exts, {'build_ext': BuildExtension}


if os.environ.get('SGXL_BUILD_OPS') == '1':
    ext_modules, cmdclass = ops_extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
else:
    setup()
