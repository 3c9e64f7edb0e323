"""Time and memory of sgxl's ops, reference vs fused, at the layer shapes of a StyleGAN3-T 256 generator.

    python benchmarks/ops.py                   # CPU: the reference vs the CPU build of the fused kernels
    python benchmarks/ops.py --device cuda     # GPU: the reference vs the CUDA kernels
    python benchmarks/ops.py --batch 4 --reps 5 --layers 0,5,13

One row per synthesis layer (filtered_lrelu: bias, upsample, leaky ReLU, clamp 256, downsample) plus the
ToRGB and mapping bias_act, with forward and forward+backward times (median over --reps), the bytes autograd
keeps for backward, and the peak memory of forward+backward above what was allocated before: on CUDA
torch.cuda.max_memory_allocated, on CPU the kernel's resident-set high-water mark (reset before each
measurement; CPU PyTorch has no allocator statistics), which is approximate. The layer geometry follows the StyleGAN3 paper (config T, 14 layers +
ToRGB, 2 critically sampled, margin 10, first cutoff 2, first stopband 2^2.1, last stopband 2^0.3 times the
last cutoff, channel base 32768, channel max 512, 6 filter taps per unit of up/down factor, lrelu at twice the
output rate), computed in `sg3_layers` below.
"""
import argparse
import ctypes
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.signal
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sgxl import ops, ops_build, ops_reference  # noqa: E402


def sg3_layers(res=256, num_layers=14, num_critical=2, margin=10, first_cutoff=2.0, first_stopband=2 ** 2.1,
               last_stopband_rel=2 ** 0.3, channel_base=32768, channel_max=512, conv_kernel=3, taps_per_factor=6):
    """The filtered_lrelu calls of a StyleGAN3-T synthesis network: per layer the input of filtered_lrelu (the
    3x3 convolution's output, `in_size + 2`), the up/down factors, filter lengths, padding and output size."""
    n = num_layers + 1                                                         # + ToRGB
    last_cutoff = res / 2
    last_stopband = last_cutoff * last_stopband_rel
    e = np.minimum(np.arange(n) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** e                 # geometric schedules
    stopbands = first_stopband * (last_stopband / first_stopband) ** e
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))         # smallest power of 2 above 2*stopband
    half_widths = np.maximum(stopbands / 2, cutoffs) - cutoffs
    sizes = rates + margin * 2
    sizes[-2:] = res                                                           # last layer and ToRGB: no margin
    channels = np.rint(np.minimum(channel_base / 2 / cutoffs, channel_max)).astype(int)
    layers = []
    for i in range(num_layers):                                                # ToRGB has no filtered_lrelu
        p = max(i - 1, 0)                                                      # layer 0 reads the Fourier input
        tmp_rate = max(rates[p], rates[i]) * 2                                 # lrelu at twice the higher rate
        up, down = int(round(tmp_rate / rates[p])), int(round(tmp_rate / rates[i]))
        ku, kd = (taps_per_factor * up if up > 1 else 1), (taps_per_factor * down if down > 1 else 1)
        h_in = int(sizes[p]) + conv_kernel - 1                                 # a 'full' 3x3 convolution
        total = (int(sizes[i]) - 1) * down + kd + ku - 1 - h_in * up           # padding that gives sizes[i] outputs
        lo = (total + up) // 2
        fu = scipy.signal.firwin(ku, cutoffs[p], width=half_widths[p] * 2, fs=tmp_rate) if ku > 1 else None
        fd = scipy.signal.firwin(kd, cutoffs[i], width=half_widths[i] * 2, fs=tmp_rate) if kd > 1 else None
        layers.append(dict(name=f'L{i}', channels=int(channels[i]), h_in=h_in, up=up, down=down, fu=fu, fd=fd,
                           padding=(lo, total - lo, lo, total - lo), out=int(sizes[i])))
    return layers, int(channels[num_layers - 1])


def make_case(kind, index, batch, device, dtype):
    "(function of (impl, x, b), x, b, description) for one benchmark row."
    layers, last_ch = sg3_layers()
    g = torch.Generator().manual_seed(index)
    if kind == 'flrelu':
        L = layers[index]
        x = torch.randn(batch, L['channels'], L['h_in'], L['h_in'], generator=g).to(device, dtype)
        b = torch.randn(L['channels'], generator=g).to(device, dtype)
        f = lambda taps: None if taps is None else ops_reference.setup_filter(taps, device=device)
        fu, fd = f(L['fu']), f(L['fd'])
        fn = lambda impl, x, b: ops.filtered_lrelu(x, fu, fd, b, up=L['up'], down=L['down'], padding=L['padding'],
                                                   clamp=256, impl=impl)
        desc = (f"{L['name']}", f"{L['channels']}x{L['h_in']}^2 -> {L['out']}^2", f"{L['up']}/{L['down']}",
                f"{len(L['fu']) if L['fu'] is not None else 1}/{len(L['fd']) if L['fd'] is not None else 1}")
        return fn, x, b, desc
    if kind == 'torgb':
        x = torch.randn(batch, 3, 256, 256, generator=g).to(device, dtype)
        b = torch.randn(3, generator=g).to(device, dtype)
        return (lambda impl, x, b: ops.bias_act(x, b, clamp=256, impl=impl)), x, b, ('ToRGB', '3x256^2', 'bias_act', 'linear')
    x = torch.randn(batch, 512, generator=g).to(device, dtype)
    b = torch.randn(512, generator=g).to(device, dtype)
    return (lambda impl, x, b: ops.bias_act(x, b, act='lrelu', impl=impl)), x, b, ('mapping FC', '512', 'bias_act', 'lrelu')


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def measure(kind, index, impl, batch, reps, device, dtype):
    "Times (median, seconds), saved bytes and peak bytes above the inputs for one case and implementation."
    fn, x, b, desc = make_case(kind, index, batch, device, dtype)
    x.requires_grad_(True)
    b.requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return fn(impl, x, b)

    def fwd_bwd():
        y = fn(impl, x, b)
        y.backward(torch.ones_like(y))

    fwd(), fwd_bwd()                                                            # warm up (and build)
    times = {}
    for name, f in (('fwd', fwd), ('fwd_bwd', fwd_bwd)):
        ts = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            ts.append(time.perf_counter() - t0)
        times[name] = statistics.median(ts)
    saved = ops.saved_bytes(lambda: fn(impl, x, b))
    x.grad = b.grad = None
    if device == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = cpu_peak(fwd_bwd)
    return dict(desc=desc, fwd=times['fwd'], fwd_bwd=times['fwd_bwd'], saved=saved, peak=peak)


def _status_bytes(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f'{field} not in /proc/self/status')


def cpu_peak(f):
    """Peak resident memory while f() runs, above the resident memory before it (Linux): free heap memory
    goes back to the OS first (malloc_trim), then the kernel's high-water mark is reset (clear_refs 5)."""
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')
    base = _status_bytes('VmRSS')
    f()
    return _status_bytes('VmHWM') - base


def fmt_ms(s):
    return f'{s * 1e3:8.1f}'


def fmt_mb(b):
    return f'{b / 2 ** 20:8.1f}' if b is not None else '       -'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=None, help='batch size (default: 1 on CPU, 16 on CUDA)')
    p.add_argument('--reps', type=int, default=3, help='timed repetitions per measurement (median)')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--layers', default=None, help='comma-separated synthesis layer indices (default: all 14)')
    args = p.parse_args(argv)
    batch = args.batch or (1 if args.device == 'cpu' else 16)
    dtype = getattr(torch, args.dtype)
    fused = args.device
    if ops_build.load_ops(fused) is None:
        raise SystemExit(f'the fused {fused} ops did not build: {ops_build.ops_status()[fused]}')
    layers, _ = sg3_layers()
    idx = [int(i) for i in args.layers.split(',')] if args.layers else range(len(layers))
    cases = [('flrelu', i) for i in idx] + [('torgb', 0), ('mapping', 0)]
    dev_name = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'sgxl ops benchmark: StyleGAN3-T 256 generator shapes, batch {batch}, {args.dtype}, {dev_name}, '
          f'median of {args.reps}; times in ms, memory in MiB')
    head = (f"{'layer':<10} {'filtered_lrelu input -> output':<28} {'up/dn':>8} {'taps':>6} |"
            f"{'fwd ref':>8} {'fused':>8} {'x':>5} |{'f+b ref':>8} {'fused':>8} {'x':>5} |"
            f"{'saved ref':>9} {'fused':>8} |{'peak ref':>8} {'fused':>8} {'ratio':>6}")
    print(head)
    print('-' * len(head))
    tot = dict(fr=0, ff=0, br=0, bf=0, sr=0, sf=0)
    for kind, i in cases:
        r = measure(kind, i, 'ref', batch, args.reps, args.device, dtype)
        f = measure(kind, i, fused, batch, args.reps, args.device, dtype)
        ratio = f'{f["peak"] / r["peak"]:6.2f}' if r['peak'] and f['peak'] is not None else '     -'
        d = r['desc']
        print(f"{d[0]:<10} {d[1]:<28} {d[2]:>8} {d[3]:>6} |{fmt_ms(r['fwd'])} {fmt_ms(f['fwd'])} "
              f"{r['fwd'] / f['fwd']:5.1f} |{fmt_ms(r['fwd_bwd'])} {fmt_ms(f['fwd_bwd'])} {r['fwd_bwd'] / f['fwd_bwd']:5.1f} |"
              f"{fmt_mb(r['saved']):>9} {fmt_mb(f['saved'])} |{fmt_mb(r['peak'])} {fmt_mb(f['peak'])} {ratio}", flush=True)
        for k, v in dict(fr=r['fwd'], ff=f['fwd'], br=r['fwd_bwd'], bf=f['fwd_bwd'], sr=r['saved'], sf=f['saved']).items():
            tot[k] += v
    print('-' * len(head))
    print(f"{'total':<10} {'':<28} {'':>8} {'':>6} |{fmt_ms(tot['fr'])} {fmt_ms(tot['ff'])} {tot['fr'] / tot['ff']:5.1f} |"
          f"{fmt_ms(tot['br'])} {fmt_ms(tot['bf'])} {tot['br'] / tot['bf']:5.1f} |{fmt_mb(tot['sr']):>9} {fmt_mb(tot['sf'])} |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
