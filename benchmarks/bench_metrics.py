"""What do the metrics cost, and how exact is the Fréchet distance's matrix square root?

    python benchmarks/bench_metrics.py [--dim 2048] [--images 64] [--device auto]

Prints one table:
- tr((S1 S2)^(1/2)) at D = dim three ways (sgxl's pivoted Cholesky, an eigendecomposition, scipy's sqrtm),
  on singular covariances (N = 500 < D: the exact value is the nuclear norm of X1 X2^T / (N - 1)) and on
  full-rank ones (N = 3 D, where scipy's value is the reference): seconds and absolute error;
- feature-network throughput (rFID's Inception-v3, the same cost as FID's; images/s, 32 px inputs resized to 299);
- precision/recall (k = 3) on 5,000 x 5,000 random 4096-D features (VGG16 fc2 size);
- EQ-T (fractional) of a tiny StyleGAN3-T on 64 samples.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sgxl.metrics as M  # noqa: E402
from sgxl.core import get_device, make_config  # noqa: E402


def timed(f, *a, **kw):
    t = time.perf_counter()
    out = f(*a, **kw)
    return out, time.perf_counter() - t


def eig_route(s1, s2):
    "tr((S1 S2)^(1/2)) through the symmetric square root of S1 (eigendecomposition)."
    lam, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(lam, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum())


def sqrtm_route(s1, s2):
    return float(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def trace_rows(dim, rows):
    rng = np.random.default_rng(0)
    for label, n in (('singular, N=500', 500), (f'full rank, N={3 * dim}', 3 * dim)):
        x1, x2 = rng.standard_normal((n, dim)), rng.standard_normal((n, dim)) * 1.2 + 0.1
        s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
        if n < dim:
            exact = np.linalg.svd((x1 - x1.mean(0)) @ (x2 - x2.mean(0)).T, compute_uv=False).sum() / (n - 1)
        else:
            exact = None
        results = {}
        for name, f in (('pivoted Cholesky (sgxl)', M.trace_sqrt_product), ('eigendecomposition', eig_route),
                        ('scipy.linalg.sqrtm', sqrtm_route)):
            results[name] = timed(f, s1, s2)
        ref = exact if exact is not None else results['scipy.linalg.sqrtm'][0]
        for name, (v, secs) in results.items():
            rows.append((f'tr sqrt(S1 S2), D={dim}, {label}', name, f'{secs:.2f} s', f'err {abs(v - ref):.1e}'))


def throughput_rows(images, device, rows):
    net = M.make_extractor('inception_random').eval().to(device)
    x = (torch.rand(images, 3, 32, 32) * 255).to(torch.uint8).to(device)
    with torch.no_grad():
        net(x[:8])                                                          # warm-up
        if device.type == 'cuda': torch.cuda.synchronize()
        _, secs = timed(lambda: [net(b) for b in x.split(32)])
        if device.type == 'cuda': torch.cuda.synchronize()
    rows.append(('Inception-v3 features', f'{images} images on {device.type}', f'{secs:.2f} s', f'{images / secs:.1f} img/s'))


def pr_rows(device, rows):
    g = torch.Generator().manual_seed(0)
    real, gen = torch.randn(5000, 4096, generator=g), torch.randn(5000, 4096, generator=g) + 0.05
    (p, r), secs = timed(M.precision_recall, real, gen, 3, 1024, device)
    rows.append(('precision/recall k=3', f'5000 x 5000, 4096-D, {device.type}', f'{secs:.2f} s', f'P {p:.3f} R {r:.3f}'))


def eq_rows(device, rows):
    from sgxl.stylegan3 import Generator
    torch.manual_seed(0)
    G = Generator.from_config(make_config('A', 'tiny')).eval().to(device)
    res, secs = timed(M.compute_metrics, ['eqt64_frac'], G, batch=16, device=device)
    rows.append(('EQ-T frac, tiny StyleGAN3-T', f'64 samples, {device.type}', f'{secs:.2f} s', f"{res['eqt64_frac']:.1f} dB"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--dim', type=int, default=2048)
    ap.add_argument('--images', type=int, default=64)
    ap.add_argument('--device', default='auto')
    args = ap.parse_args()
    device = get_device(args.device)
    rows = []
    trace_rows(args.dim, rows)
    throughput_rows(args.images, device, rows)
    pr_rows(device, rows)
    eq_rows(device, rows)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f'torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}')
    for r in rows: print('  '.join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == '__main__':
    main()
