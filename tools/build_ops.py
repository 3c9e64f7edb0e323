"""Compile sgxl's fused ops and check them: exits non-zero if a build or a check fails.

    python tools/build_ops.py              # CPU and CUDA
    python tools/build_ops.py --only cpu   # one of them
    python tools/build_ops.py --verbose    # show the compiler commands

The CPU extension is built, imported and compared with the reference path on a small filtered_lrelu.
The CUDA extension is compiled with nvcc, which needs no GPU (CUDA_HOME defaults to /usr/local/cuda and
TORCH_CUDA_ARCH_LIST to "8.0;9.0", see sgxl.ops_build); where a GPU exists it is compared too. Builds are
cached by a hash of the sources (~/.cache/sgxl/ops or $SGXL_OPS_CACHE), so a second run takes seconds.
CI (.ci/run) runs this after installing and before pytest.
"""
import argparse
import math
import sys
import time

import torch


def check_against_reference(device: str) -> float:
    "Largest relative difference between the fused and the reference filtered_lrelu (values and gradients)."
    from sgxl import ops, ops_reference
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 11, generator=g).to(device).requires_grad_()
    b = torch.randn(3, generator=g).to(device).requires_grad_()
    setup = ops_reference.setup_filter
    fu, fd = setup([1, 3, 5, 3, 1], device=device), setup([1, 2, 4, 2, 1, 1], device=device)
    worst = 0.0
    outs = []
    for impl in ('ref', device):
        y = ops.filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=(3, 4, 3, 4), clamp=0.8, impl=impl)
        gx, gb = torch.autograd.grad(y.square().sum(), [x, b])
        outs.append((y, gx, gb))
    for r, c in zip(*outs):
        r, c = r.detach(), c.detach()
        worst = max(worst, float((r - c).abs().max() / r.abs().max().clamp_min(1e-12)))
    return worst


def compile_times(build_dir) -> str:
    "Seconds each object took, from ninja's log of the build folder (the last time it was compiled)."
    try:
        lines = (build_dir / '.ninja_log').read_text().splitlines()[1:]
    except OSError:
        return ''
    times = {}
    for line in lines:
        start, end, _, out, *_ = line.split('\t')
        times[out] = (int(end) - int(start)) / 1000
    return ', '.join(f'{out} {sec:.1f} s' for out, sec in times.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--only', choices=['cpu', 'cuda'], help='build only this kind')
    p.add_argument('--verbose', action='store_true', help="print the compiler commands (torch's verbose build)")
    args = p.parse_args(argv)
    from sgxl import ops_build
    failed = False
    for kind in [args.only] if args.only else ['cpu', 'cuda']:
        t0 = time.time()
        try:
            mod = ops_build.build(kind, verbose=args.verbose)
        except Exception as e:                       # print the whole compiler log: this is where people look
            print(f'[{kind}] BUILD FAILED after {time.time() - t0:.0f} s:\n{e}', file=sys.stderr)
            failed = True
            continue
        print(f'[{kind}] built {mod.__name__} in {time.time() - t0:.1f} s (cache: {ops_build.cache_dir()})')
        print(f'[{kind}] compile times: {compile_times(ops_build.cache_dir() / mod.__name__)}')
        if kind == 'cuda' and not torch.cuda.is_available():
            print('[cuda] compiled; no GPU here, so the kernels were not run')
            continue
        ops_build._modules[kind] = mod               # use this module for the check below
        err = check_against_reference(kind)
        ok = err < (1e-5 if kind == 'cpu' else 1e-4) and math.isfinite(err)
        print(f'[{kind}] fused vs reference: max relative difference {err:.2e} ({"ok" if ok else "TOO LARGE"})')
        failed |= not ok
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
