"""Cost of the Projected GAN discriminator per rung and preset: one D step (reals + fakes, forward and backward).

    python benchmarks/bench_projected.py                     # CPU, all rows
    python benchmarks/bench_projected.py --device cuda --batch 32
    python benchmarks/bench_projected.py --rows tiny-B tiny-E

Prints one table: the feature networks, their input size, the number of discriminators, trainable and frozen
parameters, and the median time of a D step (hinge loss on reals and fakes, backward) and of a G-side pass
(fakes only, gradient to the images). The ViTs run with random weights, asked for by name, since the
benchmark measures time, not quality; lite0 uses its real weights.
"""
import argparse
import statistics
import time

import torch

from sgxl.core import DEIT_BASE, make_config
from sgxl.projected import hinge_d_loss, hinge_g_loss, projected_discriminator

ROWS = {
    'tiny-B': lambda: make_config('B', 'tiny', c_dim=10),
    'tiny-E': lambda: make_config('E', 'tiny', c_dim=10),
    'paper-B': lambda: make_config('B', c_dim=1000),
    'paper-E': lambda: make_config('E', c_dim=1000, feature_sources=(f'{DEIT_BASE}=random',)),
}
SHORT = {'tf_efficientnet_lite0': 'lite0', DEIT_BASE: 'deit-base', 'deit_tiny_distilled_patch16_224': 'deit-tiny'}


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn(); sync(device)                                     # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(device); times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name, batch, device, repeats):
    cfg = ROWS[name]()
    D = projected_discriminator(cfg).to(device)
    res = cfg.resolution
    reals = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    fakes = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    c = torch.randint(0, cfg.c_dim, (batch,), device=device)

    def d_step():
        D.requires_grad_(True)
        hinge_d_loss(D(reals, c), D(fakes, c)).backward()

    def g_pass():
        D.requires_grad_(False)
        f = fakes.clone().requires_grad_(True)
        hinge_g_loss(D(f, c)).backward()

    n_train = sum(p.numel() for p in D.trainable_parameters())
    n_frozen = sum(p.numel() for m in D.frozen_modules() for p in m.parameters())
    return dict(row=name, nets='+'.join(SHORT.get(n.name, n.name) for n in D.feature_nets),
                res=f'{res}->{cfg.feature_resolution}', heads=D.num_discriminators,
                train=f'{n_train / 1e6:.2f}M', frozen=f'{n_frozen / 1e6:.1f}M',
                d_step=timed(d_step, device, repeats), g_pass=timed(g_pass, device, repeats))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS), help='which configs to time')
    p.add_argument('--batch', type=int, default=8, help='images per batch (reals and fakes each)')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--repeats', type=int, default=3, help='timed repetitions (median reported)')
    a = p.parse_args(argv)
    device = torch.device(a.device)
    torch.manual_seed(0)
    print(f'device {device}' + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else
                                f' ({torch.get_num_threads()} threads)') + f', batch {a.batch}')
    head = f"{'row':8s} {'feature nets':22s} {'input':9s} {'heads':>5s} {'train':>7s} {'frozen':>7s} " \
           f"{'D step s':>9s} {'G pass s':>9s}"
    print(head); print('-' * len(head))
    for name in a.rows:
        r = bench(name, a.batch, device, a.repeats)
        print(f"{r['row']:8s} {r['nets']:22s} {r['res']:9s} {r['heads']:5d} {r['train']:>7s} {r['frozen']:>7s} "
              f"{r['d_step']:9.3f} {r['g_pass']:9.3f}", flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
