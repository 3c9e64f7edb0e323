"""Cost of rung A (StyleGAN3-T G + ResNet D): G forward, G forward+backward, and one full RungA training step.

    python benchmarks/bench_rung_a.py                               # CPU, tiny preset, ops 'ref' and 'cpu'
    python benchmarks/bench_rung_a.py --device cuda --rows tiny paper-256 --impls auto --batch 8

Prints one table: preset, ops implementation, batch, G and D parameters, and the median time of a G forward
(no grad), a G forward + backward (the generator half of a step) and a whole training step of rung A as `sgxl train`
runs it (`training_rung(RungA)`: G step, D step, R1 at step 0 only, EMA; bf16 autocast on CUDA). The 'cpu' kernels are built on first use (once; cached), outside the timing.
"""
import argparse
import statistics
import time

import torch

from sgxl.baseline import RungA
from sgxl.core import make_config, seed_everything
from sgxl.stylegan3 import count_parameters
from sgxl.distributed import training_rung

ROWS = {
    'tiny': lambda: make_config('A', 'tiny', c_dim=4),
    'paper-256': lambda: make_config('A', resolution=256, c_dim=1000),
}


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn(); sync(device)                                     # warm-up (and the one-off kernel build)
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(device); times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(row, impl, batch, device, repeats):
    seed_everything(0)
    cfg = ROWS[row]().replace(batch=batch, ops_impl=impl, r1_interval=10 ** 9)   # R1 only at step 0 (warm-up)
    rung = training_rung(RungA)(cfg, device)
    G = rung.G
    z = torch.randn(batch, G.z_dim, device=device)
    c = torch.randint(0, cfg.c_dim, (batch,), device=device)
    reals = torch.rand(batch, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1
    steps = iter(range(10 ** 9))

    def g_forward():
        with torch.no_grad(): G(z, c)

    def g_backward():
        G(z, c).square().mean().backward()

    t_fwd = timed(g_forward, device, repeats)
    t_bwd = timed(g_backward, device, repeats)
    t_step = timed(lambda: rung.step(reals, c, next(steps)), device, repeats)
    return (row, impl, batch, count_parameters(G), count_parameters(rung.D), t_fwd, t_bwd, t_step)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rows', nargs='+', default=['tiny'], choices=list(ROWS))
    p.add_argument('--impls', nargs='+', default=['ref', 'cpu'], choices=['auto', 'ref', 'cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeats', type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    head = f"{'preset':<10} {'ops':<5} {'batch':>5} {'G params':>11} {'D params':>11} {'G fwd s':>8} {'G f+b s':>8} {'step s':>8}"
    print(head); print('-' * len(head))
    for row in args.rows:
        for impl in args.impls:
            try:
                r = bench(row, impl, args.batch, device, args.repeats)
            except Exception as e:                           # e.g. kernels that cannot build here
                print(f"{row:<10} {impl:<5} {args.batch:>5}  unavailable: {str(e).splitlines()[0][:80]}")
                continue
            print(f"{r[0]:<10} {r[1]:<5} {r[2]:>5} {r[3]:>11,} {r[4]:>11,} {r[5]:>8.3f} {r[6]:>8.3f} {r[7]:>8.3f}")


if __name__ == '__main__':
    main()
