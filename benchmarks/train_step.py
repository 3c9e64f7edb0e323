"""Seconds per kimg and peak memory of one training step, per rung.

    python benchmarks/train_step.py                    # tiny preset on CPU (every rung)
    python benchmarks/train_step.py --device cuda      # also the paper preset at 64x64 on the GPU
    python benchmarks/train_step.py --profile 12                          # ... and where each rung's time goes
    python benchmarks/train_step.py --compare --before 4be7bcb --threads 2 --profile 8   # tiny then vs now, one run
    python benchmarks/train_step.py --compare --set margin_size=2 --threads 2            # tiny now vs changed

Each rung is built as `sgxl train` builds it (built-in shapes, its class embeddings / guidance probe taken
from the cache after the first run), warmed up, then timed over --steps steps. Peak memory: the process's
resident-set high-water mark on CPU (approximate: it includes everything loaded so far), torch's allocator
peak on CUDA. Prints one table.

--compare times every tiny rung twice in the same run, rung by rung, each side in a fresh process: "before" is
the tiny preset of the sgxl at git revision --before (code and preset as they were then; default: this
checkout; unpacked once under sgxl's cache, bench/), "after" is this checkout's tiny preset with the --set
changes. It prints both columns with the speed-up, in wall-clock and in process CPU time per kimg (timings on a
shared machine are only comparable side by side, and CPU time is the more robust of the two under load). The per-kimg cost includes the lazy
regularisers, amortised: one extra step with R1 due (every r1_interval D steps) or with path length due (every
pl_interval G steps, after pl_start_kimg) is timed and its extra cost divided by its interval.
--profile N prints, per rung and side, the N sgxl/timm functions with the most cumulative CPU time over the
timed steps (cProfile: which part of the step, G, D, feature networks, augmentation, regularisers) and the N
torch operators with the most CPU time of their own over one more step (torch.profiler).
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

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


def one_step(rung, real, labels, step_index, device) -> tuple[float, float]:
    "(wall, CPU) seconds of one training step."
    t0, c0 = time.perf_counter(), time.process_time()
    rung.step(real, labels, step_index=step_index)
    if device == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def lazy_reg_extra(rung, cfg, real, labels, device, plain: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds the lazy regularisers add per step, amortised: one step with lazy R1 due (every
    r1_interval D steps) and one with path length due (every pl_interval G steps, once kimg >= pl_start_kimg),
    each step's extra over a plain step divided by its interval."""
    extra = [0.0, 0.0]
    def add(step_index, interval):
        t = one_step(rung, real, labels, step_index, device)
        for k in (0, 1): extra[k] += max(0.0, t[k] - plain[k]) / interval
    if cfg.r1 > 0: add(cfg.r1_interval, cfg.r1_interval)
    if cfg.pl_weight > 0 and rung.g_reg_active():
        rung.nimg = max(rung.nimg, int(cfg.pl_start_kimg * 1000 + 0.5))
        i = next(i for i in range(cfg.pl_interval, 10 ** 6, cfg.pl_interval) if not rung.d_reg_due(i))
        add(i, cfg.pl_interval)
    return extra[0], extra[1]


def print_profiles(prof, rung, real, labels, n):
    "The top n sgxl/timm functions of the timed steps (cProfile), then the top n torch ops of one more step."
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats('cumulative').print_stats(r'sgxl/|timm/|torch/nn/functional', n)
    print('\n'.join(l[:150] for l in out.getvalue().splitlines() if l.strip() and 'function calls' not in l
                    and 'List reduced' not in l and 'Ordered by' not in l))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        rung.step(real, labels, step_index=1)
    print(tp.key_averages().table(sort_by='self_cpu_time_total', row_limit=n, max_name_column_width=60))


def time_rung(cfg, device, steps, warmup=1, profile=0, lazy_regs=False):
    """Median (s/step, s/kimg), peak memory and resolution of `cfg`'s rung; `time_rung.cpu_kimg`: CPU s/kimg.
    lazy_regs: add the amortised cost of the lazy regularisers (`lazy_reg_extra`)."""
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
        t = one_step(rung, real, labels, i + 1, device)                     # (+1: no lazy R1 in these steps)
        if i >= warmup: times.append(t[0]); cpu.append(t[1])
    if prof: prof.disable()
    sec, sec_cpu = statistics.median(times), statistics.median(cpu)
    if lazy_regs:
        extra = lazy_reg_extra(rung, cfg, real, labels, device, (sec, sec_cpu))
        sec, sec_cpu = sec + extra[0], sec_cpu + extra[1]
    if prof: print_profiles(prof, rung, real, labels, profile)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    time_rung.cpu_kimg = sec_cpu / n * 1000                                 # CPU seconds per kimg (robust to load)
    return sec, sec / n * 1000, peak, rung.resolution


def checkout_of(rev: str) -> Path:
    """This repository's `sgxl` package at git revision `rev`, unpacked once into sgxl's cache (for --before; a
    fixed folder per commit, so its compiled ops are reused by the next run)."""
    root = Path(__file__).resolve().parents[1]
    sha = subprocess.run(['git', '-C', str(root), 'rev-parse', '--verify', f'{rev}^{{commit}}'], capture_output=True, text=True)
    if sha.returncode: sys.exit(f'--before {rev}: not a commit of this repository ({sha.stderr.strip()})')
    from sgxl.core import cache_home
    folder = cache_home('bench', sha.stdout.strip()[:16])
    if (folder / 'sgxl' / '__init__.py').is_file(): return folder
    archive = subprocess.run(['git', '-C', str(root), 'archive', '--format=tar', sha.stdout.strip(), 'sgxl'], capture_output=True)
    if archive.returncode: sys.exit(f'--before {rev}: git archive failed ({archive.stderr.decode().strip()})')
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='.unpack-', dir=folder.parent))     # unpacked beside it, then renamed
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar: tar.extractall(tmp, filter='data')
    if not folder.exists(): tmp.replace(folder)                            # (else another run got there first)
    return folder


def run_side(args, rung: str, sgxl_root: Path, changes: dict) -> dict:
    "Time one tiny rung in a fresh process that imports sgxl from `sgxl_root`; its profile is printed as it comes."
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sgxl_root), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')                           # (idle threads sleep: CPU time means work)
    cmd = [sys.executable, __file__, '--side', json.dumps(changes), '--rungs', rung, '--device', args.device,
           '--steps', str(args.steps), '--profile', str(args.profile)] + (['--threads', str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    result = [l for l in lines if l.startswith('SIDE ')]
    if proc.returncode or not result:
        sys.exit(f'timing rung {rung} with sgxl from {sgxl_root} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    if args.profile: print('\n'.join(l for l in lines if not l.startswith('SIDE ')), flush=True)
    return json.loads(result[-1][5:])


def side(args, changes: dict):
    "--side: time the rungs with this process's sgxl, print one 'SIDE {json}' line (run by `run_side`)."
    import sgxl
    for r in args.rungs.split(','):
        cfg = make_config(r, 'tiny', data='shapes:num_images=1000', **changes)
        sec, kimg, peak, res = time_rung(cfg, args.device, args.steps, profile=args.profile, lazy_regs=True)
        print('SIDE ' + json.dumps(dict(rung=r, s_kimg=kimg, cpu_kimg=time_rung.cpu_kimg, peak=peak,
                                        sgxl=str(Path(sgxl.__file__).parent))), flush=True)


def compare(args, changes: dict):
    "Every tiny rung, before (--before's sgxl, or this one) and after (this one with `changes`): s/kimg side by side."
    here = Path(__file__).resolve().parents[1]
    before_root = checkout_of(args.before) if args.before else here
    print(f'device {args.device}, {args.threads or "default"} torch threads, OMP_WAIT_POLICY='
          f'{os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}, median of {args.steps} steps + amortised lazy regularisers, '
          f'each side in its own process\nbefore: tiny preset of sgxl at {args.before or "this checkout"} ({before_root})\n'
          f'after:  tiny preset of this checkout ({here}){" with " + str(changes) if changes else ""}\n', flush=True)
    rows, load1 = [], os.getloadavg()[0]
    for r in args.rungs.split(','):
        if args.profile: print(f'===== rung {r}, before =====', flush=True)
        b = run_side(args, r, before_root, {})
        if args.profile: print(f'===== rung {r}, after =====', flush=True)
        a = run_side(args, r, here, changes)
        rows.append((r, b['s_kimg'], a['s_kimg'], b['cpu_kimg'], a['cpu_kimg']))
        print(f"{r}: before {b['s_kimg']:.0f} s/kimg ({b['cpu_kimg']:.0f} CPU), after {a['s_kimg']:.0f} "
              f"({a['cpu_kimg']:.0f} CPU)", flush=True)
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
    p.add_argument('--compare', action='store_true', help='tiny rungs before (--before) and after (--set), side by side')
    p.add_argument('--before', default=None, metavar='REV', help="--compare: the git revision whose sgxl gives the "
                   "'before' column (default: this checkout)")
    p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help="--compare: config changes of the 'after' column")
    p.add_argument('--side', default=None, help=argparse.SUPPRESS)       # internal: one side of --compare
    p.add_argument('--profile', type=int, default=0, metavar='N', help='print the top N functions and torch ops per rung')
    p.add_argument('--presets', default=None,
                   help="comma-separated presets to time: tiny, paper (paper runs at 64x64, batch 64); "
                        "default 'tiny' on CPU, 'tiny,paper' on CUDA")
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    if args.side is not None: return side(args, json.loads(args.side))
    if args.compare:
        if not (args.set or args.before):
            p.error('--compare times the tiny preset before and after: give --before REV and/or --set FIELD=VALUE')
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
