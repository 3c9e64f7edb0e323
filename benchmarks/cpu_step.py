"""CPU speed of the alias-free generator: G forward + backward with the reference ops (impl='ref') and with the
fast CPU path (impl='cpu'), against the time the same generator's convolutions alone take.

    python benchmarks/cpu_step.py                          # both models, 1 thread, 5 repeats
    python benchmarks/cpu_step.py --models a --threads 2 --repeats 9

Models: (a) a config-T (rung A) generator at 32x32 with channel_base 8192, channel_max 256, 8 layers, batch 8;
(tiny) the tiny preset, make_config('A', 'tiny'), at its own batch. Each row times one generator training pass,
`G(z).square().mean().backward()`, three ways, interleaved repeat by repeat so that a change in the machine's
load hits all three alike:
  ref    every filtered_lrelu / bias_act runs the plain-PyTorch reference;
  fast   they run sgxl's CPU kernels (impl='cpu');
  floor  the convolutions alone: the same generator with each layer's filtered_lrelu replaced by a zero-pad
         (or crop) of the convolution's output to the layer's output size -- the same modulated convolutions
         on the same shapes, plus the mapping network and the Fourier input, without filtering or activation.
It prints the median wall time per image of each, the ratios, and the load average before and after (the
machine may be shared: compare rows of one run). The thread count is fixed (--threads) for every variant.
"""
import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sgxl import ops_build, stylegan3  # noqa: E402
from sgxl.core import make_config, seed_everything  # noqa: E402
from sgxl.stylegan3 import Generator  # noqa: E402

MODELS = {
    'a': ('config T 32x32, base 8192, max 256, 8 layers',
          lambda: make_config('A', resolution=32, num_layers=8, channel_base=8192, channel_max=256, batch=8)),
    'tiny': ("make_config('A', 'tiny')", lambda: make_config('A', 'tiny')),
}


def pad_to_output(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, **_):
    "Stand-in for filtered_lrelu with its output size, centred, and no arithmetic: zero-pad or crop x."
    p0, p1 = padding[0], padding[1]
    n = x.shape[-1]
    out = ((n * up + p0 + p1 - len(fu) + 1) - len(fd)) // down + 1          # filtered_lrelu's output size
    lo = (out - n) // 2
    return F.pad(x, [lo, out - n - lo, lo, out - n - lo])                    # negative amounts crop


@contextlib.contextmanager
def convolutions_only():
    "Run the generator's layers without their filtered_lrelu (the convolution-only floor)."
    saved = stylegan3.filtered_lrelu
    stylegan3.filtered_lrelu = pad_to_output
    try:
        yield
    finally:
        stylegan3.filtered_lrelu = saved


def make_variants(cfg):
    "name -> (generator, context manager factory) for the three variants, all with the same weights."
    seed_everything(0)
    G = Generator.from_config(cfg).train()
    ref = G.set_ops_impl('ref')
    state = ref.state_dict()
    fast = Generator.from_config(cfg).train()
    fast.load_state_dict(state)
    fast.set_ops_impl('cpu')
    floor = Generator.from_config(cfg).train()
    floor.load_state_dict(state)
    floor.set_ops_impl('cpu')
    return {'ref': (ref, contextlib.nullcontext), 'fast': (fast, contextlib.nullcontext), 'floor': (floor, convolutions_only)}


def agreement(variants, z):
    "Max relative difference of the images and of the gradients between the ref and fast variants."
    outs = {}
    for name in ('ref', 'fast'):
        G = variants[name][0]
        G.zero_grad(set_to_none=True)
        img = G(z)
        img.square().mean().backward()
        outs[name] = [img.detach()] + [p.grad.clone() for p in G.parameters() if p.grad is not None]
    rel = lambda a, b: float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
    return rel(outs['ref'][0], outs['fast'][0]), max(rel(a, b) for a, b in zip(outs['ref'][1:], outs['fast'][1:]))


def bench_model(key, repeats):
    label, make = MODELS[key]
    cfg = make()
    variants = make_variants(cfg)
    z = torch.randn(cfg.batch, cfg.z_dim, generator=torch.Generator().manual_seed(1))
    err_img, err_grad = agreement(variants, z)
    times = {name: [] for name in variants}
    for r in range(repeats + 1):                                      # the first round warms up
        for name, (G, ctx) in variants.items():
            G.zero_grad(set_to_none=True)
            with ctx():
                t = time.perf_counter()
                G(z).square().mean().backward()
                dt = time.perf_counter() - t
            if r: times[name].append(dt)
    per_img = {name: statistics.median(ts) / cfg.batch * 1e3 for name, ts in times.items()}
    return label, cfg.batch, per_img, err_img, err_grad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['a', 'tiny'], choices=list(MODELS), help='rows of the table')
    p.add_argument('--threads', type=int, default=1, help='torch threads for every variant (default 1)')
    p.add_argument('--repeats', type=int, default=5, help='timed repeats per variant (median; default 5)')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if ops_build.load_ops('cpu') is None:
        sys.exit(f"the CPU build of sgxl's ops is not available: {ops_build.ops_status()['cpu']}")
    isa = ops_build.load_ops('cpu').cpu_isa()
    load0 = os.getloadavg()
    rows = [bench_model(key, args.repeats) for key in args.models]
    load1 = os.getloadavg()
    print(f'G forward+backward on CPU, {args.threads} thread(s), median of {args.repeats}, ms per image '
          f'(fast path: {isa}; load average {load0[0]:.2f} before, {load1[0]:.2f} after, {os.cpu_count()} CPUs)')
    head = (f"{'model':<46} {'batch':>5} {'ref':>9} {'fast':>9} {'floor':>9} {'ref/fast':>9} {'ref/floor':>9} "
            f"{'fast/floor':>10}  {'|fast-ref| img, grad':>20}")
    print(head)
    print('-' * len(head))
    for label, batch, t, e_img, e_grad in rows:
        print(f"{label:<46} {batch:>5} {t['ref']:>9.1f} {t['fast']:>9.1f} {t['floor']:>9.1f} {t['ref'] / t['fast']:>9.2f} "
              f"{t['ref'] / t['floor']:>9.2f} {t['fast'] / t['floor']:>10.2f}  {e_img:>9.1e} {e_grad:>9.1e}")
    print("floor: the same generator's modulated convolutions alone (filtered_lrelu replaced by a zero-pad/crop); "
          "targets for (a): ref/fast >= 3, fast/floor <= 1.5")


if __name__ == '__main__':
    main()
