"""Cost of the pretrained class embeddings of rung C: one pass of lite0 over a dataset, and the cached load after it.

    python benchmarks/bench_embeddings.py                          # CPU: shapes, lite0 at 64 and 224
    python benchmarks/bench_embeddings.py --device cuda --images 5000 --batch 256

Prints one table: lite0's input size, images, the time of the first call (lite0 over every image, then the
atomic write of the table), its throughput, the hours a 1.28M-image ImageNet pass would take at that rate, and
the time of a second call (the cached table: hashing lite0's weights for the key, then reading the file).
lite0 uses its real weights; the cache goes to a temporary folder.
"""
import argparse
import tempfile
import time

import torch

from sgxl.core import LITE0
from sgxl.data import ShapesDataset
from sgxl.embeddings import class_embeddings
from sgxl.features import FeatureNetwork

IMAGENET = 1_281_167


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def bench(resolution, images, batch, device):
    ds = ShapesDataset(32, num_images=images)
    net = FeatureNetwork(LITE0, 'pretrained', resolution).to(device)
    with tempfile.TemporaryDirectory() as cache:
        sync(device); t = time.perf_counter()
        table, meta = class_embeddings(ds, net, batch=batch, progress=False, cache=cache, return_meta=True)
        sync(device); cold = time.perf_counter() - t
        t = time.perf_counter()
        _, meta2 = class_embeddings(ds, net, batch=batch, progress=False, cache=cache, return_meta=True)
        warm = time.perf_counter() - t
    assert not meta['cached'] and meta2['cached'] and table.shape == (10, 320)
    return cold, warm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--images', type=int, default=400)
    p.add_argument('--batch', type=int, default=50)
    p.add_argument('--resolutions', type=int, nargs='+', default=[64, 224])
    args = p.parse_args()
    device = torch.device(args.device)
    print(f'device {device}, torch threads {torch.get_num_threads()}, shapes 32px, {args.images} images, batch {args.batch}')
    print(f"{'lite0 input':>11} | {'images':>6} | {'first call s':>12} | {'images/s':>8} | {'ImageNet h':>10} | {'cached call s':>13}")
    for r in args.resolutions:
        cold, warm = bench(r, args.images, args.batch, device)
        rate = args.images / cold
        print(f'{r:>11} | {args.images:>6} | {cold:>12.2f} | {rate:>8.0f} | {IMAGENET / rate / 3600:>10.1f} | {warm:>13.3f}')


if __name__ == '__main__':
    main()
