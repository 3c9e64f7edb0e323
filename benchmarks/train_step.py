"""Seconds per kimg and peak memory of one training step, per rung.

    python benchmarks/train_step.py                    # tiny preset on CPU (every rung)
    python benchmarks/train_step.py --device cuda      # also the paper preset at 64x64 on the GPU
    python benchmarks/train_step.py --profile 12                          # ... and where each rung's time goes
    python benchmarks/train_step.py --compare --set margin_size=2 --threads 2   # tiny now vs changed, in one run

Each rung is built as `sgxl train` builds it (built-in shapes, its class embeddings / guidance probe taken
from the cache after the first run), warmed up, then timed over --steps steps. Peak memory: the process's
resident-set high-water mark on CPU (approximate: it includes everything loaded so far), torch's allocator
peak on CUDA. Prints one table.

--compare times every tiny rung twice in the same run, as the tiny preset is ("before") and with the
--set changes ("after"), and prints both columns with the speed-up: timings on a shared machine are only
comparable side by side. --profile N prints the N functions (sgxl, timm, torch.nn.functional) with the
most cumulative CPU time over the timed steps of each rung (cProfile, CPU time).
"""
import cProfile
import io
import pstats
import argparse
import os
import resource
import statistics
import time

import torch

from sgxl.core import DEIT_BASE as DEIT_B, RUNGS, make_config, seed_everything
from sgxl.data import load
from sgxl.training import rung_class


def build(cfg, device):
    cls = rung_class(cfg)
    res = cls.data_resolution(cfg) if getattr(cls, 'progressive', False) else cfg.resolution
    data = load(cfg.data, resolution=res)
    cfg = cfg.replace(c_dim=data.num_classes)
    seed_everything(0)
    return cls(cfg, device, dataset=data), data


def time_rung(cfg, device, steps, warmup=1, profile=0):
    rung, data = build(cfg, device)
    if getattr(rung, 'progressive', False) and rung.resolution < cfg.resolution:   # time the final stage
        rung.grow(); data = load(cfg.data, resolution=rung.resolution)
    n = cfg.batch
    real = torch.stack([data[i % len(data)][0] for i in range(n)])
    labels = torch.stack([data[i % len(data)][1] for i in range(n)])
    if device == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times, cpu, prof = [], [], cProfile.Profile(timer=time.process_time) if profile else None
    for i in range(warmup + steps):
        if prof and i == warmup: prof.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        rung.step(real, labels, step_index=i + 1)                            # (+1: no lazy R1 in the timing)
        if device == 'cuda': torch.cuda.synchronize()
        if i >= warmup: times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    if prof:
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats('cumulative').print_stats(r'sgxl/|timm/|torch/nn/functional', profile)
        print('\n'.join(l[:150] for l in out.getvalue().splitlines() if l.strip() and 'function calls' not in l
                        and 'List reduced' not in l and 'Ordered by' not in l))
    sec = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    time_rung.cpu_kimg = statistics.median(cpu) / n * 1000                 # CPU seconds per kimg (robust to load)
    return sec, sec / n * 1000, peak, rung.resolution


def compare(args, changes: dict):
    "Every tiny rung as the preset is and with `changes`, in one run: s/kimg before, after, speed-up."
    print(f'device {args.device}, {torch.get_num_threads()} CPU threads, median of {args.steps} steps; tiny preset '
          f'(before) and tiny with {changes} (after)\n')
    rows, load1 = [], os.getloadavg()[0]
    for r in args.rungs.split(','):
        before = time_rung(make_config(r, 'tiny', data='shapes:num_images=1000'), args.device, args.steps, profile=args.profile)
        cb = time_rung.cpu_kimg
        after = time_rung(make_config(r, 'tiny', data='shapes:num_images=1000', **changes), args.device, args.steps)
        rows.append((r, before[1], after[1], cb, time_rung.cpu_kimg))
        print(f'{r}: before {before[1]:.0f} s/kimg ({cb:.0f} CPU), after {after[1]:.0f} ({time_rung.cpu_kimg:.0f} CPU)', flush=True)
    print(f"\n{'rung':<6}{'before s/kimg':>15}{'after s/kimg':>15}{'speed-up':>10}{'before CPU s/kimg':>19}{'after CPU':>11}{'speed-up':>10}")
    for r, b, a, cb, ca in rows: print(f'{r:<6}{b:>15.0f}{a:>15.0f}{b / a:>9.2f}x{cb:>19.0f}{ca:>11.0f}{cb / ca:>9.2f}x')
    tot = [sum(row[k] for row in rows) for k in range(1, 5)]
    print(f"{'ladder':<6}{tot[0]:>15.0f}{tot[1]:>15.0f}{tot[0] / tot[1]:>9.2f}x{tot[2]:>19.0f}{tot[3]:>11.0f}{tot[2] / tot[3]:>9.2f}x")
    print(f'load average (1 min) at the start {load1:.1f}, at the end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', help="'cpu' (tiny preset) or 'cuda' (tiny and paper at 64x64)")
    p.add_argument('--steps', type=int, default=3, help='timed steps per rung (median reported)')
    p.add_argument('--rungs', default=','.join(RUNGS), help='comma-separated rungs, e.g. A,B')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch decides)')
    p.add_argument('--compare', action='store_true', help='tiny rungs as they are and with the --set changes, side by side')
    p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help="config changes timed by --compare")
    p.add_argument('--profile', type=int, default=0, metavar='N', help='print the top N functions by CPU time per rung')
    p.add_argument('--presets', default=None,
                   help="comma-separated presets to time: tiny, paper (paper runs at 64x64, batch 64); "
                        "default 'tiny' on CPU, 'tiny,paper' on CUDA")
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    if args.compare:
        if not args.set: p.error('--compare times the tiny preset against changes: give them with --set FIELD=VALUE')
        from sgxl.training import parse_set
        return compare(args, parse_set(args.set))
    # the paper's E/F use DeiT-B, whose weights come from the hub: timing does not depend on weight values, so
    # the benchmark asks for random ones by name (the training code itself never does this unasked)
    known = {'tiny': {}, 'paper': dict(resolution=64, batch=64)}
    names = (args.presets or ('tiny,paper' if args.device == 'cuda' else 'tiny')).split(',')
    bad = [n for n in names if n not in known]
    if bad: p.error(f"--presets {args.presets}: unknown preset(s) {', '.join(bad)}; choose from tiny, paper")
    setups = [(n, known[n]) for n in names]
    print(f'device {args.device}, {torch.get_num_threads()} CPU threads, median of {args.steps} steps\n')
    print(f"{'rung':<5}{'preset':<8}{'res':>5}{'batch':>7}{'s/step':>10}{'s/kimg':>10}{'peak MiB':>11}")
    for preset, extra in setups:
        for r in args.rungs.split(','):
            cfg = make_config(r, preset, data='shapes:num_images=1000', **extra)
            if DEIT_B in cfg.feature_nets and not cfg.feature_sources: cfg = cfg.replace(feature_sources=(f'{DEIT_B}=random',))
            sec, sec_kimg, peak, res = time_rung(cfg, args.device, args.steps, profile=args.profile)
            print(f'{r:<5}{preset:<8}{res:>5}{cfg.batch:>7}{sec:>10.2f}{sec_kimg:>10.0f}{peak:>11.0f}', flush=True)


if __name__ == '__main__':
    main()
