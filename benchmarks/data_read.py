"""How fast does a dataset zip read? Target (issue 5): a 10k-image 64x64 zip, 2 DataLoader workers, >= 2,000 images/s.

    python benchmarks/data_read.py [--images 10000] [--resolution 64] [--batch 64] [--epochs 2]

Builds the zip once with the dataset tool (from the built-in `shapes`, so real-looking PNGs) under
.cache/bench/, then reads it through `sgxl.data.infinite_loader` (the loader training uses) with 0, 1 and 2
worker processes and both decoders, and prints one table. Each row times whole passes over the data,
worker start-up included, after one untimed warm-up batch.
"""
import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sgxl.data as data  # noqa: E402
import sgxl.dataset_tool as dataset_tool  # noqa: E402


def build(images: int, resolution: int) -> Path:
    path = ROOT / '.cache' / 'bench' / f'shapes{resolution}-{images}.zip'
    if not path.exists():
        t = time.perf_counter()
        dataset_tool.convert_dataset(f'shapes:num_images={images}', path, resolution=resolution, max_images=images,
                             workers=2, progress=False, log=lambda *a: None)
        print(f'built {path.relative_to(ROOT)} with `sgxl dataset` in {time.perf_counter() - t:.1f} s '
              f'({images / (time.perf_counter() - t):.0f} images/s, 2 workers)')
    return path


def cpu_seconds() -> float:
    "CPU time of this process and of its finished (joined) children, user + system."
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def read_rate(path: Path, workers: int, decoder: str, batch: int, epochs: int) -> tuple[float, float]:
    "(images per wall-clock second, images per CPU second) over `epochs` passes, worker start-up included."
    data.DECODER = decoder
    ds = data.load(path)
    steps = epochs * len(ds) // batch
    t, c = time.perf_counter(), cpu_seconds()
    loader = data.infinite_loader(ds, batch=batch, seed=0, workers=workers)
    for _ in range(steps):
        x, y = next(loader)
        assert x.shape == (batch, 3, ds.resolution, ds.resolution) and x.dtype == torch.uint8
    wall = time.perf_counter() - t
    del loader, x, y
    gc.collect()                                   # shuts the workers down, so their CPU time is counted
    return steps * batch / wall, steps * batch / (cpu_seconds() - c)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=10000)
    p.add_argument('--resolution', type=int, default=64)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--epochs', type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)                 # the main process only collates; keep it off the workers' cores
    path = build(a.images, a.resolution)
    print(f'\nreading {path.name} ({path.stat().st_size / 2**20:.1f} MiB, {a.images} images '
          f'{a.resolution}x{a.resolution}), batch {a.batch}, {a.epochs} epochs, {os.cpu_count()} CPU cores')
    print(f'load average before: {os.getloadavg()[0]:.1f} (other processes share these cores; '
          f'images per CPU second is the load-independent figure)')
    rows = [(w, d) for d in ('torchvision', 'pil') for w in (0, 1, 2)]
    print(f"\n| {'workers':>7} | {'decoder':<11} | {'images/s':>9} | {'images/CPU-s':>12} | {'target (2 workers)':<18} |")
    print(f"|{'-' * 9}|{'-' * 13}|{'-' * 11}|{'-' * 14}|{'-' * 20}|")
    for w, d in rows:
        rate, per_cpu = read_rate(path, w, d, a.batch, a.epochs)
        target = ('>= 2000: ' + ('ok' if rate >= 2000 else 'MISSED')) if w == 2 else ''
        print(f'| {w:>7} | {d:<11} | {rate:>9.0f} | {per_cpu:>12.0f} | {target:<18} |', flush=True)
    print(f'load average after: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
