"""What freezing the stem saves in rung D: one G forward + backward per stage, stem frozen (as rung D trains)
against the same generator with everything trainable (the same architecture trained without freezing).

    python benchmarks/bench_growing.py                                   # CPU: a small rung-D generator, 16 -> 64
    python benchmarks/bench_growing.py --device cuda --preset paper --resolution 256 --batch 32

Prints one table: stage, resolution, synthesis layers, trainable / all parameters, milliseconds per G step
(forward + backward of a simple loss, median of --reps after a warm-up) with the stem frozen and thawed, and the
ratio. The small preset is the tiny config with 3-layer heads and 64 channels (so a head has a ramp layer).
Stage 0 (the stem) has nothing frozen: its two columns time the same thing and show the noise level.
"""
import argparse
import statistics
import time

import torch

from sgxl.core import make_config
from sgxl.growing import progressive_generator, stage_resolutions
from sgxl.stylegan3 import count_parameters


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def step_ms(G, z, reps):
    "Median time of forward + backward (all trainable parameters get their gradient)."
    times = []
    for i in range(reps + 1):
        sync(z.device); t = time.perf_counter()
        G(z).square().mean().backward()
        sync(z.device); dt = time.perf_counter() - t
        G.zero_grad(set_to_none=True)
        if i: times.append(dt * 1000)                                     # the first one warms up
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--preset', default='small', choices=['small', 'paper'])
    p.add_argument('--resolution', type=int, default=64, help='last stage (the stem is 16)')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--reps', type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = (make_config('D', 'tiny', resolution=args.resolution, head_layers=3) if args.preset == 'small'
           else make_config('D', 'paper', resolution=args.resolution))
    print(f'device {device}, torch threads {torch.get_num_threads()}, preset {args.preset}, batch {args.batch}')
    print(f"{'stage':>5} | {'res':>4} | {'layers':>6} | {'trainable / all params':>22} | {'frozen ms':>9} | "
          f"{'thawed ms':>9} | {'ratio':>5}")
    torch.manual_seed(0)
    for k, res in enumerate(stage_resolutions(cfg)):
        G = progressive_generator(cfg, stage=k).to(device)
        z = torch.randn(args.batch, G.z_dim, device=device)
        n_train, n_all = sum(p.numel() for p in G.trainable_parameters()), count_parameters(G)
        frozen = step_ms(G, z, args.reps)
        G.freeze_stem(False)
        thawed = step_ms(G, z, args.reps)
        print(f'{k:>5} | {res:>4} | {len(G.synthesis.layers) - 1:>6} | {f"{n_train:,} / {n_all:,}":>22} | '
              f'{frozen:>9.1f} | {thawed:>9.1f} | {frozen / thawed:>5.2f}')


if __name__ == '__main__':
    main()
